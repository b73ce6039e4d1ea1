// int8-weight linear layer and int8 embedding gather: the ends of the network (lm_head, embedding) in the
// device recipe, 8-bit per-channel symmetric weights.
//
// Storage (used as it lies in the program, no prepacking): codes int8 [N, K] row-major (q in [-128, 127]),
// scales float32 [N] (fp16 values: the fake quantizer rounds weight scales to float16), row sums int32 [N]
// (sum_k q[n, k], derived once at export). Row n dequantizes as q[n, k] * scales[n].
//
// linear: y[M, N] = fq(z) @ W^T with z = x, or x @ pre when a [K, K] float matrix `pre` is given (the final
// norm's scale, rotated, kept out of a table shared with the embedding), and fq the per-token asymmetric 8-bit
// activation quantizer of int4.h (quantize_activations, clip 1). With activation codes a (scale sa, zero za):
//   I = sum_k a[k] q[n, k] - za * rowsum[n]       (int32, exact)
//   y = float(I) * (sa * scales[n])               (fp32, two roundings)
// so every ISA returns the scalar reference's bits. z = x @ pre runs, per output j, z[j] = z[j] + x[k] * pre[k, j]
// for k = 0 .. K-1 (a multiply and an add, in that order, on every ISA: the same bits too).
//
// Paths (spinquant::active_isa()): scalar reference; AVX2 (vpmaddwd on widened bytes); AVX-512 VNNI (vpdpbusd);
// NEON (smull/sadalp on codes shifted to int8); NEON dotprod (sdot, same shift).
#pragma once

#include <cstdint>

namespace spinquant::int8 {

struct Weight {
  const int8_t* codes = nullptr;   // [N, K]
  const float* scales = nullptr;   // [N]
  const int32_t* rowsum = nullptr; // [N]
  int64_t N = 0, K = 0;
};

// y[M, N] = fq(x [M, K] (@ pre [K, K] if given)) @ dequantize(w)^T, as described above. threads 0 = all cores.
// Throws std::invalid_argument on bad sizes or non-finite activations.
void linear(const Weight& w, const float* x, int64_t M, float* y, const float* pre = nullptr, int threads = 0);

// out[t, :] = codes[ids[t], :] * scales[ids[t]] for t < T (float32 [T, K]); an id outside [0, N) throws.
void embedding(const Weight& w, const int64_t* ids, int64_t T, float* out, int threads = 0);

// Row sums of int8 codes [N, K] (the `rowsum` a Weight needs).
void row_sums(const int8_t* codes, int64_t N, int64_t K, int32_t* out);

}  // namespace spinquant::int8
