// bfloat16 / float16 products through oneDNN's batched matmul (at::bmm), on CPUs where
// cpublas::brgemm cannot run them fast: without AMX, brgemm's bf16 / fp16 path is cpublas' own
// GEMM (~100 GFLOP/s on a 2-core Zen 4), while at::bmm on group-ordered blocks runs oneDNN's
// avx512_core_bf16 matmul (~370 GFLOP/s, as fast as dense bf16).  So the three products become
//
//   forward      Xg = pack(X, in_index)             (G, T, c)   one pass over X
//                Yg = [bias_g +] Xg @ V_g^T          (G, T, a)   at::baddbmm_ / bmm, V^T a view
//                Y  = unpack(Yg, out_index)                      one pass over Y
//   grad input   dYg = pack(dY, out_index); dXg = dYg @ V_g; dX = unpack(dXg, in_index)
//   grad values  dV  = dYg^T @ Xg                    (G, a, c)   written in place
//
// A pack is the gather into group order; with an identity map there is none in the forward and
// grad-input: the operand is a strided view (T, G*W) -> (G, T, W) of the activation itself, and
// the result is written straight into the output through such a view (no unpack; oneDNN writes
// it at full speed).  V^T is a view too.  (torch's mkldnn_matmul copies an input operand that
// is neither contiguous nor transposed, so the strided input view costs that copy instead of
// our pack; grad-values' transposed dY is always packed.)  Every product accumulates in float and
// is rounded once (the bias is the GEMM's initial C: oneDNN adds it to the float accumulator,
// as the brgemm path does).
// Buffers are per-thread scratch (see native_util.h).
//
// Determinism: the packs and unpacks are copies.  oneDNN's matmul splits its work over the
// batch and over M / N blocks; we measured bitwise-identical results for 1, 2, 3, 4 and 8
// threads on every shape tried (including grad-values with K = T up to 100000 and a tiny
// output, where a K-split would show), and tests/ops/test_native.py checks 1 vs 2 threads.
// This rests on oneDNN's choice of kernels, not on our code: a oneDNN build that reduced K
// across threads would break it.
#include "permute_cols.h"

#include <ATen/native/CPUBlas.h>

#include <cctype>
#include <string>

