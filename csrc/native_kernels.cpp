// Native CPU kernels of the three SAO products (the CPU kernels of torch.ops.sao_kernels.*;
// csrc/ops.cpp checks the arguments and registers them).  Glossary: csrc/sao_kernels.h.
//
//   forward      Y[:, R_g]  = X[:, C_g] @ V_g^T (+ b[R_g])
//   grad input   dX[:, C_g] = dY[:, R_g] @ V_g
//   grad values  dV_g       = dY[:, R_g]^T @ X[:, C_g]
//
// Forward and grad-input are one "grouped gather GEMM": out[:, O_g] = A[:, I_g] @ B_g, with
// (A, I, B_g, O) = (X, in_index, V_g^T, out_index) or (dY, out_index, V_g, in_index).
//
// How the gather is fused.  Work items are (token block, chunk of groups).  An item gathers
// its token block's columns for the chunk's groups into a thread-local panel (each element of
// those rows read once; the panel stays in L2), runs each group's GEMM from it into a float
// (double for float64) accumulator initialised with the bias, and stores the result, converted,
// straight into the output, or scattered through the index map.  Gathering per (token block,
// group) would read every cache line of the rows once per group: with block_size 1 a group's
// columns are spread over all lines.  Grad-values reduces over all tokens of a group, so its X
// operand is a whole column block: X is packed once, group-major, and items are (group, block of
// dV rows).
//
// GEMM engines (see Engine below): at::native::cpublas::brgemm, PyTorch's wrapper of the oneDNN
// brgemm micro-kernel, for float32, bfloat16 and float16 (AMX with VNNI-packed B where the CPU
// has it; cpublas falls back to BLAS / MKL GEMMs where oneDNN's ukernel is not available); plain
// loops for float64.  brgemm reads B row-major (or packed), so the forward transposes V once per
// call (float32 with few tokens computes Y^T = V X^T instead, reading V in place).  Low-precision
// inputs accumulate in float32 and are rounded once.
//
// Threading: problems under kParallelMinFlops run on the calling thread, with no parallel
// region at all: a short op never waits on a descheduled thread when other processes load the
// machine.  Larger ones run at::parallel_for over the threads, each pulling items from a shared
// counter (a late thread takes fewer items instead of stalling the others).  Inside a worker
// only raw pointers and the GEMM engines are used (no ATen tensor ops: worker threads do not
// inherit the caller's dispatch state, e.g. inference mode), and the engines run single-threaded.
// Determinism: every output element is produced by exactly one item, with a fixed sequence of
// GEMM calls whose shapes depend only on the problem shape, never on the thread count, so
// results are bitwise identical for any number of threads; there are no atomics.
#include "sao_kernels.h"
#include "permute_cols.h"
#include "weight_cache.h"
#include "activation.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#if !defined(CPUBLAS_BRGEMM_F32F32F32) || !defined(CPUBLAS_BRGEMM_BF16BF16F32) || !defined(CPUBLAS_BRGEMM_F16F16F32)
#error "sao_kernels needs at::native::cpublas::brgemm for float32, bfloat16 and float16 (torch >= 2.6)"
#endif

