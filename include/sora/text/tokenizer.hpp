#pragma once
// sora::text::Tokenizer: the whole pipeline of a Hugging Face tokenizer.json (added tokens,
// normalizer, pre-tokenizer, model, post-processor, truncation, padding, decoder), or of the
// older vocabulary files, with the same results as the `tokenizers` library.
//
//   auto tok = sora::text::Tokenizer::from_file("model/");   // tokenizer.json or vocab.txt
//   sora::text::Encoding e = tok.encode("Hello world");       // ids, type ids, mask, offsets
//   std::string back = tok.decode(e.ids);

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sora/text/added_vocabulary.hpp>
#include <sora/text/bpe.hpp>
#include <sora/text/decoders.hpp>
#include <sora/text/encoding.hpp>
#include <sora/text/json.hpp>
#include <sora/text/model.hpp>
#include <sora/text/normalizers.hpp>
#include <sora/text/post_processors.hpp>
#include <sora/text/pre_tokenizers.hpp>
#include <sora/text/sentencepiece.hpp>
#include <sora/text/unigram.hpp>
#include <sora/text/wordpiece.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sora::text {

class Tokenizer {
 public:
  // A tokenizer.json file, or a folder holding tokenizer.json (else vocab.txt).
  static Tokenizer from_file(const std::string& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
      const fs::path dir(path);
      if (fs::exists(dir / "tokenizer.json")) return from_file((dir / "tokenizer.json").string());
      if (fs::exists(dir / "vocab.txt")) return from_vocab_txt((dir / "vocab.txt").string());
      if (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) {
        return from_gpt2_files((dir / "vocab.json").string(), (dir / "merges.txt").string());
      }
      if (fs::exists(dir / "tokenizer.model")) {
        return from_sentencepiece((dir / "tokenizer.model").string());
      }
      ::sora::detail::throw_error(path,
                                  ": no tokenizer.json, vocab.txt, vocab.json + merges.txt or "
                                  "tokenizer.model in this folder");
    }
    if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".txt") == 0) {
      return from_vocab_txt(path);
    }
    if (path.size() >= 6 && path.compare(path.size() - 6, 6, ".model") == 0) {
      return from_sentencepiece(path);
    }
    std::ifstream in(path, std::ios::binary);
    SORA_CHECK(in, path, ": cannot open");
    std::ostringstream text;
    text << in.rdbuf();
    return from_json(text.str(), path);
  }

  // The text of a tokenizer.json; `name` is used in error messages.
  static Tokenizer from_json(std::string_view text, const std::string& name = "tokenizer.json") {
    json::Json j;
    try {
      j = json::Json::parse(text);
    } catch (const json::Json::exception& e) {
      ::sora::detail::throw_error(name, ": not valid JSON: ", e.what());
    }
    const json::Where root{name, "$"};
    json::object(j, root);
    Tokenizer t;
    const json::Json& model = json::field(j, "model", root);
    const json::Where mw = root / "model";
    const std::string type =
        json::optional_field(model, "type", mw) != nullptr
            ? json::type_of(model, mw)
            : (json::optional_field(model, "continuing_subword_prefix", mw) ? "WordPiece" : "");
    if (type == "WordPiece") {
      t.model_ = std::make_unique<WordPiece>(WordPiece::from_json(model, mw));
    } else if (type == "BPE") {
      t.model_ = Bpe::from_json(model, mw);
    } else if (type == "Unigram") {
      t.model_ = Unigram::from_json(model, mw);
    } else if (type == "WordLevel") {
      t.model_ = std::make_unique<WordLevel>(WordLevel::from_json(model, mw));
    } else {
      json::fail(mw / "type", "unsupported model '", type, "'");
    }
    if (const json::Json* n = json::optional_field(j, "normalizer", root))
      t.normalizer_ = normalizer_from_json(*n, root / "normalizer");
    if (const json::Json* p = json::optional_field(j, "pre_tokenizer", root))
      t.pre_tokenizer_ = pre_tokenizer_from_json(*p, root / "pre_tokenizer");
    if (const json::Json* p = json::optional_field(j, "post_processor", root))
      t.post_processor_ = post_processor_from_json(*p, root / "post_processor");
    if (const json::Json* d = json::optional_field(j, "decoder", root))
      t.decoder_ = decoder_from_json(*d, root / "decoder");
    if (const json::Json* a = json::optional_field(j, "added_tokens", root))
      t.set_added_tokens(read_added_tokens(*a, root / "added_tokens"));
    else
      t.set_added_tokens({});
    if (const json::Json* tr = json::optional_field(j, "truncation", root))
      t.truncation = read_truncation(*tr, root / "truncation");
    if (const json::Json* p = json::optional_field(j, "padding", root))
      t.padding = read_padding(*p, root / "padding");
    return t;
  }

  // BERT's vocab.txt with BERT's pipeline (clean text, CJK spacing, lowercase and strip accents
  // unless lowercase is false, [CLS] A [SEP] B [SEP]), as BertWordPieceTokenizer builds it.
  static Tokenizer from_vocab_txt(const std::string& path, bool lowercase = true) {
    Tokenizer t;
    const json::Where at{path, "$"};
    auto wp = std::make_unique<WordPiece>(WordPiece::read_vocab_txt(path), "[UNK]", "##", 100, at);
    const Vocab& v = wp->vocab();
    const auto cls = v.find("[CLS]"), sep = v.find("[SEP]");
    SORA_CHECK(cls && sep, path, ": the vocabulary has no [CLS] or no [SEP] token");
    t.normalizer_ = std::make_unique<BertNormalizer>(true, true, lowercase, lowercase);
    t.pre_tokenizer_ = std::make_unique<BertPreTokenizer>();
    t.post_processor_ = std::make_unique<BertLikeProcessor>(
        std::pair<std::string, std::uint32_t>{"[CLS]", *cls},
        std::pair<std::string, std::uint32_t>{"[SEP]", *sep}, false, false, false);
    t.decoder_ = std::make_unique<WordPieceDecoder>("##", true);
    std::vector<AddedToken> added;
    for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
      if (const auto id = v.find(s)) {
        AddedToken a;
        a.id = *id;
        a.content = s;
        a.normalized = false;
        a.special = true;
        added.push_back(a);
      }
    }
    t.model_ = std::move(wp);
    t.set_added_tokens(std::move(added));
    return t;
  }

  // GPT-2's vocab.json + merges.txt with GPT-2's byte-level pipeline (no prefix space, offsets
  // not trimmed), as ByteLevelBPETokenizer builds it; <|endoftext|> is a special token when
  // the vocabulary has it.
  static Tokenizer from_gpt2_files(const std::string& vocab_json, const std::string& merges_txt) {
    Tokenizer t;
    t.model_ = Bpe::from_files(vocab_json, merges_txt);
    t.pre_tokenizer_ = std::make_unique<ByteLevelPreTokenizer>(false, true);
    t.post_processor_ = std::make_unique<ByteLevelPostProcessor>(false, false);
    t.decoder_ = std::make_unique<ByteLevelDecoder>();
    std::vector<AddedToken> added;
    if (const auto id = t.model_->vocab().find("<|endoftext|>")) {
      AddedToken a;
      a.id = *id;
      a.content = "<|endoftext|>";
      a.normalized = false;
      a.special = true;
      added.push_back(a);
    }
    t.set_added_tokens(std::move(added));
    return t;
  }

  // A SentencePiece .model file: the library normalizes and segments; no special tokens are
  // added (set a post-processor-free template yourself if the model wants <s> / </s>).
  static Tokenizer from_sentencepiece(const std::string& path) {
#ifdef SORA_TEXT_WITH_SENTENCEPIECE
    Tokenizer t;
    auto m = SentencePieceModel::load(path);
    t.decoder_ = std::make_unique<SentencePieceDecoder>(m->processor());
    t.model_ = std::move(m);
    t.set_added_tokens({});
    return t;
#else
    ::sora::detail::throw_error(path,
                                ": SentencePiece models need libsentencepiece, which this "
                                "build did not find (Debian: libsentencepiece-dev)");
#endif
  }

  Encoding encode(std::string_view text, bool add_special_tokens = true) const {
    std::vector<Encoding> parts;
    parts.push_back(encode_sequence(text, 0, "text"));
    return post_process(std::move(parts), {text}, add_special_tokens);
  }

  Encoding encode_pair(std::string_view a, std::string_view b,
                       bool add_special_tokens = true) const {
    std::vector<Encoding> parts;
    parts.push_back(encode_sequence(a, 0, "first text"));
    parts.push_back(encode_sequence(b, 1, "second text"));
    return post_process(std::move(parts), {a, b}, add_special_tokens);
  }

  std::optional<std::uint32_t> token_to_id(std::string_view token) const {
    const auto it = added_by_content_.find(token);
    if (it != added_by_content_.end()) return it->second;
    return model_->vocab().find(token);
  }

  std::optional<std::string> id_to_token(std::uint32_t id) const {
    const auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) return added_[it->second].content;
    if (const std::string* s = model_->vocab().token(id)) return *s;
    return std::nullopt;
  }

  // Size of the model's vocabulary plus the added tokens it does not hold.
  std::size_t vocab_size() const {
    std::size_t n = model_->vocab().size();
    for (const AddedToken& a : added_) n += model_->vocab().token(a.id) == nullptr;
    return n;
  }

  std::string decode(const std::vector<std::uint32_t>& ids, bool skip_special_tokens = true) const {
    std::vector<std::string> tokens;
    for (std::uint32_t id : ids) {
      const auto it = added_by_id_.find(id);
      if (it != added_by_id_.end()) {
        if (skip_special_tokens && added_[it->second].special) continue;
        tokens.push_back(added_[it->second].content);
        continue;
      }
      const std::string* s = model_->vocab().token(id);
      SORA_CHECK(s != nullptr, "decode: id ", id, " is not in the vocabulary");
      tokens.push_back(*s);
    }
    if (decoder_) {
      decoder_->decode(tokens);
      std::string out;
      for (const std::string& t : tokens) out += t;
      return out;
    }
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }

  const std::vector<AddedToken>& added_tokens() const {
    return added_;
  }

  // Applied by encode() / encode_pair(); as read from tokenizer.json, and free to change.
  std::optional<Truncation> truncation;
  std::optional<Padding> padding;

 private:
  Tokenizer() = default;

  static std::vector<AddedToken> read_added_tokens(const json::Json& j, const json::Where& at) {
    json::array(j, at);
    std::vector<AddedToken> out;
    for (std::size_t i = 0; i < j.size(); ++i) {
      const json::Where w = at[i];
      AddedToken a;
      a.id = static_cast<std::uint32_t>(json::as_uint(json::field(j[i], "id", w), w / "id"));
      a.content = json::get_string(j[i], "content", w);
      if (a.content.empty()) json::fail(w / "content", "an added token cannot be empty");
      check_utf8(a.content, w.file + ": " + w.path + ".content");
      a.single_word = json::get_bool(j[i], "single_word", w, false);
      a.lstrip = json::get_bool(j[i], "lstrip", w, false);
      a.rstrip = json::get_bool(j[i], "rstrip", w, false);
      a.special = json::get_bool(j[i], "special", w, false);
      a.normalized = json::get_bool(j[i], "normalized", w, !a.special);
      out.push_back(std::move(a));
    }
    return out;
  }

  static Truncation read_truncation(const json::Json& j, const json::Where& at) {
    Truncation t;
    t.max_length = json::as_uint(json::field(j, "max_length", at), at / "max_length");
    const std::string s = json::get_optional_string(j, "strategy", at).value_or("LongestFirst");
    if (s == "LongestFirst") {
      t.strategy = TruncationStrategy::longest_first;
    } else if (s == "OnlyFirst") {
      t.strategy = TruncationStrategy::only_first;
    } else if (s == "OnlySecond") {
      t.strategy = TruncationStrategy::only_second;
    } else {
      json::fail(at / "strategy", "unknown truncation strategy '", s, "'");
    }
    if (const json::Json* st = json::optional_field(j, "stride", at)) {
      if (json::as_uint(*st, at / "stride") != 0) {
        json::fail(at / "stride", "a non-zero stride (overflowing tokens) is not supported");
      }
    }
    const std::string d = json::get_optional_string(j, "direction", at).value_or("Right");
    if (d != "Right" && d != "Left") json::fail(at / "direction", "expected Right or Left");
    t.from_left = d == "Left";
    return t;
  }

  // Padding lengths past this are taken for corrupt files, not allocated.
  static constexpr std::uint64_t max_padding = 1u << 20;

  static Padding read_padding(const json::Json& j, const json::Where& at) {
    Padding p;
    const json::Json& s = json::field(j, "strategy", at);
    if (s.is_string()) {
      if (s.get<std::string>() != "BatchLongest") {
        json::fail(at / "strategy", "expected \"BatchLongest\" or {\"Fixed\": n}");
      }
    } else {
      p.fixed_length = json::as_uint(json::field(s, "Fixed", at / "strategy"),
                                     at / "strategy" / "Fixed", max_padding);
    }
    const std::string d = json::get_optional_string(j, "direction", at).value_or("Right");
    if (d != "Right" && d != "Left") json::fail(at / "direction", "expected Right or Left");
    p.left = d == "Left";
    if (const json::Json* m = json::optional_field(j, "pad_to_multiple_of", at))
      p.pad_to_multiple_of = json::as_uint(*m, at / "pad_to_multiple_of", max_padding);
    if (const json::Json* v = json::optional_field(j, "pad_id", at))
      p.pad_id = static_cast<std::uint32_t>(json::as_uint(*v, at / "pad_id"));
    if (const json::Json* v = json::optional_field(j, "pad_type_id", at))
      p.pad_type_id = static_cast<std::uint32_t>(json::as_uint(*v, at / "pad_type_id"));
    p.pad_token = json::get_optional_string(j, "pad_token", at).value_or("[PAD]");
    return p;
  }

  void set_added_tokens(std::vector<AddedToken> tokens) {
    added_ = std::move(tokens);
    added_by_id_.clear();
    added_by_content_.clear();
    std::vector<AddedToken> raw, norm;
    std::vector<std::string> raw_p, norm_p;
    for (std::size_t k = 0; k < added_.size(); ++k) {
      const AddedToken& a = added_[k];
      added_by_id_[a.id] = k;
      added_by_content_[a.content] = a.id;
      if (a.normalized) {
        NormalizedString n(a.content, 0);
        if (normalizer_) normalizer_->normalize(n);
        if (n.empty()) continue;  // normalizes to nothing: can never match
        norm.push_back(a);
        norm_p.push_back(n.text());
      } else {
        raw.push_back(a);
        raw_p.push_back(a.content);
      }
    }
    raw_matcher_ = AddedMatcher(std::move(raw), std::move(raw_p));
    norm_matcher_ = AddedMatcher(std::move(norm), std::move(norm_p));
  }

  // One sequence through added tokens, normalizer, pre-tokenizer and model.
  Encoding encode_sequence(std::string_view text, std::uint32_t type_id, const char* what) const {
    check_utf8(text, what);
    Encoding out;
    std::vector<NormalizedString> words;
    const auto run_model = [&](const NormalizedString& piece) {
      words.clear();
      if (pre_tokenizer_) {
        pre_tokenizer_->split(piece, !piece.empty() && piece.alignments()[0].begin == 0, words);
      } else if (!piece.empty()) {
        words.push_back(piece);
      }
      std::vector<Token> tokens;
      for (const NormalizedString& w : words) {
        if (w.empty()) continue;
        tokens.clear();
        model_->tokenize(w, tokens);
        for (const Token& t : tokens) {
          const std::string* value = model_->vocab().token(t.id);
          out.push(t.id, type_id, {t.offsets.begin, t.offsets.end}, false,
                   value != nullptr ? *value : std::string());
        }
      }
    };
    const auto normalized_piece = [&](std::size_t b, std::size_t e) {
      NormalizedString n(text.substr(b, e - b), b);
      if (normalizer_) normalizer_->normalize(n);
      if (norm_matcher_.empty()) {
        run_model(n);
        return;
      }
      std::size_t prev = 0;
      for (const AddedMatch& m : norm_matcher_.find(n.text())) {
        if (m.begin > prev) run_model(n.slice(prev, m.begin));
        const Range r = n.original(m.begin, m.end);
        out.push(m.id, type_id, {r.begin, r.end}, false, n.text().substr(m.begin, m.end - m.begin));
        prev = m.end;
      }
      if (prev < n.size()) run_model(n.slice(prev, n.size()));
    };
    std::size_t prev = 0;
    if (!raw_matcher_.empty()) {
      for (const AddedMatch& m : raw_matcher_.find(text)) {
        if (m.begin > prev) normalized_piece(prev, m.begin);
        out.push(m.id, type_id, {m.begin, m.end}, false,
                 std::string(text.substr(m.begin, m.end - m.begin)));
        prev = m.end;
      }
    }
    if (prev < text.size()) normalized_piece(prev, text.size());
    return out;
  }

  Encoding post_process(std::vector<Encoding> parts, const std::vector<std::string_view>& texts,
                        bool add_special) const {
    const bool pair = parts.size() > 1;
    if (truncation) {
      Truncation t = *truncation;
      const std::size_t added =
          add_special && post_processor_ ? post_processor_->added_tokens(pair) : 0;
      SORA_CHECK(t.max_length >= added, "truncation: max_length ", t.max_length,
                 " is smaller than the ", added, " special tokens the post-processor adds");
      t.max_length -= added;
      truncate(parts[0], pair ? &parts[1] : nullptr, t);
    }
    if (post_processor_) {
      post_processor_->process(parts, add_special, texts);
    }
    Encoding out = std::move(parts[0]);
    for (std::size_t k = 1; k < parts.size(); ++k) out.append(parts[k]);
    if (padding) pad(out, padding->fixed_length, *padding);
    return out;
  }

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_;
  std::unordered_map<std::uint32_t, std::size_t> added_by_id_;
  std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>> added_by_content_;
  AddedMatcher raw_matcher_{{}, {}};
  AddedMatcher norm_matcher_{{}, {}};
};

}  // namespace sora::text
