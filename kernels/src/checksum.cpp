// XXH64 (Yann Collet's xxHash, 64-bit variant), written from its specification; ~10 GB/s a core.
#include "spinquant/checksum.h"

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

}  // namespace

uint64_t xxh64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const uint8_t*>(data);
  const uint8_t* const end = p + size;
  uint64_t h;
  if (size >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    for (const uint8_t* limit = end - 32; p <= limit; p += 32) {
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
    }
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge(merge(merge(merge(h, v1), v2), v3), v4);
  } else {
    h = seed + P5;
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

uint64_t artifact_checksum(const uint8_t* data, size_t size, size_t hole) {
  static const uint8_t zeros[kChecksumDigits] = {'0', '0', '0', '0', '0', '0', '0', '0',
                                                 '0', '0', '0', '0', '0', '0', '0', '0'};
  const uint64_t head = xxh64(data, hole, 0);
  const uint64_t mid = xxh64(zeros, kChecksumDigits, head);
  return xxh64(data + hole + kChecksumDigits, size - hole - kChecksumDigits, mid);
}

Integrity verify_artifact(const uint8_t* data, size_t size) {
  constexpr std::string_view tag = "\"xxh64:";
  const std::string_view image(reinterpret_cast<const char*>(data), size);
  const size_t at = image.find(tag);
  if (at == std::string_view::npos) return Integrity::Unrecorded;
  const size_t hole = at + tag.size();
  if (hole + kChecksumDigits >= size || image[hole + kChecksumDigits] != '"') return Integrity::Mismatch;
  uint64_t recorded = 0;
  for (size_t i = 0; i < kChecksumDigits; ++i) {
    const char c = image[hole + i];
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return Integrity::Mismatch;
    recorded = recorded << 4 | static_cast<uint64_t>(digit);
  }
  return artifact_checksum(data, size, hole) == recorded ? Integrity::Verified : Integrity::Mismatch;
}

}  // namespace spinquant
