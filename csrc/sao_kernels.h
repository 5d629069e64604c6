// sao_kernels C++ library: what csrc/ops.cpp (registration, checks, autograd) and
// csrc/native_kernels.cpp (the CPU kernels) share.
//
// Glossary (as in sao_kernels/ops/__init__.py): T tokens, m = G*a output features, n = G*c
// input features, G groups, a = m/G and c = n/G the block sides, b = block_size.
//   forward      Y[:, R_g]  = X[:, C_g] @ V_g^T (+ b[R_g])
//   grad input   dX[:, C_g] = dY[:, R_g] @ V_g
//   grad values  dV_g       = dY[:, R_g]^T @ X[:, C_g]
// C_g = in_index[g*c : (g+1)*c], R_g = out_index[g*a : (g+1)*a].
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sao {

using at::Tensor;

// A checked index map: `index` is undefined for the identity (no gather), else a contiguous
// int64 permutation of range(size); `run` is its verified aligned run length (1 when none
// was declared): every run of `run` entries is `run` consecutive features starting at a
// multiple of `run`.
struct IndexArg {
  Tensor index;
  int64_t run = 1;
  const int64_t* data() const { return index.defined() ? index.data_ptr<int64_t>() : nullptr; }
};

// The activation a forward applies to its output (linear_act, csrc/linear_act.cpp), in the
// native kernels' epilogue (GELU: where no gradient needs its pre-activation).
enum class Act : int { kNone = 0, kTanh = 1, kRelu = 2, kGelu = 3 };

// The native CPU kernels (native_kernels.cpp).  Arguments are checked by the caller (ops.cpp):
// shapes agree, dtypes are one of float32 / bfloat16 / float16 / float64 and match, every
// tensor is on the CPU, T may be 0.  Activations may have any strides.
Tensor linear_native(const Tensor& x, const Tensor& values, const IndexArg& in, const IndexArg& out,
                     const std::optional<Tensor>& bias, Act act = Act::kNone);
Tensor linear_grad_input_native(const Tensor& grad_out, const Tensor& values, const IndexArg& in,
                                const IndexArg& out);
// With grad_bias: also the bias gradient grad_out.sum(0) (in grad-values' own pass over grad_out
// where the engine has one: the bfloat16 micro-kernel).
Tensor linear_grad_values_native(const Tensor& grad_out, const Tensor& x, const IndexArg& in, const IndexArg& out,
                                 int64_t groups, Tensor* grad_bias = nullptr);

std::string native_build_info();

// The inference weight cache (weight_cache.cpp; sao_kernels.frozen_weights()): on = forwards keep
// the layouts of V they build between calls (rebuilt when V's version counter moves), off = drop
// every entry and stop keeping them.  Stats: {bytes held, entries}.
void set_weight_cache(bool on);
std::vector<int64_t> weight_cache_stats();

// From ops.cpp, for the ops defined in other files (linear_act.cpp): linear's argument checks
// (its messages, op name "linear") and whether the CPU kernel runs native for a product of
// `tokens` rows and `flops` in `dtype` (the dispatch policy).
struct LinearArgs {
  IndexArg in, out;
};
LinearArgs check_linear_args(const Tensor& x, const Tensor& values, const std::optional<Tensor>& in_index,
                             const std::optional<Tensor>& out_index, const std::optional<Tensor>& bias,
                             int64_t block_size);
bool cpu_runs_native(at::ScalarType dtype, int64_t tokens, double flops);

// A backward's grad-values and bias gradient (grad_out.sum(0)) in one native call where that is
// what the op would run anyway (plain CPU tensors, no dispatch mode or graph being recorded: the
// op and its checks are the same); elsewhere the op and the sum.
std::pair<Tensor, Tensor> grad_values_and_bias(const Tensor& grad_out, const Tensor& x,
                                               const std::optional<Tensor>& in_index,
                                               const std::optional<Tensor>& out_index, int64_t groups,
                                               int64_t block_size);

// The CPU tier the native kernels use (cpu_tier.cpp): the hardware's, capped by
// SAO_KERNELS_CPU_ISA.  Every ISA decision of the kernels asks isa_at_least / amx_packs.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };
constexpr const char* kCpuIsaEnv = "SAO_KERNELS_CPU_ISA";
Isa hardware_isa();
Isa cpu_isa();                        // raises ValueError for a bad SAO_KERNELS_CPU_ISA
bool isa_at_least(Isa tier);
bool amx_packs(at::ScalarType dtype);  // AMX allowed and oneDNN packs B (VNNI) for dtype
const char* isa_name(Isa tier);

}  // namespace sao
