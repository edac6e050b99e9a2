// Instruction sets of the GEMM micro-kernels and the run-time choice between them.
//
// Every kernel is compiled into the library; the one used is chosen when the library loads from
// the CPU's features (the best supported), and can be forced with set_isa() (relprop.ops does
// so from the environment variable RELPROP_ISA=avx512|avx2|generic|auto).  Results are bitwise
// identical for any thread count within one ISA; different ISAs may differ by rounding.
#pragma once
#include <string>
#include <vector>

namespace relprop {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

// "generic", "avx2" or "avx512".
const char* isa_name(Isa isa);

// Compiled into this build and supported by this CPU (and its operating system).
bool isa_supported(Isa isa);

// Names of the supported ISAs, best last.
std::vector<std::string> supported_isas();

// The best supported ISA.
Isa best_isa();

// The ISA the kernels use now.
Isa active_isa();

// Use `isa` from now on; throws std::invalid_argument if it is not supported.  Not meant to be
// called while kernels run on other threads (a running kernel keeps the ISA it started with).
void set_isa(Isa isa);

// "avx512" / "avx2" / "generic" / "auto" or "" (= best_isa()); throws std::invalid_argument with
// the list of valid names otherwise.  Does not check support.
Isa parse_isa(const std::string& name);

// set_isa(parse_isa(value of RELPROP_ISA)) if the variable is set, else best_isa().  Throws
// std::invalid_argument naming the variable on an unknown or unsupported value.
void set_isa_from_env();

// Measured throughput of a register-resident float32 FMA loop of the active ISA on `nthreads`
// threads (<= 0: the OpenMP default), in GFLOP/s (one FMA = 2 FLOP), all threads together.
// Takes about 0.3 s.
double fma_peak_gflops(int nthreads);

}  // namespace relprop
