// spinquant_runner: runs a spinquant .pte (forward(tokens [1, T] int64, input_pos [T] int64, logit_rows [R] int64)
// -> logits [1, R, V]) with the ExecuTorch runtime: prefill the prompt, then decode one token at a time.
//
//   spinquant_runner MODEL.pte --prompt "text" [--max-new 64] [--temperature T] [--top-p P] [--seed S]
//                    [--threads N] [--runs R]
//   spinquant_runner MODEL.pte --tokens 1,2,3 [same options]
//
// With --prompt (the program's own tokenizer, packed by spinquant-export): prints the prompt and the generated
// text as it comes, stops at the end-of-sequence token, and reports the speed on stderr. With --tokens: prints
// the generated ids ("ids: 5 7 ..."), then the prefill and decode timings (wall clock, and the process CPU time
// a token, which stays meaningful when other work shares the cores). Timings are the medians of R runs of the
// whole generation (the first run, which prepacks the weights, is not timed when R > 1). Greedy unless
// --temperature > 0 (then nucleus sampling, seeded: the same seed gives the same text).
#include "program.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string model;
  std::string prompt;
  bool has_prompt = false;
  std::vector<int64_t> tokens;
  int max_new = 0;  // 0: 64 with --prompt, 16 with --tokens
  double temperature = 0.0;
  double top_p = 1.0;
  uint64_t seed = 0;
  int threads = 0;
  int runs = 1;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "spinquant_runner: %s\nusage: spinquant_runner MODEL.pte (--prompt TEXT | --tokens 1,2,3) "
                       "[--max-new N] [--temperature T] [--top-p P] [--seed S] [--threads N] [--runs R]\n", msg);
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

double parse_number(const char* s, const char* flag) {
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end) usage((std::string(flag) + " takes a number").c_str());
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--prompt" && has_value) a.prompt = argv[++i], a.has_prompt = true;
    else if (arg == "--tokens" && has_value) a.tokens = parse_ids(argv[++i]);
    else if (arg == "--max-new" && has_value) a.max_new = std::atoi(argv[++i]);
    else if (arg == "--temperature" && has_value) a.temperature = parse_number(argv[++i], "--temperature");
    else if (arg == "--top-p" && has_value) a.top_p = parse_number(argv[++i], "--top-p");
    else if (arg == "--seed" && has_value) a.seed = std::strtoull(argv[++i], nullptr, 10);
    else if (arg == "--threads" && has_value) a.threads = std::atoi(argv[++i]);
    else if (arg == "--runs" && has_value) a.runs = std::atoi(argv[++i]);
    else if (arg.rfind("--", 0) == 0) usage(("unknown or incomplete option " + arg).c_str());
    else a.model = arg;
  }
  if (a.model.empty()) usage("missing MODEL.pte");
  if (a.has_prompt == !a.tokens.empty()) usage("give either --prompt or --tokens");
  if (a.max_new == 0) a.max_new = a.has_prompt ? 64 : 16;
  if (a.max_new < 1) usage("--max-new must be >= 1");
  if (a.runs < 1) usage("--runs must be >= 1");
  if (!(a.temperature >= 0) || !(a.top_p > 0 && a.top_p <= 1)) usage("--temperature must be >= 0, --top-p in (0, 1]");
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

// e^x for x <= 0 in float (relative error ~1e-7; 0 below -87), in plain arithmetic the compiler vectorizes
// (with -fno-trapping-math, which lets it turn the clamp into a select).
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f, kRound = 12582912.0f;
  const float c = x > -87.0f ? x : -87.0f;
  const float n = (c * kLog2e + kRound) - kRound;  // nearest integer to x / ln 2
  const float r = (c - n * kLn2Hi) - n * kLn2Lo;     // |r| <= ln 2 / 2
  const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n as a float's bits
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Largest of x[0, n), n >= 1, in eight independent lanes.
float max_of(const float* x, int64_t n) {
  float lane[8];
  std::fill(lane, lane + 8, x[0]);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  for (; i < n; ++i) lane[0] = x[i] > lane[0] ? x[i] : lane[0];
  return *std::max_element(lane, lane + 8);
}

// Temperature + nucleus sampling over one row of logits, seeded (the same draws on every platform). Only the
// tokens the nucleus can keep are sorted: those above the highest power-of-16 threshold whose tokens hold
// top_p of the mass, found in one pass from a histogram of the odds' exponents.
class Sampler {
 public:
  Sampler(double temperature, double top_p, uint64_t seed) : temperature_(temperature), top_p_(top_p), rng_(seed) {}

