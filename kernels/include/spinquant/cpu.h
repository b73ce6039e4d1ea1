// CPU feature detection and the ISA choice shared by every kernel family's dispatch table.
#pragma once

namespace spinquant {

enum class Isa { Scalar, Avx2, Avx512, Neon, Dotprod, I8mm };

// Name as accepted by SPINQUANT_ISA ("scalar", "avx2", "avx512", "neon", "dotprod", "i8mm").
const char* isa_name(Isa isa);

// True if this CPU can run code compiled for `isa` (and the library was built with it).
bool isa_supported(Isa isa);

// The best supported ISA, or the one forced by the environment variable SPINQUANT_ISA.
// Forcing an ISA this CPU or build lacks throws std::runtime_error naming the problem.
Isa active_isa();

// Override for tests and benchmarks (same rules as SPINQUANT_ISA); reset_isa() returns to auto.
void force_isa(Isa isa);
void reset_isa();

}  // namespace spinquant
