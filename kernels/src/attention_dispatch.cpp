// QuantKVCache (validation, quantization on append), attention over head views (the split of (token, KV head,
// row chunk) units over threads, the per-ISA kernel choice) and quant_kv_attention (R3 on q).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "spinquant/attention.h"
#include "spinquant/cpu.h"
#include "spinquant/hadamard.h"
#include "spinquant/parallel.h"

namespace spinquant {

namespace {

constexpr int64_t kMinWorkPerThread = int64_t{1} << 16;  // multiply-adds below which a thread does not pay

// Chunks each (token, KV head) job's cache rows are split into so that `threads` threads get equal shares
// (flash-decoding): a decode step has one job a KV head, and SmolLM2's 3 on 2 cores would leave one core with two.
// Every chunk's softmax is normalized on its own and the chunks merge by their score maxima and sums. Only for
// few jobs and chunks of at least kChunkRows rows: a split row range restarts the memory streams, which costs
// more than the balance gains below that (decode attention over 30 layers, 2 threads, 2 chunks vs 1: 1.00 at 256
// rows, 0.93-0.95 at 512, 0.85-0.86 at 1000; at 1 thread, 8 chunks of 125 rows cost 15 %).
constexpr int64_t kChunkRows = 128;

// Tokens of a prefill tile: the cache rows are dequantized once for this many tokens' query heads.
constexpr int64_t kTileTokens = 8;

// The prefill tile at position k of the order the threads' contiguous ranges take: alternately from the front
// and the back, so that each range holds early (short) and late (long) causal rows alike.
int64_t zigzag(int64_t k, int64_t tiles) { return k % 2 == 0 ? k / 2 : tiles - 1 - k / 2; }

int64_t row_chunks(int64_t jobs, int threads, int64_t min_len) {
  if (threads < 2 || jobs >= 8 * threads) return 1;
  const int64_t c = threads / std::gcd<int64_t>(jobs, threads);
  return min_len / c >= kChunkRows ? c : 1;
}

// The view of kv's rows from j on.
KVHeadView rows_from(KVHeadView kv, int64_t j) {
  for (int w = 0; w < 2; ++w) {
    kv.codes[w] += j * kv.row_bytes;
    if (kv.bits != 32) {
      kv.scales[w] += j * kv.groups;
      kv.zeros[w] += j * kv.groups;
    }
  }
  return kv;
}

// out[r][hd] = the chunks' outputs part[c][r][hd], each normalized on its own, weighted by their share of the
// softmax sum: chunk c of head i has score maximum stats[c][i][0] and sum of exp(score - maximum) stats[c][i][1].
void merge_chunks(const float* part, const float* stats, int64_t chunks, int64_t r, int64_t hd, float* out) {
  for (int64_t i = 0; i < r; ++i) {
    float mx = stats[2 * i];
    for (int64_t c = 1; c < chunks; ++c) mx = std::max(mx, stats[2 * (c * r + i)]);
    float total = 0.0f;
    std::fill(out + i * hd, out + (i + 1) * hd, 0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float w = stats[2 * (c * r + i) + 1] * std::exp(stats[2 * (c * r + i)] - mx);
      total += w;
      const float* o = part + (c * r + i) * hd;
      for (int64_t d = 0; d < hd; ++d) out[i * hd + d] += w * o[d];
    }
    for (int64_t d = 0; d < hd; ++d) out[i * hd + d] /= total;
  }
}

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("quant_kv: " + msg); }

std::string str(int64_t v) { return std::to_string(v); }

bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

void quantize_group_asym(const float* x, int64_t g, int bits, uint8_t* codes, float* scale, float* zero) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  float xmax = 0.0f, xmin = 0.0f;
  for (int64_t i = 0; i < g; ++i) {
    if (!std::isfinite(x[i])) fail("cannot quantize NaN or infinity in k / v");
    xmax = std::max(xmax, x[i]);
    xmin = std::min(xmin, x[i]);
  }
  float s = (xmax - xmin) / qmax;
  if (s == 0.0f) s = 1.0f;
  const float z = std::nearbyint(-xmin / s);  // round half to even (default rounding mode)
  for (int64_t i = 0; i < g; ++i)
    codes[i] = static_cast<uint8_t>(std::clamp(std::nearbyint(x[i] / s) + z, 0.0f, qmax));
  *scale = s;
  *zero = z;
}