  int64_t pick(const float* logits, int64_t vocab) {
    const float top = max_of(logits, vocab), inv_t = static_cast<float>(1.0 / temperature_);
    probs_.resize(static_cast<size_t>(vocab));
    for (int64_t v = 0; v < vocab; ++v) probs_[v] = exp_nonpositive((logits[v] - top) * inv_t);
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    if (top_p_ >= 1) return draw_in_order(u);
    double mass[kBuckets] = {}, total = 0;  // mass[k]: tokens with odds in [16^-(k+1), 16^-k)
    for (float p : probs_) mass[bucket(p)] += p;
    for (double m : mass) total += m;
    const double want = top_p_ * total;
    int k = 0;
    for (double below = mass[0]; below < want && k + 1 < kBuckets;) below += mass[++k];
    const float floor = k + 1 < kBuckets ? std::ldexp(1.0f, -4 * (k + 1)) : 0.0f;  // buckets 0..k
    kept_.clear();
    for (int64_t v = 0; v < vocab; ++v)
      if (probs_[v] >= floor) kept_.push_back(v);
    std::sort(kept_.begin(), kept_.end(), [&](int64_t a, int64_t b) {
      return probs_[a] > probs_[b] || (probs_[a] == probs_[b] && a < b);
    });
    double before = 0;  // keep a token while the mass before it is under top_p (the first always)
    size_t n = 0;
    while (n < kept_.size() && (n == 0 || before < want)) before += probs_[kept_[n++]];
    double sum = 0;
    for (size_t i = 0; i < n; ++i)
      if ((sum += probs_[kept_[i]]) > u * before) return kept_[i];
    return kept_[n - 1];
  }

 private:
  static constexpr int kBuckets = 32;  // the last one holds everything below 16^-31, zero included

  static int bucket(float p) {  // k with p in [16^-(k+1), 16^-k), from p's binary exponent
    uint32_t bits;
    std::memcpy(&bits, &p, sizeof bits);
    const int k = (130 - static_cast<int>(bits >> 23)) / 4 - 1;
    return k < 0 ? 0 : k < kBuckets ? k : kBuckets - 1;
  }

  int64_t draw_in_order(double u) const {  // the token where the running mass passes u of the total
    double total = 0;
    for (float p : probs_) total += p;
    double sum = 0;
    for (size_t v = 0; v < probs_.size(); ++v)
      if ((sum += probs_[v]) > u * total) return static_cast<int64_t>(v);
    return static_cast<int64_t>(probs_.size()) - 1;
  }

  double temperature_, top_p_;
  std::mt19937_64 rng_;
  std::vector<float> probs_;  // odds against the top token
  std::vector<int64_t> kept_;
};

class Generator {
 public:
  Generator(SpinquantProgram* program, const Args& args)
      : program_(program), greedy_(args.temperature == 0), logits_(greedy_ ? 0 : spinquant_et_vocab(program)),
        sampler_(args.temperature, args.top_p, args.seed) {}

  // Runs forward on ids at positions start.. and returns the next token.
  int64_t step(const std::vector<int64_t>& ids, int64_t start) {
    std::vector<int64_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), start);
    int64_t next = 0;
    const int err = spinquant_et_forward(program_, ids.data(), pos.data(), static_cast<int64_t>(ids.size()),
                                         greedy_ ? nullptr : logits_.data(), greedy_ ? 0 : 1, &next);
    if (err != 0) {
      std::fprintf(stderr, "spinquant_runner: forward failed (error 0x%x); was the .pte exported by "
                           "spinquant-export and is libspinquant_et_ops linked?\n", err);
      std::exit(1);
    }
    return greedy_ ? next : sampler_.pick(logits_.data(), static_cast<int64_t>(logits_.size()));
  }

 private:
  SpinquantProgram* program_;
  bool greedy_;
  std::vector<float> logits_;
  Sampler sampler_;
};

// The tokenizer the program carries; exits with a message if it has none.
SpinquantTokenizer* program_tokenizer(SpinquantProgram* program, const std::string& path) {
  const int64_t size = spinquant_et_bytes(program, "spinquant_tokenizer", nullptr, 0);
  if (size < 0) {
    std::fprintf(stderr, "spinquant_runner: %s carries no tokenizer (exported before tokenizers were packed, or "
                         "its tokenizer is not a byte-level BPE); pass token ids with --tokens\n", path.c_str());
    std::exit(1);
  }
  std::vector<uint8_t> blob(static_cast<size_t>(size));
  spinquant_et_bytes(program, "spinquant_tokenizer", blob.data(), size);
  SpinquantTokenizer* tok = spinquant_tok_new(blob.data(), size);
  if (tok == nullptr) {
    std::fprintf(stderr, "spinquant_runner: the tokenizer in %s is damaged or of another version; re-export it with "
                         "spinquant-export\n", path.c_str());
    std::exit(1);
  }
  return tok;
}

