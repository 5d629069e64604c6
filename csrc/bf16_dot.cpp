// The bfloat16 products on CPUs with AVX512_BF16 and no AMX: our own micro-kernel on
// VDPBF16PS, which reads its broadcast operand where it lies (or as the gather leaves it) and
// writes its result with the bias (and tanh / ReLU / GELU) already applied, so that a product costs
// the GEMM and little else.  oneDNN's at::bmm (csrc/lowp_bmm.cpp) runs the GEMMs at the same
// speed but needs its operands packed, the bias pre-filled into its output and read back (its
// sum post-op) and a strided output: at 4096 x 4096, T = 512, G = 8 those passes cost ~0.25 of
// the GEMM, and on a 512-wide layer (T = 128, G = 4) its products reached 0.61-0.67 of the
// pre-gathered bmm against 0.74-0.85 here (docs/cpu_engines.md has the table).
//
//   out[t, j] = init[j] + sum_k A[t, k] B[k, j]      (per group; A pairs along k, B packed)
//
//   forward      A = X_g (T x c)      B = V_g^T  (pack_transposed: pairs within V's rows)
//   grad input   A = dY_g (T x a)     B = V_g    (interleave_pairs: rows 2k, 2k+1 of V_g)
//   grad values  A = dY_g^T (a x T)   B = X_g    (both interleave_pairs over token pairs)
//
// Register tile: kMR = 8 rows x kNR = 3 vectors of 16 columns = 24 float accumulators; each step
// k (a pair of reduction indices: VDPBF16PS multiplies pairs) loads 3 vectors of packed B and
// broadcasts one 32-bit pair of A per row.  Measured as a standalone kernel against oneDNN's
// bmm on the same pre-gathered blocks (4096 x 4096, T = 504, G = 8, Zen 4, 2026-12-07): 179 vs
// 177 GFLOP/s on one thread, 373 vs 352 on two; 6 x 4 tiles 172 / 355, 14 x 2 tiles 166 / 345.
//
// B is packed per item (one group, one panel of kPanel = 48 output columns) in thread-local
// scratch (48 x K bf16, in L1 / L2 for the layers' K): a pass over B per call, no copy kept
// between calls (docs/cpu_engines.md says why).  Items are (group, panel[, row chunk]); every
// output element is computed by one item, reducing over all of K in a fixed order, so the
// results do not depend on the thread count.  VDPBF16PS treats denormal inputs as zero and
// flushes denormal results, as oneDNN's bf16 kernels do; VCVTNEPS2BF16 rounds to nearest even.
#include "permute_cols.h"
#include "weight_cache.h"

#include "activation.h"

#include <array>
#include <vector>

namespace sao {
namespace detail {

#if SAO_X86
namespace {

using bf16 = at::BFloat16;
constexpr int kMR = 8, kNR = 3;
constexpr int64_t kPanel = 16 * kNR;
constexpr int64_t kMinChunk = 64;  // rows per item at least, when items are split over rows

#define SAO_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// The lanes of the last 16-column vector of a panel w columns wide that lie inside it.
inline __mmask16 last_vector_mask(int64_t w) {
  return w % 16 ? __mmask16((1u << (w % 16)) - 1) : __mmask16(0xFFFF);
}

inline uint32_t load_pair(const bf16* p) {  // elements p[0] (low half), p[1] (high half)
  uint32_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}
inline uint32_t load_single(const bf16* p) {  // p[0] and a zero
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return h;
}

// out[i] (i < 16) = word i of every r[j] (j < 16): a 16 x 16 transpose of 32-bit words in
// registers (pairs within 64-bit, then 128-bit lanes, then across the two halves).
SAO_DOT_TARGET inline void transpose16(__m512i (&r)[16], __m512i (&out)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int s = 0; s < 4; ++s) {  // rows 0-7 (t) and 8-15 (r), lanes interleaved
    t[s] = _mm512_shuffle_i32x4(r[s], r[4 + s], 0x88);
    t[8 + s] = _mm512_shuffle_i32x4(r[s], r[4 + s], 0xDD);
    t[4 + s] = _mm512_shuffle_i32x4(r[8 + s], r[12 + s], 0x88);
    t[12 + s] = _mm512_shuffle_i32x4(r[8 + s], r[12 + s], 0xDD);
  }
  for (int s = 0; s < 4; ++s) {
    out[s] = _mm512_shuffle_i32x4(t[s], t[4 + s], 0x88);
    out[8 + s] = _mm512_shuffle_i32x4(t[s], t[4 + s], 0xDD);
    out[4 + s] = _mm512_shuffle_i32x4(t[8 + s], t[12 + s], 0x88);
    out[12 + s] = _mm512_shuffle_i32x4(t[8 + s], t[12 + s], 0xDD);
  }
}

// B for the forward: Bp[k][j] (k < ceil(c/2), j < kPanel) = the pair (V[j, 2k], V[j, 2k+1]) of
// the w <= kPanel rows of V_g starting at v (row length c); zero past w and past an odd c.
// Even c: 16 x 16 blocks of pairs transposed in registers (0.14 ms for all of V at 4096 x 4096,
// G = 8, one thread, Zen 4; a VPGATHERDD per 16 pairs took 0.61 ms).  Odd c (rows not aligned
// to pairs): gathers, and the last feature alone (its pair partner would be the next row's).
// A 64-byte store; `stream`: non-temporal (dst 64-byte aligned), for packs read by every thread
// (row_product: why).
SAO_DOT_TARGET inline void store_words(uint32_t* dst, __m512i v, bool stream) {
  if (stream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), v);
  } else {
    _mm512_storeu_si512(dst, v);
  }
}

