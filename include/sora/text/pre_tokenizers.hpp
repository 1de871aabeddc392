#pragma once
// Pre-tokenizers: cut the normalized text into words (each a NormalizedString that keeps its
// alignments), which the model then tokenizes one by one. Each mirrors one `pre_tokenizer`
// type of tokenizer.json; the splitting rules (which delimiters are kept, and where) follow
// the tokenizers crate's SplitDelimiterBehavior.

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <memory>
#include <sora/text/json.hpp>
#include <sora/text/normalized.hpp>
#include <sora/text/regex.hpp>
#include <sora/text/unicode.hpp>
#include <string>
#include <utility>
#include <vector>

namespace sora::text {

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// Cuts s along the pieces (a partition of its bytes into matched and unmatched runs) and
// appends the non-empty results to out.
inline void split_pieces(const NormalizedString& s, const std::vector<Match>& pieces,
                         SplitBehavior behavior, std::vector<NormalizedString>& out) {
  struct Cut {
    std::size_t begin, end;
    bool keep;
  };
  std::vector<Cut> cuts;
  cuts.reserve(pieces.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::removed:
      for (const Match& m : pieces) cuts.push_back({m.begin, m.end, !m.is_match});
      break;
    case SplitBehavior::isolated:
      for (const Match& m : pieces) cuts.push_back({m.begin, m.end, true});
      break;
    case SplitBehavior::merged_with_previous:
      for (const Match& m : pieces) {
        if (m.is_match && !previous_match && !cuts.empty()) {
          cuts.back().end = m.end;
        } else {
          cuts.push_back({m.begin, m.end, true});
        }
        previous_match = m.is_match;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (std::size_t k = pieces.size(); k-- > 0;) {
        const Match& m = pieces[k];
        if (m.is_match && !previous_match && !cuts.empty()) {
          cuts.back().begin = m.begin;
        } else {
          cuts.push_back({m.begin, m.end, true});
        }
        previous_match = m.is_match;
      }
      std::reverse(cuts.begin(), cuts.end());
      break;
    case SplitBehavior::contiguous:
      for (const Match& m : pieces) {
        if (m.is_match == previous_match && !cuts.empty()) {
          cuts.back().end = m.end;
        } else {
          cuts.push_back({m.begin, m.end, true});
        }
        previous_match = m.is_match;
      }
      break;
  }
  for (const Cut& c : cuts) {
    if (c.keep && c.end > c.begin) out.push_back(s.slice(c.begin, c.end));
  }
}

// Pieces where each character satisfying pred is a match of its own.
template <class Pred>
std::vector<Match> char_matches(const std::string& t, Pred&& pred) {
  std::vector<Match> out;
  std::size_t prev = 0;
  for (std::size_t i = 0; i < t.size();) {
    const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
    if (pred(decode_at(t, i))) {
      if (i > prev) out.push_back({prev, i, false});
      out.push_back({i, i + len, true});
      prev = i + len;
    }
    i += len;
  }
  if (prev < t.size()) out.push_back({prev, t.size(), false});
  return out;
}

inline void invert(std::vector<Match>& pieces) {
  for (Match& m : pieces) m.is_match = !m.is_match;
}

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Appends the words of s to out. `first` is true for the first piece of the input (Metaspace
  // prepends its replacement there only, under prepend_scheme "first").
  virtual void split(const NormalizedString& s, bool first,
                     std::vector<NormalizedString>& out) const = 0;
};

// BERT: whitespace separates words and is dropped; each punctuation character is a word.
class BertPreTokenizer final : public PreTokenizer {
 public:
  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    // One pass: runs of characters that are neither whitespace nor punctuation are words.
    const std::string& t = s.text();
    std::size_t word = 0;
    bool in_word = false;
    for (std::size_t i = 0; i < t.size();) {
      const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
      const char32_t c = decode_at(t, i);
      const bool space = is_whitespace(c);
      const bool punct = !space && is_bert_punctuation(c);
      if (space || punct) {
        if (in_word) out.push_back(s.slice(word, i));
        in_word = false;
        if (punct) out.push_back(s.slice(i, i + len));
      } else if (!in_word) {
        in_word = true;
        word = i;
      }
      i += len;
    }
    if (in_word) out.push_back(s.slice(word, t.size()));
  }
};

// Splits on whitespace, which is dropped.
class WhitespaceSplitPreTokenizer final : public PreTokenizer {
 public:
  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    split_pieces(s, char_matches(s.text(), is_whitespace), SplitBehavior::removed, out);
  }
};

