#pragma once
// Encoding (what encode() returns) and the truncation and padding applied to it. Offsets are
// byte ranges of the UTF-8 text the token came from (for a pair, of its own text); special
// tokens added by the post-processor and padding have the empty range (0, 0).

#include <algorithm>
#include <cstdint>
#include <sora/core/error.hpp>
#include <string>
#include <utility>
#include <vector>

namespace sora::text {

struct Encoding {
  std::vector<std::uint32_t> ids;
  std::vector<std::uint32_t> type_ids;
  std::vector<std::uint32_t> attention_mask;
  std::vector<std::uint32_t> special_tokens_mask;
  std::vector<std::pair<std::size_t, std::size_t>> offsets;
  std::vector<std::string> tokens;  // the token strings (an added token: the text it matched)

  std::size_t size() const { return ids.size(); }

  void push(std::uint32_t id, std::uint32_t type_id, std::pair<std::size_t, std::size_t> off,
            bool special, std::string token) {
    tokens.push_back(std::move(token));
    ids.push_back(id);
    type_ids.push_back(type_id);
    attention_mask.push_back(1);
    special_tokens_mask.push_back(special ? 1 : 0);
    offsets.push_back(off);
  }

  void append(const Encoding& o) {
    const auto cat = [](auto& a, const auto& b) { a.insert(a.end(), b.begin(), b.end()); };
    cat(ids, o.ids);
    cat(type_ids, o.type_ids);
    cat(attention_mask, o.attention_mask);
    cat(special_tokens_mask, o.special_tokens_mask);
    cat(offsets, o.offsets);
    cat(tokens, o.tokens);
  }

  // Keeps n tokens: the first n (from the right end removed) or the last n.
  void truncate(std::size_t n, bool from_left) {
    if (n >= size()) return;
    const auto cut = [&](auto& v) {
      if (from_left) {
        v.erase(v.begin(), v.end() - static_cast<std::ptrdiff_t>(n));
      } else {
        v.resize(n);
      }
    };
    cut(ids);
    cut(type_ids);
    cut(attention_mask);
    cut(special_tokens_mask);
    cut(offsets);
    cut(tokens);
  }
};

enum class TruncationStrategy { longest_first, only_first, only_second };

struct Truncation {
  std::size_t max_length = 512;
  TruncationStrategy strategy = TruncationStrategy::longest_first;
  bool from_left = false;  // direction "Left": drop tokens at the start
};

// Truncates the sequence(s) so that together they hold at most max_length tokens. Longest
// first on a pair: when the shorter one fits in half the budget, the longer one gives up what
// is needed; otherwise the first keeps max/2 tokens and the second max/2 + max%2.
inline void truncate(Encoding& a, Encoding* b, const Truncation& t) {
  const std::size_t max = t.max_length;
  const std::size_t total = a.size() + (b != nullptr ? b->size() : 0);
  if (total <= max) return;
  const std::size_t excess = total - max;
  switch (t.strategy) {
    case TruncationStrategy::longest_first: {
      if (b == nullptr) {
        a.truncate(max, t.from_left);
        return;
      }
      std::size_t n1 = a.size(), n2 = b->size();
      const bool swap = n1 > n2;  // make n1 the shorter one
      if (swap) std::swap(n1, n2);
      n2 = n1 > max ? n1 : std::max(n1, max - n1);
      if (n1 + n2 > max) {
        n1 = max / 2;
        n2 = n1 + max % 2;
      }
      if (swap) std::swap(n1, n2);
      a.truncate(n1, t.from_left);
      b->truncate(n2, t.from_left);
      return;
    }
    case TruncationStrategy::only_first:
    case TruncationStrategy::only_second: {
      Encoding* target = t.strategy == TruncationStrategy::only_first ? &a : b;
      SORA_CHECK(target != nullptr, "truncation only_second needs a pair of sequences");
      SORA_CHECK(target->size() > excess, "truncation: the ",
                 t.strategy == TruncationStrategy::only_first ? "first" : "second",
                 " sequence has ", target->size(), " tokens, too few to remove ", excess,
                 " (max_length ", max, ")");
      target->truncate(target->size() - excess, t.from_left);
      return;
    }
  }
}

struct Padding {
  std::size_t fixed_length = 0;  // 0: no fixed length (pad a single encoding not at all)
  std::size_t pad_to_multiple_of = 0;
  std::uint32_t pad_id = 0;
  std::uint32_t pad_type_id = 0;
  std::string pad_token = "[PAD]";
  bool left = false;  // direction "Left"
};

// Pads to `length` (rounded up to a multiple of pad_to_multiple_of) with the pad token, which
// the attention mask hides.
inline void pad(Encoding& e, std::size_t length, const Padding& p) {
  if (p.pad_to_multiple_of > 0 && length % p.pad_to_multiple_of != 0) {
    length += p.pad_to_multiple_of - length % p.pad_to_multiple_of;
  }
  if (e.size() >= length) return;
  const std::size_t n = length - e.size();
  const auto fill = [&](auto& v, auto value) { v.insert(p.left ? v.begin() : v.end(), n, value); };
  fill(e.ids, p.pad_id);
  fill(e.type_ids, p.pad_type_id);
  fill(e.attention_mask, std::uint32_t{0});
  fill(e.special_tokens_mask, std::uint32_t{1});
  fill(e.offsets, std::pair<std::size_t, std::size_t>{0, 0});
  fill(e.tokens, p.pad_token);
}

}  // namespace sora::text