SAO_DOT_TARGET void pack_transposed(const bf16* v, int64_t c, int64_t w, uint32_t* bp, bool stream) {
  const int64_t kfull = c / 2;
  for (int64_t j0 = 0; j0 < kPanel; j0 += 16) {
    const int64_t wj = std::max<int64_t>(0, std::min<int64_t>(16, w - j0));
    const bf16* base = v + j0 * c;
    int64_t k = 0;
    if (c % 2 == 0) {
      const uint32_t* rows = reinterpret_cast<const uint32_t*>(base);  // (c is even: pairs align)
      for (; k + 16 <= kfull; k += 16) {
        __m512i r[16], out[16];
        for (int i = 0; i < 16; ++i) r[i] = i < wj ? _mm512_loadu_si512(rows + i * kfull + k) : _mm512_setzero_si512();
        transpose16(r, out);
        for (int i = 0; i < 16; ++i) store_words(bp + (k + i) * kPanel + j0, out[i], stream);
      }
    }
    // byte offsets of the 16 rows (c < 2^26 is checked by the callers)
    const __m512i offs = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(int32_t(2 * c)));
    const __mmask16 m = __mmask16((1u << wj) - 1);
    for (; k < kfull; ++k)
      _mm512_storeu_si512(bp + k * kPanel + j0,
                          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offs, base + 2 * k, 1));
    if (c % 2) {
      uint32_t* d = bp + kfull * kPanel + j0;
      for (int64_t j = 0; j < 16; ++j) d[j] = j < wj ? load_single(base + j * c + c - 1) : 0u;
    }
  }
}

// The 16 pairs (r0[i], r1[i]) for the lanes i in m (zero elsewhere; r1 null: high halves zero).
SAO_DOT_TARGET inline __m512i pairs16(const bf16* r0, const bf16* r1, __mmask16 m) {
  const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0));
  if (!r1) return lo;
  return _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1)), 16));
}

// dst[k][j] (k < ceil(K/2), j < ldd) = the pair (src[2k, j], src[2k+1, j]) for j < w, zero
// beyond w and in the high half past an odd K (src: K rows of at least w elements, ld apart).
SAO_DOT_TARGET void interleave_pairs(const bf16* src, int64_t ld, int64_t K, int64_t w, uint32_t* dst, int64_t ldd,
                                     bool stream = false) {
  for (int64_t k = 0; 2 * k < K; ++k) {
    const bf16* r0 = src + 2 * k * ld;
    const bf16* r1 = 2 * k + 1 < K ? r0 + ld : nullptr;
    uint32_t* d = dst + k * ldd;
    for (int64_t j = 0; j < ldd; j += 16) {
      const int64_t wj = std::max<int64_t>(0, std::min<int64_t>(16, w - j));
      const __mmask16 m = __mmask16((1u << wj) - 1);
      const __m512i p = pairs16(r0 + j, r1 ? r1 + j : nullptr, m);
      if (j + 16 <= ldd) {
        store_words(d + j, p, stream);
      } else {
        _mm512_mask_storeu_epi32(d + j, __mmask16((1u << (ldd - j)) - 1), p);
      }
    }
  }
}

// The same pairs for all w columns, in blocks of kMR = 8 columns: dst[i * sblk + k * 8 + q] =
// (src[2k, 8i + q], src[2k+1, 8i + q]) (zero past w and in the high half past an odd K); 16
// columns per load, their halves to two blocks.  With `sums`, also sums[j] = sum_k src[k, j] in
// float32, rows in order (the bias gradient's share of these rows, from the pairs in registers).
// NB 16-column blocks (the last masked by m) in one sweep over the rows.
template <int NB>
SAO_DOT_TARGET void pair_sweep(const bf16* src, int64_t ld, int64_t K, __mmask16 m, uint32_t* d, int64_t sblk,
                               float* sums) {
  __m512 acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_ps();
  for (int64_t k = 0; 2 * k < K; ++k) {
    const bf16* r0 = src + 2 * k * ld;
    const bf16* r1 = 2 * k + 1 < K ? r0 + ld : nullptr;
    for (int b = 0; b < NB; ++b) {
      const __mmask16 mb = b + 1 < NB ? __mmask16(0xFFFF) : m;
      const __m512i p = pairs16(r0 + 16 * b, r1 ? r1 + 16 * b : nullptr, mb);
      uint32_t* db = d + 2 * b * sblk + k * 8;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(db), _mm512_castsi512_si256(p));
      if (b + 1 < NB || (m >> 8)) _mm256_storeu_si256(reinterpret_cast<__m256i*>(db + sblk), _mm512_extracti64x4_epi64(p, 1));
      if (sums) {  // a bfloat16 is the high half of its float32: the low half shifted up, the high masked
        acc[b] = _mm512_add_ps(acc[b], _mm512_castsi512_ps(_mm512_slli_epi32(p, 16)));
        acc[b] = _mm512_add_ps(acc[b], _mm512_castsi512_ps(_mm512_and_si512(p, _mm512_set1_epi32(int(0xffff0000u)))));
      }
    }
  }
  if (sums)
    for (int b = 0; b < NB; ++b) _mm512_mask_storeu_ps(sums + 16 * b, b + 1 < NB ? __mmask16(0xFFFF) : m, acc[b]);
}

