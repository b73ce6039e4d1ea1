// int4-weight linear layers: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), W in 4 bits.
//
// Storage format (docs/INT4_FORMAT.md): qweight uint8 [N, ceil(K/2)] (even k in the low nibble),
// scales float16 [N, G], optional zeros uint8 [N, G] (asymmetric), G = ceil(K / group); symmetric
// weights dequantize as (q - 8) * s, asymmetric as (q - z) * s. `prepack` converts this once, at
// load time, into the interleaved layout below; `unpack` and `dequantize` convert back.
//
// Activations are quantized per token (row of x) on the fly, asymmetric, with the convention shared
// with the Python fake quantizer (see quantize_activations); act_bits = 16 keeps them in fp32.
//
// Packed layout (PackedInt4):
// - Rows are taken in blocks of kRows = 16 (the last block is padded with zero rows).
// - Each group g covers padded input positions [goff[g], goff[g+1]): its valid length len[g] rounded
//   up to a multiple of 8. Codes beyond the valid length are 0 (and so are the matching activation
//   codes), so padding adds nothing.
// - codes: for block b and padded position p (a multiple of 8), 64 bytes at
//   codes[b * Kp * 8 + p * 8]; byte 4 * r + j holds q[row 16b + r][p + j] in its low nibble and
//   q[16b + r][p + 4 + j] in its high nibble (r < 16, j < 4). One 64-byte load thus gives, after
//   masking, a 16-row x 4-input tile ready for u8 x s8 dot products of 4 (VNNI vpdpbusd, sdot).
// - scales: float16 bits [NB, G, 16]; zeros (asymmetric only): uint8 [NB, G, 16].
// - corr: float [NB * 16], corr[n] = sum_g s[n, g] * sum_{k in g} (q[n, k] - z[n, g]) (fp32).
// - qsum (aarch64 builds only, for sdot with shifted activations): int32 [NB, G, 16], sum of codes.
//
// Quantized-activation arithmetic (bit-identical on every ISA): with activation codes a (scale sa,
// zero za) and per group the integer D = sum_k a[k] q[k] and A = sum_k a[k],
//   I[g] = D - z[g] A                                    (int32, exact)
//   acc  = fma(sa * s[g], float(I[g]), acc)              for g = 0 .. G-1 (fp32, in order)
//   y    = fma(-(sa * float(za)), corr[n], acc) (+ bias[n])
// which equals sum_k (a - za) sa (q - z) s up to fp32 rounding.
//
// Paths (chosen per call by spinquant::active_isa(); SPINQUANT_ISA forces one): scalar reference;
// AVX2 (vpmaddubsw); AVX-512 VNNI (vpdpbusd, 8 tokens a tile); NEON (umull/uadalp); NEON dotprod
// (sdot, 2 tokens a tile); i8mm (usmmla on token pairs, prefill). W4A16 (fp32 activations) runs
// fp32 FMAs on codes converted on the fly (AVX-512: vpermps lookup) and sums in a different order
// per ISA, so it matches the reference to fp32 rounding, not bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace spinquant::int4 {

constexpr int kRows = 16;  // rows interleaved per block

// Zero-initialized, 64-byte aligned buffer of bytes (move-only). On Linux it is carved from 2 MiB-aligned
// chunks advised as transparent huge pages, shared by several buffers and freed with the last of them:
// a decode step streams every packed weight once, and 4 KiB pages would cost a TLB miss every 4 KiB.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t n);
  AlignedBytes(AlignedBytes&&) = default;
  AlignedBytes& operator=(AlignedBytes&&) = default;
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
  uint8_t* data() { return ptr_.get(); }
  const uint8_t* data() const { return ptr_.get(); }
  size_t size() const { return size_; }

 private:
  std::shared_ptr<uint8_t> ptr_;  // aliases the chunk it lives in
  size_t size_ = 0;
};

struct PackedInt4 {
  int64_t N = 0, K = 0, group = 0;
  int64_t G = 0;   // number of groups
  int64_t NB = 0;  // number of 16-row blocks
  int64_t Kp = 0;  // padded input length (goff[G])
  bool asymmetric = false;
  std::vector<int64_t> goff;  // [G + 1] padded start of each group
  std::vector<int32_t> glen;  // [G] valid length of each group
  AlignedBytes codes;         // [NB, Kp / 8, 64]
  std::vector<uint16_t> scales;  // [NB, G, 16] float16 bits
  std::vector<uint8_t> zeros;    // [NB, G, 16], asymmetric only
  std::vector<float> corr;       // [NB * 16]
  std::vector<int32_t> qsum;     // [NB, G, 16], aarch64 builds only

  size_t packed_bytes() const;  // bytes of codes + scales + zeros (what one forward pass streams)
};

// Converts the storage format into the packed layout. zeros == nullptr means symmetric.
// Throws std::invalid_argument on bad sizes or out-of-range zero points.
PackedInt4 prepack(const uint8_t* qweight, const uint16_t* scales_f16, const uint8_t* zeros, int64_t N,
                   int64_t K, int64_t group);

// Back to the storage format (zeros is ignored for symmetric weights).
void unpack(const PackedInt4& w, uint8_t* qweight, uint16_t* scales_f16, uint8_t* zeros);

// Dequantized weight, float [N, K].
void dequantize(const PackedInt4& w, float* out);

// Per-token asymmetric activation quantization of one row of K values to `bits` (2..8):
//   xmax = max(max(x), 0) * clip; xmin = min(min(x), 0) * clip; scale = (xmax - xmin) / (2^bits - 1)
//   (1 if that is 0); zero = round(-xmin / scale); q = clamp(round(x / scale) + zero, 0, 2^bits - 1)
// with round-half-to-even; the value is (q - zero) * scale. Writes K codes. x must be finite
// (inf or nan in the row's range throws std::invalid_argument).
void quantize_activations(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale,
                          int32_t* zero);

struct LinearParams {
  int act_bits = 8;        // 4 or 8: W4A4 / W4A8 integer path; 16: fp32 activations (W4A16)
  float act_clip = 1.0f;   // clip ratio of the activation range
  const float* bias = nullptr;  // [N] or null
  int threads = 0;         // 0 = all cores
  // The weight the caller's next linear will use, if known (a decode step runs the same sequence every token):
  // when this call runs on several threads, idle workers prefetch their share of it (one token's) meanwhile.
  const PackedInt4* next = nullptr;
};

// y[M, N] = x[M, K] @ dequantize(w)^T (+ bias) with activations quantized as described above.
// Throws std::invalid_argument on a bad act_bits, act_clip or M.
void linear(const PackedInt4& w, const float* x, int64_t M, float* y, const LinearParams& params);

}  // namespace spinquant::int4
