// What the native CPU kernels' files share (native_kernels.cpp, lowp_bmm.cpp, decode.cpp):
// per-thread scratch, the work loop, gathers and packs, CPU features.  Internal: not part of
// the library's interface (sao_kernels.h).
#pragma once

#include "sao_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SAO_X86 1
#else
#define SAO_X86 0
#endif

namespace sao {
namespace detail {

constexpr double kParallelMinFlops = 4e6;  // below: no parallel region (about 20-40 us of work)
// Split groups / output panels / dV rows until there are this many items (a constant, never
// the thread count: the work split, and so the results, do not depend on the threads).
constexpr int64_t kMinItems = 16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ---------------------------------------------------------------------------- scratch
// Temporaries (V^T, group-ordered activations, per-worker panels and accumulators) live in
// per-thread buffers kept between calls: a fresh multi-MiB allocation is served by mmap and
// pays a page fault per 4 KiB page on first touch (measured ~3.5 ms per 8 MiB on the test VMs,
// as much as the gather itself).  Each buffer grows to the largest request up to kScratchMax
// and is never shrunk; larger requests are allocated per call.
constexpr size_t kScratchMax = size_t(64) << 20;
enum Slot { kSlotVT = 0, kSlotX, kSlotDY, kSlotPanel, kSlotC, kSlotDYT, kNumSlots };

struct ScratchBuf {
  void* p = nullptr;
  size_t cap = 0;
  ~ScratchBuf() { std::free(p); }
};

struct Scratch {  // a per-call allocation for requests above kScratchMax
  void* p = nullptr;
  ~Scratch() { std::free(p); }
};

inline void* thread_scratch(int slot, size_t bytes, Scratch& big) {
  bytes = std::max<size_t>(bytes, 64);
  if (bytes > kScratchMax) {
    big.p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    TORCH_CHECK(big.p != nullptr, "sao_kernels: out of memory for a ", bytes, "-byte scratch buffer");
    return big.p;
  }
  thread_local ScratchBuf bufs[kNumSlots];
  ScratchBuf& b = bufs[slot];
  if (b.cap < bytes) {
    std::free(b.p);
    b.cap = (bytes + 4095) / 4096 * 4096;
    b.p = std::aligned_alloc(64, b.cap);
    TORCH_CHECK(b.p != nullptr, "sao_kernels: out of memory for a ", b.cap, "-byte scratch buffer");
  }
  return b.p;
}

template <typename T>
T* scratch(int slot, int64_t count, Scratch& big) {
  return static_cast<T*>(thread_scratch(slot, size_t(count) * sizeof(T), big));
}

// Leading dimension for a packed panel of width w: a multiple of 64 bytes that is not a
// multiple of 1 KiB (power-of-two row strides map a column of the panel onto a few cache sets;
// measured 2.4x slower brgemm on a Xeon with B rows 16 KiB apart).
template <typename T>
int64_t pad_ld(int64_t w) {
  const int64_t q = 64 / sizeof(T);
  int64_t p = std::max<int64_t>(q, ceil_div(w, q) * q);
  return (p * int64_t(sizeof(T))) % 1024 == 0 ? p + q : p;
}

// A fresh output: uninitialised, or NaN with SAO_KERNELS_POISON=1 (tests), so that any element
// a kernel fails to write shows up instead of stale memory.
inline Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
  const char* poison = std::getenv("SAO_KERNELS_POISON");
  if (poison && poison[0] == '1') t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// Runs f(i) for i in [0, n): on the calling thread when the problem is small (no parallel
// region), else inside one parallel region whose threads pull items from a shared counter.
// Either way the GEMM engines run single-threaded inside f (a parallel region disables nested
// BLAS / oneDNN threading; the serial path runs only problems too small for BLAS to thread).
template <typename F>
void run_items(int64_t n, double flops, const F& f) {
  if (n <= 0) return;
  if (n == 1 || flops < kParallelMinFlops || at::get_num_threads() == 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) f(i);
  });
}