namespace sao {
namespace {

using namespace detail;

using at::native::TransposeType;
namespace cpublas = at::native::cpublas;

// ----------------------------------------------------------------------------- tiles
// Work splits depend on these constants and the problem shape only, never on the thread
// count, so results are the same for any thread count.
constexpr int64_t kTokBlock = 64;          // tokens per item (float32 brgemm: its best on EPYC and Xeon)
constexpr int64_t kVnniTokBlock = 256;     // tokens per item with AMX (bigger M per B block: 1.26 vs 1.57 ms at 64, Xeon)
constexpr int64_t kSmallTokBlock = 512;    // tokens per item of a problem run on one thread
constexpr int64_t kKBlock = 256;           // float32 brgemm: K block of one call
// float32 brgemm: N block of one call.  64 from the AVX-512 tier up (chosen on a 2-core EPYC and
// a Xeon); 16 below it: oneDNN's AVX2 brgemm ran the 4096 x 4096, T = 512 forward at 0.76-0.82
// (G = 4) / 0.83-0.92 (G = 8) of MKL's batched sgemm with 64, 0.90-0.96 / 0.90-1.00 with 16
// (24: 0.85-0.88 / 0.81-1.00; 8: 0.76-0.78 / 0.71-0.79; three runs each, Zen 4 under the avx2
// caps, 2026-12-07).  Per-element summation order does not depend on it (K blocks are fixed).
inline int64_t f32_n_block() { return isa_at_least(Isa::kAvx512) ? 64 : 16; }
constexpr int64_t kTokChunk = 256;         // float32 grad-values: tokens per brgemm call
constexpr int64_t kMinRows = 128;          // grad-values: smallest block of dV rows per item
constexpr int64_t kMinBrgemmTokens = 16;   // float32 forward below this: the gemm engine

// ---------------------------------------------------------------------- copy helpers
// dst (cols x rows, row stride ldd) = src (rows x cols, row stride lds)^T
template <typename T>
void transpose_scalar(const T* src, int64_t lds, T* dst, int64_t ldd, int64_t rows, int64_t cols) {
  constexpr int64_t B = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += B) {
    const int64_t rw = std::min(B, rows - r0);
    for (int64_t c0 = 0; c0 < cols; c0 += B) {
      const int64_t cw = std::min(B, cols - c0);
      for (int64_t c = 0; c < cw; ++c)
        for (int64_t r = 0; r < rw; ++r) dst[(c0 + c) * ldd + r0 + r] = src[(r0 + r) * lds + c0 + c];
    }
  }
}

#if SAO_X86
__attribute__((target("avx2"))) inline void tr8x8_avx2(const float* s, int64_t lds, float* d, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(s + 0 * lds), r1 = _mm256_loadu_ps(s + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  _mm256_storeu_ps(d + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

__attribute__((target("avx2"))) void transpose_f32_avx2(const float* src, int64_t lds, float* dst, int64_t ldd,
                                                         int64_t rows, int64_t cols) {
  const int64_t r8 = rows - rows % 8, c8 = cols - cols % 8;
  // 32 x 32 super-tiles keep both sides in L1.
  for (int64_t R = 0; R < r8; R += 32) {
    const int64_t Re = std::min(R + 32, r8);
    for (int64_t C = 0; C < c8; C += 32) {
      const int64_t Ce = std::min(C + 32, c8);
      for (int64_t r = R; r < Re; r += 8)
        for (int64_t c = C; c < Ce; c += 8) tr8x8_avx2(src + r * lds + c, lds, dst + c * ldd + r, ldd);
    }
  }
  if (c8 < cols) transpose_scalar(src + c8, lds, dst + c8 * ldd, ldd, rows, cols - c8);
  if (r8 < rows) transpose_scalar(src + r8 * lds, lds, dst + r8, ldd, rows - r8, c8);
}

#endif

void transpose_f32(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
#if SAO_X86
  if (has_avx2()) return transpose_f32_avx2(src, lds, dst, ldd, rows, cols);
#endif
  transpose_scalar(src, lds, dst, ldd, rows, cols);
}

// float -> bfloat16 / float16 for n contiguous elements, vectorised where the CPU can (round to
// nearest even, as c10's conversions: the same bits).
#if SAO_X86
__attribute__((target("avx512f,avx512bf16,avx512vl"))) void cvt_bf16_avx512(const float* s, at::BFloat16* d,
                                                                             int64_t n) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + k)));
  for (; k < n; ++k) d[k] = static_cast<at::BFloat16>(s[k]);
}

__attribute__((target("avx2,f16c"))) void cvt_f16_f16c(const float* s, at::Half* d, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + k),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; k < n; ++k) d[k] = static_cast<at::Half>(s[k]);
}

#endif

template <typename T, typename A>
void convert_row(const A* s, T* d, int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(d, s, sizeof(T) * n);
    return;
  }
#if SAO_X86
  if constexpr (std::is_same_v<T, at::BFloat16> && std::is_same_v<A, float>) {
    if (has_avx512_bf16()) return cvt_bf16_avx512(s, d, n);
  }
  if constexpr (std::is_same_v<T, at::Half> && std::is_same_v<A, float>) {
    if (has_f16c()) return cvt_f16_f16c(s, d, n);
  }
#endif
  for (int64_t k = 0; k < n; ++k) d[k] = static_cast<T>(s[k]);
}

// Epilogue: dst[r, cols[k] or k] = T(src[r, k]) for r < rows, k < width (src is the
// accumulator, float or double; cols null = contiguous).  With cols in aligned runs of `run`,
// each run is one contiguous conversion.
template <typename T, typename A>
void store_cols(const A* src, int64_t lds, const int64_t* cols, int64_t run, int64_t rows, int64_t width, T* dst,
                int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    const A* s = src + r * lds;
    T* d = dst + r * ldd;
    if (!cols) {
      convert_row(s, d, width);
    } else if (run > 1) {
      for (int64_t k = 0; k < width; k += run) convert_row(s + k, d + cols[k], std::min(run, width - k));
    } else {
      for (int64_t k = 0; k < width; ++k) d[cols[k]] = static_cast<T>(s[k]);
    }
  }
}

// A (rows, cols) activation with unit column stride (any row stride >= cols).
Tensor rows_major(const Tensor& t) {
  return (t.dim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1) && t.stride(0) >= std::max<int64_t>(t.size(1), 1))
             ? t
             : t.contiguous();
}

// ---------------------------------------------------------------------- GEMM engines
// Every engine computes, row-major, C (M x N, ldc, float or double) = [C +] A (M x K, lda) @ B,
// with B in the engine's layout, made by prepare_b from a row-major (K x N) matrix:
//  * float32: B row-major (K x N): cpublas::brgemm (oneDNN ukernel; BLAS sgemm fallback inside).
//  * bfloat16 / float16: cpublas::brgemm with float accumulation.  Where oneDNN can pack B
//    (cpublas::could_pack: AMX) and K is even, B is packed once per call into the VNNI layout
//    and the AMX ukernel runs; otherwise B stays row-major and cpublas runs its own GEMM
//    (MKL's bf16 / fp16 GEMMs).
//  * float64: a plain cache-friendly loop (float64 is the reference / gradcheck dtype).
template <typename T>
struct Engine {
  static constexpr bool kLow = std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>;
  // oneDNN's packed B takes leading dimensions 16, 32, 48 or 64 only: a packed B is a sequence
  // of N blocks of kVnniN columns (the last one's leading dimension rounded up to 16), each
  // (K x kVnniN) in VNNI layout, K even.
  static constexpr int64_t kVnniN = 64;
  bool vnni = false;

