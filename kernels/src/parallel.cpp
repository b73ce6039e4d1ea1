#include "spinquant/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace spinquant {
namespace {

thread_local bool t_inside_region = false;

// Workers sleep on a condition variable between regions, after spinning briefly so that
// back-to-back small kernels (decode GEMVs) do not pay a wake-up each time.
class Pool {
 public:
  explicit Pool(int n_workers) {
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(i) for i in [0, n_tasks) on the workers and the calling thread.
  void run(int n_tasks, const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> region(region_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      n_tasks_ = n_tasks;
      next_.store(0);
      pending_.store(n_tasks);
      error_ = nullptr;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    work();
    // Wait until every task finished and every worker left work(); only then may the next
    // region reset the counters.
    while (pending_.load(std::memory_order_acquire) > 0 || active_.load(std::memory_order_acquire) > 0)
      std::this_thread::yield();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = nullptr;
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    t_inside_region = true;
    for (int i = next_.fetch_add(1); i < n_tasks_; i = next_.fetch_add(1)) {
      try {
        (*task_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
    t_inside_region = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (generation_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() < spin_until)
        std::this_thread::yield();
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        seen = generation_.load();
        if (stop_) return;
        if (task_ == nullptr) continue;
        active_.fetch_add(1);
      }
      work();
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex region_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> active_{0};
  const std::function<void(int)>* task_ = nullptr;
  int n_tasks_ = 0;
  std::exception_ptr error_;
  bool stop_ = false;
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

void parallel_for(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int t = t_inside_region ? 1 : plan_threads(n, threads);
  if (t == 1) {
    fn(0, n);
    return;
  }
  auto range = [&](int i) {
    int64_t begin = n * i / t, end = n * (i + 1) / t;
    if (begin < end) fn(begin, end);
  };
  pool().run(t, range);
}

}  // namespace spinquant
