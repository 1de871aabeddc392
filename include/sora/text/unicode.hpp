#pragma once
// UTF-8 decoding (strict: every error names its byte offset) and the character properties the
// tokenizers need, taken from ICU so that they follow the Unicode tables rather than a
// hand-written approximation. ASCII takes a fast path everywhere: it is most of real text.

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sora/core/error.hpp>
#include <string>
#include <string_view>

namespace sora::text {

// Length of the UTF-8 sequence that starts with byte b (1 for a continuation byte, so that a
// loop over already validated text always advances).
inline std::size_t utf8_length(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xF0) return 4;
  if (b >= 0xE0) return 3;
  if (b >= 0xC0) return 2;
  return 1;
}

// Decodes one code point at s[i]; the caller guarantees the text is valid UTF-8.
inline char32_t decode_at(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return c;
  if (c < 0xE0) return (char32_t(c & 0x1F) << 6) | (b(1) & 0x3F);
  if (c < 0xF0) return (char32_t(c & 0x0F) << 12) | (char32_t(b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return (char32_t(c & 0x07) << 18) | (char32_t(b(1) & 0x3F) << 12) | (char32_t(b(2) & 0x3F) << 6) |
         (b(3) & 0x3F);
}

inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

inline std::size_t utf8_size(char32_t c) {
  return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

// Offset of the first byte that does not start or continue a well-formed UTF-8 sequence
// (overlong forms, surrogates and code points past U+10FFFF are errors), or npos. With
// seq_start, also where the broken sequence began (its lead byte, or the byte itself).
inline std::size_t find_invalid_utf8(std::string_view s, std::size_t* seq_start = nullptr) {
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
    } else {
      if (seq_start != nullptr) *seq_start = i;
      return i;
    }
    if (seq_start != nullptr) *seq_start = i;
    for (std::size_t k = 1; k < len; ++k) {
      if (i + k >= n) return i + k;
      const auto d = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return i + k;
    }
    i += len;
  }
  return std::string_view::npos;
}

// Throws sora::Error naming `what` and the byte offset of the first invalid byte (which is the
// text's size when a sequence is cut short by its end; that byte is not read).
inline void check_utf8(std::string_view s, std::string_view what) {
  const std::size_t bad = find_invalid_utf8(s);
  if (bad == std::string_view::npos) [[likely]]
    return;
  if (bad >= s.size()) {
    ::sora::detail::throw_error(what, ": invalid UTF-8 at byte offset ", bad,
                                " (a sequence cut short by the end of the text)");
  }
  ::sora::detail::throw_error(what, ": invalid UTF-8 at byte offset ", bad, " (byte 0x", std::hex,
                              static_cast<unsigned>(static_cast<unsigned char>(s[bad])), ")");
}

inline std::size_t count_chars(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// ---- character properties ----

// White_Space (what Rust's char::is_whitespace tests, which the tokenizers crate uses).
inline bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_isUWhiteSpace(static_cast<UChar32>(c));
}

inline int category(char32_t c) {
  return u_charType(static_cast<UChar32>(c));
}

// General category P* (Pc Pd Ps Pe Pi Pf Po) or ASCII punctuation (which adds the symbols
// $ + < = > ^ ` | ~ to P*), as the BERT pre-tokenizer defines punctuation.
inline bool is_bert_punctuation(char32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
  return u_ispunct(static_cast<UChar32>(c));
}

inline bool is_punctuation(char32_t c) {
  return u_ispunct(static_cast<UChar32>(c));
}

// General category Cc, Cf, Cs or Co: BERT's "control" characters. Unassigned code points (Cn)
// are not among them, as in the tokenizers crate, so they survive clean_text.
inline bool is_other(char32_t c) {
  switch (category(c)) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
      return true;
    default:
      return false;
  }
}

inline bool is_nonspacing_mark(char32_t c) {
  return c >= 0x80 && category(c) == U_NON_SPACING_MARK;
}

