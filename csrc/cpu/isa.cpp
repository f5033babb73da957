// Which CPU kernel set runs: the best the CPU (and OS) supports, optionally lowered
// by FASTWN_CPU_ISA so that every path can be tested on one machine.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../kernels.h"

namespace fastwn::cpu {

Isa best_supported_isa() {
  // __builtin_cpu_supports also checks that the OS saves the AVX/AVX-512 state.
  static const Isa best = [] {
#if !defined(__x86_64__)
    return Isa::scalar;
#else
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return Isa::avx2;
    return Isa::scalar;
#endif
  }();
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

Isa active_isa() {
  const Isa best = best_supported_isa();
  const char* env = std::getenv("FASTWN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(env, isa_name(isa)) == 0) return isa < best ? isa : best;  // capped at the CPU
  }
  throw std::invalid_argument(std::string("FASTWN_CPU_ISA must be one of scalar, avx2, avx512 (got '") + env + "')");
}

}  // namespace fastwn::cpu
