"""Run the SAO package from Python without sao_kernels: load one library, then the package.

    python examples/cpp_aoti/run_package.py LIBRARY OUT_DIR

LIBRARY is the ops library (``sao_kernels.ops.LIBRARY``: sao_kernels/lib/libsao_kernels_ops.so)
or the Python module sao_kernels/_C*.so that links it; OUT_DIR is what export_model.py wrote.
Compares with the eager outputs saved there (max abs difference <= 1e-6) and exits 1 if not.
"""

import pathlib
import sys

import torch

TOL = 1e-6


def main() -> int:
    library, out_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    torch.ops.load_library(library)  # defines torch.ops.sao_kernels.* with their C++ kernels
    model = torch._inductor.aoti_load_package(str(out_dir / "model.pt2"))
    data = torch.load(out_dir / "data.pt", weights_only=True)
    ok = True
    for t in (1, 128):
        y = model(data[f"x_T{t}"])
        err = (y - data[f"y_T{t}"]).abs().max().item()
        ok &= tuple(y.shape) == tuple(data[f"y_T{t}"].shape) and err <= TOL
        print(f"T={t}: output {tuple(y.shape)}, max |package - eager| = {err:.3g}")
    assert not any(name.startswith("sao_kernels") for name in sys.modules), "sao_kernels was imported"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
