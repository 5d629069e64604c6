// Column permutations of activations (native_kernels.cpp, lowp_bmm.cpp, bf16_dot.cpp): the
// gather of a (T, n) activation's columns into group order and the scatter of group-ordered
// results back through an index map.  The maps are permutations of range(n) (checked by ops.cpp).
#pragma once

#include "native_util.h"

namespace sao {
namespace detail {

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

#if SAO_X86
// 16-bit columns four rows at a time, through 64-bit words w[j] = (s0[j], s1[j], s2[j], s3[j]):
// the rows go to words in one sequential pass, each gathered (scattered) column is then one
// 64-bit load (store) at the mapped word, and the words go back to rows in vector transposes.
// Against assembling each row's words from 16-bit loads (gather_cols / scatter_4rows): the
// group-ordered copy of a bf16 activation 512 x 4096, G = 8, one thread, Zen 4: 1.25 -> 0.36 ms
// (AVX2 only; the word array is 8 n bytes, in L1 / L2 for n <= 4096 / 16384).
#define SAO_WORDS_TARGET __attribute__((target("avx2")))

// The word of column j of the four rows s, s + lds, s + 2 lds, s + 3 lds.
inline uint64_t column_word(const uint16_t* s, int64_t lds, int64_t j) {
  return uint64_t(s[j]) | uint64_t(s[lds + j]) << 16 | uint64_t(s[2 * lds + j]) << 32 | uint64_t(s[3 * lds + j]) << 48;
}

// w[j] = column_word(s, lds, j) for j < n.
SAO_WORDS_TARGET inline void rows_to_words(const uint16_t* s, int64_t lds, int64_t n, uint64_t* w) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j));
    const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + lds + j));
    const __m256i r2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 2 * lds + j));
    const __m256i r3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 3 * lds + j));
    const __m256i a = _mm256_unpacklo_epi16(r0, r1), b = _mm256_unpackhi_epi16(r0, r1);
    const __m256i c = _mm256_unpacklo_epi16(r2, r3), d = _mm256_unpackhi_epi16(r2, r3);
    // words of columns (0, 1 | 8, 9), (2, 3 | 10, 11), (4, 5 | 12, 13), (6, 7 | 14, 15)
    const __m256i w0 = _mm256_unpacklo_epi32(a, c), w1 = _mm256_unpackhi_epi32(a, c);
    const __m256i w2 = _mm256_unpacklo_epi32(b, d), w3 = _mm256_unpackhi_epi32(b, d);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + j), _mm256_permute2x128_si256(w0, w1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + j + 4), _mm256_permute2x128_si256(w2, w3, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + j + 8), _mm256_permute2x128_si256(w0, w1, 0x31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + j + 12), _mm256_permute2x128_si256(w2, w3, 0x31));
  }
  for (; j < n; ++j) w[j] = column_word(s, lds, j);
}

// The 64-bit quads (row 0, 1, 2, 3) of the four columns whose words start at p: per 128-bit
// lane (two words) the rows' 32-bit pairs, then those pairs ordered by row.
SAO_WORDS_TARGET inline __m256i row_quads(const uint64_t* p) {
  const __m256i by_row = _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 0, 1, 8, 9, 2, 3, 10,
                                          11, 4, 5, 12, 13, 6, 7, 14, 15);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, by_row), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// The four rows d, d + ldd, ... (n columns) from the words w: rows_to_words undone.
SAO_WORDS_TARGET inline void words_to_rows(const uint64_t* w, int64_t n, uint16_t* d, int64_t ldd) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i q0 = row_quads(w + j), q1 = row_quads(w + j + 4), q2 = row_quads(w + j + 8), q3 = row_quads(w + j + 12);
    const __m256i lo01 = _mm256_unpacklo_epi64(q0, q1), hi01 = _mm256_unpackhi_epi64(q0, q1);  // rows 0 | 2, 1 | 3
    const __m256i lo23 = _mm256_unpacklo_epi64(q2, q3), hi23 = _mm256_unpackhi_epi64(q2, q3);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j), _mm256_permute2x128_si256(lo01, lo23, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + ldd + j), _mm256_permute2x128_si256(hi01, hi23, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 2 * ldd + j), _mm256_permute2x128_si256(lo01, lo23, 0x31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 3 * ldd + j), _mm256_permute2x128_si256(hi01, hi23, 0x31));
  }
  for (; j < n; ++j)
    for (int64_t q = 0; q < 4; ++q) d[q * ldd + j] = uint16_t(w[j] >> (16 * q));
}

