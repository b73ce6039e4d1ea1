#include "spinquant/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace spinquant {
namespace {

thread_local bool t_inside_region = false;

constexpr int64_t kMaxUnits = 0xffff;  // units a region may have: the claim word counts each end in 16 bits

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waits until done() holds: pause-spins for the first few microseconds (a decode GEMV region lasts 2-50 us,
// so a sleeping or yielding waiter would miss most of it), then yields the core.
template <class Done>
void spin_until(Done done) {
  for (int i = 0; i < 4096; ++i) {
    if (done()) return;
    cpu_relax();
  }
  while (!done()) std::this_thread::yield();
}

// A region is published as (generation, task, shape); units are claimed by a compare-and-swap on
// `claim_` = generation << 32 | claimed from the front << 16 | claimed from the back, which fails once a newer
// region replaced it, so a worker that wakes late can never run a unit of a region that has ended. The caller
// claims from the front, workers from the back: with one worker the first split is the same every time, so what
// the worker prefetched while idle (prefetch_when_idle) is what it then reads. parallel_for's units are its
// ranges, one a claim; parallel_for_balanced's are items, claimed in shrinking pieces (balanced_claim). Workers
// spin between regions (back-to-back decode kernels pay no wake-up), then sleep on a condition variable after
// kSpinMicros of idleness.
class Pool {
  struct Shape {
    int32_t n;        // units in the region
    int16_t threads;  // threads it was planned for
    int16_t grain;    // units a claim; negative: balanced claims of at least -grain units
  };

 public:
  explicit Pool(int n_workers) {
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~Pool() {
    stop_.store(true);
    generation_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    for (auto& t : workers_) t.join();
  }

  // Runs task(begin, end) over the units [0, n) on the workers and the calling thread, claimed as Shape::grain says.
  void run(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& task) {
    if (n > kMaxUnits) throw std::invalid_argument("parallel_for: too many units for the pool");
    std::lock_guard<std::mutex> region(region_mutex_);
    const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
    claim_.store(gen << 32, std::memory_order_seq_cst);  // from here on, claims for older regions fail
    error_ = nullptr;
    pending_.store(n, std::memory_order_relaxed);
    shape_.store(Shape{static_cast<int32_t>(n), static_cast<int16_t>(threads), static_cast<int16_t>(grain)},
                 std::memory_order_release);
    task_.store(&task, std::memory_order_release);
    generation_.store(gen, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    work(gen, /*from_back=*/false);
    spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
    if (error_) std::rethrow_exception(error_);
  }

  // Replaces the prefetch request idle workers serve (see prefetch_chunk).
  void request_prefetch(ByteSpan a, ByteSpan b) {
    const uint64_t id = (prefetch_id_.load(std::memory_order_relaxed) + 1) & kIdMask;
    prefetch_id_.store(id, std::memory_order_release);  // chunks of the old request are no longer claimed
    prefetch_[0].data.store(a.data, std::memory_order_relaxed);
    prefetch_[0].bytes.store(std::min<uint64_t>(a.bytes, kOffsetMask / 2), std::memory_order_relaxed);
    prefetch_[1].data.store(b.data, std::memory_order_relaxed);
    prefetch_[1].bytes.store(std::min<uint64_t>(b.bytes, kOffsetMask / 2), std::memory_order_relaxed);
    prefetch_claim_.store(id << kIdShift, std::memory_order_release);
  }

 private:
  // Claims and runs units of region `gen` until none is left (or the region was replaced).
  void work(uint64_t gen, bool from_back) {
    const std::function<void(int64_t, int64_t)>* task = task_.load(std::memory_order_acquire);
    const Shape shape = shape_.load(std::memory_order_acquire);
    t_inside_region = true;
    for (;;) {
      uint64_t cur = claim_.load(std::memory_order_acquire);
      int64_t begin = -1, count = 0;
      for (;;) {
        const int64_t front = (cur >> 16) & 0xffff, back = cur & 0xffff, left = shape.n - front - back;
        if ((cur >> 32) != gen || left <= 0) break;
        const int64_t own = from_back ? back : front;
        count = std::min(left, shape.grain > 0 ? shape.grain : balanced_claim(shape, own, left, from_back));
        if (claim_.compare_exchange_weak(cur, cur + (from_back ? count : count << 16), std::memory_order_acq_rel)) {
          begin = from_back ? shape.n - back - count : front;
          break;
        }
      }
      if (begin < 0) break;
      try {
        (*task)(begin, begin + count);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      pending_.fetch_sub(count, std::memory_order_acq_rel);
    }
    t_inside_region = false;
  }

  // Units of a balanced claim: a first share (the caller's from the front, each worker's from the back), then
  // 1 / (2 threads) of what is left, at least |grain|; `own` is what this end has claimed so far.
  static int64_t balanced_claim(const Shape& s, int64_t own, int64_t left, bool from_back) {
    const int64_t first = first_share(s.n, s.threads);
    if (from_back ? own < first * (s.threads - 1) : own == 0) return first;
    return std::max<int64_t>(-s.grain, (left + 2 * s.threads - 1) / (2 * s.threads));
  }

  void worker_loop() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      // stop_ counts as a change too: a worker that starts after the pool is already being destroyed reads the
      // final generation as its first `seen`.
      const auto changed = [&] { return generation_.load(std::memory_order_acquire) != seen || stop_.load(); };
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      while (!changed() && std::chrono::steady_clock::now() < deadline)
        if (!prefetch_chunk())
          for (int i = 0; i < 64 && !changed(); ++i) cpu_relax();
      if (!changed()) {
        sleeping_.fetch_add(1, std::memory_order_seq_cst);
        {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          wake_.wait(lock, changed);
        }
        sleeping_.fetch_sub(1, std::memory_order_relaxed);
      }
      // stop_ is set before the destructor's generation bump: checked after reading the generation, it cannot
      // be missed (read first, a bump racing in between would be taken for a region and then slept through).
      seen = generation_.load(std::memory_order_acquire);
      if (stop_.load()) return;
      work(seen, /*from_back=*/true);
    }
  }

  // Prefetches the next kPrefetchChunk bytes of the current request, if any are left: false when none are.
  // Prefetch instructions never fault, so a request replaced (or its memory freed) meanwhile costs nothing.
  bool prefetch_chunk() {
    uint64_t cur = prefetch_claim_.load(std::memory_order_acquire);
    const uint64_t id = cur >> kIdShift;
    const ByteSpan a{prefetch_[0].data.load(std::memory_order_relaxed), prefetch_[0].bytes.load(std::memory_order_relaxed)};
    const ByteSpan b{prefetch_[1].data.load(std::memory_order_relaxed), prefetch_[1].bytes.load(std::memory_order_relaxed)};
    const uint64_t offset = cur & kOffsetMask;
    if (offset >= a.bytes + b.bytes || prefetch_id_.load(std::memory_order_acquire) != id) return false;
    if (!prefetch_claim_.compare_exchange_strong(cur, cur + kPrefetchChunk, std::memory_order_acq_rel)) return true;
    for (uint64_t o = offset; o < offset + kPrefetchChunk && o < a.bytes + b.bytes; o += 64) {
      const auto* p = static_cast<const char*>(o < a.bytes ? a.data : b.data) + (o < a.bytes ? o : o - a.bytes);
      __builtin_prefetch(p, 0, 2);
    }
    return true;
  }

  struct AtomicSpan {
    std::atomic<const void*> data{nullptr};
    std::atomic<size_t> bytes{0};
  };
  static constexpr uint64_t kPrefetchChunk = 4096;
  static constexpr int kIdShift = 40;
  static constexpr uint64_t kOffsetMask = (uint64_t{1} << kIdShift) - 1, kIdMask = (uint64_t{1} << (64 - kIdShift)) - 1;
  static constexpr int kSpinMicros = 200;
  AtomicSpan prefetch_[2];
  std::atomic<uint64_t> prefetch_id_{0};
  std::atomic<uint64_t> prefetch_claim_{0};  // request id << kIdShift | next offset to prefetch
  std::vector<std::thread> workers_;
  std::mutex region_mutex_, sleep_mutex_, error_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> claim_{0};
  std::atomic<const std::function<void(int64_t, int64_t)>*> task_{nullptr};
  std::atomic<Shape> shape_{Shape{0, 1, 1}};
  std::atomic<int64_t> pending_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool instance(hardware_threads() - 1);
  return instance;
}

}  // namespace

int hardware_threads() {
  // Cached: glibc answers hardware_concurrency() by reading sysfs, ~15 us a call.
  static const int n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  return n;
}

int plan_threads(int64_t n, int threads) {
  int t = threads <= 0 ? hardware_threads() : std::min(threads, hardware_threads());
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, n)));
}