  explicit Engine(int64_t K) {
    if constexpr (kLow) vnni = K % 2 == 0 && amx_packs(c10::CppTypeToScalarType<T>::value);
    (void)K;
  }

  // Without VNNI the engine reads B row-major: the caller may use a row-major B in place.
  bool needs_prepare() const { return vnni; }
  // Elements of a prepared (K x N) B, and its leading dimension (row-major layouts: padded).
  int64_t b_ld(int64_t N) const { return vnni ? kVnniN : pad_ld<T>(N); }
  int64_t b_size(int64_t K, int64_t N) const { return vnni ? ceil_div(N, kVnniN) * K * kVnniN : K * b_ld(N); }

  // dst (engine layout, b_ld(N)) from src row-major (K x N, ld lds).
  void prepare_b(const T* src, int64_t lds, int64_t K, int64_t N, T* dst) const {
    if (vnni) {
      constexpr auto dt = c10::CppTypeToScalarType<T>::value;
      for (int64_t n0 = 0; n0 < N; n0 += kVnniN) {
        const int64_t w = std::min(kVnniN, N - n0);
        cpublas::pack(K, w, lds, ceil_div(w, 16) * 16, dt, dt, src + n0, dst + (n0 / kVnniN) * K * kVnniN);
      }
    } else {
      const int64_t ldd = b_ld(N);
      for (int64_t k = 0; k < K; ++k) std::memcpy(dst + k * ldd, src + k * lds, sizeof(T) * N);
    }
  }

  // dst (engine layout) from src^T, src row-major (N x K, ld lds): B = src^T without a
  // transposed copy.  In the VNNI layout a B element pair (k, k+1) of column n is the adjacent
  // pair src[n, k], src[n, k+1], so packing src^T is a transpose of 32-bit words (each a pair).
  void prepare_b_transposed(const T* src, int64_t lds, int64_t K, int64_t N, T* dst, Scratch& big) const {
    if constexpr (kLow) {
      if (vnni) {
        static_assert(sizeof(T) == 2, "16-bit types");
        const int64_t Kp = K / 2;  // K is even for VNNI
        for (int64_t n0 = 0; n0 < N; n0 += kVnniN) {
          const int64_t w = std::min(kVnniN, N - n0), ldw = ceil_div(w, 16) * 16;  // ld in pairs
          float* d = reinterpret_cast<float*>(dst + (n0 / kVnniN) * K * kVnniN);
          transpose_f32(reinterpret_cast<const float*>(src + n0 * lds), lds / 2, d, ldw, w, Kp);
          if (ldw > w)
            for (int64_t k = 0; k < Kp; ++k) std::fill(d + k * ldw + w, d + (k + 1) * ldw, 0.f);
        }
        return;
      }
    }
    T* t = dst;  // row-major B: transpose straight into it
    const int64_t ldt = b_ld(N);
    if constexpr (std::is_same_v<T, float>) {
      transpose_f32(src, lds, t, ldt, N, K);
    } else {
      transpose_scalar(src, lds, t, ldt, N, K);
    }
    (void)big;
  }

  // C (M x N, ldc) = [C +] A (M x K, lda) @ B (engine layout; row-major with ldb if not VNNI).
  void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, acc_t<T>* C,
            int64_t ldc, bool add) const {
    if constexpr (std::is_same_v<T, double>) {
      for (int64_t r = 0; r < M; ++r) {
        double* c = C + r * ldc;
        if (!add) std::fill(c, c + N, 0.0);
        for (int64_t k = 0; k < K; ++k) {
          const double av = A[r * lda + k];
          const double* b = B + k * ldb;
          for (int64_t j = 0; j < N; ++j) c[j] += av * b[j];
        }
      }
    } else if constexpr (std::is_same_v<T, float>) {
      // Blocked over K and N (tiles chosen on a 2-core EPYC and Xeon at 4096 x 4096).
      const int64_t KB = std::min(kKBlock, K), nb = f32_n_block();
      for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int64_t kw = std::min(KB, K - k0);
        for (int64_t n0 = 0; n0 < N; n0 += nb)
          cpublas::brgemm(M, std::min(nb, N - n0), kw, lda, ldb, ldc, add || k0 > 0, A + k0, B + k0 * ldb + n0,
                          C + n0, false);
      }
    } else if (vnni) {
      for (int64_t n0 = 0; n0 < N; n0 += kVnniN) {
        const int64_t w = std::min(kVnniN, N - n0);
        cpublas::brgemm(M, w, K, lda, ceil_div(w, 16) * 16, ldc, add, A, B + (n0 / kVnniN) * K * kVnniN, C + n0, true);
      }
    } else {
      cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, false);
    }
  }

  void release() const {
    if constexpr (!std::is_same_v<T, double>) cpublas::brgemm_release(vnni);
  }
};

