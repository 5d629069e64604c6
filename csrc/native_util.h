// What the native CPU kernels' files share (native_kernels.cpp, lowp_bmm.cpp, decode.cpp):
// per-thread scratch, the work loop, CPU features (the gathers and scatters: permute_cols.h).
// Internal: not part of the library's interface (sao_kernels.h).
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
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SAO_X86 1
#else
#define SAO_X86 0
#endif

namespace sao {
namespace detail {

constexpr double kParallelMinFlops = 4e6;  // below: no parallel region (about 20-40 us of work)
// What a pass that only moves data (a gather, scatter, pack or pair interleave) of n elements
// counts against kParallelMinFlops: parallel from 62.5 k elements (128 x 512 at T = 128).  At 16
// per element (parallel from 250 k) those passes ran on the calling thread in every product of
// a 512- to 1024-wide layer; 64 made them 4-15 % faster at two threads (bf16 512², T = 128:
// forward 78 -> 70 us, grad-values 75 -> 66 us; float32 grad-values 119 -> 105 us) and the
// 100-layer width-512 tanh MLP step 10-14 % (bf16) and 7 % (float32) faster, in-process A/B,
// AMD EPYC 2 threads, 2026-12-07; 3072-wide layers unchanged (parallel either way).
inline constexpr double pass_flops(double n) { return 64.0 * n; }
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
enum Slot { kSlotVT = 0, kSlotX, kSlotDY, kSlotPanel, kSlotC, kSlotDYT, kSlotWords, kNumSlots };

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

// The number of shares (threads) run_items(n, flops, f) splits its items into: 1 when it runs them
// on the calling thread.
inline int64_t item_shares(int64_t n, double flops) {
  if (n <= 1 || flops < kParallelMinFlops || at::get_num_threads() == 1 || at::in_parallel_region()) return 1;
  return std::min<int64_t>(n, at::get_num_threads());
}

// Runs f(i) for i in [0, n): on the calling thread when the problem is small (no parallel
// region), else inside one parallel region.  Either way the GEMM engines run single-threaded
// inside f (a parallel region disables nested BLAS / oneDNN threading; the serial path runs only
// problems too small for BLAS to thread).
//
// In the region, thread t owns the t-th contiguous share of the items and runs them in order;
// a thread done with its share then takes items left in the others' shares (one counter per
// share, so every item runs once).  Owning a share means a thread meets the same items (the same
// output rows, panels, groups) in every call, so the lines it writes are in its own caches the
// next time; it was one shared counter, which handed items to whichever thread came first.
// In one process, the two schedules alternating call by call (bf16, 4096², G = 8, T = 512, AMD
// EPYC, 2 threads, 2026-12-07; fraction of torch.bmm on pre-gathered blocks; the cross-core
// probe of bench/machine.py at ~1.5 = the fast level, ~5 = this VM's slow level):
//   * SAOLinear forwards of G = 2, 4, 8 interleaved with their bmm and nn.Linear (the tier
//     table's pattern, inference_mode): G = 8 0.91-0.92 -> 0.90-0.945 fast, 0.80-0.81 -> 0.92-0.93
//     slow; G = 4 +0-3 %, G = 2 +0-1 %.
//   * one op called again and again: forward 0.93-0.95 -> 0.97-0.985, grad-input 0.95-0.96 ->
//     0.97-0.99, grad-values 0.87-0.89 -> 0.91-0.935 (fast); most of that is the op's own lines
//     still in the same core's caches: with a 64 MiB copy before every call, +0.5-2 %.
// Taking from the others' shares keeps what the shared counter gave where one core is slower or
// busy (the contention case).
template <typename F>
void run_items(int64_t n, double flops, const F& f) {
  if (n <= 0) return;
  const int64_t nt = item_shares(n, flops);
  if (nt == 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  struct alignas(64) Share {  // a cache line each: the counters are written by their owners
    std::atomic<int64_t> next;
    int64_t end;
  };
  std::vector<Share> shares(nt);
  for (int64_t t = 0; t < nt; ++t) shares[t].next = n * t / nt, shares[t].end = n * (t + 1) / nt;
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t k = 0; k < nt; ++k) {  // its own share first, then the others' in turn
        Share& s = shares[(t + k) % nt];
        for (int64_t i = s.next.fetch_add(1); i < s.end; i = s.next.fetch_add(1)) f(i);
      }
  });
}

// Two lists of items (na of one kind, nb of another) in one run_items region, ordered so that
// thread t's share holds the t-th share of each list: where the next pass gives thread t the
// t-th share of the groups, the items that write a group's data run on the thread that reads it.
// f(true, i) runs item i < na of the first list, f(false, j) item j < nb of the second.
template <typename F>
void run_two_lists(int64_t na, int64_t nb, double flops, const F& f) {
  const int64_t n = na + nb, nt = item_shares(n, flops);
  std::vector<int64_t> order;  // i >= 0: item i of the first list; ~j: item j of the second
  order.reserve(n);
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t i = na * t / nt; i < na * (t + 1) / nt; ++i) order.push_back(i);
    for (int64_t j = nb * t / nt; j < nb * (t + 1) / nt; ++j) order.push_back(~j);
  }
  run_items(n, flops, [&](int64_t it) { order[it] >= 0 ? f(true, order[it]) : f(false, ~order[it]); });
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
// With grad_bias: also the bias gradient sum_t dY[t, :], from grad-values' own pass over dY.
Tensor grad_values_bf16_dot(const Tensor& dy, const Tensor& x, const IndexArg& in, const IndexArg& out, int64_t G,
                            Tensor* grad_bias = nullptr);

}  // namespace detail
}  // namespace sao