// d_q[k] = row q's element of column cols[k] (q < 4, k < width; rows ldd apart), from the words.
SAO_WORDS_TARGET inline void gather_words(const uint64_t* w, const int64_t* cols, int64_t width, uint16_t* d,
                                          int64_t ldd) {
  int64_t k = 0;
  for (; k + 8 <= width; k += 8) {
    const int64_t* c = cols + k;
    const __m256i a = _mm256_set_epi64x(int64_t(w[c[3]]), int64_t(w[c[2]]), int64_t(w[c[1]]), int64_t(w[c[0]]));
    const __m256i b = _mm256_set_epi64x(int64_t(w[c[7]]), int64_t(w[c[6]]), int64_t(w[c[5]]), int64_t(w[c[4]]));
    // the 4 x 8 transpose: (columns 0, 4 | 2, 6) and (1, 5 | 3, 7) pairs, then per lane one
    // row's columns (0, 1, 4, 5 | 2, 3, 6, 7), then the lanes' halves interleaved
    const __m256i t0 = _mm256_unpacklo_epi16(a, b), t1 = _mm256_unpackhi_epi16(a, b);
    const __m256i lanes = _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0);
    const __m256i r01 = _mm256_permutevar8x32_epi32(_mm256_unpacklo_epi16(t0, t1), lanes);  // rows 0 | 1
    const __m256i r23 = _mm256_permutevar8x32_epi32(_mm256_unpackhi_epi16(t0, t1), lanes);  // rows 2 | 3
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + k), _mm256_castsi256_si128(r01));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + ldd + k), _mm256_extracti128_si256(r01, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * ldd + k), _mm256_castsi256_si128(r23));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 3 * ldd + k), _mm256_extracti128_si256(r23, 1));
  }
  for (; k < width; ++k)
    for (int64_t q = 0; q < 4; ++q) d[q * ldd + k] = uint16_t(w[cols[k]] >> (16 * q));
}

// The mapped columns of the four rows as 32-bit pairs: p0[k] = (row 0, row 1) and p1[k] = (row 2,
// row 3) of column cols[k] (k < width), the layout of bf16_dot.cpp's VDPBF16PS operands.
SAO_WORDS_TARGET inline void gather_pair_words(const uint64_t* w, const int64_t* cols, int64_t width, uint32_t* p0,
                                               uint32_t* p1) {
  int64_t k = 0;
  for (; k + 8 <= width; k += 8) {
    const int64_t* c = cols + k;
    const __m256 a = _mm256_castsi256_ps(
        _mm256_set_epi64x(int64_t(w[c[3]]), int64_t(w[c[2]]), int64_t(w[c[1]]), int64_t(w[c[0]])));
    const __m256 b = _mm256_castsi256_ps(
        _mm256_set_epi64x(int64_t(w[c[7]]), int64_t(w[c[6]]), int64_t(w[c[5]]), int64_t(w[c[4]])));
    // low (high) halves per lane: columns (0, 1, 4, 5 | 2, 3, 6, 7), then the middle quads swapped
    const __m256i lo = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    const __m256i hi = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p0 + k), _mm256_permute4x64_epi64(lo, _MM_SHUFFLE(3, 1, 2, 0)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p1 + k), _mm256_permute4x64_epi64(hi, _MM_SHUFFLE(3, 1, 2, 0)));
  }
  for (; k < width; ++k) {
    const uint64_t v = w[cols[k]];
    p0[k] = uint32_t(v);
    p1[k] = uint32_t(v >> 32);
  }
}

// w[cols[k]] = column_word(s, lds, k) for k < width.
SAO_WORDS_TARGET inline void scatter_words(const uint16_t* s, int64_t lds, const int64_t* cols, int64_t width,
                                           uint64_t* w) {
  int64_t k = 0;
  for (; k + 8 <= width; k += 8) {
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k));
    const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + lds + k));
    const __m128i q2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * lds + k));
    const __m128i q3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 3 * lds + k));
    const __m128i t0 = _mm_unpacklo_epi16(q0, q1), t1 = _mm_unpackhi_epi16(q0, q1);
    const __m128i t2 = _mm_unpacklo_epi16(q2, q3), t3 = _mm_unpackhi_epi16(q2, q3);
    const __m128i u[4] = {_mm_unpacklo_epi32(t0, t2), _mm_unpackhi_epi32(t0, t2), _mm_unpacklo_epi32(t1, t3),
                          _mm_unpackhi_epi32(t1, t3)};  // the words of columns (0, 1), (2, 3), (4, 5), (6, 7)
    for (int e = 0; e < 4; ++e) {
      w[cols[k + 2 * e]] = uint64_t(_mm_cvtsi128_si64(u[e]));
      w[cols[k + 2 * e + 1]] = uint64_t(_mm_extract_epi64(u[e], 1));
    }
  }
  for (; k < width; ++k) w[cols[k]] = column_word(s, lds, k);
}
#endif