// dst[r, k] = src[r, cols[k]] for r < rows, k < width.  run > 1: cols come in aligned runs of
// `run` consecutive features (verified by ops.cpp), copied with memcpy.
template <typename T>
void gather_cols(const T* src, int64_t lds, const int64_t* cols, int64_t rows, int64_t width, int64_t run, T* dst,
                 int64_t ldd) {
  if (run > 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = src + r * lds;
      T* d = dst + r * ldd;
      for (int64_t k = 0; k < width; k += run) std::memcpy(d + k, s + cols[k], sizeof(T) * std::min(run, width - k));
    }
    return;
  }
  // four rows per index load (the rows stay in L1 / L2; fewer loads per gathered element)
  int64_t r = 0;
  if constexpr (sizeof(T) == 2) {
    // 16-bit elements: 64 bits per store (4 elements assembled in a register).  The narrow
    // stores were the limit when the destination is not in cache (the group-ordered copy of a
    // 4 MiB bf16 activation, 4096 wide, G = 8, 512 tokens, one thread on the Zen 4, caches
    // flushed: 1.40 ms with 16-bit stores, 0.95 ms with 64-bit ones; 0.72 / 0.56 ms warm).
    // (float32, two per store: 1.88 -> 1.62 ms cold but 1.00 -> 1.12 ms warm, and its gathers
    // fill an L2-resident panel: kept at one element per store.)
    using U = uint16_t;
    constexpr int64_t E = 8 / sizeof(T);
    constexpr int S = 8 * sizeof(T);
    const int64_t wE = width - width % E;
    auto word = [&](const T* s, const int64_t* j) {  // E elements of s at columns j[0..E)
      uint64_t w = 0;
      for (int64_t e = 0; e < E; ++e) {
        U u;
        std::memcpy(&u, s + j[e], sizeof(U));
        w |= uint64_t(u) << (S * e);
      }
      return w;
    };
    for (; r + 4 <= rows; r += 4) {
      const T* s0 = src + r * lds;
      T* d0 = dst + r * ldd;
      for (int64_t k = 0; k < wE; k += E) {
        int64_t j[E];
        for (int64_t e = 0; e < E; ++e) j[e] = cols[k + e];
        for (int64_t q = 0; q < 4; ++q) {
          const uint64_t w = word(s0 + q * lds, j);
          std::memcpy(d0 + q * ldd + k, &w, sizeof(w));
        }
      }
      for (int64_t k = wE; k < width; ++k)
        for (int64_t q = 0; q < 4; ++q) d0[q * ldd + k] = s0[q * lds + cols[k]];
    }
  }
  for (; r + 4 <= rows; r += 4) {
    const T *s0 = src + r * lds, *s1 = s0 + lds, *s2 = s1 + lds, *s3 = s2 + lds;
    T *d0 = dst + r * ldd, *d1 = d0 + ldd, *d2 = d1 + ldd, *d3 = d2 + ldd;
    for (int64_t k = 0; k < width; ++k) {
      const int64_t j = cols[k];
      d0[k] = s0[j];
      d1[k] = s1[j];
      d2[k] = s2[j];
      d3[k] = s3[j];
    }
  }
  for (; r < rows; ++r) {
    const T* s = src + r * lds;
    T* d = dst + r * ldd;
    for (int64_t k = 0; k < width; ++k) d[k] = s[cols[k]];
  }
}

// X's columns in group order, group-major (G, T, ldp) in scratch: one pass over row blocks of X
// (the gather when in_index is set, else a copy).  Grad-values reduces over all tokens, so a
// group's operand is a whole column block; gathering it per group would read every cache line
// of X once per group, which costs more than this copy (and strided rows made brgemm slower).
template <typename T>
const T* pack_groups(const T* x, int64_t ldx, int64_t Tn, int64_t G, int64_t C, const IndexArg& in, int64_t ldp,
                     int slot, Scratch& big) {
  T* out = scratch<T>(slot, G * Tn * ldp, big);
  const int64_t* ip = in.data();
  const int64_t RB = 16;
  run_items(ceil_div(Tn, RB), 2.0 * Tn * G * C * 8, [&](int64_t it) {
    const int64_t r0 = it * RB, rows = std::min(RB, Tn - r0);
    for (int64_t g = 0; g < G; ++g) {
      T* d = out + (g * Tn + r0) * ldp;
      if (ip) {
        gather_cols(x + r0 * ldx, ldx, ip + g * C, rows, C, in.run, d, ldp);
      } else {
        for (int64_t r = 0; r < rows; ++r) std::memcpy(d + r * ldp, x + (r0 + r) * ldx + g * C, sizeof(T) * C);
      }
    }
  });
  return out;
}

// d_q[cols[k]] = s_q[k] for the four rows q < 4 (s_q = s + q * lds, d_q = d + q * ldd), k < W:
// four 16-bit elements per load, each index read once for the four rows.  Against one row at a
// time (scalar loads): 0.59 vs 0.88 ms with the source in cache, 0.69 vs 1.03 ms with caches
// flushed at G = 2, 1.38 vs 1.31 ms flushed at G = 8 (bf16, 512 x 4096, one thread, Zen 4).
template <typename T>
void scatter_4rows(const T* s, int64_t lds, const int64_t* cols, int64_t W, T* d, int64_t ldd) {
  static_assert(sizeof(T) == 2, "16-bit elements");
  const int64_t W4 = W - W % 4;
  for (int64_t k = 0; k < W4; k += 4) {
    const int64_t j0 = cols[k], j1 = cols[k + 1], j2 = cols[k + 2], j3 = cols[k + 3];
    for (int64_t q = 0; q < 4; ++q) {
      uint64_t w;
      std::memcpy(&w, s + q * lds + k, sizeof(w));
      T* dq = d + q * ldd;
      const uint16_t e0 = uint16_t(w), e1 = uint16_t(w >> 16), e2 = uint16_t(w >> 32), e3 = uint16_t(w >> 48);
      std::memcpy(dq + j0, &e0, 2);
      std::memcpy(dq + j1, &e1, 2);
      std::memcpy(dq + j2, &e2, 2);
      std::memcpy(dq + j3, &e3, 2);
    }
  }
  for (int64_t k = W4; k < W; ++k)
    for (int64_t q = 0; q < 4; ++q) d[q * ldd + cols[k]] = s[q * lds + k];
}