// \w as the Rust regex crate defines it (Alphabetic, marks, decimal digits, connector
// punctuation, the joiners), which PCRE2 10.42's \w does not match exactly.
inline bool is_word_char(char32_t c) {
  if (c < 0x80) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }
  if (c == 0x200C || c == 0x200D) return true;
  if (u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC)) return true;
  switch (category(c)) {
    case U_NON_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

// Whitespace: the regex \w+|[^\w\s]+; what it does not match (whitespace) is dropped.
class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    const std::string& t = s.text();
    int run = 0;  // 0: none, 1: word characters, 2: other non-space characters
    std::size_t begin = 0;
    for (std::size_t i = 0; i < t.size();) {
      const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
      const char32_t c = decode_at(t, i);
      const int kind = is_word_char(c) ? 1 : is_whitespace(c) ? 0 : 2;
      if (kind != run) {
        if (run != 0) out.push_back(s.slice(begin, i));
        begin = i;
        run = kind;
      }
      i += len;
    }
    if (run != 0) out.push_back(s.slice(begin, t.size()));
  }
};

class PunctuationPreTokenizer final : public PreTokenizer {
 public:
  explicit PunctuationPreTokenizer(SplitBehavior b) : behavior_(b) {}
  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    split_pieces(s, char_matches(s.text(), is_bert_punctuation), behavior_, out);
  }

 private:
  SplitBehavior behavior_;
};

// Numeric characters (N*: ٣, ², ½ as well as 0-9), each one a word (individual_digits) or in
// runs.
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    split_pieces(s, char_matches(s.text(), is_numeric),
                 individual_ ? SplitBehavior::isolated : SplitBehavior::contiguous, out);
  }

 private:
  bool individual_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern p, SplitBehavior b, bool inv)
      : pattern_(std::move(p)), behavior_(b), invert_(inv) {}
  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    std::vector<Match> pieces = pattern_.find_matches(s.text());
    if (invert_) invert(pieces);
    split_pieces(s, pieces, behavior_, out);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// Metaspace (SentencePiece): spaces become the replacement character (default ▁), which is
// also prepended (always, only to the first piece, or never), then words start at each
// replacement character.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  enum class Prepend { always, first, never };
  MetaspacePreTokenizer(char32_t replacement, Prepend scheme, bool split)
      : replacement_(replacement), scheme_(scheme), split_(split) {}

  void split(const NormalizedString& s, bool first,
             std::vector<NormalizedString>& out) const override {
    NormalizedString t = s;
    t.transform([&](char32_t c, auto&& emit) { emit(c == U' ' ? replacement_ : c); });
    if (!t.empty() && (scheme_ == Prepend::always || (scheme_ == Prepend::first && first)) &&
        decode_at(t.text(), 0) != replacement_) {
      NormalizedString p;
      const Range r = t.char_range(0, utf8_length(static_cast<unsigned char>(t.text()[0])));
      p.reserve(t.size() + 3);
      p.push(replacement_, r);
      for (std::size_t i = 0; i < t.size();) {
        const std::size_t len = utf8_length(static_cast<unsigned char>(t.text()[i]));
        p.push(decode_at(t.text(), i), t.char_range(i, len));
        i += len;
      }
      t = std::move(p);
    }
    if (!split_) {
      if (!t.empty()) out.push_back(std::move(t));
      return;
    }
    const char32_t rep = replacement_;
    split_pieces(t, char_matches(t.text(), [rep](char32_t c) { return c == rep; }),
                 SplitBehavior::merged_with_next, out);
  }

 private:
  char32_t replacement_;
  Prepend scheme_;
  bool split_;
};

// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others
// are moved to U+0100 and up, so that every byte is a visible character.
inline const std::array<char32_t, 256>& bytes_to_chars() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[static_cast<std::size_t>(b)] = printable ? char32_t(b) : char32_t(256 + next++);
    }
    return t;
  }();
  return table;
}

inline const char* gpt2_pattern() {
  return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
}

