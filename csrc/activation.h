// Elementwise activations fused into the forward epilogue of the native kernels (linear_act:
// csrc/linear_act.cpp) and their derivatives.  Glossary: csrc/sao_kernels.h.
//
// tanh in float is Eigen's rational approximation (generic_fast_tanh_float: odd degree-13 over
// even degree-6 polynomial, clamped at +-7.9053), measured at most 4e-7 relative error against
// float64 tanh on [-10, 10] (torch's float tanh: 6e-8): a loop the compiler vectorises, run on
// the accumulator tile while it is in cache.  float64 (the reference dtype) uses std::tanh.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "native_util.h"

namespace sao {

namespace detail {

inline float fast_tanh(float x) {
  const float c = std::min(std::max(x, -7.90531110763549805f), 7.90531110763549805f);
  const float x2 = c * c;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * c;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return std::abs(x) < 0.0004f ? x : p / q;
}

#define SAO_ACT_ROWS_BODY                                                          \
  for (int64_t r = 0; r < rows; ++r) {                                             \
    float* p = c + r * ldc;                                                        \
    if (act == Act::kTanh) {                                                       \
      for (int64_t k = 0; k < width; ++k) p[k] = fast_tanh(p[k]);                  \
    } else {                                                                       \
      for (int64_t k = 0; k < width; ++k) p[k] = p[k] > 0.f ? p[k] : 0.f;          \
    }                                                                              \
  }

#if SAO_X86
__attribute__((target("avx2,fma"))) inline void act_rows_avx2(float* c, int64_t ldc, int64_t rows, int64_t width,
                                                               Act act) {
  SAO_ACT_ROWS_BODY
}
#endif

// c[r, k] = act(c[r, k]) for r < rows, k < width (tanh / ReLU; kNone and kGelu: untouched,
// GELU is applied by the caller through ATen).
inline void act_rows(float* c, int64_t ldc, int64_t rows, int64_t width, Act act) {
  if (act != Act::kTanh && act != Act::kRelu) return;
#if SAO_X86
  if (has_avx2()) return act_rows_avx2(c, ldc, rows, width, act);
#endif
  SAO_ACT_ROWS_BODY
}
#undef SAO_ACT_ROWS_BODY

inline void act_rows(double* c, int64_t ldc, int64_t rows, int64_t width, Act act) {
  if (act != Act::kTanh && act != Act::kRelu) return;
  for (int64_t r = 0; r < rows; ++r) {
    double* p = c + r * ldc;
    for (int64_t k = 0; k < width; ++k) p[k] = act == Act::kTanh ? std::tanh(p[k]) : (p[k] > 0.0 ? p[k] : 0.0);
  }
}

}  // namespace detail
}  // namespace sao