// --------------------------------------------------------- grouped gather GEMM (fwd, dX)
// out[:, O(g*N + j)] = sum_k a[:, I(g*K + k)] * B_g[k, j] (+ bias[O(g*N + j)])
template <typename T>
struct Grouped {
  const T* a;            // (T, G*K) rows, row stride lda
  int64_t lda;
  const int64_t* aidx;   // (G*K,) or null
  int64_t a_run;
  const T* b;            // B_g at b + g*sgb, in the engine's layout with leading dimension ldb
  int64_t ldb, sgb;
  const int64_t* oidx;   // (G*N,) or null
  int64_t o_run;
  const T* bias;         // (G*N,) feature order, or null
  T* out;                // (T, G*N) contiguous
  int64_t T_, G, K, N;
  Act act = Act::kNone;  // applied to the accumulator before the store (csrc/activation.h)
};

// Items: (token block, chunk of groups).  The number of chunks grows only when there are too
// few token blocks to keep kMinItems items, and stays 1 (all groups in one item) when the
// outputs are scattered (see grouped_gemm).
struct Split {
  int64_t n_tb, TB, n_gc, GC;
};

Split token_split(int64_t T, int64_t G, int64_t TB, bool all_groups) {
  Split sp;
  sp.TB = TB;
  sp.n_tb = ceil_div(T, TB);
  sp.n_gc = all_groups ? 1 : std::min(G, ceil_div(kMinItems, std::max<int64_t>(sp.n_tb, 1)));
  sp.GC = ceil_div(G, sp.n_gc);
  sp.n_gc = ceil_div(G, sp.GC);
  return sp;
}

// The inverse of a permutation, as the positions to read an output row from: out[r, k] =
// acc[r, inv[k]].  With aligned runs of `run`, one entry per run.
std::vector<int64_t> inverse_runs(const int64_t* idx, int64_t n, int64_t run) {
  std::vector<int64_t> inv(ceil_div(n, run));
  for (int64_t j = 0; j < n; j += run) inv[idx[j] / run] = j;
  return inv;
}

// Epilogue of a scattered output: out[r, k] = T(acc[r, inv(k)]) for a token block, every row
// written once, left to right (reads scattered within an accumulator row that stays in L1,
// writes sequential).
template <typename T, typename Acc>
void unpermute_rows(const Acc* acc, int64_t ldc, const std::vector<int64_t>& inv, int64_t run, int64_t rows,
                    int64_t n, T* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const Acc* s = acc + r * ldc;
    T* d = out + r * ldo;
    if (run > 1) {
      for (int64_t k = 0; k < n; k += run) convert_row(s + inv[k / run], d + k, std::min(run, n - k));
    } else {
      for (int64_t k = 0; k < n; ++k) d[k] = static_cast<T>(s[inv[k]]);
    }
  }
}

template <typename T>
void grouped_gemm(const Grouped<T>& p, const Engine<T>& eng) {
  using Acc = acc_t<T>;
  const int64_t ldo = p.G * p.N;
  // A problem small enough to run on one thread fits in L2 whole: one token block per group
  // (fewer, larger GEMM calls); larger problems use blocks sized for cache reuse.
  const double flops = 2.0 * p.T_ * p.G * p.K * p.N;
  int64_t TB = flops < kParallelMinFlops ? std::min<int64_t>(p.T_, kSmallTokBlock)
                                         : (eng.vnni ? kVnniTokBlock : kTokBlock);
  // (with all groups in one item, smaller token blocks keep enough items for the threads)
  if (p.oidx && flops >= kParallelMinFlops) TB = std::min(TB, std::max<int64_t>(16, ceil_div(ceil_div(p.T_, 8), 16) * 16));
  // Scattered outputs: one item computes every group of its token block into a group-ordered
  // accumulator and then writes each output row once, in feature order, through the inverse
  // map.  (Scattering group by group from separate items made every item touch every cache
  // line of the token block's output rows: measured 2x slower grad-input.)
  const Split sp = token_split(p.T_, p.G, TB, p.oidx != nullptr);
  const std::vector<int64_t> inv = p.oidx ? inverse_runs(p.oidx, ldo, p.o_run) : std::vector<int64_t>();
  // float32 / float64 with outputs in place: the accumulator is the output itself, unless its
  // row stride is a multiple of 1 KiB (rows of C on a few cache sets: 2x slower GEMMs).
  const bool direct = std::is_same_v<T, Acc> && !p.oidx && (ldo * int64_t(sizeof(Acc))) % 1024 != 0;
  const int64_t ldcb = pad_ld<Acc>(sp.GC * p.N);
  const int64_t ldp = pad_ld<T>(sp.GC * p.K);
  // The A operand read in place only if its row stride is harmless; else packed like a gather.
  const bool pack_a = p.aidx || (p.lda * int64_t(sizeof(T))) % 1024 == 0;
  run_items(sp.n_tb * sp.n_gc, flops, [&](int64_t it) {
    Scratch big_panel, big_c;
    const int64_t t0 = (it / sp.n_gc) * sp.TB, g0 = (it % sp.n_gc) * sp.GC;
    const int64_t rows = std::min(sp.TB, p.T_ - t0), gn = std::min(sp.GC, p.G - g0);
    const T* A0;  // (rows, gn*K) in group order
    int64_t lda;
    if (pack_a) {
      T* panel = scratch<T>(kSlotPanel, sp.TB * ldp, big_panel);
      if (p.aidx) {
        gather_cols(p.a + t0 * p.lda, p.lda, p.aidx + g0 * p.K, rows, gn * p.K, p.a_run, panel, ldp);
      } else {
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(panel + r * ldp, p.a + (t0 + r) * p.lda + g0 * p.K, sizeof(T) * gn * p.K);
      }
      A0 = panel;
      lda = ldp;
    } else {
      A0 = p.a + t0 * p.lda + g0 * p.K;
      lda = p.lda;
    }
    Acc* cbuf = direct ? nullptr : scratch<Acc>(kSlotC, sp.TB * ldcb, big_c);
    for (int64_t g = g0; g < g0 + gn; ++g) {
      // the accumulator: the output itself, this group's columns of the group-ordered buffer
      // (scattered outputs), or a per-group buffer
      Acc* C = direct ? reinterpret_cast<Acc*>(p.out + t0 * ldo + g * p.N) : cbuf + (p.oidx ? (g - g0) * p.N : 0);
      const int64_t ldc = direct ? ldo : ldcb;
      if (p.bias) {  // the bias is the GEMM's initial C (in group order)
        const int64_t* ocols = p.oidx ? p.oidx + g * p.N : nullptr;
        for (int64_t j = 0; j < p.N; ++j) C[j] = static_cast<Acc>(p.bias[ocols ? ocols[j] : g * p.N + j]);
        for (int64_t r = 1; r < rows; ++r) std::memcpy(C + r * ldc, C, sizeof(Acc) * p.N);
      }
      eng.gemm(rows, p.N, p.K, A0 + (g - g0) * p.K, lda, p.b + g * p.sgb, p.ldb, C, ldc, p.bias != nullptr);
      if (!p.oidx) act_rows(C, ldc, rows, p.N, p.act);  // (the tile is still in cache)
      if (!direct && !p.oidx) store_cols(C, ldc, nullptr, 1, rows, p.N, p.out + t0 * ldo + g * p.N, ldo);
    }
    if (p.oidx) act_rows(cbuf, ldcb, rows, gn * p.N, p.act);
    if (p.oidx) unpermute_rows(cbuf, ldcb, inv, p.o_run, rows, ldo, p.out + t0 * ldo, ldo);
    eng.release();
  });
}

