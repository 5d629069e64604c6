// The forward product at decode sizes (T <= kDecodeMaxTokens): a weight-streaming GEMV.
//
//   y[t, R_g[i]] = bias[R_g[i]] + sum_k V[g, i, k] * x[t, C_g[k]]
//
// With few tokens the layer is bound by reading its weights (1/G of the dense bytes), so V is
// read once, in place: V (G, a, c) row-major is already the GEMV layout (row i of V_g against
// every token's gathered input).  x is gathered once per group into a small zero-padded buffer
// xs (G, T, cp) (float, or bfloat16 for the AVX512_BF16 kernel), which stays in L1 / L2; each
// item (group, block of kRowsPerItem rows) then computes, for a few rows of V at a time and a
// chunk of up to 8 tokens, the dot products in vector registers, reduces each one horizontally
// and writes y (+ bias) converted once, straight to its output column (scattered through
// out_index).  Nothing is packed, transposed or cached: the call costs one pass over V.
//
// Kernels, picked at run time from the CPU's features: AVX512_BF16 (bfloat16: VDPBF16PS on
// pairs of bf16, float accumulation, denormals flushed as the instruction does), AVX-512 (F, BW,
// VL: 16 floats a step, bf16 widened by a shift, fp16 by VCVTPH2PS), AVX2 + FMA (8 floats a
// step), and portable scalar loops.  Determinism: every output is computed by one item with a
// fixed sequence of instructions that depends on the shape only, so results are identical for
// any thread count (the ISA, of course, changes the rounding).
#include "native_util.h"

#include <string>

namespace sao {
namespace detail {
namespace {

constexpr int64_t kRowsPerItem = 64;  // rows of V per work item (>= 16 items for 4096 x 4096 at G >= 1)
constexpr int64_t kTokChunk = 8;      // tokens per register block
constexpr int64_t kPadK = 32;         // xs rows are zero-padded to a multiple of this
// V rows prefetched this far ahead of the rows being computed, in an item's first token chunk
// (the later chunks find them in L2).  A row of V is a short stream (c elements: 1 KiB at
// bf16, c = 512) on which the hardware prefetcher barely ramps up, so without this V came from
// memory at half the speed oneDNN's bmm reads it whenever another call evicted it (as the
// layers between two calls of this one do).  Measured at 4096 x 4096, G = 8, one thread, thread
// CPU time, a dense layer called between calls (Zen 4, 2026-12-06, loaded: +-10 % run to run),
// speed-up over nn.Linear without -> with 8 rows ahead, ranges over 2-4 runs: bf16 T = 1
// 6.1-6.5x -> 6.6-8.4x, T = 16 4.0-4.5x -> 5.2-5.7x; fp32 T = 1 3.8-4.2x -> 5.1-6.9x, but fp32
// T = 16 6.8x -> 6.2-6.8x (float32 with two token chunks is compute-bound: not prefetched).
// 16 rows ahead: bf16 T = 1 7.5x, fp32 T = 16 lower.
constexpr int64_t kPrefetchAhead = 8;

// Prefetch `rows` rows of c elements from p into L1.
template <typename T>
inline void prefetch_rows(const T* p, int64_t c, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < c; k += int64_t(64 / sizeof(T))) __builtin_prefetch(p + r * c + k, 0, 3);
}

// Rows per register block for a chunk of tt tokens (AVX-512: 2 x tt accumulators).  Two rows:
// with 4 or 8, GCC 12 kept stack copies of the accumulators in the loop (a store per FMA; seen
// in the disassembly); at T = 1 two FMA chains still outrun the memory stream of V.
constexpr int rows_for(int) { return 2; }
constexpr int rows_for_avx2(int tt) { return tt <= 4 ? 2 : 1; }  // 16 ymm registers

// out[r * tt + t] = sum_k v[r * ldv + k] * xs[t * ldx + k] for r < R, t < TT, k < c.
template <typename T, typename X>
using RowsFn = void (*)(const T* v, int64_t ldv, int64_t c, const X* xs, int64_t ldx, float* out);

// --------------------------------------------------------------------------- scalar
template <typename T, int R, int TT>
void rows_scalar(const T* v, int64_t ldv, int64_t c, const float* xs, int64_t ldx, float* out) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      float s = 0.f;
      for (int64_t k = 0; k < c; ++k) s += static_cast<float>(v[r * ldv + k]) * xs[t * ldx + k];
      out[r * TT + t] = s;
    }
}

