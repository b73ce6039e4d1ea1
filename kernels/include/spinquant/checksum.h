// Integrity checksum of spinquant's artifacts (rotation files, int4 checkpoints, .pte programs):
//
//   uint64_t h = spinquant::xxh64(data, size, seed);               // XXH64, the published algorithm
//   uint64_t c = spinquant::artifact_checksum(data, size, hole);   // a whole file image
//
//   spinquant::Integrity s = spinquant::verify_artifact(data, size);  // before anything parses the file
//   verify_artifact(data, size, release);  // a mapped file: release(window, n) lets go of each window's pages
//
// An artifact records its own checksum as `"xxh64:` and 16 lowercase hex digits inside itself (safetensors
// metadata, the .pte's metadata method); `artifact_checksum` hashes the image with those 16 bytes at offset `hole`
// read as '0' (docs/RELIABILITY.md), so the writer patches the digits in after hashing and a reader verifies the
// raw bytes in place, without trusting any of them first.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace spinquant {

inline constexpr size_t kChecksumDigits = 16;

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

// XXH64 chained over [0, hole), sixteen '0' bytes, [hole + 16, size). `hole` must leave room for the digits.
uint64_t artifact_checksum(const uint8_t* data, size_t size, size_t hole);

enum class Integrity : int { Verified = 0, Unrecorded = 1, Mismatch = 2 };

// Called with each window of the image once it has been read (two passes: the search for the record, then the
// hash), so that a caller who mapped a file can let go of its pages and verification holds one window at a time.
using Release = std::function<void(const uint8_t* window, size_t size)>;

// Finds the first `"xxh64:` in the image: Unrecorded if there is none, Mismatch if 16 hex digits and a closing
// quote do not follow or the image does not hash to them. Reads the image in windows of `window` bytes (rounded
// down to a multiple of 32), handing each to `release` when given.
Integrity verify_artifact(const uint8_t* data, size_t size, const Release& release = nullptr,
                          size_t window = size_t{4} << 20);

}  // namespace spinquant
