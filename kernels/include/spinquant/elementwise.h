// Element-wise steps of a decoder layer between its int4 linears, fused so that each is one pass over
// the activations: RMSNorm, SiLU(gate) * up, the rotate-half rotary embedding, and the residual add; and the
// argmax over the logits that greedy decoding takes after the last one.
//
// Every ISA computes each output with the same float operations in the same order (the RMSNorm sum of
// squares in 16 running partial sums, lane l taking elements l, l + 16, ..., then a pairwise tree; exp as
// in simd_math.h), so the AVX2, AVX-512 and NEON paths give the scalar reference's bits exactly. Large inputs
// (prefill) are split by rows over the thread pool; `threads` 0 = every core.
#pragma once

#include <cstdint>

namespace spinquant {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for `rows` rows of n floats.
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t n, float eps, float* y, int threads = 0);

// y[r, j] = silu(g[r, j]) * g[r, f + j] for `rows` rows of 2f floats (gate, then up): y is [rows, f].
void silu_mul(const float* gate_up, int64_t rows, int64_t f, float* y, int threads = 0);

// Rotate-half rotary embedding of x [T, H, D] (D even) with cos, sin [T, D]:
// y[.., i] = x[i] cos[i] - x[i + D/2] sin[i], y[.., i + D/2] = x[i + D/2] cos[i + D/2] + x[i] sin[i + D/2].
void rope(const float* x, const float* cos, const float* sin, int64_t T, int64_t H, int64_t D, float* y,
          int threads = 0);

// y = a + b over n floats (y may alias a or b).
void add(const float* a, const float* b, int64_t n, float* y, int threads = 0);

// The first index of the largest of x[0, n) (n >= 1); NaNs never win (all NaN: 0). Greedy decoding's pick.
int64_t argmax(const float* x, int64_t n);

}  // namespace spinquant
