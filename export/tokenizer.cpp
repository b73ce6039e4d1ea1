// Byte-level BPE with GPT-2's split pattern (tokenizer.h), and its C API (program.h).
#include "tokenizer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "program.h"

namespace spinquant {
namespace {

struct CodeRange {
  uint32_t lo, hi;
};
#include "unicode_tables.inc"

template <size_t N>
bool in(const CodeRange (&table)[N], uint32_t cp) {
  const CodeRange* it = std::upper_bound(table, table + N, cp, [](uint32_t c, const CodeRange& r) { return c < r.lo; });
  return it != table && cp <= (it - 1)->hi;
}

// The character classes of the split pattern: \p{L}, \p{N}, \s, and everything else.
enum class Kind : uint8_t { kLetter, kNumber, kSpace, kOther };

Kind kind(uint32_t cp) {
  if (cp < 0x80) {  // ASCII without the tables
    if ((cp | 0x20) - 'a' < 26) return Kind::kLetter;
    if (cp - '0' < 10) return Kind::kNumber;
    if (cp == ' ' || cp - 0x09 < 5) return Kind::kSpace;
    return Kind::kOther;
  }
  if (in(kLetter, cp)) return Kind::kLetter;
  if (in(kNumber, cp)) return Kind::kNumber;
  if (in(kSpace, cp)) return Kind::kSpace;
  return Kind::kOther;
}

struct Char {
  uint32_t cp;     // code point (an invalid byte stands for itself, as U+FFFD would: class kOther)
  uint32_t start;  // byte offset in the text
};

// Code points of UTF-8 text; a byte that does not start a valid sequence is one character of its own.
std::vector<Char> decode_utf8(std::string_view s) {
  std::vector<Char> out;
  out.reserve(s.size());
  const auto* b = reinterpret_cast<const uint8_t*>(s.data());
  for (size_t i = 0, n = s.size(); i < n;) {
    const uint8_t c = b[i];
    const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      ok = (b[i + k] >> 6) == 2;
      cp = (cp << 6) | (b[i + k] & 0x3F);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[len] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    out.push_back({ok ? cp : 0xFFFD, static_cast<uint32_t>(i)});
    i += ok ? len : 1;
  }
  return out;
}

// End (exclusive) of the match of GPT-2's pattern at character i:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t match_at(const std::vector<Char>& c, const std::vector<Kind>& k, size_t i) {
  const size_t n = c.size();
  auto is = [&](size_t j, char ch) { return j < n && c[j].cp == static_cast<uint32_t>(ch); };
  if (is(i, '\'')) {
    if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return i + 2;
    if ((is(i + 1, 'r') || is(i + 1, 'v')) && is(i + 2, 'e')) return i + 3;
    if (is(i + 1, 'l') && is(i + 2, 'l')) return i + 3;
  }
  const size_t first = is(i, ' ') && i + 1 < n && k[i + 1] != Kind::kSpace ? i + 1 : i;
  if (k[first] != Kind::kSpace) {  // one run of letters, numbers or other characters, after an optional space
    size_t j = first + 1;
    while (j < n && k[j] == k[first]) ++j;
    return j;
  }
  size_t j = i + 1;  // a run of whitespace: all of it at the end of the text, else all but the last one
  while (j < n && k[j] == Kind::kSpace) ++j;
  return j == n || j - i == 1 ? j : j - 1;
}

class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  const uint8_t* take(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) throw std::runtime_error("packed tokenizer is truncated");
    const uint8_t* at = p_;
    p_ += n;
    return at;
  }
  uint32_t u32() {
    const uint8_t* b = take(4);
    return b[0] | b[1] << 8 | b[2] << 16 | static_cast<uint32_t>(b[3]) << 24;
  }
  size_t count(size_t item_bytes) {  // a count whose items must fit in what is left
    const uint32_t n = u32();
    if (n > static_cast<size_t>(end_ - p_) / item_bytes) throw std::runtime_error("packed tokenizer is truncated");
    return n;
  }
  bool done() const { return p_ == end_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

constexpr char kMagic[8] = {'S', 'Q', 'B', 'P', 'E', 0, 0, 1};
constexpr uint32_t kSplitGpt2 = 1;

}  // namespace

