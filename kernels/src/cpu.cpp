#include "spinquant/cpu.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__aarch64__) && defined(__linux__)  // Linux and Android
#include <asm/hwcap.h>
#include <sys/auxv.h>
#ifndef HWCAP2_I8MM  // older kernel headers (e.g. an NDK's): the bit Linux 5.10 assigned
#define HWCAP2_I8MM (1 << 13)
#endif
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace spinquant {
namespace {

#if defined(__aarch64__) && defined(__APPLE__)
// macOS reports each optional ARM feature as an int sysctl (hw.optional.arm.FEAT_*), 1 when present.
bool apple_feature(const char* name) {
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value == 1;
}
#endif

constexpr Isa kAll[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm};

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return true;
#if defined(__x86_64__)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
#elif defined(__aarch64__)
    case Isa::Neon:
      return true;
#if defined(__linux__)
    case Isa::Dotprod:
      return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    case Isa::I8mm:
      return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0 && (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    case Isa::Dotprod:
      return apple_feature("hw.optional.arm.FEAT_DotProd");  // every Apple silicon core (M1 on)
    case Isa::I8mm:
      return apple_feature("hw.optional.arm.FEAT_I8MM") && apple_feature("hw.optional.arm.FEAT_DotProd");  // M2 on
#endif
#endif
    default:
      return false;
  }
}

Isa best_isa() {
  Isa best = Isa::Scalar;
  for (Isa isa : kAll)
    if (cpu_has(isa)) best = isa;  // kAll is ordered weakest to strongest within each family
  return best;
}

Isa parse_env() {
  const char* env = std::getenv("SPINQUANT_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  for (Isa isa : kAll) {
    if (std::string(env) == isa_name(isa)) {
      if (!cpu_has(isa))
        throw std::runtime_error(std::string("SPINQUANT_ISA=") + env +
                                 ": this CPU or build cannot run it; unset SPINQUANT_ISA or pick a supported ISA");
      return isa;
    }
  }
  throw std::runtime_error(std::string("SPINQUANT_ISA=") + env +
                           ": unknown ISA; use scalar, avx2, avx512, neon, dotprod or i8mm");
}

std::atomic<int> g_forced{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
    case Isa::Dotprod: return "dotprod";
    case Isa::I8mm: return "i8mm";
  }
  return "?";
}

bool isa_supported(Isa isa) { return cpu_has(isa); }

Isa active_isa() {
  int forced = g_forced.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  static const Isa from_env = parse_env();
  return from_env;
}

void force_isa(Isa isa) {
  if (!cpu_has(isa))
    throw std::runtime_error(std::string("ISA ") + isa_name(isa) + " is not supported by this CPU or build");
  g_forced.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void reset_isa() { g_forced.store(-1, std::memory_order_relaxed); }

}  // namespace spinquant