// The scatter of group-ordered results: dst (Tn, G*W)[t, idx(g*W + k)] = src (G, Tn, W)[g, t, k]
// for 16-bit T, each output row written by one item (lowp_bmm.cpp, bf16_dot.cpp).
template <typename T>
void unpack_groups(const T* src, int64_t G, int64_t Tn, int64_t W, const IndexArg& idx, const Tensor& dst) {
  T* out = dst.data_ptr<T>();
  const int64_t* ip = idx.data();
  const int64_t run = idx.run, ldd = G * W, RB = 16;
  run_items(ceil_div(Tn, RB), 2.0 * Tn * ldd * 8, [&](int64_t it) {
    const int64_t r0 = it * RB, r1 = std::min(Tn, r0 + RB);
    int64_t r = r0;
    if (run == 1)
      for (; r + 4 <= r1; r += 4)
        for (int64_t g = 0; g < G; ++g) scatter_4rows(src + (g * Tn + r) * W, W, ip + g * W, W, out + r * ldd, ldd);
    for (; r < r1; ++r) {
      T* d = out + r * ldd;
      for (int64_t g = 0; g < G; ++g) {
        const T* s = src + (g * Tn + r) * W;
        const int64_t* cols = ip + g * W;
        if (run > 1) {
          for (int64_t k = 0; k < W; k += run) std::memcpy(d + cols[k], s + k, sizeof(T) * std::min(run, W - k));
        } else {
          for (int64_t k = 0; k < W; ++k) d[cols[k]] = s[k];
        }
      }
    }
  });
}

// ------------------------------------------------------------------------ CPU features
// What the CPU has (cpuid via the compiler's builtins), for the kernels compiled with
// __attribute__((target)) and picked at run time, capped by the tier (cpu_tier.cpp:
// SAO_KERNELS_CPU_ISA), so that every tier can be run on one machine.
#if SAO_X86
inline bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes && isa_at_least(Isa::kAvx2);
}
inline bool has_avx512() {  // F + BW + VL (masked 16-bit loads)
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes && isa_at_least(Isa::kAvx512);
}
inline bool has_avx512_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl");
  return yes && isa_at_least(Isa::kAvx512Bf16);
}
inline bool has_avx512_fp16() {  // (Sapphire Rapids and later: above the avx512_bf16 tier)
  static const bool yes = __builtin_cpu_supports("avx512fp16");
  return yes && isa_at_least(Isa::kAvx512Bf16);
}
inline bool has_f16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  return yes && isa_at_least(Isa::kAvx2);
}
#endif

// ------------------------------------------------------------------ the other engines
// decode.cpp: the forward at T <= kDecodeMaxTokens (float32 / bfloat16 / float16), a GEMV that
// reads V once, in place.
constexpr int64_t kDecodeMaxTokens = 16;
bool decode_applies(int64_t T, at::ScalarType dtype);
Tensor linear_decode(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias);
std::string decode_info();

// lowp_bmm.cpp: bfloat16 / float16 products through oneDNN's at::bmm on packed group blocks,
// where the CPU runs oneDNN's low-precision matmul but not the AMX brgemm.
bool lowp_uses_bmm(at::ScalarType dtype);
Tensor linear_bmm(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias);
Tensor grad_input_bmm(const Tensor& dy, const Tensor& v, const IndexArg& in, const IndexArg& out);
Tensor grad_values_bmm(const Tensor& dy, const Tensor& x, const IndexArg& in, const IndexArg& out, int64_t G);
// The bfloat16 products' engine (the forward: T > kDecodeMaxTokens): our AVX512_BF16
// micro-kernel (bf16_dot.cpp) where the CPU has AVX512_BF16 and no AMX, unless
// SAO_KERNELS_LOWP_GEMM forces another.
bool lowp_uses_dot(at::ScalarType dtype);

// bf16_dot.cpp: that micro-kernel (bf16_dot_usable: the CPU, under the tier cap, has it).
bool bf16_dot_usable();
Tensor linear_bf16_dot(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias,
                       Act act);
Tensor grad_input_bf16_dot(const Tensor& dy, const Tensor& v, const IndexArg& in, const IndexArg& out);
Tensor grad_values_bf16_dot(const Tensor& dy, const Tensor& x, const IndexArg& in, const IndexArg& out, int64_t G);

}  // namespace detail
}  // namespace sao
