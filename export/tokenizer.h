// Byte-level BPE tokenizer with GPT-2's split pattern, read from the packed format of docs/TOKENIZER_FORMAT.md
// (the bytes spinquant-export stores in a program as `spinquant_tokenizer`). Gives the Hugging Face tokenizer's
// ids for the tokenizers it packs (tests/test_tokenizer.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace spinquant {

class Tokenizer {
 public:
  // Parses a packed tokenizer; throws std::runtime_error naming what is wrong.
  Tokenizer(const uint8_t* data, size_t size);

  // Token ids of `text` (UTF-8; invalid bytes are kept as bytes), with the post-processor's prefix and suffix.
  std::vector<int64_t> encode(std::string_view text) const;
  // The bytes token `id` stands for; empty for special tokens and ids out of range.
  std::string_view decode(int64_t id) const;
  int64_t bos() const { return bos_; }
  int64_t eos() const { return eos_; }

 private:
  struct Merge {
    int32_t rank, result;
  };
  struct Added {
    std::string_view text;
    int32_t id;
  };
  void split_added(std::string_view text, std::vector<int64_t>& out) const;
  void encode_plain(std::string_view text, std::vector<int64_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int64_t>& out) const;

  std::vector<uint8_t> blob_;                   // the packed bytes; pieces_ and added_ point into it
  std::vector<std::string_view> pieces_;        // each id's bytes
  std::vector<bool> special_;                   // special added tokens (not printed)
  std::unordered_map<uint64_t, Merge> merges_;  // (left << 32 | right) -> rank and merged id
  std::vector<Added> added_;
  int32_t byte_id_[256];
  std::vector<int64_t> prefix_, suffix_;
  int64_t bos_ = -1, eos_ = -1;
};

}  // namespace spinquant
