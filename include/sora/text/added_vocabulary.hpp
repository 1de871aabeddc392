#pragma once
// Added tokens ([CLS], <s>, <|endoftext|>, ...): found in the text before the pipeline runs, so
// that the normalizer and pre-tokenizer never cut them. Tokens with normalized=false are
// matched on the original text, the others on the normalized text of what is left. At each
// position the longest token wins (leftmost-longest); single_word requires non-word
// characters (or the text's ends) on both sides; lstrip / rstrip take the whitespace on that
// side into the token.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <sora/text/normalized.hpp>
#include <sora/text/unicode.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace sora::text {

struct AddedToken {
  std::uint32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A match: the token's id and the byte range it covers (whitespace taken by lstrip / rstrip
// included).
struct AddedMatch {
  std::uint32_t id;
  std::size_t begin, end;
};

inline bool is_alphanumeric(char32_t c) {
  if (c < 0x80) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  }
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC) ||
         (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0;
}

inline bool is_added_word_char(char32_t c) {
  return c == '_' || is_alphanumeric(c);
}

class AddedMatcher {
 public:
  // `patterns[k]` is what token k looks like in the text being searched (its content, or its
  // normalized content).
  AddedMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns)
      : tokens_(std::move(tokens)), patterns_(std::move(patterns)) {
    for (const std::string& p : patterns_) {
      if (!p.empty()) first_byte_[static_cast<unsigned char>(p[0])] = true;
    }
  }

  bool empty() const { return tokens_.empty(); }

  std::vector<AddedMatch> find(std::string_view s) const {
    std::vector<AddedMatch> out;
    std::size_t done = 0;  // end of the previous match
    for (std::size_t i = 0; i < s.size();) {
      if (!first_byte_[static_cast<unsigned char>(s[i])]) {
        ++i;
        continue;
      }
      std::size_t best = npos, best_len = 0;
      for (std::size_t k = 0; k < patterns_.size(); ++k) {
        const std::string& p = patterns_[k];
        if (p.size() > best_len && s.compare(i, p.size(), p) == 0) {
          best = k;
          best_len = p.size();
        }
      }
      if (best == npos) {
        ++i;
        continue;
      }
      const AddedToken& t = tokens_[best];
      std::size_t b = i, e = i + best_len;
      if (t.single_word) {
        const bool left_ok = b == 0 || !is_added_word_char(last_char(s.substr(0, b)));
        const bool right_ok = e == s.size() || !is_added_word_char(decode_at(s, e));
        if (!left_ok || !right_ok) {
          i = e;  // the search resumes after a rejected match, as the crate's does
          continue;
        }
      }
      if (t.lstrip) {
        std::size_t nb = b;
        while (nb > done) {
          std::size_t k = nb - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
          if (!is_whitespace(decode_at(s, k))) break;
          nb = k;
        }
        b = nb;
      }
      if (t.rstrip) {
        while (e < s.size()) {
          const char32_t c = decode_at(s, e);
          if (!is_whitespace(c)) break;
          e += utf8_length(static_cast<unsigned char>(s[e]));
        }
      }
      out.push_back({t.id, b, e});
      done = e;
      i = e;
    }
    return out;
  }

 private:
  static constexpr std::size_t npos = std::size_t(-1);
  static char32_t last_char(std::string_view s) {
    std::size_t k = s.size() - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    return decode_at(s, k);
  }

  std::vector<AddedToken> tokens_;
  std::vector<std::string> patterns_;
  bool first_byte_[256] = {};
};

}  // namespace sora::text