// B_g for all groups in the engine's layout, in scratch (or in `into`: G * b_size(K, N)
// elements): from V (G, R, C) contiguous, either
// V_g itself (K x N = R x C) or, with `transposed`, V_g^T (K x N = C x R).  Returns B with its
// group stride and leading dimension, or V itself where nothing needs preparing.
template <typename T>
const T* prepare_groups(const T* v, int64_t G, int64_t R, int64_t C, bool transposed, const Engine<T>& eng,
                        int64_t& ldb, int64_t& sgb, Scratch& big, T* into = nullptr) {
  const int64_t K = transposed ? C : R, N = transposed ? R : C;
  if (!transposed && !eng.needs_prepare() && (N * int64_t(sizeof(T))) % 1024 != 0) {
    ldb = N;  // V_g read in place
    sgb = K * N;
    return v;
  }
  ldb = eng.b_ld(N);
  sgb = eng.b_size(K, N);
  T* out = into ? into : scratch<T>(kSlotVT, G * sgb, big);
  run_items(G, pass_flops(double(G) * R * C), [&](int64_t g) {
    Scratch big_t;
    const T* src = v + g * R * C;
    if (transposed) {
      eng.prepare_b_transposed(src, C, K, N, out + g * sgb, big_t);
    } else {
      eng.prepare_b(src, C, K, N, out + g * sgb);
    }
  });
  return out;
}

