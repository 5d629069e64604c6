#!/usr/bin/env bash
# The C++ example end to end (CI runs it): export and package the model, run the package from
# Python with only the ops library, build main.cpp against the torch wheel's libtorch, run it.
#   examples/cpp_aoti/run.sh [WORK_DIR]        (default build/cpp_aoti; needs cmake >= 3.18)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-build/cpp_aoti}
LIB=$(python -c "import sao_kernels; print(sao_kernels.ops.LIBRARY)")
python examples/cpp_aoti/export_model.py "$WORK/package"
python examples/cpp_aoti/run_package.py "$LIB" "$WORK/package"
cmake -S examples/cpp_aoti -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
cmake --build "$WORK/build"
"$WORK/build/sao_aoti_example" "$LIB" "$WORK/package"
