// Storage format <-> packed layout (see spinquant/int4.h), float16 helpers, dequantize.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "int4_kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace spinquant::int4 {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kChunk = 8 * kHugePage;  // buffers above kChunk / 4 get chunks of their own

// A zeroed block of at least n bytes, 2 MiB aligned, advised as huge pages where the OS has them. On Linux it is
// its own mapping: carved from the malloc heap, a chunk can share a mapping whose huge-page advice the
// allocator's other blocks undo (measured: the second program loaded in a process got 16 MB of 4 KiB pages).
std::shared_ptr<uint8_t> new_chunk(size_t n) {
  n = (n + kHugePage - 1) / kHugePage * kHugePage;
#if defined(__linux__)
  void* raw = mmap(nullptr, n + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) munmap(raw, aligned - start);  // trim to a 2 MiB-aligned block of n bytes
  munmap(reinterpret_cast<void*>(aligned + n), start + kHugePage - aligned);  // the tail: at least one page
  auto* p = reinterpret_cast<uint8_t*>(aligned);
#if defined(MADV_HUGEPAGE)
  madvise(p, n, MADV_HUGEPAGE);  // a hint: without transparent huge pages the buffer works the same
#endif
  return std::shared_ptr<uint8_t>(p, [n](uint8_t* q) { munmap(q, n); });  // mmap's pages come zeroed
#else
  void* p = std::aligned_alloc(kHugePage, n);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, n);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
#endif
}

}  // namespace

AlignedBytes::AlignedBytes(size_t n) : size_(n) {
  const size_t rounded = std::max<size_t>(64, (n + 63) / 64 * 64);
  if (rounded > kChunk / 4) {
    ptr_ = new_chunk(rounded);
    return;
  }
  static std::mutex mu;
  static std::weak_ptr<uint8_t> current;  // weak: the chunk goes when its last buffer does
  static size_t used = 0;
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<uint8_t> chunk = current.lock();
  if (!chunk || used + rounded > kChunk) {
    chunk = new_chunk(kChunk);
    current = chunk;
    used = 0;
  }
  ptr_ = std::shared_ptr<uint8_t>(chunk, chunk.get() + used);  // shares ownership of the chunk
  used += rounded;
}

size_t PackedInt4::packed_bytes() const {
  return codes.size() + scales.size() * sizeof(uint16_t) + zeros.size();
}