#if SAO_X86
// --------------------------------------------------------------------------- AVX2
template <typename T>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <typename T, int R, int TT>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const T* v, int64_t ldv, int64_t c, const float* xs,
                                                         int64_t ldx, float* out) {
  __m256 acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  const int64_t c8 = c - c % 8;
  for (int64_t k = 0; k < c8; k += 8) {
    __m256 vv[R];
    for (int r = 0; r < R; ++r) vv[r] = load8(v + r * ldv + k);
    for (int t = 0; t < TT; ++t) {
      const __m256 xv = _mm256_loadu_ps(xs + t * ldx + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(vv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      float s = hsum8(acc[r][t]);
      for (int64_t k = c8; k < c; ++k) s += static_cast<float>(v[r * ldv + k]) * xs[t * ldx + k];
      out[r * TT + t] = s;
    }
}

// -------------------------------------------------------------------------- AVX-512
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
}

// out[i] = the sum of the 16 lanes of acc[i], in a fixed order.  (Through a buffer: reducing
// the accumulators in place made GCC 12 keep a stack copy of each, a store per FMA in the loop.)
template <int R, int TT>
__attribute__((target("avx512f"), always_inline)) inline void reduce_avx512(const __m512 (&acc)[R][TT], float* out) {
  alignas(64) float buf[R * TT * 16];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) _mm512_store_ps(buf + (r * TT + t) * 16, acc[r][t]);
  for (int i = 0; i < R * TT; ++i) out[i] = _mm512_reduce_add_ps(_mm512_load_ps(buf + i * 16));
}

// One k step of 16 (masked: the tail) for R rows of V and TT tokens.
template <typename T, int R, int TT>
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline void step_avx512(
    __m512 (&acc)[R][TT], const T* v, int64_t ldv, const float* xs, int64_t ldx, __mmask16 m) {
  __m512 vv[R];
  for (int r = 0; r < R; ++r) vv[r] = load16(v + r * ldv, m);
  for (int t = 0; t < TT; ++t) {
    const __m512 xv = _mm512_loadu_ps(xs + t * ldx);
    for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(vv[r], xv, acc[r][t]);
  }
}

template <int R, int TT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void step_bf16dp(
    __m512 (&acc)[R][TT], const at::BFloat16* v, int64_t ldv, const at::BFloat16* xs, int64_t ldx, __mmask32 m) {
  __m512bh vv[R];
  for (int r = 0; r < R; ++r) vv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, v + r * ldv);
  for (int t = 0; t < TT; ++t) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(xs + t * ldx);
    for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], vv[r], xv);
  }
}

template <typename T, int R, int TT>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows_avx512(const T* v, int64_t ldv, int64_t c,
                                                                       const float* xs, int64_t ldx, float* out) {
  __m512 acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t c16 = c - c % 16;
  for (int64_t k = 0; k < c16; k += 16) step_avx512<T, R, TT>(acc, v + k, ldv, xs + k, ldx, __mmask16(0xFFFF));
  // the tail (at most one step; written as a loop: as an `if`, GCC 12 kept a stack copy of
  // every accumulator in the main loop, a store per FMA)
  for (int64_t k = c16; k < c; k += 16) step_avx512<T, R, TT>(acc, v + k, ldv, xs + k, ldx, __mmask16((1u << (c - k)) - 1));
  reduce_avx512<R, TT>(acc, out);
}

