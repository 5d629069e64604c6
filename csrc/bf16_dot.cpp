// The bfloat16 forward (T > kDecodeMaxTokens) on CPUs with AVX512_BF16 and no AMX: our own
// micro-kernel on VDPBF16PS, which takes X where it lies (or as the gather leaves it) and writes
// Y with the bias already in, so that the forward costs the GEMM and nothing else where the
// maps are the identity.  oneDNN's at::bmm (csrc/lowp_bmm.cpp) runs the products at the same
// speed but needs X packed, the bias pre-filled into its output and read back (its sum
// post-op) and a strided output: at 4096 x 4096, T = 512, G = 8 those passes cost ~0.25 of
// the GEMM (docs/cpu_engines.md).
//
//   Y[t, g*a + n] = bias[..] + sum_k X_g[t, k] V_g[n, k]      (group order; out_index scatters)
//
// Register tile: kMR = 8 tokens x kNR = 3 vectors of 16 output features = 24 float accumulators;
// each step k (a pair of input features: VDPBF16PS multiplies pairs) loads 3 vectors of packed V
// and broadcasts one 32-bit pair of X per token.  Measured as a standalone kernel against
// oneDNN's bmm on the same pre-gathered blocks (4096 x 4096, T = 504, G = 8, Zen 4, 2026-12-07):
// 179 vs 177 GFLOP/s on one thread, 373 vs 352 on two; 6 x 4 tiles 172 / 355, 14 x 2 tiles
// 166 / 345.  In place (SAOLinear, in_index gathered, bias, 2 threads, T = 512, against the
// pre-gathered bmm): 1.01 / 0.98 / 0.89 of it at G = 2 / 4 / 8, where the bmm engine reached
// 0.96 / 0.92 / 0.86 in the same process; the rest at G = 8 is the gather of X (~5 %) and the
// pack of V (~2 %).
//
// V is packed per item (one group, one panel of kPanel = 48 output features) into the pair
// layout Vp[k][j] = (V_g[n0 + j, 2k], V_g[n0 + j, 2k + 1]), zero-padded past the panel's last
// feature and past an odd c, in thread-local scratch (48 x c bf16, in L1 / L2): a pass over V
// per call, no copy kept between calls (docs/cpu_engines.md says why).  The items are (group,
// panel[, token chunk]); each output element is computed by one item in a fixed order, so the
// results do not depend on the thread count.  VDPBF16PS treats denormal inputs as zero and
// flushes denormal results, as oneDNN's bf16 kernels do; VCVTNEPS2BF16 rounds to nearest even.
#include "native_util.h"

#include <array>

namespace sao {
namespace detail {

#if SAO_X86
namespace {

using bf16 = at::BFloat16;
constexpr int kMR = 8, kNR = 3;
constexpr int64_t kPanel = 16 * kNR;
constexpr int64_t kMinChunk = 64;  // tokens per item at least, when items are split over T

#define SAO_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

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

// Vp (ceil(c/2) x kPanel pairs) from the w <= kPanel rows of V_g starting at v (row length c).
// Even c: 16 x 16 blocks of pairs transposed in registers (0.14 ms for all of V at 4096 x 4096,
// G = 8, one thread, Zen 4; a VPGATHERDD per 16 pairs took 0.61 ms).  Odd c (rows not aligned
// to pairs): gathers, and the last feature alone (its pair partner would be the next row's).
SAO_DOT_TARGET void pack_panel(const bf16* v, int64_t c, int64_t w, uint32_t* vp) {
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
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(vp + (k + i) * kPanel + j0, out[i]);
      }
    }
    // byte offsets of the 16 rows (c < 2^26 is checked by the caller)
    const __m512i offs = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(int32_t(2 * c)));
    const __mmask16 m = __mmask16((1u << wj) - 1);
    for (; k < kfull; ++k)
      _mm512_storeu_si512(vp + k * kPanel + j0, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offs, base + 2 * k, 1));
    if (c % 2) {
      uint32_t* d = vp + kfull * kPanel + j0;
      for (int64_t j = 0; j < 16; ++j) d[j] = j < wj ? load_single(base + j * c + c - 1) : 0u;
    }
  }
}

// y[r, 16 j + i] (r < MR, j < NR, i < 16; the last vector masked by `last`) = bf16(bias[16 j + i]
// + sum_k x[r, k] V[16 j + i, k]), from the packed panel vp.
template <int MR, int NR>
SAO_DOT_TARGET void tile(const bf16* x, int64_t ldx, const uint32_t* vp, int64_t c, const float* bias, bf16* y,
                         int64_t ldy, __mmask16 last) {
  __m512 acc[MR][NR];
  for (int j = 0; j < NR; ++j) {
    const __m512 b0 = _mm512_loadu_ps(bias + 16 * j);  // the bias is the initial accumulator
    for (int r = 0; r < MR; ++r) acc[r][j] = b0;
  }
  const int64_t kfull = c / 2;
  for (int64_t k = 0; k < kfull; ++k) {
    __m512bh b[NR];
    for (int j = 0; j < NR; ++j) b[j] = (__m512bh)_mm512_loadu_si512(vp + k * kPanel + 16 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(int32_t(load_pair(x + r * ldx + 2 * k)));
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xv, b[j]);
    }
  }
  if (c % 2) {
    __m512bh b[NR];
    for (int j = 0; j < NR; ++j) b[j] = (__m512bh)_mm512_loadu_si512(vp + kfull * kPanel + 16 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(int32_t(load_single(x + r * ldx + c - 1)));
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xv, b[j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) {
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(acc[r][j]);
      bf16* d = y + r * ldy + 16 * j;
      if (j + 1 < NR) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), h);
      } else {
        _mm256_mask_storeu_epi16(d, last, h);
      }
    }
}