QuantKVCache::QuantKVCache(int64_t n_kv_heads, int64_t head_dim, int64_t max_seq_len, int bits, int64_t group,
                           bool rotate_qk)
    : n_kv_heads_(n_kv_heads), head_dim_(head_dim), max_seq_(max_seq_len), group_(group), bits_(bits),
      rotate_(rotate_qk) {
  if (n_kv_heads <= 0 || head_dim <= 0 || max_seq_len <= 0)
    fail("n_kv_heads, head_dim and max_seq_len must be positive, got " + str(n_kv_heads) + ", " + str(head_dim) +
         ", " + str(max_seq_len));
  if (bits != 4 && bits != 8) fail("bits must be 4 or 8, got " + str(bits));
  if (group <= 0 || head_dim % group != 0)
    fail("group " + str(group) + " must divide head_dim " + str(head_dim) + " (use head_dim or a divisor)");
  if (bits == 4 && head_dim % 2 != 0) fail("4-bit codes pack two a byte: head_dim must be even, got " + str(head_dim));
  if (rotate_qk && !is_pow2(head_dim))
    fail("rotate_qk needs head_dim a power of two, got " + str(head_dim));
  const size_t rows = static_cast<size_t>(n_kv_heads * max_seq_len);
  for (int w = 0; w < 2; ++w) {
    codes_[w].assign(rows * static_cast<size_t>(row_bytes()), 0);
    scales_[w].assign(rows * static_cast<size_t>(groups()), 0.0f);
    zeros_[w].assign(rows * static_cast<size_t>(groups()), 0.0f);
  }
}

void store_row_asym(const float* x, int64_t head_dim, int64_t group, int bits, uint8_t* codes, float* scales,
                    float* zeros) {
  thread_local std::vector<uint8_t> unpacked;  // 4-bit rows: one code a byte first (grown once, reused)
  uint8_t* q = codes;
  if (bits == 4) {
    if (static_cast<int64_t>(unpacked.size()) < head_dim) unpacked.resize(static_cast<size_t>(head_dim));
    q = unpacked.data();
  }
  for (int64_t g = 0; g < head_dim / group; ++g)
    quantize_group_asym(x + g * group, group, bits, q + g * group, scales + g, zeros + g);
  if (bits == 4)
    for (int64_t b = 0; b < head_dim / 2; ++b) codes[b] = static_cast<uint8_t>(q[2 * b] | (q[2 * b + 1] << 4));
}

void QuantKVCache::store_row(int which, int64_t head, int64_t pos, const float* x) {
  const int64_t row = head * max_seq_ + pos;
  store_row_asym(x, head_dim_, group_, bits_, codes_[which].data() + row * row_bytes(),
                 scales_[which].data() + row * groups(), zeros_[which].data() + row * groups());
}

void QuantKVCache::append(const float* k, const float* v, int64_t T, int64_t start_pos) {
  if (T < 0) fail("append: T must be >= 0, got " + str(T));
  if (start_pos < 0 || start_pos > length_)
    fail("append: start_pos " + str(start_pos) + " must be in [0, length=" + str(length_) +
         "] (positions are written in order, without gaps)");
  if (start_pos + T > max_seq_)
    fail("append: positions up to " + str(start_pos + T - 1) + " exceed max_seq_len " + str(max_seq_) +
         " (make a bigger cache)");
  if (T == 0) return;
  if (k == nullptr || v == nullptr) fail("append: null k or v");
  const int64_t row_floats = n_kv_heads_ * head_dim_;
  for (const float* x : {k, v})  // checked up front: a failed append leaves the stored positions untouched
    if (!std::all_of(x, x + T * row_floats, [](float f) { return std::isfinite(f); }))
      fail("append: k / v contain NaN or infinity");
  std::vector<float> rotated;
  if (rotate_) {  // R3: keys Hadamard-transformed before quantization
    rotated.assign(k, k + T * row_floats);
    HadamardTransform(head_dim_, nullptr, 1).apply(rotated.data(), T * n_kv_heads_, 1);
    k = rotated.data();
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < n_kv_heads_; ++h) {
      store_row(0, h, start_pos + t, k + t * row_floats + h * head_dim_);
      store_row(1, h, start_pos + t, v + t * row_floats + h * head_dim_);
    }
  length_ = start_pos + T;
}

