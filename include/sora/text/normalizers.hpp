#pragma once
// Normalizers: the first stage of the pipeline, rewriting the text (with its alignments) before
// it is split into words. Each mirrors one `normalizer` type of tokenizer.json.

#include <unicode/unorm2.h>

#include <algorithm>
#include <memory>
#include <sora/text/json.hpp>
#include <sora/text/normalized.hpp>
#include <sora/text/regex.hpp>
#include <sora/text/unicode.hpp>
#include <string>
#include <utility>
#include <vector>

namespace sora::text {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedString& s) const = 0;
};

namespace detail {

// A character of a rewritten string and how it relates to the input, as the tokenizers crate
// records it: 0 takes the place of the next input character, +1 is inserted after the
// previous one, -N takes the place of the next input character and of the N after it.
struct Change {
  char32_t c;
  int change;
};

// Rebuilds s from the changes, giving each character the alignment of the input character at
// its position (an inserted one: that of the input character before it). Alignment follows
// position, not identity: a mark moved by canonical reordering takes the alignment of the
// mark whose place it took, exactly as in the crate.
inline void apply_changes(NormalizedString& s, const std::vector<Change>& changes) {
  const std::string& t = s.text();
  std::vector<Range> in;  // alignment of each input character
  in.reserve(t.size());
  for (std::size_t i = 0; i < t.size();) {
    const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
    in.push_back(s.char_range(i, len));
    i += len;
  }
  NormalizedString out;
  out.reserve(t.size());
  std::size_t at = 0;  // next input character
  for (const Change& ch : changes) {
    Range r{};
    if (ch.change > 0) {
      if (at > 0) r = in[at - 1];
    } else {
      if (at < in.size()) r = in[at];
      at += 1 + static_cast<std::size_t>(-ch.change);
    }
    out.push(ch.c, r);
  }
  s = std::move(out);
}

// Decomposition (canonical or compatibility) with the canonical reordering of marks: the first
// character of a decomposition replaces its source (0), the others are inserted (+1); the
// stable sort of each run of marks by combining class carries the changes along.
inline std::vector<Change> decomposition_changes(const std::string& t, bool compat) {
  struct Item {
    Change ch;
    std::uint8_t ccc;
  };
  std::vector<Item> items;
  items.reserve(t.size());
  for (std::size_t i = 0; i < t.size();) {
    const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
    int change = 0;
    decompose(decode_at(t, i), compat, [&](char32_t d) {
      items.push_back({{d, change}, combining_class(d)});
      change = 1;
    });
    i += len;
  }
  for (std::size_t i = 0; i < items.size();) {
    if (items[i].ccc == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < items.size() && items[j].ccc != 0) ++j;
    std::stable_sort(items.begin() + static_cast<std::ptrdiff_t>(i),
                     items.begin() + static_cast<std::ptrdiff_t>(j),
                     [](const Item& x, const Item& y) { return x.ccc < y.ccc; });
    i = j;
  }
  std::vector<Change> out;
  out.reserve(items.size());
  for (const Item& it : items) out.push_back(it.ch);
  return out;
}

inline const UNormalizer2* nfc_instance() {
  static const UNormalizer2* n = [] {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2* p = unorm2_getNFCInstance(&err);
    SORA_CHECK(U_SUCCESS(err), "ICU: cannot load the NFC data: ", u_errorName(err));
    return p;
  }();
  return n;
}

// Canonical composition of a decomposed sequence: a mark folded into its starter gives up its
// place, so the starter's change drops by one for each absorbed mark that had taken an input
// character's place (an absorbed inserted mark cancels its insertion).
inline std::vector<Change> composition_changes(std::vector<Change> d) {
  const UNormalizer2* nfc = nfc_instance();
  std::vector<bool> gone(d.size(), false);
  std::size_t starter = std::size_t(-1);
  int last_ccc = -1;  // combining class of the last character kept after the starter
  for (std::size_t i = 0; i < d.size(); ++i) {
    const int ccc = combining_class(d[i].c);
    if (starter != std::size_t(-1)) {
      const bool blocked = last_ccc != -1 && (last_ccc == 0 || last_ccc >= ccc);
      if (!blocked) {
        const UChar32 composed = unorm2_composePair(nfc, static_cast<UChar32>(d[starter].c),
                                                    static_cast<UChar32>(d[i].c));
        if (composed >= 0) {
          d[starter].c = static_cast<char32_t>(composed);
          d[starter].change += d[i].change - 1;
          gone[i] = true;
          continue;
        }
      }
    }
    if (ccc == 0) {
      starter = i;
      last_ccc = -1;
    } else {
      last_ccc = ccc;
    }
  }
  std::vector<Change> out;
  out.reserve(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (!gone[i]) out.push_back(d[i]);
  }
  return out;
}

inline void decompose_string(NormalizedString& s, bool compat) {
  apply_changes(s, decomposition_changes(s.text(), compat));
}

inline void compose_string(NormalizedString& s, bool compat) {
  apply_changes(s, composition_changes(decomposition_changes(s.text(), compat)));
}

}  // namespace detail