using TileFn = void (*)(const bf16*, int64_t, const uint32_t*, int64_t, const float*, bf16*, int64_t, __mmask16);

template <int MR, int... NRs>
constexpr std::array<TileFn, kNR> tiles_for(std::integer_sequence<int, NRs...>) {
  return {&tile<MR, NRs + 1>...};
}
template <int... MRs>
constexpr std::array<std::array<TileFn, kNR>, kMR> all_tiles(std::integer_sequence<int, MRs...>) {
  return {tiles_for<MRs + 1>(std::make_integer_sequence<int, kNR>())...};
}
// kTiles[rows - 1][vectors - 1]
constexpr auto kTiles = all_tiles(std::make_integer_sequence<int, kMR>());

}  // namespace

bool bf16_dot_usable() { return has_avx512_bf16(); }

Tensor linear_bf16_dot(const Tensor& x, const Tensor& v, const IndexArg& in, const IndexArg& out, const Tensor& bias) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && v.is_contiguous() && bf16_dot_usable(),
              "linear_bf16_dot: bfloat16, contiguous values and an AVX512_BF16 CPU");
  const int64_t Tn = x.size(0), G = v.size(0), a = v.size(1), c = v.size(2), ldo = G * a;
  TORCH_CHECK(c < (int64_t(1) << 26), "linear_bf16_dot: block side c = ", c, " too large for 32-bit gathers");
  Tensor y = new_output({Tn, ldo}, x.options());
  if (Tn == 0) return y;
  // X in group order: read in place for an identity in_index, else gathered once (G, T, ldp)
  Scratch big_x, big_y;
  const bf16* xs = x.data_ptr<bf16>();
  int64_t ldx = x.stride(0), sgx = c;  // X_g at xs + g * sgx, rows ldx apart
  if (in.index.defined()) {
    const int64_t ldp = pad_ld<bf16>(c);
    xs = pack_groups(xs, ldx, Tn, G, c, in, ldp, kSlotX, big_x);
    ldx = ldp;
    sgx = Tn * ldp;
  }
  // Y in group order: the output itself for an identity out_index, else blocks (G, T, a) that
  // one row-wise pass scatters (writing through out_index from every item would touch every
  // cache line of the output per item).
  const int64_t* oi = out.data();
  bf16* yb = oi ? scratch<bf16>(kSlotC, G * Tn * a, big_y) : y.data_ptr<bf16>();
  const int64_t ldy = oi ? a : ldo, sgy = oi ? Tn * a : a;
  const bf16* vs = v.data_ptr<bf16>();
  const bf16* bs = bias.defined() ? bias.data_ptr<bf16>() : nullptr;
  const int64_t n_panels = ceil_div(a, kPanel);
  const int64_t n_chunks = std::max<int64_t>(
      1, std::min(ceil_div(kMinItems, G * n_panels), ceil_div(Tn, kMinChunk)));
  const int64_t chunk = ceil_div(Tn, n_chunks);
  run_items(G * n_panels * n_chunks, 2.0 * Tn * G * a * c, [&](int64_t it) {
    Scratch big_p;
    const int64_t g = it / (n_panels * n_chunks), p = (it / n_chunks) % n_panels, q = it % n_chunks;
    const int64_t n0 = p * kPanel, w = std::min(kPanel, a - n0), t0 = q * chunk, t1 = std::min(Tn, t0 + chunk);
    if (t0 >= t1) return;
    uint32_t* vp = scratch<uint32_t>(kSlotPanel, ceil_div(c, 2) * kPanel, big_p);
    pack_panel(vs + (g * a + n0) * c, c, w, vp);
    float bias_f[kPanel] = {};
    if (bs)
      for (int64_t j = 0; j < w; ++j) bias_f[j] = static_cast<float>(bs[oi ? oi[g * a + n0 + j] : g * a + n0 + j]);
    const int64_t nvec = ceil_div(w, 16);
    const __mmask16 last = w % 16 ? __mmask16((1u << (w % 16)) - 1) : __mmask16(0xFFFF);
    const bf16* xg = xs + g * sgx;
    bf16* yg = yb + g * sgy + n0;
    for (int64_t t = t0; t < t1; t += kMR) {
      const int64_t rows = std::min<int64_t>(kMR, t1 - t);
      kTiles[rows - 1][nvec - 1](xg + t * ldx, ldx, vp, c, bias_f, yg + t * ldy, ldy, last);
    }
  });
  if (oi) unpack_groups<bf16>(yb, G, Tn, a, out, y);
  return y;
}

#else  // not x86: never chosen

bool bf16_dot_usable() { return false; }
Tensor linear_bf16_dot(const Tensor&, const Tensor&, const IndexArg&, const IndexArg&, const Tensor&) {
  TORCH_CHECK(false, "linear_bf16_dot: needs an x86 CPU with AVX512_BF16");
}

#endif

}  // namespace detail
}  // namespace sao
