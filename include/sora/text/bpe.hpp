#pragma once
// Byte-pair encoding (GPT-2, RoBERTa, LLaMA): a word starts as its characters (or, with
// byte_fallback, <0xAB> byte tokens for characters outside the vocabulary) and the adjacent pair
// with the best (lowest) merge rank is merged until no known pair is left; ties go to the
// leftmost pair. Also WordLevel, the whole-word lookup.

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <sora/text/model.hpp>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sora::text {

class Bpe final : public Model {
 public:
  struct Options {
    std::optional<std::string> unk_token;
    std::string continuing_subword_prefix;
    std::string end_of_word_suffix;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;
  };

  Bpe(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges, Options o,
      const json::Where& at)
      : vocab_(std::move(vocab)), opt_(std::move(o)) {
    if (opt_.unk_token) {
      const auto id = vocab_.find(*opt_.unk_token);
      if (!id) json::fail(at / "unk_token", "'", *opt_.unk_token, "' is not in the vocabulary");
      unk_ = *id;
    }
    const std::size_t plen = opt_.continuing_subword_prefix.size();
    merges_.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const auto& [a, b] = merges[r];
      const auto ia = vocab_.find(a), ib = vocab_.find(b);
      if (!ia || !ib) {
        json::fail(at / "merges", "merge ", r, " ('", a, "' '", b, "'): '", !ia ? a : b,
                   "' is not in the vocabulary");
      }
      const std::string joined =
          a + (b.compare(0, plen, opt_.continuing_subword_prefix) == 0 ? b.substr(plen) : b);
      const auto ij = vocab_.find(joined);
      if (!ij) {
        json::fail(at / "merges", "merge ", r, ": the merged token '", joined,
                   "' is not in the vocabulary");
      }
      merges_.emplace(key(*ia, *ib),
                      std::pair<std::uint32_t, std::uint32_t>{static_cast<std::uint32_t>(r), *ij});
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      byte_ids_[b] = vocab_.find(name);
    }
  }

  static std::unique_ptr<Bpe> from_json(const json::Json& j, const json::Where& at) {
    if (const json::Json* d = json::optional_field(j, "dropout", at)) {
      if (json::as_double(*d, at / "dropout") != 0.0) {
        json::fail(at / "dropout", "BPE dropout (random merges at encoding time) is not supported");
      }
    }
    Options o;
    o.unk_token = json::get_optional_string(j, "unk_token", at);
    o.continuing_subword_prefix =
        json::get_optional_string(j, "continuing_subword_prefix", at).value_or("");
    o.end_of_word_suffix = json::get_optional_string(j, "end_of_word_suffix", at).value_or("");
    o.fuse_unk = json::get_bool(j, "fuse_unk", at, false);
    o.byte_fallback = json::get_bool(j, "byte_fallback", at, false);
    o.ignore_merges = json::get_bool(j, "ignore_merges", at, false);
    const json::Where mw = at / "merges";
    const json::Json& list = json::array(json::field(j, "merges", at), mw);
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (list[i].is_string()) {  // "a b" (files before tokenizers 0.20)
        const std::string s = list[i].get<std::string>();
        const std::size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          json::fail(mw[i], "expected two tokens separated by one space, found '", s, "'");
        }
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {  // ["a", "b"]
        json::array(list[i], mw[i]);
        if (list[i].size() != 2) json::fail(mw[i], "expected a pair of tokens");
        merges.emplace_back(json::as_string(list[i][0], mw[i][0]),
                            json::as_string(list[i][1], mw[i][1]));
      }
    }
    return std::make_unique<Bpe>(Vocab::from_json(json::field(j, "vocab", at), at / "vocab"),
                                 merges, std::move(o), at);
  }

  // GPT-2's vocab.json + merges.txt (a "#version" first line is a comment).
  static std::unique_ptr<Bpe> from_files(const std::string& vocab_json,
                                         const std::string& merges_txt) {
    std::ifstream vin(vocab_json, std::ios::binary);
    SORA_CHECK(vin, vocab_json, ": cannot open");
    json::Json v;
    try {
      v = json::Json::parse(vin);
    } catch (const json::Json::exception& e) {
      ::sora::detail::throw_error(vocab_json, ": not valid JSON: ", e.what());
    }
    std::ifstream min(merges_txt, std::ios::binary);
    SORA_CHECK(min, merges_txt, ": cannot open");
    std::vector<std::pair<std::string, std::string>> merges;
    std::string line;
    for (std::size_t n = 1; std::getline(min, line); ++n) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (n == 1 && line.rfind("#version", 0) == 0)) continue;
      const std::size_t sp = line.find(' ');
      SORA_CHECK(sp != std::string::npos && line.find(' ', sp + 1) == std::string::npos, merges_txt,
                 ": line ", n, ": expected two tokens separated by one space");
      merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    }
    return std::make_unique<Bpe>(Vocab::from_json(v, json::Where{vocab_json, "$"}), merges,
                                 Options{}, json::Where{merges_txt, "$"});
  }

  void tokenize(const NormalizedString& word, std::vector<Token>& out) const override {
    const std::string& w = word.text();
    if (w.empty()) return;
    if (opt_.ignore_merges) {
      if (const auto id = vocab_.find(w)) {
        out.push_back({*id, word.original(0, w.size())});
        return;
      }
    }
    std::vector<Symbol> symbols;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      const auto it = cache_.find(w);
      if (it != cache_.end()) symbols = it->second;
    }
    if (symbols.empty()) {
      symbols = merge_word(w);
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() >= cache_capacity) cache_.clear();
      cache_.emplace(w, symbols);
    }
    std::size_t at = 0;
    for (const Symbol& s : symbols) {
      out.push_back({s.id, word.original(at, at + s.len)});
      at += s.len;
    }
  }

  const Vocab& vocab() const override { return vocab_; }

 private:
  struct Symbol {
    std::uint32_t id;
    std::uint32_t len;  // bytes of the word it covers
  };

  static std::uint64_t key(std::uint32_t a, std::uint32_t b) {
    return (std::uint64_t{a} << 32) | b;
  }

  std::vector<Symbol> merge_word(const std::string& w) const {
    std::vector<Symbol> sym;
    sym.reserve(w.size());
    std::optional<Symbol> unk;
    std::string piece;
    for (std::size_t i = 0; i < w.size();) {
      const std::size_t len = utf8_length(static_cast<unsigned char>(w[i]));
      piece.clear();
      if (i > 0) piece += opt_.continuing_subword_prefix;
      piece.append(w, i, len);
      if (i + len == w.size()) piece += opt_.end_of_word_suffix;
      if (const auto id = vocab_.find(piece)) {
        if (unk) {
          sym.push_back(*unk);
          unk.reset();
        }
        sym.push_back({*id, static_cast<std::uint32_t>(len)});
      } else {
        bool done = false;
        if (opt_.byte_fallback) {
          bool all = true;
          for (const char c : piece) all = all && byte_ids_[static_cast<unsigned char>(c)];
          if (all) {
            for (const char c : piece)
              sym.push_back({*byte_ids_[static_cast<unsigned char>(c)], 1});
            done = true;
          }
        }
        if (!done && opt_.unk_token) {
          if (unk && opt_.fuse_unk) {
            unk->len += static_cast<std::uint32_t>(len);
          } else {
            if (unk) sym.push_back(*unk);
            unk = Symbol{unk_, static_cast<std::uint32_t>(len)};
          }
        }
      }
      i += len;
    }
    if (unk) sym.push_back(*unk);
    merge_all(sym);
    return sym;
  }

  // The merge loop over a doubly linked list of symbols, with a queue of candidate pairs
  // ordered by (rank, position); entries made stale by earlier merges are skipped.
  void merge_all(std::vector<Symbol>& sym) const {
    const std::size_t n = sym.size();
    if (n < 2) return;
    std::vector<std::int64_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = static_cast<std::int64_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<std::int64_t>(i + 1) : -1;
    }
    struct Cand {
      std::uint32_t rank;
      std::size_t pos;
      std::uint32_t new_id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
    const auto push = [&](std::size_t pos, std::size_t right) {
      const auto it = merges_.find(key(sym[pos].id, sym[right].id));
      if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(i, i + 1);
    while (!queue.empty()) {
      const Cand top = queue.top();
      queue.pop();
      if (sym[top.pos].len == 0 || next[top.pos] < 0) continue;
      const auto right = static_cast<std::size_t>(next[top.pos]);
      const auto it = merges_.find(key(sym[top.pos].id, sym[right].id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;  // stale
      sym[top.pos].id = top.new_id;
      sym[top.pos].len += sym[right].len;
      sym[right].len = 0;
      next[top.pos] = next[right];
      if (next[right] >= 0)
        prev[static_cast<std::size_t>(next[right])] = static_cast<std::int64_t>(top.pos);
      if (prev[top.pos] >= 0) push(static_cast<std::size_t>(prev[top.pos]), top.pos);
      if (next[top.pos] >= 0) push(top.pos, static_cast<std::size_t>(next[top.pos]));
    }
    std::size_t k = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (sym[i].len != 0) sym[k++] = sym[i];
    }
    sym.resize(k);
  }

  static constexpr std::size_t cache_capacity = 10000;

  Vocab vocab_;
  Options opt_;
  std::uint32_t unk_ = 0;
  std::unordered_map<std::uint64_t, std::pair<std::uint32_t, std::uint32_t>> merges_;
  std::optional<std::uint32_t> byte_ids_[256];
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<Symbol>, StringHash, std::equal_to<>> cache_;
};

// WordLevel: each word is one token, or the unknown token.
class WordLevel final : public Model {
 public:
  WordLevel(Vocab vocab, const std::string& unk_token, const json::Where& at)
      : vocab_(std::move(vocab)) {
    const auto id = vocab_.find(unk_token);
    if (!id) json::fail(at / "unk_token", "'", unk_token, "' is not in the vocabulary");
    unk_ = *id;
  }
  static WordLevel from_json(const json::Json& j, const json::Where& at) {
    return WordLevel(Vocab::from_json(json::field(j, "vocab", at), at / "vocab"),
                     json::get_string(j, "unk_token", at), at);
  }
  void tokenize(const NormalizedString& word, std::vector<Token>& out) const override {
    out.push_back({vocab_.find(word.text()).value_or(unk_), word.original(0, word.size())});
  }
  const Vocab& vocab() const override { return vocab_; }

 private:
  Vocab vocab_;
  std::uint32_t unk_ = 0;
};

}  // namespace sora::text
