// Page-granular memory advice over the op library's mappings (the program file, planned buffers).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

namespace spinquant_et {

// madvise(advice) over the whole pages inside [p, p + n); pages the range covers only in part are left alone.
inline void advise_pages_within(const void* p, size_t n, int advice) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (begin + page - 1) & ~(page - 1), hi = (begin + n) & ~(page - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
}

}  // namespace spinquant_et