KVHeadView QuantKVCache::head_view(int64_t head) const {
  KVHeadView kv{};
  for (int w = 0; w < 2; ++w) {
    kv.codes[w] = codes_[w].data() + head * max_seq_ * row_bytes();
    kv.scales[w] = scales_[w].data() + head * max_seq_ * groups();
    kv.zeros[w] = zeros_[w].data() + head * max_seq_ * groups();
  }
  kv.head_dim = head_dim_;
  kv.group = group_;
  kv.groups = groups();
  kv.row_bytes = row_bytes();
  kv.bits = bits_;
  return kv;
}

KVHeadView float_head_view(const float* k, const float* v, int64_t head_dim) {
  KVHeadView kv{};
  kv.codes[0] = reinterpret_cast<const uint8_t*>(k);
  kv.codes[1] = reinterpret_cast<const uint8_t*>(v);
  kv.head_dim = kv.group = head_dim;
  kv.groups = 1;
  kv.row_bytes = head_dim * 4;
  kv.bits = 32;
  return kv;
}

void attention(const KVHeadView* heads, int64_t n_kv, const float* q, int64_t T, int64_t n_heads, const int64_t* pos,
               float* out, float scale, int threads) {
  if (T < 0) fail("attention: T must be >= 0, got " + str(T));
  if (n_kv <= 0 || n_heads <= 0 || n_heads % n_kv != 0)
    fail("attention: n_heads " + str(n_heads) + " must be a positive multiple of n_kv_heads " + str(n_kv));
  if (T == 0) return;
  if (heads == nullptr || q == nullptr || out == nullptr || pos == nullptr) fail("attention: null argument");
  const int64_t hd = heads[0].head_dim, r = n_heads / n_kv, row_floats = n_heads * hd;
  int64_t max_len = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (pos[t] < 0) fail("attention: negative position " + str(pos[t]));
    max_len = std::max(max_len, pos[t] + 1);
  }
  if (!(scale > 0.0f)) scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int64_t work = T * max_len * (r + 1) * hd;
  const int nt = threads > 0 ? threads
                             : static_cast<int>(std::clamp<int64_t>(work / kMinWorkPerThread, 1, hardware_threads()));
  const int64_t jobs = T * n_kv, head_floats = r * hd;
  const int64_t chunks = row_chunks(jobs, plan_threads(jobs * nt, nt), *std::min_element(pos, pos + T) + 1);
  if (chunks == 1 && T > 1) {  // prefill: tiles of kTileTokens tokens, one KV head a unit
    const detail::AttendTileFn attend_tile = detail::attend_tile_kernel();
    std::vector<int64_t> lens(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) lens[t] = pos[t] + 1;
    const int64_t tiles = (T + kTileTokens - 1) / kTileTokens;
    parallel_for(tiles * n_kv, nt, [&](int64_t u0, int64_t u1) {
      thread_local std::vector<float> scratch;
      const auto need = static_cast<size_t>(detail::tile_scratch_floats(kTileTokens * r, max_len, hd));
      if (scratch.size() < need) scratch.resize(need);
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t t0 = zigzag(u / n_kv, tiles) * kTileTokens, h = u % n_kv, off = t0 * row_floats + h * head_floats;
        attend_tile(q + off, std::min(kTileTokens, T - t0), r, row_floats, lens.data() + t0, heads[h], scale, out + off,
                    scratch.data());
      }
    });
    return;
  }
  const detail::AttendFn attend = detail::attend_kernel();
  thread_local std::vector<float> parts;  // chunk outputs [jobs * chunks][r][hd], then their stats [..][r][2]
  if (chunks > 1) parts.resize(static_cast<size_t>(jobs * chunks * (head_floats + 2 * r)));
  float* const part = parts.data();  // a pointer: inside the region, `parts` would name each thread's own
  float* const stats = part + jobs * chunks * head_floats;
  // Units of work: query heads (token-major) when rows are not split (a decode step), so that 3 KV heads' 9 query
  // heads go 4 / 5 over 2 threads, not 3 / 6 (a KV head whose heads two threads share is read by both); else (token,
  // KV head, chunk of rows), chunk-minor.
  const int64_t units = chunks == 1 ? T * n_heads : jobs * chunks;
  parallel_for(units, nt, [&](int64_t u0, int64_t u1) {
    thread_local std::vector<float> scratch;  // grown once, reused by every call on this thread
    const size_t need = static_cast<size_t>(r * (max_len + hd));
    if (scratch.size() < need) scratch.resize(need);
    if (chunks == 1) {
      for (int64_t i = u0; i < u1;) {  // the query heads [i, e) of one (token, KV head) job
        const int64_t job = i / r, e = std::min(u1, (job + 1) * r), t = job / n_kv, h = job % n_kv;
        const int64_t off = t * row_floats + h * head_floats + (i - job * r) * hd;
        attend(q + off, e - i, heads[h], pos[t] + 1, scale, out + off, scratch.data(), nullptr);
        i = e;
      }
      return;
    }
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t job = u / chunks, c = u % chunks, t = job / n_kv, h = job % n_kv;
      const int64_t len = pos[t] + 1, off = t * row_floats + h * head_floats;
      const int64_t b = len * c / chunks, e = len * (c + 1) / chunks;
      attend(q + off, r, rows_from(heads[h], b), e - b, scale, part + u * head_floats, scratch.data(),
             stats + 2 * u * r);
    }
  });
  if (chunks > 1)
    for (int64_t job = 0; job < jobs; ++job)
      merge_chunks(part + job * chunks * head_floats, stats + 2 * job * chunks * r, chunks, r, hd,
                   out + job * head_floats);  // job t * n_kv + h sits at t * row_floats + h * head_floats
}