// bfloat16 with AVX512_BF16: 32 products a step (pairs of adjacent k), float accumulation.
template <int R, int TT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void rows_bf16dp(const at::BFloat16* v, int64_t ldv,
                                                                                  int64_t c, const at::BFloat16* xs,
                                                                                  int64_t ldx, float* out) {
  __m512 acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t c32 = c - c % 32;
  for (int64_t k = 0; k < c32; k += 32) step_bf16dp<R, TT>(acc, v + k, ldv, xs + k, ldx, __mmask32(0xFFFFFFFFu));
  for (int64_t k = c32; k < c; k += 32) step_bf16dp<R, TT>(acc, v + k, ldv, xs + k, ldx, __mmask32((1u << (c - k)) - 1));
  reduce_avx512<R, TT>(acc, out);
}
#endif

enum class DecodeIsa { kScalar, kAvx2, kAvx512, kAvx512Bf16 };

template <typename T>
DecodeIsa pick_isa() {
#if SAO_X86
  if (std::is_same_v<T, at::BFloat16> && has_avx512() && has_avx512_bf16()) return DecodeIsa::kAvx512Bf16;
  if (has_avx512()) return DecodeIsa::kAvx512;
  if (has_avx2() && has_f16c()) return DecodeIsa::kAvx2;
#endif
  return DecodeIsa::kScalar;
}

const char* decode_isa_name(DecodeIsa isa) {
  switch (isa) {
    case DecodeIsa::kAvx512Bf16: return "AVX512_BF16";
    case DecodeIsa::kAvx512: return "AVX-512";
    case DecodeIsa::kAvx2: return "AVX2";
    default: return "scalar";
  }
}

// The kernel for a chunk of tt tokens: its rows per block (R) and R = 1 for the last rows.
template <typename T, typename X>
struct Kernels {
  RowsFn<T, X> block[kTokChunk + 1], single[kTokChunk + 1];
};

template <typename T, typename X, int TT>
void fill_kernels(Kernels<T, X>& k, DecodeIsa isa) {
  if constexpr (TT <= kTokChunk) {
    constexpr int R = rows_for(TT);
    if constexpr (std::is_same_v<X, float>) {
      k.block[TT] = rows_scalar<T, R, TT>;
      k.single[TT] = rows_scalar<T, 1, TT>;
#if SAO_X86
      if (isa == DecodeIsa::kAvx512) {
        k.block[TT] = rows_avx512<T, R, TT>;
        k.single[TT] = rows_avx512<T, 1, TT>;
      } else if (isa == DecodeIsa::kAvx2) {
        constexpr int R2 = rows_for_avx2(TT);
        k.block[TT] = rows_avx2<T, R2, TT>;
        k.single[TT] = rows_avx2<T, 1, TT>;
      }
#endif
    } else {
#if SAO_X86
      k.block[TT] = rows_bf16dp<R, TT>;
      k.single[TT] = rows_bf16dp<1, TT>;
#endif
      (void)isa;
    }
    fill_kernels<T, X, TT + 1>(k, isa);
  }
}

template <typename T, typename X>
int rows_of(const Kernels<T, X>& k, DecodeIsa isa, int tt) {
  if (isa == DecodeIsa::kAvx2) return rows_for_avx2(tt);
  return rows_for(tt);
}

