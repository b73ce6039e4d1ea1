// Attention over a quantized (4 / 8-bit) or float32 KV cache (decode and prefill), grouped-query, causal.
//
// Cache convention (shared with the Python fake quantizer): K and V rows are quantized per token and KV head
// in groups of `group` consecutive head_dim channels, asymmetric, b = 4 or 8 bits:
//   xmax = max(max(x), 0); xmin = min(min(x), 0); scale = (xmax - xmin) / (2^b - 1) (1 if that is 0);
//   zero = round(-xmin / scale); q = clamp(round(x / scale) + zero, 0, 2^b - 1); value = (q - zero) * scale
// in float32 with round-half-to-even. Storage [n_kv_heads][max_seq_len][...] so decode streams contiguous
// memory: codes row_bytes() a row (4-bit: channel d in byte d / 2, even d in the low nibble), scale and
// zero float32 [.. ][head_dim / group].
// With rotate_qk (SpinQuant's R3) keys are Hadamard-transformed over head_dim before quantization and
// queries before the dot product (head_dim a power of two), which leaves q.k unchanged.
#pragma once

#include <cstdint>
#include <vector>

namespace spinquant {

// One KV head of a cache as the kernels read it; the ExecuTorch ops build views of their own buffers.
// bits 4 / 8: K and V rows of row_bytes codes (layout above), scales / zeros [..][groups] float32.
// bits 32: float rows, codes[w] pointing at float32 [..][head_dim] (row_bytes = 4 * head_dim, group =
// head_dim, groups = 1); scales and zeros are unused (may be null).
struct KVHeadView {
  const uint8_t* codes[2];  // K, V rows of row_bytes
  const float* scales[2];
  const float* zeros[2];
  int64_t head_dim, group, groups, row_bytes;
  int bits;
};

// The view of a float32 K and V cache head: rows [..][head_dim].
KVHeadView float_head_view(const float* k, const float* v, int64_t head_dim);

class QuantKVCache {
 public:
  // Throws std::invalid_argument for non-positive sizes, bits not 4 or 8, a group not dividing head_dim,
  // an odd head_dim at 4 bits, or rotate_qk with head_dim not a power of two.
  QuantKVCache(int64_t n_kv_heads, int64_t head_dim, int64_t max_seq_len, int bits, int64_t group,
               bool rotate_qk = false);

  // k, v: float32 [T, n_kv_heads, head_dim] for positions start_pos .. start_pos + T - 1. start_pos may not
  // exceed length() (no gaps) and start_pos + T may not exceed max_seq_len; length() becomes start_pos + T.
  void append(const float* k, const float* v, int64_t T, int64_t start_pos);
  void reset() { length_ = 0; }

  int64_t n_kv_heads() const { return n_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t max_seq_len() const { return max_seq_; }
  int bits() const { return bits_; }
  int64_t group() const { return group_; }
  int64_t groups() const { return head_dim_ / group_; }
  bool rotate_qk() const { return rotate_; }
  int64_t length() const { return length_; }
  int64_t row_bytes() const { return head_dim_ * bits_ / 8; }

  // which = 0 for K, 1 for V. Codes [n_kv_heads][max_seq_len][row_bytes()], scales / zeros
  // [n_kv_heads][max_seq_len][groups()]; rows at positions >= length() are unspecified.
  const uint8_t* codes(int which) const { return codes_[which].data(); }
  const float* scales(int which) const { return scales_[which].data(); }
  const float* zeros(int which) const { return zeros_[which].data(); }

  // The kernels' view of one KV head.
  KVHeadView head_view(int64_t head) const;

 private:
  void store_row(int which, int64_t head, int64_t pos, const float* x);

  int64_t n_kv_heads_, head_dim_, max_seq_, group_;
  int bits_;
  bool rotate_;
  int64_t length_ = 0;
  std::vector<uint8_t> codes_[2];
  std::vector<float> scales_[2], zeros_[2];
};

// Quantizes one group of g floats by the convention above: unpacked codes, scale, zero.
void quantize_group_asym(const float* x, int64_t g, int bits, uint8_t* codes, float* scale, float* zero);

// Quantizes one cache row x [head_dim] (groups of `group`, 4 or 8 bits) into its stored form: row_bytes packed
// codes, groups scales and zeros. Throws std::invalid_argument on NaN or infinity.
void store_row_asym(const float* x, int64_t head_dim, int64_t group, int bits, uint8_t* codes, float* scales,
                    float* zeros);

// out[t, h, :] = softmax(scale * q[t, h] . K[0 .. pos[t]]) @ V[0 .. pos[t]] over heads[h / (n_heads /
// n_kv_heads)] (grouped-query, causal): q, out float32 [T, n_heads, head_dim]; every view holds rows up to
// max(pos) and shares head_dim and bits. scale <= 0 means 1 / sqrt(head_dim); threads <= 0: automatic. When
// the (token, KV head) jobs do not divide evenly over the threads and every query sees enough rows for chunks of
// 128 (a long-context decode step), each job's rows are split into chunks that merge afterwards, so the float
// rounding then depends on the thread count.
void attention(const KVHeadView* heads, int64_t n_kv_heads, const float* q, int64_t T, int64_t n_heads,
               const int64_t* pos, float* out, float scale = 0.0f, int threads = 0);

// attention() over a QuantKVCache, queries at positions start_pos .. start_pos + T - 1 (R3 on q when the cache
// rotates): the cache must already hold positions up to start_pos + T - 1.
void quant_kv_attention(const QuantKVCache& cache, const float* q, int64_t T, int64_t n_heads, int64_t start_pos,
                        float* out, float scale = 0.0f, int threads = 0);

namespace detail {

// r query heads sharing one KV head at one position, attending to cache rows 0 .. len - 1:
// q, out [r][head_dim]; scratch holds r * len + r * head_dim floats; stats (null, or [r][2]) receives each
// head's score maximum m and sum of exp(score - m), by which attention over separate row ranges merges.
// Implemented per ISA.
using AttendFn = void (*)(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                          float* scratch, float* stats);
void attend_ref(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                float* scratch, float* stats);
#if defined(__x86_64__)
void attend_avx2(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                 float* scratch, float* stats);
void attend_avx512(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                   float* scratch, float* stats);
#elif defined(__aarch64__)
void attend_neon(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                 float* scratch, float* stats);
#endif
AttendFn attend_kernel();

// A prefill tile: m tokens' r query heads sharing one KV head, q / out rows of token t and head i at
// t * stride + i * head_dim; token t attends to cache rows 0 .. lens[t] - 1. scratch holds
// tile_scratch_floats(m * r, max(lens), head_dim) floats. Implemented per ISA (the SIMD ones dequantize each
// cache row once for the tile); the reference is attend_ref a token at a time.
using AttendTileFn = void (*)(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                              const KVHeadView& kv, float scale, float* out, float* scratch);
int64_t tile_scratch_floats(int64_t rows, int64_t len, int64_t head_dim);
void attend_tile_ref(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens, const KVHeadView& kv,
                     float scale, float* out, float* scratch);
#if defined(__x86_64__)
void attend_tile_avx2(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                      const KVHeadView& kv, float scale, float* out, float* scratch);
void attend_tile_avx512(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                        const KVHeadView& kv, float scale, float* out, float* scratch);
#elif defined(__aarch64__)
void attend_tile_neon(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                      const KVHeadView& kv, float scale, float* out, float* scratch);
#endif
AttendTileFn attend_tile_kernel();

}  // namespace detail

}  // namespace spinquant