// General category M* (Mn, Mc, Me).
inline bool is_mark(char32_t c) {
  return c >= 0x300 && (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_M_MASK) != 0;
}

// General category N* (Nd, Nl, No): Rust's char::is_numeric.
inline bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0;
}

// Decimal digit (general category Nd).
inline bool is_digit(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return category(c) == U_DECIMAL_DIGIT_NUMBER;
}

// The CJK ideograph blocks BERT surrounds with spaces (its own list, not a Unicode property).
inline bool is_cjk_ideograph(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

namespace detail {

// Runs an ICU UTF-16 string function on one code point and calls emit for each resulting
// code point.
template <class Fn, class Emit>
void via_utf16(char32_t c, Fn&& fn, Emit&& emit) {
  UChar in[2];
  int32_t in_len = 0;
  U16_APPEND_UNSAFE(in, in_len, static_cast<UChar32>(c));
  UChar out[32];
  UErrorCode err = U_ZERO_ERROR;
  const int32_t out_len = fn(out, 32, in, in_len, &err);
  if (U_FAILURE(err) || out_len > 32) {
    emit(c);  // no mapping fits: keep the character (no Unicode mapping is this long)
    return;
  }
  for (int32_t k = 0; k < out_len;) {
    UChar32 d;
    U16_NEXT(out, k, out_len, d);
    emit(static_cast<char32_t>(d));
  }
}

}  // namespace detail

// Full (SpecialCasing) lowercase of one character, without context: U+0130 becomes "i̇",
// and a lone capital sigma is always σ, as Rust's char::to_lowercase does.
template <class Emit>
void to_lower(char32_t c, Emit&& emit) {
  if (c < 0x80) {
    emit(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  detail::via_utf16(
      c,
      [](UChar* out, int32_t cap, const UChar* in, int32_t n, UErrorCode* err) {
        return u_strToLower(out, cap, in, n, "", err);
      },
      emit);
}

template <class Emit>
void to_upper(char32_t c, Emit&& emit) {
  if (c < 0x80) {
    emit(c >= 'a' && c <= 'z' ? c - 32 : c);
    return;
  }
  detail::via_utf16(
      c,
      [](UChar* out, int32_t cap, const UChar* in, int32_t n, UErrorCode* err) {
        return u_strToUpper(out, cap, in, n, "", err);
      },
      emit);
}

inline std::uint8_t combining_class(char32_t c) {
  return c < 0x300 ? 0 : u_getCombiningClass(static_cast<UChar32>(c));
}

inline const UNormalizer2* nfd_instance() {
  static const UNormalizer2* n = [] {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2* p = unorm2_getNFDInstance(&err);
    SORA_CHECK(U_SUCCESS(err), "ICU: cannot load the NFD data: ", u_errorName(err));
    return p;
  }();
  return n;
}

inline const UNormalizer2* nfkd_instance() {
  static const UNormalizer2* n = [] {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2* p = unorm2_getNFKDInstance(&err);
    SORA_CHECK(U_SUCCESS(err), "ICU: cannot load the NFKD data: ", u_errorName(err));
    return p;
  }();
  return n;
}

// Full canonical (or compatibility) decomposition of one character.
template <class Emit>
void decompose(char32_t c, bool compat, Emit&& emit) {
  if (c < 0xC0) {
    if (c < 0x80 || !compat) {
      emit(c);
      return;
    }
  }
  UChar buf[32];
  UErrorCode err = U_ZERO_ERROR;
  const int32_t n = unorm2_getDecomposition(compat ? nfkd_instance() : nfd_instance(),
                                            static_cast<UChar32>(c), buf, 32, &err);
  if (n < 0 || U_FAILURE(err) || n > 32) {
    emit(c);  // no decomposition
    return;
  }
  for (int32_t k = 0; k < n;) {
    UChar32 d;
    U16_NEXT(buf, k, n, d);
    emit(static_cast<char32_t>(d));
  }
}

}  // namespace sora::text
