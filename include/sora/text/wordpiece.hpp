#pragma once
// WordPiece (BERT): greedy longest-match-first over the vocabulary, pieces after the first
// carrying the continuing-subword prefix ("##"). A word longer than max_input_chars_per_word
// characters, or one with any part missing from the vocabulary, is a single unknown token.

#include <fstream>
#include <sora/text/model.hpp>
#include <string>
#include <utility>

namespace sora::text {

class WordPiece final : public Model {
 public:
  WordPiece(Vocab vocab, std::string unk_token, std::string prefix, std::size_t max_chars,
            const json::Where& at)
      : vocab_(std::move(vocab)), prefix_(std::move(prefix)), max_chars_(max_chars) {
    const auto unk = vocab_.find(unk_token);
    if (!unk) json::fail(at / "unk_token", "'", unk_token, "' is not in the vocabulary");
    unk_ = *unk;
  }

  static WordPiece from_json(const json::Json& j, const json::Where& at) {
    return WordPiece(
        Vocab::from_json(json::field(j, "vocab", at), at / "vocab"),
        json::get_string(j, "unk_token", at),
        json::get_optional_string(j, "continuing_subword_prefix", at).value_or("##"),
        json::optional_field(j, "max_input_chars_per_word", at) == nullptr
            ? 100
            : json::as_uint(j["max_input_chars_per_word"], at / "max_input_chars_per_word"),
        at);
  }

  // BERT's vocab.txt: one token per line, the line number is its id.
  static Vocab read_vocab_txt(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    SORA_CHECK(in, path, ": cannot open");
    Vocab v;
    std::string line;
    std::uint32_t id = 0;
    while (std::getline(in, line)) {
      check_utf8(line, path + ": line " + std::to_string(id + 1));
      // Trailing whitespace (a CR, stray spaces) is not part of the token.
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
        line.pop_back();
      v.set(line, id);
      ++id;
    }
    SORA_CHECK(v.size() > 0, path, ": empty vocabulary");
    return v;
  }

  void tokenize(const NormalizedString& word, std::vector<Token>& out) const override {
    const std::string& w = word.text();
    if (count_chars(w) > max_chars_) {
      out.push_back({unk_, word.original(0, w.size())});
      return;
    }
    const std::size_t first = out.size();
    std::string candidate;
    std::size_t start = 0;
    while (start < w.size()) {
      std::size_t end = w.size();
      std::optional<std::uint32_t> found;
      while (start < end) {
        const std::string_view piece(w.data() + start, end - start);
        if (start == 0) {
          found = vocab_.find(piece);
        } else {
          candidate.assign(prefix_);
          candidate.append(piece);
          found = vocab_.find(candidate);
        }
        if (found) break;
        do --end;  // back to the start of the last character
        while (end > start && (static_cast<unsigned char>(w[end]) & 0xC0) == 0x80);
      }
      if (!found) {
        out.resize(first);
        out.push_back({unk_, word.original(0, w.size())});
        return;
      }
      out.push_back({*found, word.original(start, end)});
      start = end;
    }
  }

  const Vocab& vocab() const override { return vocab_; }
  const std::string& prefix() const { return prefix_; }

 private:
  Vocab vocab_;
  std::uint32_t unk_ = 0;
  std::string prefix_;
  std::size_t max_chars_;
};

}  // namespace sora::text