// GPT-2's byte-level pre-tokenizer: optionally a space in front, the GPT-2 regex, and each
// byte of each word turned into its character (all of a character's bytes align to it).
class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : prefix_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) regex_ = Pattern::regex(gpt2_pattern());
  }

  void split(const NormalizedString& s, bool, std::vector<NormalizedString>& out) const override {
    NormalizedString t = s;
    if (prefix_ && !t.empty() && t.text()[0] != ' ') {
      const Range r = t.char_range(0, utf8_length(static_cast<unsigned char>(t.text()[0])));
      NormalizedString p;
      p.reserve(t.size() + 1);
      p.push(U' ', r);
      for (std::size_t i = 0; i < t.size();) {
        const std::size_t len = utf8_length(static_cast<unsigned char>(t.text()[i]));
        p.push(decode_at(t.text(), i), t.char_range(i, len));
        i += len;
      }
      t = std::move(p);
    }
    std::vector<NormalizedString> words;
    if (use_regex_) {
      split_pieces(t, regex_.find_matches(t.text()), SplitBehavior::isolated, words);
    } else if (!t.empty()) {
      words.push_back(std::move(t));
    }
    const auto& table = bytes_to_chars();
    for (NormalizedString& w : words) {
      NormalizedString b;
      b.reserve(w.size() * 2);
      const std::string& wt = w.text();
      for (std::size_t i = 0; i < wt.size();) {
        const std::size_t len = utf8_length(static_cast<unsigned char>(wt[i]));
        const Range r = w.char_range(i, len);
        for (std::size_t k = 0; k < len; ++k)
          b.push(table[static_cast<unsigned char>(wt[i + k])], r);
        i += len;
      }
      out.push_back(std::move(b));
    }
  }

 private:
  bool prefix_, use_regex_;
  Pattern regex_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void split(const NormalizedString& s, bool first,
             std::vector<NormalizedString>& out) const override {
    std::vector<NormalizedString> cur{s}, next;
    for (const auto& step : steps_) {
      next.clear();
      for (std::size_t k = 0; k < cur.size(); ++k) step->split(cur[k], first && k == 0, next);
      std::swap(cur, next);
    }
    for (auto& w : cur) out.push_back(std::move(w));
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

inline SplitBehavior behavior_from_json(const json::Json& j, const json::Where& at) {
  const std::string b = json::as_string(j, at);
  if (b == "Removed") return SplitBehavior::removed;
  if (b == "Isolated") return SplitBehavior::isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (b == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (b == "Contiguous") return SplitBehavior::contiguous;
  json::fail(at, "unknown split behavior '", b, "'");
}

// The single character of a string field (Metaspace's replacement).
inline char32_t single_char(const std::string& s, const json::Where& at) {
  if (find_invalid_utf8(s) != std::string::npos || s.empty() ||
      utf8_length(static_cast<unsigned char>(s[0])) != s.size()) {
    json::fail(at, "expected a single character, found '", s, "'");
  }
  return decode_at(s, 0);
}

inline std::unique_ptr<PreTokenizer> pre_tokenizer_from_json(const json::Json& j,
                                                             const json::Where& at) {
  const std::string type = json::type_of(j, at);
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "Whitespace") return std::make_unique<WhitespacePreTokenizer>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPreTokenizer>();
  if (type == "Punctuation") {
    const json::Json* b = json::optional_field(j, "behavior", at);
    return std::make_unique<PunctuationPreTokenizer>(
        b == nullptr ? SplitBehavior::isolated : behavior_from_json(*b, at / "behavior"));
  }
  if (type == "Digits") {
    return std::make_unique<DigitsPreTokenizer>(json::get_bool(j, "individual_digits", at, false));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(
        pattern_from_json(json::field(j, "pattern", at), at / "pattern"),
        behavior_from_json(json::field(j, "behavior", at), at / "behavior"),
        json::get_bool(j, "invert", at, false));
  }
  if (type == "Metaspace") {
    const char32_t rep = single_char(json::get_string(j, "replacement", at), at / "replacement");
    auto scheme = MetaspacePreTokenizer::Prepend::always;
    if (const auto s = json::get_optional_string(j, "prepend_scheme", at)) {
      if (*s == "always") {
        scheme = MetaspacePreTokenizer::Prepend::always;
      } else if (*s == "first") {
        scheme = MetaspacePreTokenizer::Prepend::first;
      } else if (*s == "never") {
        scheme = MetaspacePreTokenizer::Prepend::never;
      } else {
        json::fail(at / "prepend_scheme", "unknown prepend scheme '", *s, "'");
      }
    } else if (!json::get_bool(j, "add_prefix_space", at, true)) {
      scheme = MetaspacePreTokenizer::Prepend::never;  // files older than prepend_scheme
    }
    return std::make_unique<MetaspacePreTokenizer>(rep, scheme,
                                                   json::get_bool(j, "split", at, true));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(json::get_bool(j, "add_prefix_space", at, true),
                                                   json::get_bool(j, "use_regex", at, true));
  }
  if (type == "Sequence") {
    const json::Json& list = json::array(json::field(j, "pretokenizers", at), at / "pretokenizers");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      steps.push_back(pre_tokenizer_from_json(list[i], (at / "pretokenizers")[i]));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  json::fail(at / "type", "unsupported pre-tokenizer '", type, "'");
}

}  // namespace sora::text