SAO_DOT_TARGET void interleave_pairs_blocked(const bf16* src, int64_t ld, int64_t K, int64_t w, uint32_t* dst,
                                             int64_t sblk, float* sums) {
  static_assert(kMR == 8, "two blocks per 16 columns");
  // Column blocks outer, so that each block's pairs are written as one run: with k outer every
  // k wrote a/8 runs 8 KiB apart, and this pass took 20 % of grad-values' GEMM time against 5.5 %
  // (perf samples, 4096², G = 8, T = 512, 2 threads, Zen 4).  64 columns (two cache lines of a
  // row) per sweep over the rows, so that each line of src is read once: with 16 columns per
  // sweep, grad-values at that shape read 0.84-0.86 of the bmm bound, 0.86-0.88 with 64
  // (processes alternating, four rounds each, fast level, 2026-12-07; in one process 32 and 128
  // columns per sweep were no better than 64).
  int64_t j = 0;
  for (; j + 64 <= w; j += 64)
    pair_sweep<4>(src + j, ld, K, __mmask16(0xFFFF), dst + (j / 8) * sblk, sblk, sums ? sums + j : nullptr);
  for (; j < w; j += 16) {
    const int64_t wj = std::min<int64_t>(16, w - j);
    pair_sweep<1>(src + j, ld, K, __mmask16((1u << wj) - 1), dst + (j / 8) * sblk, sblk, sums ? sums + j : nullptr);
  }
}

template <size_t N>
SAO_DOT_TARGET inline __m512 poly16(const float (&k)[N], __m512 x2) {
  __m512 r = _mm512_set1_ps(k[0]);
  for (size_t i = 1; i < N; ++i) r = _mm512_fmadd_ps(r, x2, _mm512_set1_ps(k[i]));
  return r;
}

// c * P(c^2) / Q(c^2), c = clamp(u, -lim, lim) (csrc/activation.h), for a bfloat16 result: the
// division as VRCP14PS and one Newton step (relative error ~2^-28; VDIVPS cost more than the
// GEMM's tail per tile at width 512).  NaN propagates (max / min return their second operand).
template <size_t NP, size_t NQ>
SAO_DOT_TARGET inline __m512 rational16(__m512 u, float lim, const float (&P)[NP], const float (&Q)[NQ]) {
  const __m512 l = _mm512_set1_ps(lim);
  const __m512 c = _mm512_min_ps(l, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), l), u));
  const __m512 x2 = _mm512_mul_ps(c, c);
  const __m512 q = poly16(Q, x2), r0 = _mm512_rcp14_ps(q);
  return _mm512_mul_ps(_mm512_mul_ps(poly16(P, x2), c),
                       _mm512_mul_ps(r0, _mm512_fnmadd_ps(q, r0, _mm512_set1_ps(2.f))));
}

SAO_DOT_TARGET inline __m512 tanh16(__m512 x) {  // fast_tanh
  const __mmask16 tiny = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(kTanhTiny), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(tiny, rational16(x, kTanhLim, kTanhP, kTanhQ), x);
}

SAO_DOT_TARGET inline __m512 gelu16(__m512 x) {  // fast_gelu
  const __m512 erf = rational16(_mm512_mul_ps(x, _mm512_set1_ps(kSqrtHalf)), kErfLim, kErfP, kErfQ);
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.f), erf));
}

// y[r, 16 j + i] (r < MR, j < NR, i < 16; the last vector masked by `last`) =
// bf16(act(init[16 j + i] + sum_k A[r, k] B[k, 16 j + i])), with the pair k of row r of A at
// a + r * lda + k * ka (elements; an odd K's last index alone, its partner not read) and B
// packed (bp[k * ldb + j]: kPanel for a packed panel).
template <int MR, int NR>
SAO_DOT_TARGET void tile(const bf16* a, int64_t lda, int64_t ka, const uint32_t* bp, int64_t ldb, int64_t K,
                         const float* init, Act act, bf16* y, int64_t ldy, __mmask16 last) {
  // The bias (one rounding), or zeros loaded the same way: with a `setzero` branch GCC kept acc
  // in memory, zeroed by a `rep stos` before every tile without a bias (7.5 % of grad-values'
  // tile samples, perf, 4096², G = 8, T = 512).  Without it, one thread, fraction of the bmm
  // bound, three alternating processes each: grad-values 4096² G = 4 0.89 -> 0.90-0.91, 512²
  // T = 128 0.93-0.94 -> 0.94-0.95, grad-input 512² 0.91-0.93 -> 0.93-0.95 (G = 8: +0-1 %).
  alignas(64) static const float kZeros[16 * NR] = {};
  const float* b0 = init ? init : kZeros;
  __m512 acc[MR][NR];
  for (int j = 0; j < NR; ++j)
    for (int r = 0; r < MR; ++r) acc[r][j] = _mm512_loadu_ps(b0 + 16 * j);
  const int64_t kfull = K / 2;
  for (int64_t k = 0; k < kfull; ++k) {
    __m512bh b[NR];
    for (int j = 0; j < NR; ++j) b[j] = (__m512bh)_mm512_loadu_si512(bp + k * ldb + 16 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int32_t(load_pair(a + r * lda + k * ka)));
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, b[j]);
    }
  }
  if (K % 2) {
    __m512bh b[NR];
    for (int j = 0; j < NR; ++j) b[j] = (__m512bh)_mm512_loadu_si512(bp + kfull * ldb + 16 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int32_t(load_single(a + r * lda + kfull * ka)));
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, b[j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) {
      __m512 v = acc[r][j];
      if (act == Act::kTanh) v = tanh16(v);
      if (act == Act::kRelu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
      if (act == Act::kGelu) v = gelu16(v);
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
      bf16* d = y + r * ldy + 16 * j;
      if (j + 1 < NR) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), h);
      } else {
        _mm256_mask_storeu_epi16(d, last, h);
      }
    }
}

using TileFn = void (*)(const bf16*, int64_t, int64_t, const uint32_t*, int64_t, int64_t, const float*, Act, bf16*,
                        int64_t, __mmask16);

