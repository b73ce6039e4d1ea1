// One ISA's read loop for spinquant::read_bytes: the sum of the 64-bit words of `lines` 64-byte lines from p,
// prefetching `ahead` bytes ahead (0 = no prefetch) while that stays before `end`.
#pragma once
#include <cstdint>

namespace spinquant::detail {

uint64_t read_lines_ref(const unsigned char* p, int64_t lines, const unsigned char* end, int64_t ahead);
#if defined(__x86_64__)
uint64_t read_lines_avx2(const unsigned char* p, int64_t lines, const unsigned char* end, int64_t ahead);
uint64_t read_lines_avx512(const unsigned char* p, int64_t lines, const unsigned char* end, int64_t ahead);
#endif

}  // namespace spinquant::detail