void quant_kv_attention(const QuantKVCache& cache, const float* q, int64_t T, int64_t n_heads, int64_t start_pos,
                        float* out, float scale, int threads) {
  const int64_t n_kv = cache.n_kv_heads(), hd = cache.head_dim();
  if (T < 0) fail("attention: T must be >= 0, got " + str(T));
  if (n_heads <= 0 || n_heads % n_kv != 0)
    fail("attention: n_heads " + str(n_heads) + " must be a positive multiple of n_kv_heads " + str(n_kv));
  if (start_pos < 0 || start_pos + T > cache.length())
    fail("attention: queries at positions " + str(start_pos) + ".." + str(start_pos + T - 1) +
         " need those keys in the cache, which holds " + str(cache.length()) + " (append k/v first)");
  if (T == 0) return;
  if (q == nullptr || out == nullptr) fail("attention: null q or out");
  std::vector<float> rotated;
  if (cache.rotate_qk()) {
    rotated.assign(q, q + T * n_heads * hd);
    HadamardTransform(hd, nullptr, 1).apply(rotated.data(), T * n_heads, 1);
    q = rotated.data();
  }
  std::vector<KVHeadView> heads(static_cast<size_t>(n_kv));
  for (int64_t h = 0; h < n_kv; ++h) heads[h] = cache.head_view(h);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[t] = start_pos + t;
  attention(heads.data(), n_kv, q, T, n_heads, pos.data(), out, scale, threads);
}

namespace detail {

int64_t tile_scratch_floats(int64_t rows, int64_t len, int64_t head_dim) {
  // queries and outputs [rows + pad][head_dim], scores [rows + pad][len + pad], a block of 2W cache rows (W <= 16
  // floats a vector); at least attend_ref's r * (len + head_dim) for the reference tile
  return (rows + 16) * (2 * head_dim + len + 64) + 32 * head_dim;
}

AttendTileFn attend_tile_kernel() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return attend_tile_avx512;
    case Isa::Avx2: return attend_tile_avx2;
#elif defined(__aarch64__)
    case Isa::I8mm:
    case Isa::Dotprod:
    case Isa::Neon: return attend_tile_neon;
#endif
    default: return attend_tile_ref;
  }
}

AttendFn attend_kernel() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return attend_avx512;
    case Isa::Avx2: return attend_avx2;
#elif defined(__aarch64__)
    case Isa::I8mm:
    case Isa::Dotprod:
    case Isa::Neon: return attend_neon;
#endif
    default: return attend_ref;
  }
}

}  // namespace detail

}  // namespace spinquant