template <int MR, int... NRs>
constexpr std::array<TileFn, kNR> tiles_for(std::integer_sequence<int, NRs...>) {
  return {&tile<MR, NRs + 1>...};
}
template <int... MRs>
constexpr std::array<std::array<TileFn, kNR>, kMR> all_tiles(std::integer_sequence<int, MRs...>) {
  return {tiles_for<MRs + 1>(std::make_integer_sequence<int, kNR>())...};
}
constexpr auto kTiles = all_tiles(std::make_integer_sequence<int, kMR>());  // [rows - 1][vectors - 1]

// One product: for each group g, out_g (R x N) = [init +] A_g (R x K) @ B_g, with A_g's pair k
// of row r = kMR * i + q at a + g * sga + i * sblk + q * lda + k * ka (rows in blocks of kMR:
// sblk = kMR * lda for a row-major A), B_g's panel (n0, w) from pack(g, n0, w, alloc) (packed into
// alloc()'s scratch, or where B already lies in the pair layout), and out_g at
// out + g * sgo (rows ldo apart).
struct Product {
  const bf16* a;
  int64_t sga, sblk, lda, ka;
  bf16* out;
  int64_t sgo, ldo;
  int64_t G, R, N, K;
  Act act = Act::kNone;
};

// The B of an item: its panel packed into bp (returns {bp, kPanel}) or a pointer into B
// already in the pair layout (with its row stride).
struct PanelB {
  const uint32_t* p;
  int64_t ld;
};

template <typename Pack, typename Init>
void run_product(const Product& p, const Pack& pack, const Init& init) {
  const int64_t n_panels = ceil_div(p.N, kPanel);
  const int64_t n_chunks =
      std::max<int64_t>(1, std::min(ceil_div(kMinItems, p.G * n_panels), ceil_div(p.R, kMinChunk)));
  const int64_t chunk = ceil_div(ceil_div(p.R, n_chunks), kMR) * kMR;
  run_items(p.G * n_panels * n_chunks, 2.0 * p.G * p.R * p.N * p.K, [&](int64_t it) {
    Scratch big;
    const int64_t g = it / (n_panels * n_chunks), q = it % n_chunks;
    const int64_t n0 = ((it / n_chunks) % n_panels) * kPanel, w = std::min(kPanel, p.N - n0);
    const int64_t r0 = q * chunk, r1 = std::min(p.R, r0 + chunk);
    if (r0 >= r1) return;
    const PanelB b = pack(g, n0, w, [&] { return scratch<uint32_t>(kSlotPanel, ceil_div(p.K, 2) * kPanel, big); });
    float init_f[kPanel] = {};
    const bool has_init = init(g, n0, w, init_f);
    const int64_t nvec = ceil_div(w, 16);
    const __mmask16 last = last_vector_mask(w);
    const bf16* ag = p.a + g * p.sga;
    bf16* og = p.out + g * p.sgo + n0;
    for (int64_t r = r0; r < r1; r += kMR) {
      const int64_t rows = std::min<int64_t>(kMR, r1 - r);
      kTiles[rows - 1][nvec - 1](ag + (r / kMR) * p.sblk, p.lda, p.ka, b.p, b.ld, p.K, has_init ? init_f : nullptr,
                                 p.act, og + r * p.ldo, p.ldo, last);
    }
  });
}

const auto kNoInit = [](int64_t, int64_t, int64_t, float*) { return false; };

// An activation (Tn, G*W) in group order: itself when idx is the identity (group g at column
// g*W, rows ld apart), else gathered into scratch (G, Tn, ldp).
struct Grouped {
  const bf16* p;
  int64_t sg, ld;
};
Grouped grouped(const Tensor& t, int64_t G, int64_t W, const IndexArg& idx, int slot, Scratch& big) {
  const int64_t Tn = t.size(0);
  if (!idx.index.defined()) return {t.data_ptr<bf16>(), W, t.stride(0)};
  const int64_t ldp = pad_ld<bf16>(W);
  return {pack_groups(t.data_ptr<bf16>(), t.stride(0), Tn, G, W, idx, ldp, slot, big), Tn * ldp, ldp};
}

// Where a product's rows (Tn, G*W) go: the output itself for an identity map, else group
// blocks (G, Tn, W) in scratch that unpack_groups scatters (writing through the map from every
// item would touch every cache line of the output per item).
struct Target {
  bf16* p;
  int64_t sg, ld;
};
Target target(const Tensor& dst, int64_t G, int64_t W, const IndexArg& idx, Scratch& big) {
  const int64_t Tn = dst.size(0);
  if (!idx.index.defined()) return {dst.data_ptr<bf16>(), W, G * W};
  return {scratch<bf16>(kSlotC, G * Tn * W, big), Tn * W, W};
}

void check_dot(const Tensor& t, const Tensor& v) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && v.is_contiguous() && bf16_dot_usable(),
              "bf16_dot: bfloat16, contiguous values and an AVX512_BF16 CPU");
  TORCH_CHECK(v.size(1) < (int64_t(1) << 26) && v.size(2) < (int64_t(1) << 26),
              "bf16_dot: block sides below 2^26 (32-bit offsets)");
}

}  // namespace

bool bf16_dot_usable() { return has_avx512_bf16(); }