// Whether a map of 16-bit columns goes through the words (a column map, not runs; AVX2).
template <typename T>
bool words_apply(const IndexArg& idx) {
#if SAO_X86
  return sizeof(T) == 2 && idx.index.defined() && idx.run == 1 && has_avx2();
#else
  return false;
#endif
}

// The group columns of `rows` rows of x (x's columns in group order when in_index is set, else
// its column blocks): group g's rows go to out + g * sg, ldp apart.
template <typename T>
void gather_group_rows(const T* x, int64_t ldx, int64_t rows, int64_t G, int64_t C, const IndexArg& in, T* out,
                       int64_t sg, int64_t ldp) {
  const int64_t* ip = in.data();
  int64_t r = 0;
#if SAO_X86
  if (words_apply<T>(in)) {
    Scratch big_w;
    uint64_t* w = scratch<uint64_t>(kSlotWords, G * C, big_w);
    for (; r + 4 <= rows; r += 4) {
      rows_to_words(reinterpret_cast<const uint16_t*>(x + r * ldx), ldx, G * C, w);
      for (int64_t g = 0; g < G; ++g)
        gather_words(w, ip + g * C, C, reinterpret_cast<uint16_t*>(out + g * sg + r * ldp), ldp);
    }
  }
#endif
  for (int64_t g = 0; g < G && r < rows; ++g) {
    T* d = out + g * sg + r * ldp;
    if (ip) {
      gather_cols(x + r * ldx, ldx, ip + g * C, rows - r, C, in.run, d, ldp);
    } else {
      for (int64_t q = r; q < rows; ++q) std::memcpy(d + (q - r) * ldp, x + q * ldx + g * C, sizeof(T) * C);
    }
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
  const int64_t RB = 16;
  run_items(ceil_div(Tn, RB), pass_flops(double(Tn) * G * C), [&](int64_t it) {
    const int64_t r0 = it * RB;
    gather_group_rows(x + r0 * ldx, ldx, std::min(RB, Tn - r0), G, C, in, out + r0 * ldp, Tn * ldp, ldp);
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

// The scatter of group-ordered rows: dst[r, idx(g*W + k)] = src[g * sg + r * lds + k] for r <
// rows (dst rows ldd = G*W apart), 16-bit T.
template <typename T>
void scatter_group_rows(const T* src, int64_t sg, int64_t lds, int64_t rows, int64_t G, int64_t W,
                        const IndexArg& idx, T* dst) {
  const int64_t* ip = idx.data();
  const int64_t run = idx.run, ldd = G * W;
  int64_t r = 0;
#if SAO_X86
  if (words_apply<T>(idx)) {
    Scratch big_w;
    uint64_t* w = scratch<uint64_t>(kSlotWords, ldd, big_w);
    for (; r + 4 <= rows; r += 4) {
      for (int64_t g = 0; g < G; ++g)
        scatter_words(reinterpret_cast<const uint16_t*>(src + g * sg + r * lds), lds, ip + g * W, W, w);
      words_to_rows(w, ldd, reinterpret_cast<uint16_t*>(dst + r * ldd), ldd);
    }
  }
#endif
  if (run == 1)
    for (; r + 4 <= rows; r += 4)
      for (int64_t g = 0; g < G; ++g) scatter_4rows(src + g * sg + r * lds, lds, ip + g * W, W, dst + r * ldd, ldd);
  for (; r < rows; ++r) {
    T* d = dst + r * ldd;
    for (int64_t g = 0; g < G; ++g) {
      const T* s = src + g * sg + r * lds;
      const int64_t* cols = ip + g * W;
      if (run > 1) {
        for (int64_t k = 0; k < W; k += run) std::memcpy(d + cols[k], s + k, sizeof(T) * std::min(run, W - k));
      } else {
        for (int64_t k = 0; k < W; ++k) d[cols[k]] = s[k];
      }
    }
  }
}

// The scatter of group-ordered results: dst (Tn, G*W)[t, idx(g*W + k)] = src (G, Tn, W)[g, t, k]
// for 16-bit T, each output row written by one item (lowp_bmm.cpp, bf16_dot.cpp).
template <typename T>
void unpack_groups(const T* src, int64_t G, int64_t Tn, int64_t W, const IndexArg& idx, const Tensor& dst) {
  T* out = dst.data_ptr<T>();
  const int64_t RB = 16;
  run_items(ceil_div(Tn, RB), pass_flops(double(Tn) * G * W), [&](int64_t it) {
    const int64_t r0 = it * RB;
    scatter_group_rows(src + r0 * W, Tn * W, W, std::min(RB, Tn - r0), G, W, idx, out + r0 * G * W);
  });
}

}  // namespace detail
}  // namespace sao
