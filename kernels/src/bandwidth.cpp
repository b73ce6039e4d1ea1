#include "spinquant/bandwidth.h"

#include <atomic>
#include <cstring>

namespace spinquant {

uint64_t read_bytes(ByteSpan span, int threads) {
  constexpr int64_t kLine = 64;
  // Software prefetch 16 KiB ahead, as the decode GEMVs do: without it an Intel Xeon core read at ~9 GB/s, a
  // third of what the GEMVs reach, so the "floor" was no floor there (benchmarks/RESULTS.md, session 10).
  constexpr int64_t kAhead = 256;
  const auto* bytes = static_cast<const unsigned char*>(span.data);
  const int64_t lines = static_cast<int64_t>(span.bytes) / kLine;
  std::atomic<uint64_t> total{0};
  parallel_for(lines, threads, [&](int64_t begin, int64_t end) {
    uint64_t acc[8] = {};  // one cache line a step, eight independent sums: the compiler vectorizes it
    for (int64_t line = begin; line < end; ++line) {
      if (line + kAhead < lines) __builtin_prefetch(bytes + (line + kAhead) * kLine);
      uint64_t words[8];
      std::memcpy(words, bytes + line * kLine, kLine);
      for (int i = 0; i < 8; ++i) acc[i] += words[i];
    }
    uint64_t sum = 0;
    for (uint64_t a : acc) sum += a;
    total.fetch_add(sum, std::memory_order_relaxed);
  });
  uint64_t tail = 0;
  for (size_t i = static_cast<size_t>(lines * kLine); i < span.bytes; ++i) tail += bytes[i];
  return total.load() + tail;
}

}  // namespace spinquant