namespace {

// Whether row_product serves a forward / grad-input better than panel items (run_product).
// Panel items gather / scatter the whole activation in passes of their own, which write it to
// memory and read it back: at 4096 x 4096, G = 8, T = 512 the forward's gather cost ~8 % of its
// GEMM (perf, Zen 4, 2 threads).  Row items of kMR rows gather those rows of every group into
// L1 / L2, run every (group, panel) tile on them and scatter the result rows from there; all of
// B, packed once per call, streams from L3 into each item.  Measured against panel items (bf16,
// Zen 4, 2 threads, both in the same process, fraction of the pre-gathered bmm): the products
// at 4096², G = 8, T = 512: forward 0.95-1.00 vs 0.89-0.90, grad-input 0.98-1.03 vs 0.88-0.89
// (0.93 / 0.87 with caches flushed before each call); T = 1024 0.98 vs 0.88; 2048², G = 4,
// T = 512 0.97 vs 0.92; items of 16 / 32 rows sat between the two.  SAOLinear interleaved with
// nn.Linear and the bounds: forward 0.92 vs 0.85, forward + backward 2-3 % faster.  Panel items
// stay ahead where B outgrows L3 (4096², G = 2: 16 MiB packed, 0.91 vs 1.01) and on small
// products (768 -> 3072, T = 128: 0.89 vs 1.01; T <= 128 mixed).  They are also the steadier:
// this VM shares its L3, and separate runs of the tier bench gave row items 0.77-0.94 of the
// bound at G = 8 where panel items gave 0.85 (docs/cpu_engines.md).
constexpr int64_t kRowMinTokens = 256, kRowMaxPanelBytes = int64_t(8) << 20, kRowMaxBytes = int64_t(256) << 10;
bool rows_apply(int64_t Tn, int64_t G, int64_t K, int64_t N, bool gather, bool scatter) {
  const int64_t panel_bytes = G * ceil_div(N, kPanel) * ceil_div(K, 2) * kPanel * 4;
  const int64_t row_bytes = kMR * 2 * G * ((gather ? K : 0) + (scatter ? N : 0));
  return (gather || scatter) && Tn >= kRowMinTokens && panel_bytes <= kRowMaxPanelBytes && row_bytes <= kRowMaxBytes;
}

// All of B's panels, packed by pack(g, n0, w, bp) into dst: panel (g, p) at
// (g * n_panels + p) * ceil(K / 2) * kPanel (the layout row_product's first pass writes).
template <typename Pack>
void pack_all(int64_t G, int64_t K, int64_t N, const Pack& pack, uint32_t* dst) {
  const int64_t n_panels = ceil_div(N, kPanel), psz = ceil_div(K, 2) * kPanel;
  run_items(G * n_panels, pass_flops(double(G) * N * K), [&](int64_t it) {
    const int64_t g = it / n_panels, n0 = (it % n_panels) * kPanel;
    pack(g, n0, std::min(kPanel, N - n0), dst + it * psz, false);
  });
}

// The product of grouped_product in items of kMR rows: B's panels packed once (in scratch, read
// from L3 by every item), each item gathering its rows of all groups (or reading them in place),
// running every (group, panel) tile on them and scattering its rows of the result.
template <typename Pack, typename Init>
void row_product(const Tensor& src, const IndexArg& src_idx, int64_t K, const IndexArg& dst_idx, int64_t N,
                 int64_t G, Act act, const Pack& pack, const uint32_t* prepacked, const Init& init, Tensor& dst) {
  constexpr int64_t RC = kMR;
  const int64_t Tn = src.size(0), n_panels = ceil_div(N, kPanel), psz = ceil_div(K, 2) * kPanel;
  Scratch big_b;
  uint32_t* fresh = prepacked ? nullptr : scratch<uint32_t>(kSlotVT, G * n_panels * psz, big_b);
  // Panels of 1 MiB or more are written with non-temporal stores: every thread reads all of them,
  // and a line the other core holds modified costs far more than one from memory where the
  // cores do not share an L3 (this VM's slow level, docs/benchmarks.md).  Processes alternating,
  // bfloat16 forward against the pre-gathered bmm, 2 threads, Zen 4, 2026-12-07: 4096², G = 8,
  // T = 512 0.886-0.975 -> 0.929-1.034 (slow-level rounds 0.858 / 0.894 -> 0.952-0.955);
  // 1024², G = 2 0.83-0.95 -> 0.92-0.96; 2048², G = 4 0.85-1.00 -> 0.95-1.02; G = 4 at 4096²
  // and T = 256-2048 even; the forward + backward step at 4096², G = 8 0.857-0.942 -> 0.896-1.041
  // (slow level 0.857 / 0.869 -> 0.896 / 0.909).  Smaller panels stay in L2 / L3 as before.
  const bool stream = fresh && G * n_panels * psz * 4 >= (int64_t(1) << 20);
  const uint32_t* panels = prepacked ? prepacked : fresh;
  std::vector<float> inits(G * n_panels * kPanel);
  std::vector<uint8_t> has_init(G * n_panels);
  run_items(G * n_panels, pass_flops(double(G) * N * (prepacked ? 1 : K)), [&](int64_t it) {
    const int64_t g = it / n_panels, n0 = (it % n_panels) * kPanel, w = std::min(kPanel, N - n0);
    if (fresh) pack(g, n0, w, fresh + it * psz, stream);
    if (stream) _mm_sfence();
    has_init[it] = init(g, n0, w, inits.data() + it * kPanel);
  });
  const bf16* s = src.data_ptr<bf16>();
  bf16* d = dst.data_ptr<bf16>();
  const int64_t lds = src.stride(0), lda = pad_ld<bf16>(K), ldc = pad_ld<bf16>(N);
  run_items(ceil_div(Tn, RC), 2.0 * G * Tn * N * K, [&](int64_t it) {
    const int64_t r0 = it * RC, rows = std::min(RC, Tn - r0);
    Scratch big_a, big_c;
    const bf16* a = s + r0 * lds;
    int64_t sga = K, la = lds;
    if (src_idx.index.defined()) {
      bf16* buf = scratch<bf16>(kSlotX, G * RC * lda, big_a);
      gather_group_rows(a, lds, rows, G, K, src_idx, buf, RC * lda, lda);
      a = buf, sga = RC * lda, la = lda;
    }
    bf16* c = d + r0 * G * N;
    int64_t sgc = N, lc = G * N;
    if (dst_idx.index.defined()) c = scratch<bf16>(kSlotC, G * RC * ldc, big_c), sgc = RC * ldc, lc = ldc;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t n0 = p * kPanel, w = std::min(kPanel, N - n0), nvec = ceil_div(w, 16);
        const __mmask16 last = last_vector_mask(w);
        const int64_t item = g * n_panels + p;
        kTiles[rows - 1][nvec - 1](a + g * sga, la, 2, panels + item * psz, kPanel, K,
                                   has_init[item] ? inits.data() + item * kPanel : nullptr, act, c + g * sgc + n0, lc,
                                   last);
      }
    if (dst_idx.index.defined()) scatter_group_rows(c, sgc, lc, rows, G, N, dst_idx, d + r0 * G * N);
  });
}