// float32 forward for few tokens, transposed: Y_g^T (a x T) = V_g (a x c) @ X_g^T (c x T).
// V is read in place (no V^T copy, which dominates when T is small); X^T in group order is
// built once (gather + transpose of a (T, n) activation), each item (group, block of outputs)
// computes its Y^T block in a thread-local buffer initialised with the bias and writes it out
// transposed.  Scattered outputs (out_index) go through a group-ordered Y in scratch and one
// row-wise scatter pass: writing the Y^T block straight through out_index touched a new cache
// line per element (BERT FFN 768 -> 3072, T = 128, G = 4, 1 thread on the Zen 4: 4.5 ms
// against 1.7 ms for the bmm bound; with the extra pass 1.9 ms).
void linear_few_tokens_f32(const float* x, int64_t ldx, const IndexArg& in, const float* v, const IndexArg& out,
                           const float* bias, float* y, int64_t T, int64_t G, int64_t a, int64_t c, Act act) {
  const Engine<float> eng(c);
  const int64_t n = G * c, ldo = G * a, ldt = pad_ld<float>(T);
  Scratch big_xt;
  float* xt = scratch<float>(kSlotX, n * ldt, big_xt);  // X^T in group order: (n, ldt)
  const int64_t* aidx = in.data();
  constexpr int64_t FB = 64, TBK = 64;
  run_items(ceil_div(n, FB), pass_flops(double(T) * n), [&](int64_t it) {
    Scratch big;
    const int64_t f0 = it * FB, fw = std::min(FB, n - f0);
    float* tmp = scratch<float>(kSlotPanel, TBK * FB, big);
    for (int64_t t0 = 0; t0 < T; t0 += TBK) {
      const int64_t tw = std::min(TBK, T - t0);
      const float* src = x + t0 * ldx + f0;
      int64_t lds = ldx;
      if (aidx) {
        gather_cols(x + t0 * ldx, ldx, aidx + f0, tw, fw, 1, tmp, FB);
        src = tmp;
        lds = FB;
      }
      transpose_f32(src, lds, xt + f0 * ldt + t0, ldt, tw, fw);
    }
  });
  const int64_t* oidx = out.data();
  Scratch big_y;
  // Y in group order (rows padded off multiples of 1 KiB, as the transposed writes need)
  const int64_t ldg = oidx ? pad_ld<float>(ldo) : ldo;
  float* yg = oidx ? scratch<float>(kSlotDY, T * ldg, big_y) : y;
  const int64_t n_rb = std::max<int64_t>(1, std::min(ceil_div(kMinItems, G), a / 64));
  const int64_t RB = ceil_div(a, n_rb);
  run_items(G * n_rb, 2.0 * T * G * a * c, [&](int64_t it) {
    Scratch big;
    const int64_t g = it / n_rb, j0 = (it % n_rb) * RB, jw = std::min(RB, a - j0);
    if (jw <= 0) return;
    float* C = scratch<float>(kSlotC, RB * ldt, big);
    const int64_t* cols = oidx ? oidx + g * a + j0 : nullptr;  // output features of this block
    for (int64_t i = 0; i < jw; ++i) {
      const float b0 = bias ? bias[cols ? cols[i] : g * a + j0 + i] : 0.f;
      std::fill(C + i * ldt, C + i * ldt + T, b0);
    }
    eng.gemm(jw, T, c, v + (g * a + j0) * c, c, xt + g * c * ldt, ldt, C, ldt, true);
    act_rows(C, ldt, jw, T, act);
    transpose_f32(C, ldt, yg + g * a + j0, ldg, jw, T);
    eng.release();
  });
  if (!oidx) return;
  const std::vector<int64_t> inv = inverse_runs(oidx, ldo, out.run);
  constexpr int64_t RBT = 16;
  run_items(ceil_div(T, RBT), pass_flops(double(T) * ldo), [&](int64_t it) {
    const int64_t t0 = it * RBT;
    unpermute_rows(yg + t0 * ldg, ldg, inv, out.run, std::min(RBT, T - t0), ldo, y + t0 * ldo, ldo);
  });
}

// dV rows per item: enough items in all, at least kMinRows rows (or the whole group).
int64_t dv_row_blocks(int64_t G, int64_t A) {
  return std::max<int64_t>(1, std::min(ceil_div(kMinItems, G), A / kMinRows));
}

// Items (group, block of dV rows); per item and token chunk of kTokChunk,
//   acc[rows] += dY[t, R_g(rows)]^T @ X[t, C_g]
// with the dY^T panel transposed per item and X's chunk from the group-major pack (in the
// engine's layout, prepared once for all items).  Every dV element is reduced over all tokens
// by one item, in a fixed order, in float (double); low precision is rounded once.
template <typename T>
void grad_values(const T* dy, int64_t ldy, const T* x, int64_t ldx, const IndexArg& in, T* dv, int64_t Tn, int64_t G,
                 int64_t A, int64_t C) {
  using Acc = acc_t<T>;
  const int64_t TK = kTokChunk, n_chunks = ceil_div(Tn, TK);
  // One engine per chunk length (VNNI needs an even K): the full chunks and the tail.
  const Engine<T> eng(TK), eng_tail(Tn - (n_chunks - 1) * TK);
  Scratch big_x, big_b;
  const int64_t ldp = pad_ld<T>(C);
  const T* xp = pack_groups(x, ldx, Tn, G, C, in, ldp, kSlotX, big_x);
  // B blocks (g, chunk): row-major in the pack (ldb = ldp), or prepared (packed) per chunk
  const T* bp = xp;
  int64_t ldb = ldp, s_chunk = TK * ldp, s_group = Tn * ldp;
  if (eng.needs_prepare() || eng_tail.needs_prepare()) {
    s_chunk = std::max(eng.b_size(TK, C), TK * ldp);  // (an odd tail is stored row-major)
    s_group = n_chunks * s_chunk;
    T* packed = scratch<T>(kSlotVT, G * s_group, big_b);
    run_items(G * n_chunks, pass_flops(double(Tn) * G * C), [&](int64_t it) {
      const int64_t g = it / n_chunks, k = it % n_chunks, t0 = k * TK, tw = std::min(TK, Tn - t0);
      const Engine<T>& e = tw == TK ? eng : eng_tail;
      if (e.needs_prepare()) {
        e.prepare_b(xp + (g * Tn + t0) * ldp, ldp, tw, C, packed + g * s_group + k * s_chunk);
      } else {  // an odd tail: row-major
        for (int64_t t = 0; t < tw; ++t)
          std::memcpy(packed + g * s_group + k * s_chunk + t * ldp, xp + (g * Tn + t0 + t) * ldp, sizeof(T) * C);
      }
    });
    bp = packed;
  }
  const int64_t ldt = pad_ld<T>(TK);
  const int64_t n_rb = dv_row_blocks(G, A), RB = ceil_div(A, n_rb);
  run_items(G * n_rb, 2.0 * Tn * G * A * C, [&](int64_t it) {
    Scratch big_t, big_c;
    const int64_t g = it / n_rb, a0 = (it % n_rb) * RB, aw = std::min(RB, A - a0);
    if (aw <= 0) return;
    T* dyt = scratch<T>(kSlotDYT, RB * ldt, big_t);
    T* out = dv + (g * A + a0) * C;
    // (the accumulator is dV itself unless its rows are a multiple of 1 KiB apart)
    const bool direct = std::is_same_v<T, Acc> && (C * int64_t(sizeof(Acc))) % 1024 != 0;
    const int64_t ldc = direct ? C : pad_ld<Acc>(C);
    Acc* acc = direct ? reinterpret_cast<Acc*>(out) : scratch<Acc>(kSlotC, aw * ldc, big_c);
    for (int64_t t0 = 0; t0 < Tn; t0 += TK) {
      const int64_t tw = std::min(TK, Tn - t0);
      if constexpr (std::is_same_v<T, float>) {
        transpose_f32(dy + t0 * ldy + g * A + a0, ldy, dyt, ldt, tw, aw);  // (aw, tw)
      } else {
        transpose_scalar(dy + t0 * ldy + g * A + a0, ldy, dyt, ldt, tw, aw);
      }
      (tw == TK ? eng : eng_tail).gemm(aw, C, tw, dyt, ldt, bp + g * s_group + (t0 / TK) * s_chunk, ldb, acc, ldc,
                                       t0 > 0);
    }
    if (!direct) store_cols<T, Acc>(acc, ldc, nullptr, 1, aw, C, out, C);
    eng.release();
  });
}