// True if the program's metadata names a checksum (then spinquant_et_verify must have found it).
bool records_checksum(SpinquantProgram* program) {
  const int64_t size = spinquant_et_bytes(program, "spinquant_metadata", nullptr, 0);
  if (size <= 0) return false;
  std::string meta(static_cast<size_t>(size), '\0');
  spinquant_et_bytes(program, "spinquant_metadata", reinterpret_cast<uint8_t*>(meta.data()), size);
  return meta.find("\"checksum\"") != std::string::npos;
}

// Writes the bytes of one generated token to stdout as it comes.
void print_token(const SpinquantTokenizer* tok, int64_t id) {
  const char* bytes = nullptr;
  const int64_t n = spinquant_tok_decode(tok, id, &bytes);
  std::fwrite(bytes, 1, static_cast<size_t>(n), stdout);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  spinquant_et_set_threads(args.threads);
  const int integrity = spinquant_et_verify(args.model.c_str());
  if (integrity == 2 || integrity == 3) {
    std::fprintf(stderr, "spinquant_runner: %s %s\n", args.model.c_str(),
                 integrity == 2 ? "is damaged: its contents do not match its recorded checksum; re-export it"
                                : "cannot be read (missing, empty or not a file)");
    return 1;
  }
  SpinquantProgram* program = spinquant_et_open(args.model.c_str(), nullptr);
  if (program == nullptr) {
    std::fprintf(stderr, "spinquant_runner: %s is not an ExecuTorch program (corrupt or truncated?); re-export it\n",
                 args.model.c_str());
    return 1;
  }
  if (spinquant_et_load(program, "forward") != 0) {
    std::fprintf(stderr, "spinquant_runner: cannot load method 'forward' of %s (an operator this runner lacks: see "
                         "the log above)\n", args.model.c_str());
    return 1;
  }
  if (integrity == 1 && records_checksum(program)) {
    std::fprintf(stderr, "spinquant_runner: %s is damaged: its checksum record is unreadable; re-export it\n",
                 args.model.c_str());
    return 1;
  }
  SpinquantTokenizer* tok = nullptr;
  int64_t eos = -1;
  if (args.has_prompt) {
    tok = program_tokenizer(program, args.model);
    eos = spinquant_tok_eos(tok);
    const auto len = static_cast<int64_t>(args.prompt.size());
    args.tokens.resize(args.prompt.size() + 8);  // a token a byte at most, plus a few BOS-style ids: one call
    const int64_t n = spinquant_tok_encode(tok, args.prompt.data(), len, args.tokens.data(), len + 8);
    args.tokens.resize(static_cast<size_t>(n));
    if (n > len + 8) spinquant_tok_encode(tok, args.prompt.data(), len, args.tokens.data(), n);
    if (args.tokens.empty()) usage("the prompt is empty: give at least one token's worth of text");
  }
  std::vector<int64_t> out;
  std::vector<double> prefill, decode, decode_cpu;
  const int last = args.runs > 1 ? args.runs : 0;
  for (int run = 0; run <= last; ++run) {  // run 0 (prepacking) is a warm-up when R > 1
    const bool shown = tok != nullptr && run == last;  // the text of the last run
    if (shown) std::fwrite(args.prompt.data(), 1, args.prompt.size(), stdout);
    Generator gen(program, args);
    out.clear();
    const double t0 = now_ms();
    out.push_back(gen.step(args.tokens, 0));
    const double t1 = now_ms(), c1 = cpu_ms();
    int64_t pos = static_cast<int64_t>(args.tokens.size());
    for (int i = 1; i < args.max_new && out.back() != eos; ++i, ++pos) {
      if (shown) print_token(tok, out.back());
      out.push_back(gen.step({out.back()}, pos));
    }
    const double t2 = now_ms(), c2 = cpu_ms();
    if (shown) {
      print_token(tok, out.back());
      std::fputc('\n', stdout);
    }
    if (args.runs > 1 && run == 0) continue;
    const int steps = std::max<int>(1, static_cast<int>(out.size()) - 1);
    prefill.push_back(t1 - t0);
    decode.push_back((t2 - t1) / steps);
    decode_cpu.push_back((c2 - c1) / steps);
  }
  const double prefill_ms = median(prefill);
  FILE* report = tok != nullptr ? stderr : stdout;
  if (tok == nullptr) {
    std::printf("ids:");
    for (int64_t id : out) std::printf(" %lld", static_cast<long long>(id));
    std::printf("\n");
  }
  std::fprintf(report, "prefill_ms %.3f prefill_tok_per_s %.1f\n", prefill_ms, 1000.0 * args.tokens.size() / prefill_ms);
  if (out.size() > 1)
    std::fprintf(report, "decode_ms_per_token %.3f decode_cpu_ms_per_token %.3f\n", median(decode), median(decode_cpu));
  spinquant_tok_free(tok);
  spinquant_et_close(program);
  return 0;
}