Tokenizer::Tokenizer(const uint8_t* data, size_t size) : blob_(data, data + size) {
  Reader r(blob_.data(), blob_.size());
  if (std::memcmp(r.take(8), kMagic, 8) != 0)
    throw std::runtime_error("not a packed spinquant tokenizer (bad magic or version); re-export the program");
  if (r.u32() != kSplitGpt2) throw std::runtime_error("unknown split pattern in the packed tokenizer");
  bos_ = static_cast<int32_t>(r.u32());
  eos_ = static_cast<int32_t>(r.u32());
  const size_t n = r.count(4);
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) throw std::runtime_error("vocabulary too large");
  std::vector<uint32_t> lengths(n);
  for (auto& len : lengths) len = r.u32();
  pieces_.resize(n);
  special_.assign(n, false);
  for (size_t i = 0; i < n; ++i) pieces_[i] = {reinterpret_cast<const char*>(r.take(lengths[i])), lengths[i]};
  auto check_id = [n](uint32_t id) {
    if (id >= n) throw std::runtime_error("packed tokenizer names a token id past its vocabulary");
    return static_cast<int32_t>(id);
  };
  const size_t m = r.count(12);
  merges_.reserve(m);
  for (size_t rank = 0; rank < m; ++rank) {
    const uint64_t left = check_id(r.u32()), right = check_id(r.u32());
    merges_.emplace(left << 32 | right, Merge{static_cast<int32_t>(rank), check_id(r.u32())});
  }
  const size_t a = r.count(5);
  for (size_t i = 0; i < a; ++i) {
    const int32_t id = check_id(r.u32());
    special_[id] = *r.take(1) != 0;
    if (!pieces_[id].empty()) added_.push_back({pieces_[id], id});
  }
  for (auto* ids : {&prefix_, &suffix_}) {
    ids->resize(r.count(4));
    for (auto& id : *ids) id = check_id(r.u32());
  }
  if (!r.done()) throw std::runtime_error("packed tokenizer has trailing bytes");
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  std::vector<bool> is_added(n, false);
  for (const Added& t : added_) is_added[t.id] = true;
  for (size_t i = 0; i < n; ++i)
    if (pieces_[i].size() == 1 && !is_added[i] && byte_id_[static_cast<uint8_t>(pieces_[i][0])] < 0)
      byte_id_[static_cast<uint8_t>(pieces_[i][0])] = static_cast<int32_t>(i);
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out(prefix_);
  split_added(text, out);
  out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

std::string_view Tokenizer::decode(int64_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size() || special_[id]) return {};
  return pieces_[id];
}

// Added tokens are matched first, leftmost then longest; the text between them is split and merged.
void Tokenizer::split_added(std::string_view text, std::vector<int64_t>& out) const {
  size_t done = 0;
  for (size_t at = 0; at < text.size(); ++at) {
    const Added* best = nullptr;
    for (const Added& t : added_)
      if (t.text.size() <= text.size() - at && text.compare(at, t.text.size(), t.text) == 0 &&
          (best == nullptr || t.text.size() > best->text.size()))
        best = &t;
    if (best == nullptr) continue;
    encode_plain(text.substr(done, at - done), out);
    out.push_back(best->id);
    done = at + best->text.size();
    at = done - 1;
  }
  encode_plain(text.substr(done), out);
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int64_t>& out) const {
  const std::vector<Char> chars = decode_utf8(text);
  std::vector<Kind> kinds(chars.size());
  for (size_t i = 0; i < chars.size(); ++i) kinds[i] = kind(chars[i].cp);
  for (size_t i = 0; i < chars.size();) {
    const size_t j = match_at(chars, kinds, i);
    const size_t end = j < chars.size() ? chars[j].start : text.size();
    encode_piece(text.substr(chars[i].start, end - chars[i].start), out);
    i = j;
  }
}

// BPE on one piece: one token a byte, then the lowest-ranked merge of two neighbours (leftmost on ties) until
// none applies. A byte without a token is dropped, as Hugging Face's BPE does without an unknown token.
void Tokenizer::encode_piece(std::string_view piece, std::vector<int64_t>& out) const {
  std::vector<int32_t> ids;
  ids.reserve(piece.size());
  for (const char c : piece)
    if (byte_id_[static_cast<uint8_t>(c)] >= 0) ids.push_back(byte_id_[static_cast<uint8_t>(c)]);
  while (ids.size() > 1) {
    const Merge* best = nullptr;
    size_t at = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto it = merges_.find(static_cast<uint64_t>(ids[i]) << 32 | static_cast<uint32_t>(ids[i + 1]));
      if (it != merges_.end() && (best == nullptr || it->second.rank < best->rank)) {
        best = &it->second;
        at = i;
      }
    }
    if (best == nullptr) break;
    ids[at] = best->result;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

}  // namespace spinquant

struct SpinquantTokenizer {
  spinquant::Tokenizer tok;
};

extern "C" {

__attribute__((visibility("default"))) SpinquantTokenizer* spinquant_tok_new(const uint8_t* data, int64_t size) {
  try {
    return new SpinquantTokenizer{spinquant::Tokenizer(data, static_cast<size_t>(size))};
  } catch (const std::exception&) {
    return nullptr;
  }
}

__attribute__((visibility("default"))) void spinquant_tok_free(SpinquantTokenizer* tok) { delete tok; }

__attribute__((visibility("default"))) int64_t spinquant_tok_encode(const SpinquantTokenizer* tok, const char* text,
                                                                    int64_t len, int64_t* ids, int64_t cap) {
  const std::vector<int64_t> out = tok->tok.encode({text, static_cast<size_t>(len)});
  const auto n = static_cast<int64_t>(out.size());
  if (n <= cap) std::copy(out.begin(), out.end(), ids);
  return n;
}

__attribute__((visibility("default"))) int64_t spinquant_tok_decode(const SpinquantTokenizer* tok, int64_t id,
                                                                    const char** bytes) {
  const std::string_view piece = tok->tok.decode(id);
  *bytes = piece.data();
  return static_cast<int64_t>(piece.size());
}

__attribute__((visibility("default"))) int64_t spinquant_tok_eos(const SpinquantTokenizer* tok) {
  return tok->tok.eos();
}

}  // extern "C"
