#pragma once
// Post-processors: add the model's special tokens ([CLS] A [SEP] B [SEP], <s> A </s></s> B
// </s>, ...) and set the type ids, after truncation. They work on the list of encodings of
// the input (one, or two for a pair); the tokenizer concatenates what is left.

#include <algorithm>
#include <functional>
#include <memory>
#include <sora/text/encoding.hpp>
#include <sora/text/json.hpp>
#include <sora/text/unicode.hpp>
#include <string>
#include <utility>
#include <vector>

namespace sora::text {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Number of special tokens added to a single sequence or to a pair.
  virtual std::size_t added_tokens(bool pair) const = 0;
  // texts[k]: the text encodings[k] was made from (byte offsets point into it).
  virtual void process(std::vector<Encoding>& encodings, bool add_special,
                       const std::vector<std::string_view>& texts) const = 0;
};

// Byte-level offsets cover the spaces a token starts with ("Ġword" covers " word"); trimming
// moves them to the word itself, except the space that add_prefix_space put in front of the
// first token. The crate counts the trimmed spaces in characters (its Python binding works on
// character offsets), so the offsets move by whole characters of `text`, never into one.
inline void trim_byte_level_offsets(Encoding& e, bool add_prefix_space, std::string_view text) {
  const char32_t space = U'\u0120';  // what byte 0x20 becomes
  const auto forward = [&](std::size_t b, std::size_t n) {
    while (n-- > 0 && b < text.size()) b += utf8_length(static_cast<unsigned char>(text[b]));
    return std::min(b, text.size());
  };
  const auto chars_before = [&](std::size_t b) { return count_chars(text.substr(0, b)); };
  const auto backward = [&](std::size_t b, std::size_t n) {
    while (n-- > 0 && b > 0) {
      --b;
      while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
    }
    return b;
  };
  for (std::size_t i = 0; i < e.size(); ++i) {
    const std::string& tok = e.tokens[i];
    std::vector<char32_t> chars;
    for (std::size_t k = 0; k < tok.size(); k += utf8_length(static_cast<unsigned char>(tok[k])))
      chars.push_back(decode_at(tok, k));
    const auto is_space = [&](char32_t c) { return c == space || is_whitespace(c); };
    std::size_t lead = 0, trail = 0;
    while (lead < chars.size() && is_space(chars[lead])) ++lead;
    while (trail < chars.size() && is_space(chars[chars.size() - 1 - trail])) ++trail;
    auto& [b, en] = e.offsets[i];
    if (lead > 0) {
      const bool is_first = i == 0 || b == 0;
      if (is_first && add_prefix_space && lead == 1) lead = 0;
      b = std::min(forward(b, lead), en);
    }
    if (trail > 0 && chars_before(en) >= trail) en = std::max(backward(en, trail), b);
  }
}

class ByteLevelPostProcessor final : public PostProcessor {
 public:
  ByteLevelPostProcessor(bool trim_offsets, bool add_prefix_space)
      : trim_(trim_offsets), prefix_(add_prefix_space) {}
  std::size_t added_tokens(bool) const override { return 0; }
  void process(std::vector<Encoding>& encodings, bool,
               const std::vector<std::string_view>& texts) const override {
    if (!trim_) return;
    for (std::size_t k = 0; k < encodings.size(); ++k)
      trim_byte_level_offsets(encodings[k], prefix_, texts[k]);
  }

 private:
  bool trim_, prefix_;
};

// A special token of TemplateProcessing: one or more ids with their strings.
struct SpecialToken {
  std::vector<std::uint32_t> ids;
  std::vector<std::string> tokens;
};

// TemplateProcessing: the single and pair templates are lists of pieces, each a sequence (A
// or B) or a special token (possibly several ids), each with its type id.
class TemplateProcessor final : public PostProcessor {
 public:
  struct Piece {
    bool is_sequence;
    std::size_t sequence;             // 0 (A) or 1 (B)
    std::vector<std::uint32_t> ids;   // the special token's ids
    std::vector<std::string> tokens;  // and their strings
    std::uint32_t type_id;
  };

