// Elementwise activations fused into the forward epilogue of the native kernels (linear_act:
// csrc/linear_act.cpp) and their derivatives.  Glossary: csrc/sao_kernels.h.
//
// tanh in float is Eigen's rational approximation (generic_fast_tanh_float: odd degree-13 over
// even degree-6 polynomial, clamped at +-7.9053), measured at most 4e-7 relative error against
// float64 tanh on [-10, 10] (torch's float tanh: 6e-8), run on the accumulator tile while it
// is in cache (AVX2 intrinsics, act8, where the CPU has them).  GELU (exact, erf form) likewise, with Eigen's
// rational erf (generic_fast_erf_float: odd degree-13 over even degree-8, clamped at +-4):
// measured 3.8e-7 absolute error in erf, 9.2e-7 in GELU, against float64 on [-6, 6].  float64
// (the reference dtype) uses std::tanh / std::erf.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "native_util.h"

namespace sao {

namespace detail {

// The two rational approximations, c * P(c^2) / Q(c^2) with c = clamp(x, -lim, lim),
// coefficients highest degree first (the scalar, AVX2 and AVX-512 forms all read these).
constexpr float kTanhLim = 7.90531110763549805f;
constexpr float kTanhP[] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                            5.12229709037114e-08f,  1.48572235717979e-05f, 6.37261928875436e-04f,
                            4.89352455891786e-03f};
constexpr float kTanhQ[] = {1.19825839466702e-06f, 1.18534705686654e-04f, 2.26843463243900e-03f,
                            4.89352518554385e-03f};
constexpr float kTanhTiny = 0.0004f;  // below: tanh(x) = x
constexpr float kErfLim = 4.f;
constexpr float kErfP[] = {-2.72614225801306e-10f, 2.77068142495902e-08f,  -2.10102402082508e-06f,
                           -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                           -1.60960333262415e-02f};
constexpr float kErfQ[] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                           -7.37332916720468e-03f, -1.42647390514189e-02f};
constexpr float kSqrtHalf = 0.70710678118654752f;

template <size_t N>
inline float poly(const float (&k)[N], float x2) {
  float r = k[0];
  for (size_t i = 1; i < N; ++i) r = r * x2 + k[i];
  return r;
}

inline float fast_tanh(float x) {
  const float c = std::min(std::max(x, -kTanhLim), kTanhLim), x2 = c * c;
  return std::abs(x) < kTanhTiny ? x : c * poly(kTanhP, x2) / poly(kTanhQ, x2);
}

inline float fast_erf(float x) {
  const float c = std::min(std::max(x, -kErfLim), kErfLim), x2 = c * c;
  return c * poly(kErfP, x2) / poly(kErfQ, x2);
}

inline float fast_gelu(float x) { return 0.5f * x * (1.f + fast_erf(x * kSqrtHalf)); }

#if SAO_X86
// fast_tanh / fast_gelu / ReLU on 8 lanes, written with intrinsics: GCC does not vectorise the
// scalar forms (their compares may trap, so the selects stay branches: -fopt-info-vec "control
// flow in loop"; a fused float32 GELU ran at ~1.2 ns per element).  NaN propagates (the NaN
// operand of max / min is the second one, which these return), as torch's activations do.
template <size_t N>
__attribute__((target("avx2,fma"))) inline __m256 poly8(const float (&k)[N], __m256 x2) {
  __m256 r = _mm256_set1_ps(k[0]);
  for (size_t i = 1; i < N; ++i) r = _mm256_fmadd_ps(r, x2, _mm256_set1_ps(k[i]));
  return r;
}

__attribute__((target("avx2,fma"))) inline __m256 act8(__m256 x, Act act) {
  if (act == Act::kRelu) return _mm256_max_ps(_mm256_setzero_ps(), x);
  const bool gelu = act == Act::kGelu;
  const __m256 lim = _mm256_set1_ps(gelu ? kErfLim : kTanhLim);
  const __m256 u = gelu ? _mm256_mul_ps(x, _mm256_set1_ps(kSqrtHalf)) : x;
  const __m256 c = _mm256_min_ps(lim, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), lim), u));
  const __m256 x2 = _mm256_mul_ps(c, c);
  const __m256 r = gelu ? _mm256_div_ps(_mm256_mul_ps(poly8(kErfP, x2), c), poly8(kErfQ, x2))
                        : _mm256_div_ps(_mm256_mul_ps(poly8(kTanhP, x2), c), poly8(kTanhQ, x2));
  if (gelu) return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.f), r));
  const __m256 absx = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x);
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(absx, _mm256_set1_ps(kTanhTiny), _CMP_LT_OQ));
}

__attribute__((target("avx2,fma"))) inline void act_rows_avx2(float* c, int64_t ldc, int64_t rows, int64_t width,
                                                               Act act) {
  for (int64_t r = 0; r < rows; ++r) {
    float* p = c + r * ldc;
    int64_t k = 0;
    for (; k + 8 <= width; k += 8) _mm256_storeu_ps(p + k, act8(_mm256_loadu_ps(p + k), act));
    if (k < width) {  // the tail through a padded copy (the same function for every element)
      alignas(32) float t[8] = {};
      std::copy(p + k, p + width, t);
      _mm256_store_ps(t, act8(_mm256_load_ps(t), act));
      std::copy(t, t + (width - k), p + k);
    }
  }
}
#endif

// c[r, k] = act(c[r, k]) for r < rows, k < width (kNone: untouched).
inline void act_rows(float* c, int64_t ldc, int64_t rows, int64_t width, Act act) {
  if (act == Act::kNone) return;
#if SAO_X86
  if (has_avx2()) return act_rows_avx2(c, ldc, rows, width, act);
#endif
  for (int64_t r = 0; r < rows; ++r) {
    float* p = c + r * ldc;
    for (int64_t k = 0; k < width; ++k) {
      const float x = p[k];
      p[k] = act == Act::kTanh ? fast_tanh(x) : act == Act::kGelu ? fast_gelu(x) : (x < 0.f ? 0.f : x);
    }
  }
}

inline double act_one(double x, Act act) {
  switch (act) {
    case Act::kTanh: return std::tanh(x);
    case Act::kRelu: return x < 0.0 ? 0.0 : x;  // (NaN stays NaN, as in torch)
    case Act::kGelu: return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752440));
    default: return x;
  }
}

inline void act_rows(double* c, int64_t ldc, int64_t rows, int64_t width, Act act) {
  if (act == Act::kNone) return;
  for (int64_t r = 0; r < rows; ++r) {
    double* p = c + r * ldc;
    for (int64_t k = 0; k < width; ++k) p[k] = act_one(p[k], act);
  }
}

}  // namespace detail
}  // namespace sao
