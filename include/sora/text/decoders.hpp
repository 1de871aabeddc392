#pragma once
// Decoders: turn a list of token strings back into text (decode()). Each step maps the list of
// tokens to a new list; the tokenizer concatenates the result.

#include <memory>
#include <sora/text/json.hpp>
#include <sora/text/pre_tokenizers.hpp>
#include <sora/text/regex.hpp>
#include <sora/text/unicode.hpp>
#include <string>
#include <utility>
#include <vector>

namespace sora::text {

// UTF-8 with each maximal invalid sequence replaced by U+FFFD (bytes that byte-level or
// byte-fallback tokens left incomplete).
inline std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  while (!s.empty()) {
    std::size_t start = 0;
    const std::size_t bad = find_invalid_utf8(s, &start);
    if (bad == std::string_view::npos) {
      out.append(s);
      break;
    }
    out.append(s.substr(0, start));
    out.append("\xEF\xBF\xBD");
    // A valid beginning of a sequence cut short is one replacement, and what follows starts
    // afresh; an impossible byte is one replacement on its own.
    s.remove_prefix(bad > start ? bad : bad + 1);
  }
  return out;
}

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode(std::vector<std::string>& tokens) const = 0;
};

class WordPieceDecoder final : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}

  // BERT's detokenization clean-up: no space before punctuation and English contractions.
  static void cleanup(std::string& s) {
    static const std::pair<const char*, const char*> rules[] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
        {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
        {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : rules) {
      const std::string f(from), t(to);
      for (std::size_t at = s.find(f); at != std::string::npos; at = s.find(f, at + t.size())) {
        s.replace(at, f.size(), t);
      }
    }
  }

  void decode(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) {
          t.erase(0, prefix_.size());
        } else {
          t.insert(0, " ");
        }
      }
      if (cleanup_) cleanup(t);
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode(std::vector<std::string>& tokens) const override {
    static const std::vector<int> back = [] {
      std::vector<int> b(512, -1);
      const auto& table = bytes_to_chars();
      for (int i = 0; i < 256; ++i) b[table[static_cast<std::size_t>(i)]] = i;
      return b;
    }();
    std::string bytes;
    for (const std::string& t : tokens) {
      std::string mine;
      bool ok = true;
      for (std::size_t k = 0; k < t.size(); k += utf8_length(static_cast<unsigned char>(t[k]))) {
        const char32_t c = decode_at(t, k);
        if (c >= back.size() || back[c] < 0) {
          ok = false;
          break;
        }
        mine.push_back(static_cast<char>(back[c]));
      }
      bytes += ok ? mine : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool strip_first) : strip_first_(strip_first) {
    append_utf8(replacement_, replacement);
  }
  void decode(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string t;
      const std::string& in = tokens[i];
      for (std::size_t k = 0; k < in.size();) {
        if (in.compare(k, replacement_.size(), replacement_) == 0) {
          t += ' ';
          k += replacement_.size();
        } else {
          t += in[k++];
        }
      }
      if (i == 0 && strip_first_ && !t.empty() && t[0] == ' ') t.erase(0, 1);
      tokens[i] = std::move(t);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

// <0xAB> tokens become bytes; each run of them is decoded as UTF-8 (or one U+FFFD per byte).
class ByteFallbackDecoder final : public Decoder {
 public:
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; ++k) {
      const char c = t[static_cast<std::size_t>(k)];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }
  void decode(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string run;
    std::size_t run_len = 0;
    const auto flush = [&] {
      if (run_len == 0) return;
      if (find_invalid_utf8(run) == std::string::npos) {
        out.push_back(run);
      } else {
        for (std::size_t k = 0; k < run_len; ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_len = 0;
    };
    for (std::string& t : tokens) {
      const int b = byte_of(t);
      if (b >= 0) {
        run.push_back(static_cast<char>(b));
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes `start` leading and `stop` trailing copies of a character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, std::size_t start, std::size_t stop) : start_(start), stop_(stop) {
    append_utf8(content_, content);
  }
  void decode(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      for (std::size_t k = 0; k < start_ && t.compare(0, content_.size(), content_) == 0; ++k)
        t.erase(0, content_.size());
      for (std::size_t k = 0; k < stop_ && t.size() >= content_.size() &&
                              t.compare(t.size() - content_.size(), content_.size(), content_) == 0;
           ++k)
        t.resize(t.size() - content_.size());
    }
  }

 private:
  std::string content_;
  std::size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Pattern p, std::string content)
      : pattern_(std::move(p)), content_(std::move(content)) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::string out;
      for (const Match& m : pattern_.find_matches(t)) {
        out += m.is_match ? content_ : t.substr(m.begin, m.end - m.begin);
      }
      t = std::move(out);
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// BPE's end-of-word suffix (</w>) becomes a space, except after the last token.
class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      const std::string rep = i + 1 == tokens.size() ? "" : " ";
      for (std::size_t at = t.find(suffix_); !suffix_.empty() && at != std::string::npos;
           at = t.find(suffix_, at + rep.size()))
        t.replace(at, suffix_.size(), rep);
    }
  }

 private:
  std::string suffix_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (const auto& s : steps_) s->decode(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

inline std::unique_ptr<Decoder> decoder_from_json(const json::Json& j, const json::Where& at) {
  const std::string type = json::type_of(j, at);
  if (type == "WordPiece") {
    return std::make_unique<WordPieceDecoder>(
        json::get_optional_string(j, "prefix", at).value_or("##"),
        json::get_bool(j, "cleanup", at, true));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    const char32_t rep = single_char(json::get_string(j, "replacement", at), at / "replacement");
    bool strip = json::get_bool(j, "add_prefix_space", at, true);
    if (const auto s = json::get_optional_string(j, "prepend_scheme", at)) strip = *s != "never";
    return std::make_unique<MetaspaceDecoder>(rep, strip);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(
        single_char(json::get_string(j, "content", at), at / "content"),
        json::as_uint(json::field(j, "start", at), at / "start"),
        json::as_uint(json::field(j, "stop", at), at / "stop"));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceDecoder>(
        pattern_from_json(json::field(j, "pattern", at), at / "pattern"),
        json::get_string(j, "content", at));
  }
  if (type == "BPEDecoder") {
    return std::make_unique<BpeDecoder>(
        json::get_optional_string(j, "suffix", at).value_or("</w>"));
  }
  if (type == "Sequence") {
    const json::Json& list = json::array(json::field(j, "decoders", at), at / "decoders");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      steps.push_back(decoder_from_json(list[i], (at / "decoders")[i]));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  json::fail(at / "type", "unsupported decoder '", type, "'");
}

}  // namespace sora::text