// BERT's normalizer: drops control characters and U+FFFD and turns whitespace into spaces
// (clean_text), surrounds CJK ideographs with spaces, strips accents (NFD, then drops the
// nonspacing marks) and lowercases. strip_accents unset follows lowercase, as in BERT.
class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool handle_chinese_chars, bool strip_accents, bool lowercase)
      : clean_(clean_text),
        chinese_(handle_chinese_chars),
        strip_(strip_accents),
        lower_(lowercase) {}

  void normalize(NormalizedString& s) const override {
    s.transform([&](char32_t c, auto&& emit) {
      if (c < 0x80) {  // ASCII: no accents or ideographs; controls (but \t \n \r) are dropped
        if (clean_ && (c == 0 || (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F))
          return;
        if (clean_ && (c == '\t' || c == '\n' || c == '\r')) c = ' ';
        emit(lower_ && c >= 'A' && c <= 'Z' ? c + 32 : c);
        return;
      }
      if (clean_) {
        if (c == 0xFFFD || is_other(c)) return;
        if (is_whitespace(c)) c = ' ';
      }
      if (chinese_ && is_cjk_ideograph(c)) {
        emit(U' ');
        emit(c);
        emit(U' ');
        return;
      }
      const auto lower_and_emit = [&](char32_t d) {
        if (lower_) {
          to_lower(d, emit);
        } else {
          emit(d);
        }
      };
      if (strip_) {
        decompose(c, false, [&](char32_t d) {
          if (!is_nonspacing_mark(d)) lower_and_emit(d);
        });
      } else {
        lower_and_emit(c);
      }
    });
  }

 private:
  bool clean_, chinese_, strip_, lower_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    s.transform([](char32_t c, auto&& emit) { to_lower(c, emit); });
  }
};

// StripAccents drops every combining mark (Mn, Mc, Me), unlike BERT's normalizer, which drops
// the nonspacing ones only (so Devanagari vowel signs survive there and vanish here). It is
// meant to run after NFD, which separates the marks from their letters.
class StripAccentsNormalizer final : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    s.transform([](char32_t c, auto&& emit) {
      if (!is_mark(c)) emit(c);
    });
  }
};

class UnicodeNormalizer final : public Normalizer {
 public:
  UnicodeNormalizer(bool compose, bool compat) : compose_(compose), compat_(compat) {}
  void normalize(NormalizedString& s) const override {
    if (compose_) {
      detail::compose_string(s, compat_);
    } else {
      detail::decompose_string(s, compat_);
    }
  }

 private:
  bool compose_, compat_;
};

// Removes leading and/or trailing whitespace.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(NormalizedString& s) const override {
    const std::string& t = s.text();
    std::size_t b = 0, e = t.size();
    if (left_) {
      while (b < e) {
        const std::size_t len = utf8_length(static_cast<unsigned char>(t[b]));
        if (!is_whitespace(decode_at(t, b))) break;
        b += len;
      }
    }
    if (right_) {
      while (e > b) {
        std::size_t k = e - 1;
        while (k > b && (static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) --k;
        if (!is_whitespace(decode_at(t, k))) break;
        e = k;
      }
    }
    if (b != 0 || e != t.size()) s = s.slice(b, e);
  }

 private:
  bool left_, right_;
};

// Replaces every match of a pattern by a string. The replacement's characters all take the
// alignment of the last character of the match (an empty match at the start: none).
class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(NormalizedString& s) const override {
    const std::string& t = s.text();
    const std::vector<Match> pieces = pattern_.find_matches(t);
    NormalizedString out;
    out.reserve(t.size());
    for (const Match& m : pieces) {
      if (!m.is_match) {
        for (std::size_t i = m.begin; i < m.end;) {
          const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
          out.push(decode_at(t, i), s.char_range(i, len));
          i += len;
        }
        continue;
      }
      const Range r = m.end > 0 ? s.alignments()[m.end - 1] : Range{};
      for (std::size_t i = 0; i < content_.size();) {
        out.push(decode_at(content_, i), r);
        i += utf8_length(static_cast<unsigned char>(content_[i]));
      }
    }
    s = std::move(out);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Prepends a string to non-empty text; it takes the alignment of the first character.
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(NormalizedString& s) const override {
    if (s.empty()) return;
    const std::string& t = s.text();
    const Range r = s.char_range(0, utf8_length(static_cast<unsigned char>(t[0])));
    NormalizedString out;
    out.reserve(t.size() + prefix_.size());
    for (std::size_t i = 0; i < prefix_.size();) {
      out.push(decode_at(prefix_, i), r);
      i += utf8_length(static_cast<unsigned char>(prefix_[i]));
    }
    for (std::size_t i = 0; i < t.size();) {
      const std::size_t len = utf8_length(static_cast<unsigned char>(t[i]));
      out.push(decode_at(t, i), s.char_range(i, len));
      i += len;
    }
    s = std::move(out);
  }

 private:
  std::string prefix_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(NormalizedString& s) const override {
    for (const auto& step : steps_) step->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

inline std::unique_ptr<Normalizer> normalizer_from_json(const json::Json& j,
                                                        const json::Where& at) {
  const std::string type = json::type_of(j, at);
  if (type == "BertNormalizer") {
    const bool lower = json::get_bool(j, "lowercase", at, true);
    const json::Json* strip = json::optional_field(j, "strip_accents", at);
    return std::make_unique<BertNormalizer>(
        json::get_bool(j, "clean_text", at, true),
        json::get_bool(j, "handle_chinese_chars", at, true),
        strip == nullptr ? lower : json::as_bool(*strip, at / "strip_accents"), lower);
  }
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(false, false);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(false, true);
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(true, false);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(true, true);
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(json::get_bool(j, "strip_left", at, true),
                                             json::get_bool(j, "strip_right", at, true));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        pattern_from_json(json::field(j, "pattern", at), at / "pattern"),
        json::get_string(j, "content", at));
  }
  if (type == "Prepend")
    return std::make_unique<PrependNormalizer>(json::get_string(j, "prepend", at));
  if (type == "Sequence") {
    const json::Json& list = json::array(json::field(j, "normalizers", at), at / "normalizers");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      steps.push_back(normalizer_from_json(list[i], (at / "normalizers")[i]));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  json::fail(at / "type", "unsupported normalizer '", type, "'");
}

}  // namespace sora::text
