#pragma once
// NormalizedString: text being transformed by the tokenizer pipeline, with, for each of its
// bytes, the byte range of the original text it came from. Offsets of the final tokens are
// read from it, so every transformation must carry the alignment along: a character produced
// from an original character (a lowercase form, a decomposition, an inserted space) maps to
// that character's whole range.

#include <cstddef>
#include <cstdint>
#include <sora/core/error.hpp>
#include <sora/text/unicode.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sora::text {

// A half-open byte range [begin, end) of the original text.
struct Range {
  std::uint32_t begin = 0;
  std::uint32_t end = 0;
  friend bool operator==(const Range&, const Range&) = default;
};

class NormalizedString {
 public:
  NormalizedString() = default;

  // The original text itself, starting at byte `shift` of the whole input.
  NormalizedString(std::string_view original, std::size_t shift) : text_(original) {
    SORA_CHECK(shift + original.size() < (std::size_t{1} << 32),
               "text: inputs of 4 GiB or more are not supported");
    align_.resize(original.size());
    for (std::size_t i = 0; i < original.size();) {
      const std::size_t len = utf8_length(static_cast<unsigned char>(original[i]));
      const Range r{static_cast<std::uint32_t>(shift + i),
                    static_cast<std::uint32_t>(shift + i + len)};
      for (std::size_t k = 0; k < len; ++k) align_[i + k] = r;
      i += len;
    }
  }

  const std::string& text() const { return text_; }
  const std::vector<Range>& alignments() const { return align_; }
  std::size_t size() const { return text_.size(); }
  bool empty() const { return text_.empty(); }

  // Original range of the normalized bytes [begin, end); an empty range maps to an empty
  // range at the original position of `begin`.
  Range original(std::size_t begin, std::size_t end) const {
    if (align_.empty()) return {};
    if (begin >= end) {
      const std::uint32_t at = begin < align_.size() ? align_[begin].begin : align_.back().end;
      return {at, at};
    }
    return {align_[begin].begin, align_[end - 1].end};
  }

  // The normalized bytes [begin, end) (on character boundaries) with their alignments.
  NormalizedString slice(std::size_t begin, std::size_t end) const {
    NormalizedString out;
    out.text_.assign(text_, begin, end - begin);
    out.align_.assign(align_.begin() + static_cast<std::ptrdiff_t>(begin),
                      align_.begin() + static_cast<std::ptrdiff_t>(end));
    return out;
  }

  // Builds a new text character by character: fn(c, emit) is called for each character of
  // the current text and calls emit(d) for each character d that replaces it (zero, one or
  // more); every emitted character takes c's alignment.
  template <class Fn>
  void transform(Fn&& fn) {
    std::string out;
    std::vector<Range> align;
    out.reserve(text_.size());
    align.reserve(text_.size());
    for (std::size_t i = 0; i < text_.size();) {
      const std::size_t len = utf8_length(static_cast<unsigned char>(text_[i]));
      const char32_t c = decode_at(text_, i);
      const Range r = char_range(i, len);
      fn(c, [&](char32_t d) {
        const std::size_t before = out.size();
        append_utf8(out, d);
        align.insert(align.end(), out.size() - before, r);
      });
      i += len;
    }
    text_ = std::move(out);
    align_ = std::move(align);
  }

  // Appends one character with the given alignment (for builders of new strings).
  void push(char32_t c, Range r) {
    const std::size_t before = text_.size();
    append_utf8(text_, c);
    align_.insert(align_.end(), text_.size() - before, r);
  }

  void reserve(std::size_t n) {
    text_.reserve(n);
    align_.reserve(n);
  }

  // The original range of the character at normalized byte i (of length len).
  Range char_range(std::size_t i, std::size_t len) const {
    return {align_[i].begin, align_[i + len - 1].end};
  }

 private:
  std::string text_;
  std::vector<Range> align_;
};

}  // namespace sora::text