// Forward and grad-input: dst (Tn, G*wo)[:, D_g] = [init +] src (Tn, G*wi)[:, S_g] @ B_g, src
// gathered through src_idx (or read in place), dst scattered through dst_idx (or written in
// place), B_g packed by pack(g, n0, w, bp), or all of B packed already: `prepacked` (panel
// (g, p) at (g * n_panels + p) * ceil(wi / 2) * kPanel, as pack_all writes them).
template <typename Pack, typename Init>
Tensor grouped_product(const Tensor& src, const IndexArg& src_idx, int64_t wi, const IndexArg& dst_idx, int64_t wo,
                       int64_t G, Act act, const Pack& pack, const uint32_t* prepacked, const Init& init) {
  const int64_t Tn = src.size(0);
  Tensor dst = new_output({Tn, G * wo}, src.options());
  if (Tn == 0) return dst;
  if (rows_apply(Tn, G, wi, wo, src_idx.index.defined(), dst_idx.index.defined())) {
    row_product(src, src_idx, wi, dst_idx, wo, G, act, pack, prepacked, init, dst);
    return dst;
  }
  const int64_t n_panels = ceil_div(wo, kPanel), psz = ceil_div(wi, 2) * kPanel;
  Scratch big_src, big_dst;
  const Grouped a = grouped(src, G, wi, src_idx, kSlotX, big_src);
  const Target t = target(dst, G, wo, dst_idx, big_dst);
  run_product(
      Product{a.p, a.sg, kMR * a.ld, a.ld, 2, t.p, t.sg, t.ld, G, Tn, wo, wi, act},
      [&](int64_t g, int64_t n0, int64_t w, const auto& alloc) {
        if (prepacked) return PanelB{prepacked + (g * n_panels + n0 / kPanel) * psz, kPanel};
        uint32_t* bp = alloc();
        pack(g, n0, w, bp, false);
        return PanelB{bp, kPanel};
      },
      init);
  if (dst_idx.index.defined()) unpack_groups<bf16>(t.p, G, Tn, wo, dst_idx, dst);
  return dst;
}

}  // namespace

Tensor linear_bf16_dot(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias,
                       Act act) {
  check_dot(x, v);
  const int64_t G = v.size(0), a = v.size(1), c = v.size(2);
  const bf16* vs = v.data_ptr<bf16>();
  const bf16* bs = bias.defined() ? bias.data_ptr<bf16>() : nullptr;
  const int64_t* oi = out.data();
  const auto pack = [&](int64_t g, int64_t n0, int64_t w, uint32_t* bp, bool stream) {
    pack_transposed(vs + (g * a + n0) * c, c, w, bp, stream);
  };
  // Under sao_kernels.frozen_weights(): all panels from the weight cache (packed on a miss).
  const int64_t n_panels = ceil_div(a, kPanel), psz = ceil_div(c, 2) * kPanel;
  const Tensor kept = cached_layout(v, Layout::kBf16Panels, size_t(G * n_panels * psz) * 4,
                                    [&](void* dst) { pack_all(G, c, a, pack, static_cast<uint32_t*>(dst)); });
  return grouped_product(
      x, in, c, out, a, G, act, pack, kept.defined() ? static_cast<const uint32_t*>(kept.data_ptr()) : nullptr,
      [&](int64_t g, int64_t n0, int64_t w, float* f) {
        if (!bs) return false;
        for (int64_t j = 0; j < w; ++j) f[j] = static_cast<float>(bs[oi ? oi[g * a + n0 + j] : g * a + n0 + j]);
        return true;
      });
}

Tensor grad_input_bf16_dot(const Tensor& dy, const Tensor& v, const IndexArg& in, const IndexArg& out) {
  check_dot(dy, v);
  const int64_t G = v.size(0), a = v.size(1), c = v.size(2);
  const bf16* vs = v.data_ptr<bf16>();
  return grouped_product(
      dy, out, a, in, c, G, Act::kNone,
      [&](int64_t g, int64_t n0, int64_t w, uint32_t* bp, bool stream) {
        interleave_pairs(vs + g * a * c + n0, c, a, w, bp, kPanel, stream);
      },
      nullptr, kNoInit);
}

