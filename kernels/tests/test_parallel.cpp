// parallel_for and parallel_for_balanced: every index exactly once, any thread count, nested calls, exceptions
// rethrown; read_bytes's sum.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "spinquant/bandwidth.h"
#include "spinquant/cpu.h"
#include "spinquant/parallel.h"

namespace {

int g_failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what);
  }
}

void test_covers_once() {
  for (int64_t n : {1, 2, 3, 7, 1000}) {
    for (int threads : {0, 1, 2, 8}) {
      std::vector<std::atomic<int>> hits(n);
      for (int rep = 0; rep < 50; ++rep)
        spinquant::parallel_for(n, threads, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
      bool ok = true;
      for (auto& h : hits) ok &= h.load() == 50;
      expect(ok, "each index runs once per call");
    }
  }
}

// Balanced claims: every index once, pieces non-empty and in bounds, the caller's first piece no longer than
// first_share; more items than a claim word counts fall back to the even split.
void test_balanced_covers_once() {
  for (int64_t n : {1, 2, 3, 7, 36, 192, 1000, 3072, 70000}) {
    for (int threads : {0, 1, 2, 8}) {
      for (int64_t grain : {1, 3, 50}) {
        std::vector<std::atomic<int>> hits(n);
        std::atomic<bool> bounds{true}, first{true};
        const int t = spinquant::plan_threads(n, threads);
        for (int rep = 0; rep < 20; ++rep)
          spinquant::parallel_for_balanced(n, threads, grain, [&](int64_t b, int64_t e) {
            if (!(0 <= b && b < e && e <= n)) bounds = false;
            if (b == 0 && t > 1 && grain == 1 && n <= 0xffff && e > spinquant::first_share(n, t)) first = false;
            for (int64_t i = b; b < e && i < e; ++i) hits[i].fetch_add(1);
          });
        bool ok = true;
        for (auto& h : hits) ok &= h.load() == 20;
        expect(ok, "balanced: each index runs once per call");
        expect(bounds.load(), "balanced: pieces are non-empty and in bounds");
        expect(first.load(), "balanced: the piece at 0 is at most first_share");
      }
    }
  }
  expect(spinquant::first_share(192, 2) == 84 && spinquant::first_share(36, 2) == 15 &&
             spinquant::first_share(2, 2) == 1 && spinquant::first_share(1, 1) == 1,
         "first_share is 7/8 of an even split, at least 1");
  std::atomic<int64_t> sum{0};
  spinquant::parallel_for(4, 0, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      spinquant::parallel_for_balanced(100, 0, 1, [&](int64_t b2, int64_t e2) { sum.fetch_add(e2 - b2); });
  });
  expect(sum.load() == 400, "balanced calls nested in a region run serially and completely");
  bool threw = false;
  try {
    spinquant::parallel_for_balanced(100, 0, 1, [](int64_t, int64_t e) {
      if (e == 100) throw std::runtime_error("boom");
    });
  } catch (const std::runtime_error&) {
    threw = true;
  }
  expect(threw, "an exception in a balanced piece reaches the caller");
}

void test_nested() {
  std::atomic<int64_t> sum{0};
  spinquant::parallel_for(4, 0, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      spinquant::parallel_for(10, 0, [&](int64_t b2, int64_t e2) { sum.fetch_add(e2 - b2); });
  });
  expect(sum.load() == 40, "nested calls run serially and completely");
}

void test_exception() {
  bool threw = false;
  try {
    spinquant::parallel_for(100, 0, [](int64_t b, int64_t) {
      if (b > 0) throw std::runtime_error("boom");
    });
  } catch (const std::runtime_error&) {
    threw = true;
  }
  expect(threw || spinquant::plan_threads(100, 0) == 1, "an exception in a range reaches the caller");
  std::atomic<int> after{0};
  spinquant::parallel_for(10, 0, [&](int64_t b, int64_t e) { after.fetch_add(static_cast<int>(e - b)); });
  expect(after.load() == 10, "the pool works after an exception");
}

// Idle workers serve prefetch requests between regions: any span (even an unmapped address: prefetches never
// fault) is harmless, a request may be replaced or cancelled at any time, and regions still run every index once.
void test_prefetch_when_idle() {
  std::vector<char> buffer(1 << 20, 1);
  const spinquant::ByteSpan requests[][2] = {
      {{buffer.data(), buffer.size()}, {}},
      {{buffer.data() + 100, 5000}, {buffer.data(), 64}},
      {{reinterpret_cast<const void*>(uintptr_t{64}), size_t{1} << 30}, {}},
      {{}, {}},
  };
  for (int rep = 0; rep < 20; ++rep)
    for (const auto& r : requests) {
      spinquant::prefetch_when_idle(r[0], r[1]);
      std::atomic<int64_t> sum{0};
      spinquant::parallel_for(1000, 0, [&](int64_t b, int64_t e) { sum.fetch_add(e - b); });
      expect(sum.load() == 1000, "regions cover every index while prefetch requests come and go");
    }
  spinquant::prefetch_when_idle({});
}

// read_bytes reads every byte once: its sum of 64-bit words equals a plain one for ragged sizes and offsets, on
// every ISA, with and without prefetching (also past the end of a short span).
void test_read_bytes() {
  std::vector<unsigned char> buffer(100000 + 77);
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<unsigned char>(i * 2654435761u >> 13);
  for (size_t offset : {0, 3}) {
    for (size_t bytes : {0, 1, 63, 64, 65, 1000, 100000}) {
      uint64_t want = 0;
      for (size_t i = 0; i + 8 <= bytes / 64 * 64; i += 8) {
        uint64_t word;
        std::memcpy(&word, buffer.data() + offset + i, 8);
        want += word;
      }
      for (size_t i = bytes / 64 * 64; i < bytes; ++i) want += buffer[offset + i];
      for (auto isa : {spinquant::Isa::Scalar, spinquant::Isa::Avx2, spinquant::Isa::Avx512, spinquant::Isa::Neon}) {
        if (!spinquant::isa_supported(isa)) continue;
        spinquant::force_isa(isa);
        for (int64_t ahead : {0, 64, 16384})
          for (int threads : {0, 1, 2, 3})
            expect(spinquant::read_bytes({buffer.data() + offset, bytes}, threads, ahead) == want,
                   "read_bytes sums every byte");
      }
      spinquant::reset_isa();
    }
  }
  bool threw = false;
  try {
    spinquant::read_bytes({buffer.data(), 64}, 1, -1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "read_bytes rejects a negative prefetch distance");
}

}  // namespace

int main() {
  expect(spinquant::hardware_threads() >= 1, "at least one hardware thread");
  expect(spinquant::plan_threads(1, 0) == 1 && spinquant::plan_threads(0, 4) == 1, "plan_threads bounds");
  test_covers_once();
  test_balanced_covers_once();
  test_nested();
  test_exception();
  test_prefetch_when_idle();
  test_read_bytes();
  std::printf("%s\n", g_failures == 0 ? "test_parallel: all passed" : "test_parallel: FAILED");
  return g_failures == 0 ? 0 : 1;
}