void prefetch_when_idle(ByteSpan first, ByteSpan second) { pool().request_prefetch(first, second); }

void parallel_for(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int t = t_inside_region ? 1 : plan_threads(n, threads);
  if (t == 1) {
    fn(0, n);
    return;
  }
  // Rounded up: an uneven split gives the caller, which starts first, the longer range (decode attention's 9
  // query heads go 5 / 4: the worker starts ~0.3 us late, and the caller waited ~0.6 us less, AMD EPYC).
  pool().run(t, t, 1, [&](int64_t i, int64_t) {
    const int64_t begin = (n * i + t - 1) / t, end = (n * (i + 1) + t - 1) / t;
    if (begin < end) fn(begin, end);
  });
}

int64_t first_share(int64_t n, int threads) { return std::max<int64_t>(1, n * 7 / (8 * threads)); }

void parallel_for_balanced(int64_t n, int threads, int64_t grain,
                           const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int t = t_inside_region ? 1 : plan_threads(n, threads);
  if (t == 1) {
    fn(0, n);
    return;
  }
  if (n > kMaxUnits) {  // more items than a claim word counts: the even split
    parallel_for(n, t, fn);
    return;
  }
  pool().run(n, t, -std::clamp<int64_t>(grain, 1, 0x7fff), fn);
}

}  // namespace spinquant
