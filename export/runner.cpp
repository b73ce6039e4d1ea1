// spinquant_runner: runs a spinquant .pte (forward(tokens [1, T] int64, input_pos [T] int64) -> logits
// [1, T, V]) with the ExecuTorch runtime: prefill the prompt ids, then greedy decode one token at a time.
//
//   spinquant_runner MODEL.pte --tokens 1,2,3 [--max-new 16] [--threads N] [--runs R]
//
// Prints the generated ids on one line ("ids: 5 7 ..."), then prefill and decode timings (wall clock, and the
// process CPU time a token, which stays meaningful when other work shares the cores): the medians of R runs of
// the whole generation (the first run, which prepacks the weights, is not timed when R > 1).
#include "program.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string model;
  std::vector<int64_t> tokens;
  int max_new = 16;
  int threads = 0;
  int runs = 1;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "spinquant_runner: %s\nusage: spinquant_runner MODEL.pte --tokens 1,2,3 [--max-new N] "
                       "[--threads N] [--runs R]\n", msg);
  std::exit(2);
}

std::vector<int64_t> parse_ids(const char* s) {
  std::vector<int64_t> ids;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    const long long v = std::strtoll(p, &end, 10);
    if (end == p || v < 0) usage("--tokens takes comma-separated non-negative integers");
    ids.push_back(v);
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') usage("--tokens takes comma-separated non-negative integers");
  }
  if (ids.empty()) usage("--tokens needs at least one id");
  return ids;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--tokens" && has_value) a.tokens = parse_ids(argv[++i]);
    else if (arg == "--max-new" && has_value) a.max_new = std::atoi(argv[++i]);
    else if (arg == "--threads" && has_value) a.threads = std::atoi(argv[++i]);
    else if (arg == "--runs" && has_value) a.runs = std::atoi(argv[++i]);
    else if (arg.rfind("--", 0) == 0) usage(("unknown or incomplete option " + arg).c_str());
    else a.model = arg;
  }
  if (a.model.empty()) usage("missing MODEL.pte");
  if (a.tokens.empty()) usage("missing --tokens");
  if (a.max_new < 1) usage("--max-new must be >= 1");
  if (a.runs < 1) usage("--runs must be >= 1");
  return a;
}

// Process CPU time (all threads), to read timings on a shared, busy machine.
double cpu_ms() { return 1000.0 * static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs forward on ids at positions start.. and returns the argmax of the last position's logits.
int64_t step(SpinquantProgram* program, const std::vector<int64_t>& ids, int64_t start) {
  std::vector<int64_t> pos(ids.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = start + static_cast<int64_t>(i);
  int64_t next = 0;
  const int err = spinquant_et_forward(program, ids.data(), pos.data(), static_cast<int64_t>(ids.size()), nullptr,
                                       0, &next);
  if (err != 0) {
    std::fprintf(stderr, "spinquant_runner: forward failed (error 0x%x); was the .pte exported by "
                         "spinquant-export and is libspinquant_et_ops linked?\n", err);
    std::exit(1);
  }
  return next;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  spinquant_et_set_threads(args.threads);
  SpinquantProgram* program = spinquant_et_open(args.model.c_str(), "forward");
  if (program == nullptr) {
    std::fprintf(stderr, "spinquant_runner: cannot load method 'forward' of %s (missing file, not a .pte, or "
                         "an operator this runner lacks)\n", args.model.c_str());
    return 1;
  }
  std::vector<int64_t> out;
  std::vector<double> prefill, decode, decode_cpu;
  for (int run = 0; run < args.runs + (args.runs > 1); ++run) {  // run 0 (prepacking) is a warm-up when R > 1
    out.clear();
    const double t0 = now_ms();
    out.push_back(step(program, args.tokens, 0));
    const double t1 = now_ms(), c1 = cpu_ms();
    int64_t pos = static_cast<int64_t>(args.tokens.size());
    for (int i = 1; i < args.max_new; ++i, ++pos) out.push_back(step(program, {out.back()}, pos));
    const double t2 = now_ms(), c2 = cpu_ms();
    if (args.runs > 1 && run == 0) continue;
    prefill.push_back(t1 - t0);
    decode.push_back((t2 - t1) / std::max(1, args.max_new - 1));
    decode_cpu.push_back((c2 - c1) / std::max(1, args.max_new - 1));
  }
  std::printf("ids:");
  for (int64_t id : out) std::printf(" %lld", static_cast<long long>(id));
  const double prefill_ms = median(prefill);
  std::printf("\nprefill_ms %.3f prefill_tok_per_s %.1f\n", prefill_ms, 1000.0 * args.tokens.size() / prefill_ms);
  if (args.max_new > 1)
    std::printf("decode_ms_per_token %.3f decode_cpu_ms_per_token %.3f\n", median(decode), median(decode_cpu));
  spinquant_et_close(program);
  return 0;
}
