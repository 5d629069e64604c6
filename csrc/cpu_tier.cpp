// The CPU's instruction-set tier as the native kernels use it (docs/cpu_tiers.md).
//
// Tiers, each including the ones before it: scalar < avx2 < avx512 < avx512_bf16 < amx.  The
// hardware tier is what the CPU (and, for AMX, oneDNN: cpublas::could_pack) offers; the tier the
// kernels use is the lower of it and the cap SAO_KERNELS_CPU_ISA, read once, at first use.  Every
// ISA decision of the kernels goes through isa_at_least() / amx_packs() below, so that with
// DNNL_MAX_CPU_ISA and ATEN_CPU_CAPABILITY (which cap oneDNN and ATen) every tier can be tested
// and timed on one machine.  sao_kernels/cpu.py checks the variable at import with the same
// message (so a bad value fails there, not in the first op).
#include "sao_kernels.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace sao {
namespace {

constexpr const char* kNames[] = {"scalar", "avx2", "avx512", "avx512_bf16", "amx"};
constexpr int kNumTiers = 5;

Isa detect_hardware() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // AMX: whether oneDNN's brgemm ukernel takes VNNI-packed bf16 (CPU, OS permission and
  // DNNL_MAX_CPU_ISA all checked by oneDNN), which is how the kernels use it.
  if (at::native::cpublas::could_pack(at::kBFloat16)) return Isa::kAmx;
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::kAvx512Bf16;
  if (avx512) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// The cap: kNumTiers - 1 (none) when the variable is unset or empty.
int read_cap() {
  const char* env = std::getenv(kCpuIsaEnv);
  std::string s = env ? env : "";
  s.erase(0, s.find_first_not_of(" \t\n\r"));
  s.erase(s.find_last_not_of(" \t\n\r") + 1);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (s.empty()) return kNumTiers - 1;
  for (int i = 0; i < kNumTiers; ++i)
    if (s == kNames[i]) return i;
  std::string allowed;
  for (int i = 0; i < kNumTiers; ++i) allowed += std::string(i ? ", '" : "'") + kNames[i] + "'";
  TORCH_CHECK_VALUE(false, kCpuIsaEnv, "='", env, "' is not a CPU tier; allowed: ", allowed, " (or unset: no cap)");
  return 0;  // unreachable
}

}  // namespace

Isa hardware_isa() {
  static const Isa isa = detect_hardware();
  return isa;
}

Isa cpu_isa() {
  static const int cap = read_cap();  // throws (again on every call) for a bad value
  return static_cast<Isa>(std::min(static_cast<int>(hardware_isa()), cap));
}

bool isa_at_least(Isa tier) { return static_cast<int>(cpu_isa()) >= static_cast<int>(tier); }

bool amx_packs(at::ScalarType dtype) { return isa_at_least(Isa::kAmx) && at::native::cpublas::could_pack(dtype); }

const char* isa_name(Isa tier) { return kNames[static_cast<int>(tier)]; }

}  // namespace sao
