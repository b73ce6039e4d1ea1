// XXH64 against the published test values, and artifact_checksum's hole: the digits never change the result.
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "spinquant/checksum.h"

int main() {
  CHECK(spinquant::xxh64("", 0) == 0xEF46DB3751D8E999ULL, "empty");
  CHECK(spinquant::xxh64("a", 1) == 0xD24EC4F1A98C6E5BULL, "'a'");
  CHECK(spinquant::xxh64("abc", 3) == 0x44BC2CF5AD770999ULL, "'abc'");
  const std::string fox = "The quick brown fox jumps over the lazy dog";
  CHECK(spinquant::xxh64(fox.data(), fox.size()) == 0x0B242D361FDA71BCULL, "fox (the 32-byte stripes)");

  std::vector<uint8_t> image(1000);
  for (size_t i = 0; i < image.size(); ++i) image[i] = static_cast<uint8_t>(i * 131 + 7);
  const size_t hole = 123;
  const uint64_t before = spinquant::artifact_checksum(image.data(), image.size(), hole);
  std::memcpy(image.data() + hole, "0123456789abcdef", 16);
  CHECK(spinquant::artifact_checksum(image.data(), image.size(), hole) == before, "the digits are not hashed");
  image[999] ^= 1;
  CHECK(spinquant::artifact_checksum(image.data(), image.size(), hole) != before, "a flipped bit changes it");

  using spinquant::Integrity;
  std::string file = std::string(200, 'x') + "{\"checksum\":\"xxh64:0000000000000000\"}" + std::string(300, 'y');
  auto* bytes = reinterpret_cast<uint8_t*>(file.data());
  const size_t digits = file.find("xxh64:") + 6;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(spinquant::artifact_checksum(bytes, file.size(), digits)));
  file.replace(digits, 16, hex);
  CHECK(spinquant::verify_artifact(bytes, file.size()) == Integrity::Verified, "a stamped image verifies");
  file[450] = 'z';
  CHECK(spinquant::verify_artifact(bytes, file.size()) == Integrity::Mismatch, "a changed byte is caught");
  file[450] = 'y';
  file[digits + 3] = 'G';
  CHECK(spinquant::verify_artifact(bytes, file.size()) == Integrity::Mismatch, "a damaged record is caught");
  // Windows of 64 bytes with the record's tag across a window's end (at 253..259): the same answers, and every
  // window handed back in order, in two passes (the search, then the hash).
  std::string wide = std::string(240, 'x') + "{\"checksum\":\"xxh64:0000000000000000\"}" + std::string(300, 'y');
  auto* wbytes = reinterpret_cast<uint8_t*>(wide.data());
  const size_t wdigits = wide.find("xxh64:") + 6;
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(spinquant::artifact_checksum(wbytes, wide.size(), wdigits)));
  wide.replace(wdigits, 16, hex);
  std::vector<std::pair<size_t, size_t>> windows;
  const spinquant::Release note = [&](const uint8_t* w, size_t n) { windows.emplace_back(w - wbytes, n); };
  CHECK(spinquant::verify_artifact(wbytes, wide.size(), note, 64) == Integrity::Verified, "verified in windows");
  std::vector<size_t> seen;  // bytes handed back in each pass
  size_t end = 0;
  for (const auto& [at, n] : windows) {
    if (at == 0) seen.push_back(0);
    else CHECK(at >= end, "windows in order");
    CHECK(n > 0 && n <= 64 && at + n <= wide.size(), "windows of at most 64 bytes inside the image");
    end = at + n, seen.back() += n;
  }
  CHECK(seen.size() == 2 && seen[0] == 256, "the search stops at the window holding the tag");
  CHECK(seen[1] > wide.size() - 2 * 32 - 16, "the hash reads all but the digits and two short tails");
  wide[450] = 'z';
  CHECK(spinquant::verify_artifact(wbytes, wide.size(), note, 64) == Integrity::Mismatch, "caught in windows");
  const std::string plain(100, 'p');
  CHECK(spinquant::verify_artifact(reinterpret_cast<const uint8_t*>(plain.data()), plain.size()) ==
            Integrity::Unrecorded, "no record");
  return g_failures != 0;
}
