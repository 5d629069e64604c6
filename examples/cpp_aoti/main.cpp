// Run an SAO model from C++: load the sao_kernels ops library, then an AOTInductor package.
//
//   sao_aoti_example LIBRARY OUT_DIR
//
// LIBRARY: sao_kernels/lib/libsao_kernels_ops.so (no Python in it; it defines the
// sao_kernels ops and registers their CPU kernels).  OUT_DIR: what export_model.py wrote
// (model.pt2, and data.pt with inputs and eager outputs at T=1 and T=128).  Prints the largest
// difference from the eager outputs and the median latency per call; exits 1 if a difference
// exceeds 1e-6.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s LIBRARY OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string library = argv[1], out_dir = argv[2];
  // The package calls the ops by name (sao_kernels::linear) through the dispatcher: the library
  // must be loaded first.  RTLD_GLOBAL is not needed (registration happens in its initialisers).
  if (!dlopen(library.c_str(), RTLD_NOW)) {
    std::fprintf(stderr, "cannot load %s: %s\n", library.c_str(), dlerror());
    return 2;
  }
  std::ifstream file(out_dir + "/data.pt", std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const c10::Dict<c10::IValue, c10::IValue> data = torch::jit::pickle_load(bytes).toGenericDict();

  c10::InferenceMode inference;
  torch::inductor::AOTIModelPackageLoader model(out_dir + "/model.pt2");
  bool ok = true;
  for (const int tokens : {1, 128}) {
    const std::string t = std::to_string(tokens);
    const at::Tensor x = data.at("x_T" + t).toTensor(), expected = data.at("y_T" + t).toTensor();
    const std::vector<at::Tensor> y = model.run({x});
    const double err = (y.at(0) - expected).abs().max().item<double>();
    ok &= y.at(0).sizes() == expected.sizes() && err <= 1e-6;

    std::vector<double> us;  // median of 15 rounds, each ~a few ms
    const int calls = std::max(1, static_cast<int>(2e-3 / (1e-5 + tokens * 2e-6)));
    for (int round = 0; round < 15; ++round) {
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) model.run({x});
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / calls);
    }
    std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
    std::printf("T=%d: output (%ld, %ld), max |package - eager| = %.3g, %.1f us per call\n", tokens,
                static_cast<long>(y[0].size(0)), static_cast<long>(y[0].size(1)), err, us[us.size() / 2]);
  }
  std::printf(ok ? "OK: the C++ outputs equal the eager outputs to 1e-6\n" : "FAILED: outputs differ\n");
  return ok ? 0 : 1;
}
