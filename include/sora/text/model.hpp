#pragma once
// The model interface (WordPiece, BPE, Unigram, WordLevel) and the vocabulary they share: a
// token <-> id map whose lookups take string_views, so that trying substrings of a word
// allocates nothing.

#include <cstdint>
#include <optional>
#include <sora/core/error.hpp>
#include <sora/text/json.hpp>
#include <sora/text/normalized.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sora::text {

// One token of a word: its id and its range in the original text.
struct Token {
  std::uint32_t id;
  Range offsets;
};

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class Vocab {
 public:
  using Map = std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>;

  // Reads {"token": id, ...}; ids must be unique (gaps are allowed, as in real files).
  static Vocab from_json(const json::Json& j, const json::Where& at) {
    json::object(j, at);
    Vocab v;
    v.map_.reserve(j.size());
    for (auto it = j.begin(); it != j.end(); ++it) {
      const auto id = static_cast<std::uint32_t>(json::as_uint(it.value(), at / it.key()));
      v.add(it.key(), id, at);
    }
    return v;
  }

  void add(const std::string& token, std::uint32_t id, const json::Where& at) {
    if (!map_.emplace(token, id).second) json::fail(at, "token '", token, "' appears twice");
    if (id >= tokens_.size()) {
      if (id > 50'000'000) json::fail(at / token, "id ", id, " is implausibly large");
      tokens_.resize(id + 1);
      present_.resize(id + 1, false);
    }
    if (present_[id]) json::fail(at / token, "id ", id, " is used by two tokens");
    tokens_[id] = token;
    present_[id] = true;
  }

  // Sets token -> id even when the token is already there (the last of repeated lines of a
  // vocab.txt wins, as in the tokenizers crate); the id keeps its first token for decoding.
  void set(const std::string& token, std::uint32_t id) {
    map_[token] = id;
    if (id >= tokens_.size()) {
      tokens_.resize(id + 1);
      present_.resize(id + 1, false);
    }
    if (!present_[id]) {
      tokens_[id] = token;
      present_[id] = true;
    }
  }

  std::optional<std::uint32_t> find(std::string_view token) const {
    const auto it = map_.find(token);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }

  const std::string* token(std::uint32_t id) const {
    return id < tokens_.size() && present_[id] ? &tokens_[id] : nullptr;
  }

  std::size_t size() const { return map_.size(); }
  const Map& map() const { return map_; }

 private:
  Map map_;
  std::vector<std::string> tokens_;
  std::vector<bool> present_;
};

class Model {
 public:
  virtual ~Model() = default;
  // Appends the tokens of one word (never empty) to out.
  virtual void tokenize(const NormalizedString& word, std::vector<Token>& out) const = 0;
  virtual const Vocab& vocab() const = 0;
};

}  // namespace sora::text