namespace sao {
namespace detail {
namespace {

namespace cpublas = at::native::cpublas;

// The group-ordered blocks (G, Tn, W) of a (Tn, G*W) activation with unit column stride: a
// strided view of it when idx is the identity (which torch's mkldnn_matmul copies to contiguous
// blocks itself), else packed (the gather) into scratch `slot`.
template <typename T>
Tensor blocks_of(const Tensor& src, int64_t G, int64_t W, const IndexArg& idx, int slot, Scratch& big,
                 bool view_ok = true) {
  const int64_t Tn = src.size(0);
  if (!idx.index.defined() && view_ok) return src.as_strided({G, Tn, W}, {W, src.stride(0), 1});
  const T* p = pack_groups(src.data_ptr<T>(), src.stride(0), Tn, G, W, idx, W, slot, big);
  return at::from_blob(const_cast<T*>(p), {G, Tn, W}, src.options());
}

// Where a product's group-ordered result (G, Tn, W) goes: a strided view of the output dst (Tn,
// G*W) when idx is the identity, else a scratch buffer that unpack_groups() scatters afterwards.
template <typename T>
Tensor result_blocks(const Tensor& dst, int64_t G, int64_t W, const IndexArg& idx, Scratch& big) {
  const int64_t Tn = dst.size(0);
  if (!idx.index.defined()) return dst.view({Tn, G, W}).transpose(0, 1);
  return at::from_blob(scratch<T>(kSlotC, G * Tn * W, big), {G, Tn, W}, dst.options());
}

template <typename T>
Tensor linear_typed(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias) {
  const int64_t Tn = x.size(0), G = v.size(0), a = v.size(1), c = v.size(2);
  Tensor y = new_output({Tn, G * a}, x.options());
  Scratch big_x, big_y;
  // The gather of X and the bias rows in one parallel region (each region on a loaded machine
  // may wait for a descheduled thread).
  const bool gather = in.index.defined();
  T* xp = gather ? scratch<T>(kSlotX, G * Tn * c, big_x) : nullptr;
  const Tensor xg = gather ? at::from_blob(xp, {G, Tn, c}, x.options())
                           : x.as_strided({G, Tn, c}, {c, x.stride(0), 1});
  Tensor yg = result_blocks<T>(y, G, a, out, big_y);
  const T* b = bias.defined() ? bias.data_ptr<T>() : nullptr;
  if (gather || b) {
    const T* xs = x.data_ptr<T>();
    T* yp = yg.data_ptr<T>();
    const int64_t ldx = x.stride(0), sg = yg.stride(0), st = yg.stride(1), RB = 16;
    const int64_t *ii = in.data(), *oi = out.data();
    run_items(ceil_div(Tn, RB), pass_flops(double(Tn) * G * (a + c)), [&](int64_t it) {
      const int64_t r0 = it * RB, rows = std::min(RB, Tn - r0);
      for (int64_t g = 0; g < G; ++g) {
        if (gather) gather_cols(xs + r0 * ldx, ldx, ii + g * c, rows, c, in.run, xp + (g * Tn + r0) * c, c);
        if (b) {  // Yg starts as bias_g (group order): the GEMM adds to it, one rounding
          T* d = yp + g * sg + r0 * st;
          for (int64_t i = 0; i < a; ++i) d[i] = b[oi ? oi[g * a + i] : g * a + i];
          for (int64_t t = 1; t < rows; ++t) std::memcpy(d + t * st, d, sizeof(T) * a);
        }
      }
    });
  }
  if (b) {
    yg.baddbmm_(xg, v.transpose(1, 2));
  } else {
    at::bmm_out(yg, xg, v.transpose(1, 2));
  }
  if (out.index.defined()) unpack_groups<T>(yg.data_ptr<T>(), G, Tn, a, out, y);
  return y;
}

template <typename T>
Tensor grad_input_typed(const Tensor& dy, const Tensor& v, const IndexArg& in, const IndexArg& out) {
  const int64_t Tn = dy.size(0), G = v.size(0), a = v.size(1), c = v.size(2);
  Tensor dx = new_output({Tn, G * c}, dy.options());
  Scratch big_dy, big_x;
  const Tensor dyg = blocks_of<T>(dy, G, a, out, kSlotDY, big_dy);
  Tensor dxg = result_blocks<T>(dx, G, c, in, big_x);
  at::bmm_out(dxg, dyg, v);
  if (in.index.defined()) unpack_groups<T>(dxg.data_ptr<T>(), G, Tn, c, in, dx);
  return dx;
}

template <typename T>
Tensor grad_values_typed(const Tensor& dy, const Tensor& x, const IndexArg& in, const IndexArg& out, int64_t G) {
  const int64_t m = dy.size(1), n = x.size(1), a = m / G, c = n / G;
  Tensor dv = new_output({G, a, c}, x.options());
  Scratch big_dy, big_x;
  // Packed even for identity maps: with the reduction over T, a strided view of dY as the
  // transposed A operand ran at 0.6x of a packed one (measured, Zen 4, 4096 wide, G = 8).
  const Tensor dyg = blocks_of<T>(dy, G, a, out, kSlotDY, big_dy, /*view_ok=*/false);
  const Tensor xg = blocks_of<T>(x, G, c, in, kSlotX, big_x, /*view_ok=*/false);
  at::bmm_out(dv, dyg.transpose(1, 2), xg);
  return dv;
}

std::string forced_engine() {  // SAO_KERNELS_LOWP_GEMM, lower-cased ("" = automatic)
  const char* env = std::getenv("SAO_KERNELS_LOWP_GEMM");
  std::string s = env ? env : "";
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

}  // namespace

// The engine SAO_KERNELS_LOWP_GEMM forces: "" (automatic), "bmm", "brgemm" or "dpbf16" (the
// bfloat16 products through bf16_dot.cpp; float16 then chooses automatically).
std::string lowp_forced_engine() {
  const std::string forced = forced_engine();
  TORCH_CHECK_VALUE(forced.empty() || forced == "bmm" || forced == "brgemm" || forced == "dpbf16",
                    "SAO_KERNELS_LOWP_GEMM=", forced,
                    " is not an engine; allowed: 'bmm', 'brgemm', 'dpbf16' or unset (automatic)");
  return forced;
}

bool lowp_uses_bmm(at::ScalarType dtype) {
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  const std::string forced = lowp_forced_engine();
  if (forced == "bmm") return true;
  if (forced == "brgemm") return false;
  if (amx_packs(dtype)) return false;  // AMX (allowed by the tier): brgemm with VNNI-packed B
#if SAO_X86
  return dtype == at::kBFloat16 ? has_avx512_bf16() : has_avx512_fp16();
#else
  return false;
#endif
}

bool lowp_uses_dot(at::ScalarType dtype) {
  if (dtype != at::kBFloat16) return false;
  const std::string forced = lowp_forced_engine();
  if (forced == "dpbf16") {
    TORCH_CHECK_VALUE(bf16_dot_usable(), "SAO_KERNELS_LOWP_GEMM=dpbf16 needs AVX512_BF16; the native kernels use tier '",
                      isa_name(cpu_isa()), "' (hardware '", isa_name(hardware_isa()),
                      "'); allowed here: 'bmm', 'brgemm' or unset");
    return true;
  }
  return forced.empty() && !amx_packs(dtype) && bf16_dot_usable();
}

Tensor linear_bmm(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias) {
  Tensor y;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "sao_linear_bmm",
                                     [&] { y = linear_typed<scalar_t>(x, v, in, out, bias); });
  return y;
}

Tensor grad_input_bmm(const Tensor& dy, const Tensor& v, const IndexArg& in, const IndexArg& out) {
  Tensor dx;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dy.scalar_type(), "sao_linear_grad_input_bmm",
                                     [&] { dx = grad_input_typed<scalar_t>(dy, v, in, out); });
  return dx;
}

Tensor grad_values_bmm(const Tensor& dy, const Tensor& x, const IndexArg& in, const IndexArg& out, int64_t G) {
  Tensor dv;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "sao_linear_grad_values_bmm",
                                     [&] { dv = grad_values_typed<scalar_t>(dy, x, in, out, G); });
  return dv;
}

}  // namespace detail
}  // namespace sao