namespace {

// X's columns in group order as token pairs, the B of grad-values as its tiles read it (no
// per-panel pack): P[(g * kp + k) * ldq + j] = (X[2k, S_g(j)], X[2k+1, S_g(j)]) for k < kp =
// ceil(T/2), j < c (zero high half past an odd T, zero columns c..ldq).  With a column map, from
// the words of four rows (permute_cols.h): one pass over X, where the gather into group order
// and a pair interleave per panel took two (perf, 4096², G = 8, T = 512: ~8 % and ~5 % of the
// GEMM's time).  Its items run in one parallel region with `n_more` items more (more(i)): the
// preparation of grad-values' other operand, so that the two passes share one barrier; each
// thread's share holds its share of both lists (run_two_lists), so that the dY^T pairs of a group
// are written by the thread whose share of the GEMM's items reads them.
template <typename More>
uint32_t* pair_groups(const Tensor& x, int64_t G, int64_t c, const IndexArg& in, int64_t ldq, Scratch& big,
                      Scratch& big_rows, int64_t n_more, const More& more) {
  const int64_t Tn = x.size(0), kp = ceil_div(Tn, 2), ldx = x.stride(0), n = G * c;
  uint32_t* P = scratch<uint32_t>(kSlotX, G * kp * ldq, big);
  const bf16* xs = x.data_ptr<bf16>();
  const double flops = pass_flops(2.0 * Tn * n);
  auto zero_pad = [&](uint32_t* row) { std::fill(row + c, row + ldq, 0u); };
  if (!words_apply<bf16>(in)) {  // in place (no map) or runs: rows in group order, then pairs
    const Grouped xg = grouped(x, G, c, in, kSlotC, big_rows);
    constexpr int64_t KB = 64;  // token pairs per item
    const int64_t nb = ceil_div(kp, KB);
    run_two_lists(G * nb, n_more, flops, [&](bool mine, int64_t it) {
      if (!mine) return more(it);
      const int64_t g = it / nb, k0 = (it % nb) * KB, k1 = std::min(kp, k0 + KB);
      interleave_pairs(xg.p + g * xg.sg + 2 * k0 * xg.ld, xg.ld, std::min(Tn, 2 * k1) - 2 * k0, c,
                       P + (g * kp + k0) * ldq, ldq);
    });
    return P;
  }
  const int64_t* ip = in.data();
  constexpr int64_t RB = 16;  // rows per item (a multiple of 4: each word holds two pairs)
  const int64_t nr = ceil_div(Tn, RB);
  run_two_lists(nr, n_more, flops, [&](bool mine, int64_t it) {
    if (!mine) return more(it);
    const int64_t r1 = std::min(Tn, (it + 1) * RB);
    Scratch big_w;
    uint64_t* w = scratch<uint64_t>(kSlotWords, n, big_w);
    for (int64_t r = it * RB; r < r1; r += 4) {
      const int64_t rows = std::min<int64_t>(4, r1 - r);
      const uint16_t* s = reinterpret_cast<const uint16_t*>(xs + r * ldx);
      if (rows == 4) {
        rows_to_words(s, ldx, n, w);
      } else {  // the last rows: the missing ones zero (the high half of an odd T's last pair)
        for (int64_t j = 0; j < n; ++j) {
          uint64_t v = 0;
          for (int64_t q = 0; q < rows; ++q) v |= uint64_t(s[q * ldx + j]) << (16 * q);
          w[j] = v;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        uint32_t* p0 = P + (g * kp + r / 2) * ldq;
        if (rows > 2) {
          gather_pair_words(w, ip + g * c, c, p0, p0 + ldq);
          zero_pad(p0 + ldq);
        } else {
          for (int64_t j = 0; j < c; ++j) p0[j] = uint32_t(w[ip[g * c + j]]);
        }
        zero_pad(p0);
      }
    }
  });
  return P;
}

}  // namespace

Tensor grad_values_bf16_dot(const Tensor& dy, const Tensor& x, const IndexArg& in, const IndexArg& out, int64_t G,
                            Tensor* grad_bias) {
  const int64_t Tn = dy.size(0), a = dy.size(1) / G, c = x.size(1) / G;
  Tensor dv = new_output({G, a, c}, x.options());
  check_dot(x, dv);
  if (Tn == 0) {
    if (grad_bias) *grad_bias = at::zeros({G * a}, dy.options());
    return dv.zero_();
  }
  Scratch big_dy, big_x, big_rows, big_t;
  const Grouped dyg = grouped(dy, G, a, out, kSlotDY, big_dy);
  const int64_t kp = ceil_div(Tn, 2), ldq = pad_ld<uint32_t>(c);
  // A_g = dY_g^T as token pairs, in blocks of kMR features: At[i][k][q] = (dY_g[2k, n],
  // dY_g[2k+1, n]) for n = kMR * i + q, so that a tile's broadcasts for one k are one 32-byte
  // run (with features as rows of a row-major At, each k stepped a whole row: 4 KiB or more
  // apart, a new page every step, 0.89 of the bmm bound at G = 4 against 0.92 for bmm).  Built
  // in blocks of KB token pairs, each with its column sums when the bias gradient is asked for.
  constexpr int64_t KB = 64;
  const int64_t nb = ceil_div(kp, KB);
  // The bias gradient from the same pass: each block's column sums of its rows (float32, rows in
  // order), then the blocks' sums in order: the same bits for any thread count.  (dY.sum(0) on its
  // own read dY again: 0.5 ms against grad-values' 6.2 ms at 4096², G = 8, T = 512, 2 threads.)
  Tensor sums = grad_bias ? at::empty({nb, G * a}, dy.options().dtype(at::kFloat)) : Tensor();
  float* sp = grad_bias ? sums.data_ptr<float>() : nullptr;
  // features [f0, f0 + fw) of group g as At (sblk = kp * kMR words per block of kMR features)
  const auto pair_dy = [&](int64_t g, int64_t f0, int64_t fw, int64_t b, uint32_t* at_g) {
    const int64_t k0 = b * KB, k1 = std::min(kp, k0 + KB);
    interleave_pairs_blocked(dyg.p + g * dyg.sg + 2 * k0 * dyg.ld + f0, dyg.ld, std::min(Tn, 2 * k1) - 2 * k0, fw,
                             at_g + k0 * kMR, kp * kMR, sp ? sp + b * G * a + g * a + f0 : nullptr);
  };
  bf16* dvp = dv.data_ptr<bf16>();
  // B read in place while its rows are at most 4 KiB apart; wider groups copy each panel out
  // (with rows 8 KiB apart, c = 2048, every k touched another page: 0.87 of the bmm bound at
  // 4096², G = 2, T = 512, one thread, against 0.91 before)
  const bool in_place = ldq * int64_t(sizeof(uint32_t)) <= 4096 + 64;
  const int64_t nblk = ceil_div(a, kMR);  // blocks of kMR features
  if (in_place && G * nblk * kp * kMR * 4 >= (int64_t(512) << 10)) {
    // Items of FC features of one group: each builds its rows of At in thread-local scratch (in
    // L2) and runs all of the group's panels on them, B (X's pairs) read in place, instead of At
    // built whole in a pass of its own and read back by items of one 48-column panel each.  Where
    // At is too large for L2 that pass writes it to memory and reads it back.  In one process,
    // the two alternating in both orders, five rounds, fast level, fraction of the bmm bound,
    // 2026-12-07: 4096², G = 8, T = 512 (At 4 MiB) 0.868-0.904 -> 0.893-0.923; 768 -> 3072,
    // G = 4, T = 128 (768 KiB) 0.835-0.914 -> 0.872-0.971; 4096², G = 4 even; and where At fits
    // L2, the pass is kept: 3072 -> 768, T = 128 (192 KiB) 0.89-1.08 -> 0.85-1.00 with these
    // items; 512², T = 128 even.
    constexpr int64_t FC = 64;
    const uint32_t* xp = pair_groups(x, G, c, in, ldq, big_x, big_rows, 0, [](int64_t) {});
    const int64_t nfc = ceil_div(a, FC), n_panels = ceil_div(c, kPanel);
    run_items(G * nfc, 2.0 * G * a * c * Tn, [&](int64_t it) {
      const int64_t g = it / nfc, f0 = (it % nfc) * FC, fw = std::min(FC, a - f0);
      Scratch big_a;
      uint32_t* at = scratch<uint32_t>(kSlotDYT, ceil_div(fw, kMR) * kp * kMR, big_a);
      for (int64_t b = 0; b < nb; ++b) pair_dy(g, f0, fw, b, at);
      const bf16* ab = reinterpret_cast<const bf16*>(at);
      for (int64_t pn = 0; pn < n_panels; ++pn) {
        const int64_t n0 = pn * kPanel, w = std::min(kPanel, c - n0), nvec = ceil_div(w, 16);
        const __mmask16 last = last_vector_mask(w);
        for (int64_t r = 0; r < fw; r += kMR)
          kTiles[std::min<int64_t>(kMR, fw - r) - 1][nvec - 1](ab + (r / kMR) * 2 * kp * kMR, 2, 2 * kMR,
                                                               xp + g * kp * ldq + n0, ldq, Tn, nullptr, Act::kNone,
                                                               dvp + (g * a + f0 + r) * c + n0, c, last);
      }
    });
  } else {
    // At whole (in L2, or groups too wide to read B in place), built in the pass that pairs X
    // (one barrier), and items of one panel each
    uint32_t* at = scratch<uint32_t>(kSlotDYT, G * nblk * kp * kMR, big_t);
    const uint32_t* xp = pair_groups(x, G, c, in, ldq, big_x, big_rows, G * nb,
                                     [&](int64_t it) { pair_dy(it / nb, 0, a, it % nb, at + (it / nb) * nblk * kp * kMR); });
    const Product p{reinterpret_cast<const bf16*>(at), 2 * nblk * kp * kMR, 2 * kp * kMR, 2, 2 * kMR, dvp, a * c, c,
                    G, a, c, Tn};
    run_product(
        p,
        [&](int64_t g, int64_t n0, int64_t w, const auto& alloc) {
          const uint32_t* b = xp + g * kp * ldq + n0;
          if (in_place) return PanelB{b, ldq};
          uint32_t* bp = alloc();
          const int64_t wv = ceil_div(w, 16) * 16;  // the vectors a tile reads (ldq covers them)
          for (int64_t k = 0; k < kp; ++k) std::memcpy(bp + k * kPanel, b + k * ldq, sizeof(uint32_t) * wv);
          return PanelB{bp, kPanel};
        },
        kNoInit);
  }
  if (grad_bias) {  // feature order: group order through out's map
    Tensor db = at::empty({G * a}, dy.options());
    bf16* d = db.data_ptr<bf16>();
    const int64_t* oi = out.data();
    for (int64_t j = 0; j < G * a; ++j) {
      float s = sp[j];
      for (int64_t b = 1; b < nb; ++b) s += sp[b * G * a + j];
      d[oi ? oi[j] : j] = bf16(s);
    }
    *grad_bias = db;
  }
  return dv;
}

#else  // not x86: never chosen

bool bf16_dot_usable() { return false; }
Tensor linear_bf16_dot(const Tensor&, const Tensor&, const IndexArg&, const IndexArg&, const Tensor&, Act) {
  TORCH_CHECK(false, "bf16_dot: needs an x86 CPU with AVX512_BF16");
}
Tensor grad_input_bf16_dot(const Tensor&, const Tensor&, const IndexArg&, const IndexArg&) {
  TORCH_CHECK(false, "bf16_dot: needs an x86 CPU with AVX512_BF16");
}
Tensor grad_values_bf16_dot(const Tensor&, const Tensor&, const IndexArg&, const IndexArg&, int64_t, Tensor*) {
  TORCH_CHECK(false, "bf16_dot: needs an x86 CPU with AVX512_BF16");
}

#endif

}  // namespace detail
}  // namespace sao