  TemplateProcessor(std::vector<Piece> single, std::vector<Piece> pair)
      : single_(std::move(single)), pair_(std::move(pair)) {}

  std::size_t added_tokens(bool pair) const override {
    std::size_t n = 0;
    for (const Piece& p : pair ? pair_ : single_) n += p.is_sequence ? 0 : p.ids.size();
    return n;
  }

  void process(std::vector<Encoding>& encodings, bool add_special,
               const std::vector<std::string_view>&) const override {
    const auto& pieces = encodings.size() > 1 ? pair_ : single_;
    Encoding out;
    for (const Piece& p : pieces) {
      if (p.is_sequence) {
        SORA_CHECK(p.sequence < encodings.size(), "TemplateProcessing: the template uses ",
                   p.sequence == 0 ? "A" : "B", " but there is no such sequence");
        Encoding e = encodings[p.sequence];
        std::fill(e.type_ids.begin(), e.type_ids.end(), p.type_id);
        out.append(e);
      } else if (add_special) {
        for (std::size_t k = 0; k < p.ids.size(); ++k) {
          out.push(p.ids[k], p.type_id, {0, 0}, true, k < p.tokens.size() ? p.tokens[k] : "");
        }
      }
    }
    encodings.assign(1, std::move(out));
  }

 private:
  std::vector<Piece> single_, pair_;
};

// BertProcessing and RobertaProcessing are fixed templates: [CLS] A [SEP] (B [SEP]), with type
// id 1 on the second part, and <s> A </s> (</s> B </s>), all type 0; RoBERTa also trims
// byte-level offsets.
class BertLikeProcessor final : public PostProcessor {
 public:
  BertLikeProcessor(std::pair<std::string, std::uint32_t> cls,
                    std::pair<std::string, std::uint32_t> sep, bool roberta, bool trim_offsets,
                    bool add_prefix_space)
      : cls_(std::move(cls)),
        sep_(std::move(sep)),
        roberta_(roberta),
        trim_(trim_offsets),
        prefix_(add_prefix_space) {}

  std::size_t added_tokens(bool pair) const override { return pair ? (roberta_ ? 4 : 3) : 2; }

  void process(std::vector<Encoding>& encodings, bool add_special,
               const std::vector<std::string_view>& texts) const override {
    if (roberta_ && trim_) {
      for (std::size_t k = 0; k < encodings.size(); ++k)
        trim_byte_level_offsets(encodings[k], prefix_, texts[k]);
    }
    Encoding out;
    if (add_special) out.push(cls_.second, 0, {0, 0}, true, cls_.first);
    Encoding a = encodings[0];
    std::fill(a.type_ids.begin(), a.type_ids.end(), 0);
    out.append(a);
    if (add_special) out.push(sep_.second, 0, {0, 0}, true, sep_.first);
    if (encodings.size() > 1) {
      const std::uint32_t type = roberta_ ? 0 : 1;  // RoBERTa has no segment embeddings
      if (add_special && roberta_) out.push(sep_.second, type, {0, 0}, true, sep_.first);
      Encoding b = encodings[1];
      std::fill(b.type_ids.begin(), b.type_ids.end(), type);
      out.append(b);
      if (add_special) out.push(sep_.second, type, {0, 0}, true, sep_.first);
    }
    encodings.assign(1, std::move(out));
  }

