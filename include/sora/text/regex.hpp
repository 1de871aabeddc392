#pragma once
// Patterns of the pre-tokenizers and normalizers: either a literal string or a regular
// expression, compiled with PCRE2 in UTF + UCP mode (so \s, \w, \d and \p{..} follow Unicode,
// like the Oniguruma regexes the tokenizers crate uses) and JIT-compiled where the platform
// allows. find_matches() returns the whole text cut into matched and unmatched pieces.

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstddef>
#include <memory>
#include <sora/core/error.hpp>
#include <sora/text/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sora::text {

struct Match {
  std::size_t begin;
  std::size_t end;
  bool is_match;
};

class Pattern {
 public:
  static Pattern literal(std::string s) {
    Pattern p;
    p.literal_ = std::move(s);
    return p;
  }

  static Pattern regex(const std::string& source) {
    Pattern p;
    int err = 0;
    PCRE2_SIZE at = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &at, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      ::sora::detail::throw_error("regex '", source, "': ", reinterpret_cast<const char*>(msg),
                                  " at offset ", at);
    }
    p.code_ = std::shared_ptr<pcre2_code>(code, pcre2_code_free);
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
    p.is_regex_ = true;
    return p;
  }

  bool is_regex() const { return is_regex_; }

  // Non-overlapping matches, left to right, as a partition of the text into pieces. An empty
  // literal matches nothing; an empty regex match is skipped (it would split nothing).
  std::vector<Match> find_matches(std::string_view text) const {
    std::vector<Match> out;
    std::size_t prev = 0;
    const auto add = [&](std::size_t b, std::size_t e) {
      if (b > prev) out.push_back({prev, b, false});
      out.push_back({b, e, true});
      prev = e;
    };
    if (!is_regex_) {
      if (!literal_.empty()) {
        for (std::size_t at = text.find(literal_); at != std::string_view::npos;
             at = text.find(literal_, at + literal_.size())) {
          add(at, at + literal_.size());
        }
      }
    } else {
      thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
          pcre2_match_data_create(4, nullptr), pcre2_match_data_free);
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
      std::size_t start = 0;
      while (start <= text.size()) {
        const int rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK,
                                   data.get(), nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        SORA_CHECK(rc >= 0, "regex: matching failed (PCRE2 error ", rc, ")");
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
        const std::size_t b = ov[0], e = ov[1];
        if (e == b) {
          // Empty match: step over one character and search again.
          if (b >= text.size()) break;
          start = b + 1;
          while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
            ++start;
          continue;
        }
        add(b, e);
        start = e;
      }
    }
    if (prev < text.size() || out.empty()) out.push_back({prev, text.size(), false});
    if (text.empty()) out.clear();
    return out;
  }

 private:
  bool is_regex_ = false;
  std::string literal_;
  std::shared_ptr<pcre2_code> code_;
};

// A pattern object of tokenizer.json: {"String": "..."} or {"Regex": "..."}.
inline Pattern pattern_from_json(const json::Json& j, const json::Where& at) {
  json::object(j, at);
  if (const json::Json* s = json::optional_field(j, "String", at)) {
    return Pattern::literal(json::as_string(*s, at / "String"));
  }
  if (const json::Json* r = json::optional_field(j, "Regex", at)) {
    const std::string source = json::as_string(*r, at / "Regex");
    try {
      return Pattern::regex(source);
    } catch (const Error& e) {
      json::fail(at / "Regex", e.what());
    }
  }
  json::fail(at, "expected {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace sora::text