template <typename T, typename X>
void decode_typed(const T* x, int64_t ldx, const IndexArg& in, const T* v, const IndexArg& out, const T* bias, T* y,
                  int64_t Tn, int64_t G, int64_t a, int64_t c, DecodeIsa isa) {
  Kernels<T, X> kern{};
  fill_kernels<T, X, 1>(kern, isa);
  const int64_t cp = ceil_div(c, kPadK) * kPadK, m = G * a;
  Scratch big;
  X* xs = scratch<X>(kSlotX, G * Tn * cp, big);
  const int64_t* ii = in.data();
  run_items(G, 2.0 * Tn * G * c * 64, [&](int64_t g) {  // the gather: tiny next to V
    for (int64_t t = 0; t < Tn; ++t) {
      X* d = xs + (g * Tn + t) * cp;
      const T* s = x + t * ldx;
      for (int64_t k = 0; k < c; ++k) d[k] = static_cast<X>(s[ii ? ii[g * c + k] : g * c + k]);
      std::fill(d + c, d + cp, X(0));
    }
  });
  const int64_t* oi = out.data();
  const int64_t n_rb = ceil_div(a, kRowsPerItem);
  // (not for float32 over two token chunks: compute-bound, and the prefetches cost ~8 %)
  const bool prefetch = sizeof(T) == 2 || Tn <= kTokChunk;
  run_items(G * n_rb, 2.0 * Tn * m * c, [&](int64_t it) {
    const int64_t g = it / n_rb, i0 = (it % n_rb) * kRowsPerItem, i1 = std::min(a, i0 + kRowsPerItem);
    float res[16 * kTokChunk];
    for (int64_t t0 = 0; t0 < Tn; t0 += kTokChunk) {
      const int tt = int(std::min(kTokChunk, Tn - t0));
      const int R = rows_of(kern, isa, tt);
      for (int64_t i = i0; i < i1;) {
        if (t0 == 0 && prefetch) {  // V from memory: fetch the rows kPrefetchAhead ahead (in the item)
          const int64_t p0 = std::min(i1, i + kPrefetchAhead);
          prefetch_rows(v + (g * a + p0) * c, c, std::min<int64_t>(R, i1 - p0));
        }
        const bool full = i1 - i >= R;
        (full ? kern.block[tt] : kern.single[tt])(v + (g * a + i) * c, c, c, xs + (g * Tn + t0) * cp, cp, res);
        const int rows = full ? R : 1;
        for (int r = 0; r < rows; ++r) {
          const int64_t col = oi ? oi[g * a + i + r] : g * a + i + r;
          const float b = bias ? static_cast<float>(bias[col]) : 0.f;
          for (int t = 0; t < tt; ++t) y[(t0 + t) * m + col] = static_cast<T>(res[r * tt + t] + b);
        }
        i += rows;
      }
    }
  });
}

}  // namespace

bool decode_applies(int64_t T, at::ScalarType dtype) {
  return T >= 1 && T <= kDecodeMaxTokens &&
         (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf);
}

Tensor linear_decode(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias) {
  const int64_t Tn = x.size(0), G = v.size(0), a = v.size(1), c = v.size(2);
  Tensor y = new_output({Tn, G * a}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sao_linear_decode", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
      const DecodeIsa isa = pick_isa<scalar_t>();
      if (isa == DecodeIsa::kAvx512Bf16) {
        if constexpr (std::is_same_v<scalar_t, at::BFloat16>)
          decode_typed<scalar_t, at::BFloat16>(x.data_ptr<scalar_t>(), x.stride(0), in, v.data_ptr<scalar_t>(), out,
                                               bp, y.data_ptr<scalar_t>(), Tn, G, a, c, isa);
      } else {
        decode_typed<scalar_t, float>(x.data_ptr<scalar_t>(), x.stride(0), in, v.data_ptr<scalar_t>(), out, bp,
                                      y.data_ptr<scalar_t>(), Tn, G, a, c, isa);
      }
    } else {
      TORCH_CHECK(false, "sao_kernels: the decode kernel runs float32, bfloat16 and float16");
    }
  });
  return y;
}

std::string decode_info() {
  return std::string("decode (T <= ") + std::to_string(kDecodeMaxTokens) + "): weight-streaming GEMV, " +
         decode_isa_name(pick_isa<at::BFloat16>()) + " for bfloat16, " + decode_isa_name(pick_isa<float>()) + " otherwise";
}

}  // namespace detail
}  // namespace sao