namespace detail {

float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: value man * 2^-24, exact in float
    float f = static_cast<float>(man) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
  if (ax >= 0x477ff000u) return sign | 0x7c00;  // rounds to infinity
  if (ax < 0x38800000u) {                        // subnormal or zero in half
    float a;
    std::memcpy(&a, &ax, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  uint32_t mant_odd = (ax >> 13) & 1;
  ax += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round half to even
  return sign | static_cast<uint16_t>(ax >> 13);
}

void act_params(float lo, float hi, int bits, float clip, float* scale, int32_t* zero, float* fzero) {
  const float xmax = (hi > 0.0f ? hi : 0.0f) * clip;
  const float xmin = (lo < 0.0f ? lo : 0.0f) * clip;
  float s = (xmax - xmin) / static_cast<float>((1 << bits) - 1);
  if (s == 0.0f) s = 1.0f;
  const float z = std::nearbyint(-xmin / s);
  if (!std::isfinite(s) || !std::isfinite(z))
    throw std::invalid_argument("int4: activations contain inf or nan; the kernels need finite inputs");
  *scale = s;
  *zero = static_cast<int32_t>(z);
  *fzero = z;
}

}  // namespace detail

namespace {

void check(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

uint8_t storage_code(const uint8_t* qweight, int64_t row_bytes, int64_t n, int64_t k) {
  uint8_t byte = qweight[n * row_bytes + k / 2];
  return (k & 1) ? (byte >> 4) : (byte & 0x0f);
}

}  // namespace

PackedInt4 prepack(const uint8_t* qweight, const uint16_t* scales_f16, const uint8_t* zeros, int64_t N,
                   int64_t K, int64_t group) {
  check(N >= 1 && K >= 1, "int4 prepack: N and K must be >= 1 (got N=" + std::to_string(N) +
                              ", K=" + std::to_string(K) + ")");
  check(group >= 1, "int4 prepack: group must be >= 1 (use group = K for per-channel scales)");
  check(qweight != nullptr && scales_f16 != nullptr, "int4 prepack: qweight and scales are required");
  // int32 group sums: 255 * 15 * group must stay below 2^31.
  check(std::min(group, K) <= 500000, "int4 prepack: group " + std::to_string(std::min(group, K)) +
                                          " is too long for int32 sums; use groups of at most 500000 inputs");
  PackedInt4 w;
  w.N = N;
  w.K = K;
  w.group = group > K ? K : group;
  w.G = (K + w.group - 1) / w.group;
  w.NB = (N + kRows - 1) / kRows;
  w.asymmetric = zeros != nullptr;
  w.goff.resize(w.G + 1);
  w.glen.resize(w.G);
  for (int64_t g = 0; g < w.G; ++g) {
    int64_t len = std::min(w.group, K - g * w.group);
    w.glen[g] = static_cast<int32_t>(len);
    w.goff[g + 1] = w.goff[g] + (len + 7) / 8 * 8;
  }
  w.Kp = w.goff[w.G];
  const int64_t row_bytes = (K + 1) / 2, G = w.G;
  // The messages are built only on failure (millions of entries are checked at load time).
  if (w.asymmetric)
    for (int64_t i = 0; i < N * G; ++i)
      if (zeros[i] > 15)
        check(false, "int4 prepack: zero point " + std::to_string(zeros[i]) + " at index " + std::to_string(i) +
                         " is outside [0, 15]; zero points are 4-bit codes");

  for (int64_t i = 0; i < N * G; ++i)
    if ((scales_f16[i] & 0x7c00) == 0x7c00)
      check(false, "int4 prepack: scale at index " + std::to_string(i) +
                       " is inf or nan; requantize the weight with finite scales");
  w.codes = AlignedBytes(static_cast<size_t>(w.NB * w.Kp * 8));
  w.scales.assign(w.NB * G * kRows, 0);
  if (w.asymmetric) w.zeros.assign(w.NB * G * kRows, 0);
  w.corr.assign(w.NB * kRows, 0.0f);
#if defined(__aarch64__)
  w.qsum.assign(w.NB * G * kRows, 0);
#endif
  uint8_t* codes = w.codes.data();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = n / kRows, r = n % kRows;
    double corr = 0.0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t meta = (b * G + g) * kRows + r;
      const uint16_t s16 = scales_f16[n * G + g];
      const int z = w.asymmetric ? zeros[n * G + g] : 8;
      w.scales[meta] = s16;
      if (w.asymmetric) w.zeros[meta] = static_cast<uint8_t>(z);
      int32_t qsum = 0;
      for (int64_t i = 0; i < w.glen[g]; ++i) {
        const uint8_t q = storage_code(qweight, row_bytes, n, g * w.group + i);
        const int64_t p = w.goff[g] + i, base = p / 8 * 8, j = p % 8;
        uint8_t& byte = codes[b * w.Kp * 8 + base * 8 + 4 * r + (j & 3)];
        byte |= (j < 4) ? q : static_cast<uint8_t>(q << 4);
        qsum += q;
      }
#if defined(__aarch64__)
      w.qsum[meta] = qsum;
#endif
      corr += static_cast<double>(detail::half_to_float(s16)) * (qsum - static_cast<double>(z) * w.glen[g]);
    }
    w.corr[n] = static_cast<float>(corr);
  }
  return w;
}

void unpack(const PackedInt4& w, uint8_t* qweight, uint16_t* scales_f16, uint8_t* zeros) {
  const int64_t row_bytes = (w.K + 1) / 2;
  std::memset(qweight, 0, static_cast<size_t>(w.N * row_bytes));
  const uint8_t* codes = w.codes.data();
  for (int64_t n = 0; n < w.N; ++n) {
    const int64_t b = n / kRows, r = n % kRows;
    for (int64_t g = 0; g < w.G; ++g) {
      const int64_t meta = (b * w.G + g) * kRows + r;
      scales_f16[n * w.G + g] = w.scales[meta];
      if (w.asymmetric && zeros != nullptr) zeros[n * w.G + g] = w.zeros[meta];
      for (int64_t i = 0; i < w.glen[g]; ++i) {
        const int64_t p = w.goff[g] + i, base = p / 8 * 8, j = p % 8, k = g * w.group + i;
        const uint8_t byte = codes[b * w.Kp * 8 + base * 8 + 4 * r + (j & 3)];
        const uint8_t q = (j < 4) ? (byte & 0x0f) : (byte >> 4);
        qweight[n * row_bytes + k / 2] |= (k & 1) ? static_cast<uint8_t>(q << 4) : q;
      }
    }
  }
}

void dequantize(const PackedInt4& w, float* out) {
  std::vector<uint8_t> q(static_cast<size_t>(w.N * ((w.K + 1) / 2)));
  std::vector<uint16_t> s(static_cast<size_t>(w.N * w.G));
  std::vector<uint8_t> z(w.asymmetric ? static_cast<size_t>(w.N * w.G) : 0);
  unpack(w, q.data(), s.data(), w.asymmetric ? z.data() : nullptr);
  const int64_t row_bytes = (w.K + 1) / 2;
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t k = 0; k < w.K; ++k) {
      const int64_t g = k / w.group;
      const int zp = w.asymmetric ? z[n * w.G + g] : 8;
      const float scale = detail::half_to_float(s[n * w.G + g]);
      out[n * w.K + k] = static_cast<float>(storage_code(q.data(), row_bytes, n, k) - zp) * scale;
    }
}

}  // namespace spinquant::int4
