// The int4 dispatch table and the driver shared by every ISA: validate, quantize or pad the
// activations per token, then split (tokens x row blocks) over the thread pool.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "int4_kernels.h"
#include "spinquant/parallel.h"

namespace spinquant::int4 {
namespace {

const detail::Kernels& select(Isa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::Avx2: return detail::kernels_avx2();
    case Isa::Avx512: return detail::kernels_avx512();
#elif defined(__aarch64__)
    case Isa::Neon: return detail::kernels_neon();
    case Isa::Dotprod: return detail::kernels_dotprod();
    case Isa::I8mm: return detail::kernels_i8mm();
#endif
    default: return detail::kernels_ref();
  }
}

void check_bits(int bits) {
  if (bits < 2 || bits > 8)
    throw std::invalid_argument("int4: activation bits must be in 2..8 (got " + std::to_string(bits) + ")");
}

void check_clip(float clip) {
  if (!(clip > 0.0f && clip <= 1.0f))
    throw std::invalid_argument("int4: act_clip must be in (0, 1] (got " + std::to_string(clip) + ")");
}

// Quantizes token m into the packed K layout and its per-group code sums. `row` (K bytes) is scratch,
// unused when the layout has no padding (every group a multiple of 8 long): then codes go straight to dst.
void quantize_token(const detail::Kernels& kern, const PackedInt4& w, const float* x, int bits, float clip,
                    uint8_t* row, uint8_t* dst, float* scale, int32_t* zero, int32_t* gsum) {
  const bool padded = w.Kp != w.K;
  kern.quantize(x, w.K, bits, clip, padded ? row : dst, scale, zero);
  for (int64_t g = 0; g < w.G; ++g) {
    uint8_t* out = dst + w.goff[g];
    int32_t sum = 0;
    if (padded) {
      const uint8_t* src = row + g * w.group;
      for (int32_t i = 0; i < w.glen[g]; ++i) out[i] = src[i];
      for (int64_t p = w.glen[g]; p < w.goff[g + 1] - w.goff[g]; ++p) out[p] = 0;
    }
    for (int32_t i = 0; i < w.glen[g]; ++i) sum += out[i];
    gsum[g] = sum;
  }
}

// Copies token m into the packed K layout (zeros in padding) and its per-group sums.
void pad_token(const PackedInt4& w, const float* x, float* dst, float* gsum) {
  for (int64_t g = 0; g < w.G; ++g) {
    const float* src = x + g * w.group;
    float* out = dst + w.goff[g];
    float sum = 0.0f;
    for (int32_t i = 0; i < w.glen[g]; ++i) {
      out[i] = src[i];
      sum += src[i];
    }
    for (int64_t p = w.glen[g]; p < w.goff[g + 1] - w.goff[g]; ++p) out[p] = 0.0f;
    gsum[g] = sum;
  }
}

// Growing buffers (never shrunk, never zero-filled) for the activations of one linear call.
class Scratch {
 public:
  uint8_t* bytes(int64_t n) { return bytes_.get(n); }
  int32_t* ints(int64_t n) { return ints_.get(n); }
  float* floats(int64_t n) { return floats_.get(n); }

 private:
  template <class T>
  struct Buffer {
    std::unique_ptr<T[]> data;
    int64_t size = 0;
    T* get(int64_t n) {
      if (n > size) {
        data.reset(new T[static_cast<size_t>(n)]);
        size = n;
      }
      return data.get();
    }
  };
  Buffer<uint8_t> bytes_;
  Buffer<int32_t> ints_;
  Buffer<float> floats_;
};

// Row blocks a decode (one-token) claim takes at least: ~4 KiB of codes, so that a claim outweighs its
// compare-and-swap; on SmolLM2 that is one block. Smaller last claims end a region's two cores closer together:
// 2-3 % faster decode at 2 threads than 16 KiB (AMD EPYC, four 24-round runner A/Bs, benchmarks/RESULTS.md).
int64_t decode_grain(const PackedInt4& w) { return std::max<int64_t>(1, (4 << 10) / (w.Kp * 8)); }

// Idle workers prefetch the blocks they will take first in a one-token call of w (parallel_for_balanced's
// first worker share, the last blocks); at most its first kIdlePrefetchBytes of codes (half a typical L2: more
// would evict what was prefetched first) and their scales.
constexpr int64_t kIdlePrefetchBytes = 512 << 10;

void prefetch_worker_share(const PackedInt4& w, int threads) {
  const int64_t b0 = w.NB - first_share(w.NB, threads), block_bytes = w.Kp * 8;
  const int64_t blocks = std::min(w.NB - b0, std::max<int64_t>(1, kIdlePrefetchBytes / block_bytes));
  prefetch_when_idle({w.codes.data() + b0 * block_bytes, static_cast<size_t>(blocks * block_bytes)},
                     {w.scales.data() + b0 * w.G * kRows, static_cast<size_t>(blocks * w.G * kRows) * sizeof(uint16_t)});
}

}  // namespace