 private:
  std::pair<std::string, std::uint32_t> cls_, sep_;
  bool roberta_, trim_, prefix_;
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  std::size_t added_tokens(bool pair) const override {
    std::size_t n = 0;
    for (const auto& s : steps_) n += s->added_tokens(pair);
    return n;
  }
  void process(std::vector<Encoding>& encodings, bool add_special,
               const std::vector<std::string_view>& texts) const override {
    for (const auto& s : steps_) s->process(encodings, add_special, texts);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

namespace detail {

// ["[CLS]", 101] in BertProcessing / RobertaProcessing.
inline std::pair<std::string, std::uint32_t> token_pair_id(const json::Json& j,
                                                           const json::Where& at) {
  json::array(j, at);
  if (j.size() != 2) json::fail(at, "expected [token, id]");
  return {json::as_string(j[0], at[0]), static_cast<std::uint32_t>(json::as_uint(j[1], at[1]))};
}

inline std::vector<TemplateProcessor::Piece> template_from_json(
    const json::Json& j, const json::Where& at,
    const std::vector<std::pair<std::string, SpecialToken>>& specials) {
  json::array(j, at);
  std::vector<TemplateProcessor::Piece> out;
  for (std::size_t i = 0; i < j.size(); ++i) {
    const json::Where w = at[i];
    if (const json::Json* s = json::optional_field(j[i], "Sequence", w)) {
      const std::string id = json::get_string(*s, "id", w / "Sequence");
      if (id != "A" && id != "B") json::fail(w / "Sequence" / "id", "expected \"A\" or \"B\"");
      out.push_back({true,
                     id == "A" ? 0u : 1u,
                     {},
                     {},
                     static_cast<std::uint32_t>(json::as_uint(
                         json::field(*s, "type_id", w / "Sequence"), w / "Sequence" / "type_id"))});
    } else if (const json::Json* t = json::optional_field(j[i], "SpecialToken", w)) {
      const std::string id = json::get_string(*t, "id", w / "SpecialToken");
      const auto it = std::find_if(specials.begin(), specials.end(),
                                   [&](const auto& p) { return p.first == id; });
      if (it == specials.end()) {
        json::fail(w / "SpecialToken" / "id", "'", id, "' is not in special_tokens");
      }
      out.push_back(
          {false, 0, it->second.ids, it->second.tokens,
           static_cast<std::uint32_t>(json::as_uint(json::field(*t, "type_id", w / "SpecialToken"),
                                                    w / "SpecialToken" / "type_id"))});
    } else {
      json::fail(w, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return out;
}

}  // namespace detail

inline std::unique_ptr<PostProcessor> post_processor_from_json(const json::Json& j,
                                                               const json::Where& at) {
  const std::string type = json::type_of(j, at);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const bool roberta = type == "RobertaProcessing";
    return std::make_unique<BertLikeProcessor>(
        detail::token_pair_id(json::field(j, "cls", at), at / "cls"),
        detail::token_pair_id(json::field(j, "sep", at), at / "sep"), roberta,
        json::get_bool(j, "trim_offsets", at, true),
        json::get_bool(j, "add_prefix_space", at, true));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPostProcessor>(
        json::get_bool(j, "trim_offsets", at, true),
        json::get_bool(j, "add_prefix_space", at, true));
  }
  if (type == "TemplateProcessing") {
    std::vector<std::pair<std::string, SpecialToken>> specials;
    const json::Where sw = at / "special_tokens";
    const json::Json& st = json::object(json::field(j, "special_tokens", at), sw);
    for (auto it = st.begin(); it != st.end(); ++it) {
      const json::Where w = sw / it.key();
      const json::Json& ids = json::array(json::field(it.value(), "ids", w), w / "ids");
      SpecialToken v;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        v.ids.push_back(static_cast<std::uint32_t>(json::as_uint(ids[i], (w / "ids")[i])));
      }
      if (const json::Json* toks = json::optional_field(it.value(), "tokens", w)) {
        json::array(*toks, w / "tokens");
        for (std::size_t i = 0; i < toks->size(); ++i) {
          v.tokens.push_back(json::as_string((*toks)[i], (w / "tokens")[i]));
        }
      }
      specials.emplace_back(it.key(), std::move(v));
    }
    return std::make_unique<TemplateProcessor>(
        detail::template_from_json(json::field(j, "single", at), at / "single", specials),
        detail::template_from_json(json::field(j, "pair", at), at / "pair", specials));
  }
  if (type == "Sequence") {
    const json::Json& list = json::array(json::field(j, "processors", at), at / "processors");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      steps.push_back(post_processor_from_json(list[i], (at / "processors")[i]));
    }
    return std::make_unique<SequencePostProcessor>(std::move(steps));
  }
  json::fail(at / "type", "unsupported post-processor '", type, "'");
}

}  // namespace sora::text