// ----------------------------------------------------------------------- dispatchers
template <typename T>
Tensor linear_typed(const Tensor& x, const Tensor& values, const IndexArg& in, const IndexArg& out,
                    const Tensor& bias, Act act) {
  const int64_t Tn = x.size(0), G = values.size(0), a = values.size(1), c = values.size(2);
  Tensor y = new_output({Tn, G * a}, x.options());
  if (Tn == 0) return y;
  const Tensor v = values.contiguous();
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  if constexpr (std::is_same_v<T, float>) {
    // B_g = V_g^T costs a pass over V; X^T and Y^T cost passes over the activations: pick the
    // smaller (few tokens -> the transposed formulation, V read in place).
    if (Tn * G * (a + c) < G * a * c) {
      linear_few_tokens_f32(x.data_ptr<float>(), x.stride(0), in, v.data_ptr<float>(), out, bp, y.data_ptr<float>(),
                            Tn, G, a, c, act);
      return y;
    }
  }
  const Engine<T> eng(c);
  Scratch big;
  int64_t ldb, sgb;
  const T* b;  // B_g = V_g^T
  // Under sao_kernels.frozen_weights(): from the weight cache (built on a miss).
  const Tensor kept = cached_layout(v, Layout::kBrgemmVT, size_t(G * eng.b_size(c, a)) * sizeof(T), [&](void* dst) {
    prepare_groups(v.data_ptr<T>(), G, a, c, /*transposed=*/true, eng, ldb, sgb, big, static_cast<T*>(dst));
  });
  if (kept.defined()) {
    ldb = eng.b_ld(a), sgb = eng.b_size(c, a), b = static_cast<const T*>(kept.data_ptr());
  } else {
    b = prepare_groups(v.data_ptr<T>(), G, a, c, /*transposed=*/true, eng, ldb, sgb, big);
  }
  grouped_gemm(Grouped<T>{x.data_ptr<T>(), x.stride(0), in.data(), in.run, b, ldb, sgb, out.data(), out.run, bp,
                          y.data_ptr<T>(), Tn, G, c, a, act},
               eng);
  return y;
}

template <typename T>
Tensor grad_input_typed(const Tensor& dy, const Tensor& values, const IndexArg& in, const IndexArg& out) {
  const int64_t Tn = dy.size(0), G = values.size(0), a = values.size(1), c = values.size(2);
  Tensor dx = new_output({Tn, G * c}, dy.options());
  if (Tn == 0) return dx;
  const Tensor v = values.contiguous();
  const Engine<T> eng(a);
  Scratch big;
  int64_t ldb, sgb;
  const T* b = prepare_groups(v.data_ptr<T>(), G, a, c, /*transposed=*/false, eng, ldb, sgb, big);  // B_g = V_g
  grouped_gemm(Grouped<T>{dy.data_ptr<T>(), dy.stride(0), out.data(), out.run, b, ldb, sgb, in.data(), in.run, nullptr,
                          dx.data_ptr<T>(), Tn, G, a, c},
               eng);
  return dx;
}

template <typename T>
Tensor grad_values_typed(const Tensor& dy_, const Tensor& x_, const IndexArg& in, const IndexArg& out, int64_t G) {
  const int64_t Tn = dy_.size(0), m = dy_.size(1), n = x_.size(1), A = m / G, C = n / G;
  Tensor dv = new_output({G, A, C}, x_.options());
  if (Tn == 0) return dv.zero_();
  const Tensor dyr = rows_major(dy_), xr = rows_major(x_);
  // dY in group order (its out_index is None for the layers' default contiguous output groups)
  Scratch big_dy;
  const T* dy = dyr.data_ptr<T>();
  int64_t ldy = dyr.stride(0);
  if (out.index.defined()) {
    const int64_t ldp = pad_ld<T>(m);
    dy = pack_groups(dy, ldy, Tn, 1, m, out, ldp, kSlotDY, big_dy);
    ldy = ldp;
  }
  grad_values<T>(dy, ldy, xr.data_ptr<T>(), xr.stride(0), in, dv.data_ptr<T>(), Tn, G, A, C);
  return dv;
}