void quantize_activations(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale,
                          int32_t* zero) {
  check_bits(bits);
  check_clip(clip);
  if (K < 1) throw std::invalid_argument("int4: quantize_activations needs K >= 1");
  select(active_isa()).quantize(x, K, bits, clip, codes, scale, zero);
}

void linear(const PackedInt4& w, const float* x, int64_t M, float* y, const LinearParams& params) {
  const int bits = params.act_bits;
  if (bits != 16) check_bits(bits);
  check_clip(params.act_clip);
  if (M < 0) throw std::invalid_argument("int4 linear: M must be >= 0");
  if (M == 0) return;
  const detail::Kernels& kern = select(active_isa());

  detail::Job job{};
  job.w = &w;
  job.act_bits = bits;
  job.bias = params.bias;
  job.y = y;
  // Per-thread scratch kept across calls: decode runs hundreds of small linears a token.
  thread_local Scratch s;
  if (bits == 16) {
    float* xpad = s.floats(M * w.Kp + M * w.G);
    float* fsum = xpad + M * w.Kp;
    parallel_for(M, params.threads, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) pad_token(w, x + m * w.K, xpad + m * w.Kp, fsum + m * w.G);
    });
    job.xpad = xpad;
    job.x_gsum = fsum;
  } else {
    uint8_t* codes = s.bytes(M * w.Kp + (w.Kp != w.K ? M * w.K : 0));
    uint8_t* rows = codes + M * w.Kp;
    int32_t* ints = s.ints(M * w.G + M);
    int32_t* gsum = ints + M;
    float* scale = s.floats(M);
    parallel_for(M, params.threads, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        quantize_token(kern, w, x + m * w.K, bits, params.act_clip, rows + m * w.K, codes + m * w.Kp, scale + m,
                       ints + m, gsum + m * w.G);
    });
    job.codes = codes;
    job.a_scale = scale;
    job.a_zero = ints;
    job.a_gsum = gsum;
  }

  const detail::BlockFn fn = bits == 16 ? kern.gemm_f32 : kern.gemm_codes;
  const int threads = plan_threads(w.NB * M, params.threads);
  if (threads > 1) prefetch_when_idle({});  // this call's blocks are being read now: stop prefetching them
  if (M == 1) {  // decode: row blocks in balanced claims
    parallel_for_balanced(w.NB, threads, decode_grain(w), [&](int64_t b0, int64_t b1) { fn(job, 0, 1, b0, b1); });
  } else {  // row blocks split over the threads; when there are too few blocks, tokens are split too
    const int64_t n_parts = std::min<int64_t>(w.NB, threads);
    const int64_t m_parts = std::min<int64_t>(M, (threads + n_parts - 1) / n_parts);
    parallel_for(n_parts * m_parts, threads, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t pm = t / n_parts, pn = t % n_parts;
        fn(job, M * pm / m_parts, M * (pm + 1) / m_parts, w.NB * pn / n_parts, w.NB * (pn + 1) / n_parts);
      }
    });
  }
  const int next_threads = params.next != nullptr ? plan_threads(params.next->NB, params.threads) : 1;
  if (next_threads > 1) prefetch_worker_share(*params.next, next_threads);
}

}  // namespace spinquant::int4
