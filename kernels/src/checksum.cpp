// XXH64 (Yann Collet's xxHash, 64-bit variant), written from its specification; ~10 GB/s a core.
#include "spinquant/checksum.h"

#include <algorithm>
#include <cstring>
#include <string_view>

namespace spinquant {
namespace {

constexpr uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL, P3 = 0x165667B19E3779F9ULL,
                   P4 = 0x85EBCA77C2B2AE63ULL, P5 = 0x27D4EB2F165667C5ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t read64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // little-endian hosts only (x86_64, arm64)
}

inline uint32_t read32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline uint64_t round(uint64_t acc, uint64_t input) { return rotl(acc + input * P2, 31) * P1; }

inline uint64_t merge(uint64_t acc, uint64_t v) { return (acc ^ round(0, v)) * P1 + P4; }

// XXH64's four lanes, fed whole 32-byte stripes.
struct Lanes {
  uint64_t v1, v2, v3, v4;
  explicit Lanes(uint64_t seed) : v1(seed + P1 + P2), v2(seed + P2), v3(seed), v4(seed - P1) {}
  void consume(const uint8_t* p, size_t n) {  // n: a multiple of 32
    for (const uint8_t* const end = p + n; p < end; p += 32) {
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
    }
  }
};

// The hash of `size` bytes from the lanes over their stripes and the last size % 32 bytes [p, end).
uint64_t finish(const Lanes& l, uint64_t seed, size_t size, const uint8_t* p, const uint8_t* const end) {
  uint64_t h = seed + P5;
  if (size >= 32) {
    h = rotl(l.v1, 1) + rotl(l.v2, 7) + rotl(l.v3, 12) + rotl(l.v4, 18);
    h = merge(merge(merge(merge(h, l.v1), l.v2), l.v3), l.v4);
  }
  h += static_cast<uint64_t>(size);
  for (; p + 8 <= end; p += 8) h = rotl(h ^ round(0, read64(p)), 27) * P1 + P4;
  if (p + 4 <= end) {
    h = rotl(h ^ (static_cast<uint64_t>(read32(p)) * P1), 23) * P2 + P3;
    p += 4;
  }
  for (; p < end; ++p) h = rotl(h ^ (*p * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

// XXH64 of [p, p + size), window by window, each handed to `release` once hashed.
uint64_t xxh64_windows(const uint8_t* p, size_t size, uint64_t seed, const Release& release, size_t window) {
  Lanes lanes(seed);
  const size_t body = size - size % 32;
  for (size_t at = 0; at < body; at += window) {
    const size_t n = std::min(window, body - at);
    lanes.consume(p + at, n);
    if (release) release(p + at, n);
  }
  return finish(lanes, seed, size, p + body, p + size);
}

uint64_t checksum_windows(const uint8_t* data, size_t size, size_t hole, const Release& release, size_t window) {
  static const uint8_t zeros[kChecksumDigits] = {'0', '0', '0', '0', '0', '0', '0', '0',
                                                 '0', '0', '0', '0', '0', '0', '0', '0'};
  const uint64_t head = xxh64_windows(data, hole, 0, release, window);
  const uint64_t mid = xxh64(zeros, kChecksumDigits, head);
  const size_t rest = hole + kChecksumDigits;
  return xxh64_windows(data + rest, size - rest, mid, release, window);
}

}  // namespace

uint64_t xxh64(const void* data, size_t size, uint64_t seed) {
  return xxh64_windows(static_cast<const uint8_t*>(data), size, seed, nullptr, size + 32);
}

uint64_t artifact_checksum(const uint8_t* data, size_t size, size_t hole) {
  return checksum_windows(data, size, hole, nullptr, size + 32);
}

Integrity verify_artifact(const uint8_t* data, size_t size, const Release& release, size_t window) {
  constexpr std::string_view tag = "\"xxh64:";
  window = std::max<size_t>(32, window - window % 32);
  size_t at = std::string_view::npos;
  for (size_t start = 0; start < size && at == std::string_view::npos; start += window) {
    const size_t n = std::min(window + tag.size() - 1, size - start);  // a tag across the window's end too
    const size_t i = std::string_view(reinterpret_cast<const char*>(data) + start, n).find(tag);
    if (i != std::string_view::npos) at = start + i;
    if (release) release(data + start, std::min(window, size - start));
  }
  if (at == std::string_view::npos) return Integrity::Unrecorded;
  const size_t hole = at + tag.size();
  if (hole + kChecksumDigits >= size || data[hole + kChecksumDigits] != '"') return Integrity::Mismatch;
  uint64_t recorded = 0;
  for (size_t i = 0; i < kChecksumDigits; ++i) {
    const char c = static_cast<char>(data[hole + i]);
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return Integrity::Mismatch;
    recorded = recorded << 4 | static_cast<uint64_t>(digit);
  }
  return checksum_windows(data, size, hole, release, window) == recorded ? Integrity::Verified : Integrity::Mismatch;
}

}  // namespace spinquant