#define SAO_DISPATCH(dtype, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, NAME, __VA_ARGS__)

}  // namespace

// ------------------------------------------------------------------------- the ops
// The kernels detach their inputs (the public ops call them below autograd).
// With `act` tanh / ReLU / GELU, the activation of the output: in the epilogue of the brgemm kernels
// and the bf16 micro-kernel (on the float accumulator, before the one rounding), after the
// product in the decode and fp16 bmm engines (their outputs are rounded to the dtype first, as
// the unfused layers round them).
Tensor linear_native(const Tensor& x_, const Tensor& values_, const IndexArg& in, const IndexArg& out,
                     const std::optional<Tensor>& bias, Act act) {
  // values is not detached: the weight cache reads its version counter, and a detach below
  // autograd makes the alias a counter of its own.
  const Tensor x = rows_major(x_.detach()), &values = values_;
  const Tensor b = (bias.has_value() && bias->defined()) ? bias->detach().contiguous() : Tensor();
  const int64_t Tn = x.size(0);
  const auto after = [act](Tensor y) {
    if (act == Act::kTanh) y.tanh_();
    if (act == Act::kRelu) y.relu_();
    if (act == Act::kGelu) at::gelu_(y);
    return y;
  };
  if (decode_applies(Tn, x.scalar_type())) return after(linear_decode(x, values.contiguous(), in, out, b));
  if (Tn > 0 && lowp_uses_dot(x.scalar_type())) return linear_bf16_dot(x, values.contiguous(), in, out, b, act);
  if (Tn > 0 && lowp_uses_bmm(x.scalar_type())) return after(linear_bmm(x, values.contiguous(), in, out, b));
  Tensor y;
  SAO_DISPATCH(x.scalar_type(), "sao_linear_native", [&] { y = linear_typed<scalar_t>(x, values, in, out, b, act); });
  return y;
}

Tensor linear_grad_input_native(const Tensor& grad_out_, const Tensor& values_, const IndexArg& in,
                                const IndexArg& out) {
  const Tensor dy = rows_major(grad_out_.detach()), values = values_.detach();
  if (dy.size(0) > 0 && lowp_uses_dot(dy.scalar_type())) return grad_input_bf16_dot(dy, values.contiguous(), in, out);
  if (dy.size(0) > 0 && lowp_uses_bmm(dy.scalar_type())) return grad_input_bmm(dy, values.contiguous(), in, out);
  Tensor dx;
  SAO_DISPATCH(dy.scalar_type(), "sao_linear_grad_input_native",
               [&] { dx = grad_input_typed<scalar_t>(dy, values, in, out); });
  return dx;
}

Tensor linear_grad_values_native(const Tensor& grad_out_, const Tensor& x_, const IndexArg& in, const IndexArg& out,
                                 int64_t groups, Tensor* grad_bias) {
  const Tensor dy = grad_out_.detach(), x = x_.detach();
  if (x.size(0) > 0 && lowp_uses_dot(x.scalar_type()))
    return grad_values_bf16_dot(rows_major(dy), rows_major(x), in, out, groups, grad_bias);
  if (grad_bias) *grad_bias = dy.sum(0);
  if (x.size(0) > 0 && lowp_uses_bmm(x.scalar_type()))
    return grad_values_bmm(rows_major(dy), rows_major(x), in, out, groups);
  Tensor dv;
  SAO_DISPATCH(x.scalar_type(), "sao_linear_grad_values_native",
               [&] { dv = grad_values_typed<scalar_t>(dy, x, in, out, groups); });
  return dv;
}

std::string native_build_info() {
  std::string s = "sao_kernels native CPU kernels; float32 GEMM: ";
  s += "at::native::cpublas::brgemm (oneDNN ukernel or BLAS fallback)";
  for (const auto& [dt, name] : {std::pair{at::kBFloat16, "bfloat16"}, std::pair{at::kHalf, "float16"}}) {
    s += std::string("; ") + name + ": ";
    if (lowp_uses_dot(dt)) {
      s += "AVX512_BF16 micro-kernel (forward at T > 16)";
    } else if (lowp_uses_bmm(dt)) {
      s += "oneDNN at::bmm on packed group blocks";
    } else if (amx_packs(dt)) {
      s += "brgemm, VNNI-packed B (AMX)";
    } else {
      s += "brgemm, row-major B (cpublas GEMM fallback)";
    }
  }
  s += "; " + decode_info();
  s += "; float64: loops; transposes: ";
#if SAO_X86
  s += has_avx2() ? "AVX2" : "scalar";
#else
  s += "scalar";
#endif
  s += std::string("; CPU tier: ") + isa_name(cpu_isa()) + " (hardware " + isa_name(hardware_isa()) + ")";
  s += "; threads: at::parallel_for (" + std::to_string(at::get_num_threads()) + "), problems under " +
       std::to_string(int64_t(kParallelMinFlops)) + " flops on the calling thread";
  return s;
}

}  // namespace sao
