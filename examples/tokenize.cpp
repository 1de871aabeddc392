// sora-tokenize: encodes lines of text with a tokenizer, one JSON object per input line.
//
//   sora-tokenize --tokenizer tokenizer.json < lines.txt
//   sora-tokenize --tokenizer model/ --pair --max-length 64 < pairs.tsv   (a pair: "a\tb")
//
// Each output line is {"ids":[...],"type_ids":[...],"attention_mask":[...],"offsets":[[b,e],..]}
// with byte offsets into the line (for a pair, into its own field), and with --decode also
// "decoded": the ids decoded back to text. A line the tokenizer
// rejects (invalid UTF-8) prints {"error": "..."} and the program exits with status 1 at the
// end. Truncation and padding are those of tokenizer.json unless the flags change them.
// --benchmark encodes the whole input in memory, prints nothing per line and reports tokens/s
// on stderr (one thread).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sora/text/tokenizer.hpp>
#include <string>
#include <vector>

namespace {

void write_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
}

void write_list(std::string& out, const char* name, const std::vector<std::uint32_t>& v) {
  out += '"';
  out += name;
  out += "\":[";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(v[i]);
  }
  out += ']';
}

void write_encoding(std::string& out, const sora::text::Encoding& e, const std::string* decoded) {
  out += '{';
  write_list(out, "ids", e.ids);
  out += ',';
  write_list(out, "type_ids", e.type_ids);
  out += ',';
  write_list(out, "attention_mask", e.attention_mask);
  out += ",\"offsets\":[";
  for (std::size_t i = 0; i < e.offsets.size(); ++i) {
    if (i) out += ',';
    out +=
        '[' + std::to_string(e.offsets[i].first) + ',' + std::to_string(e.offsets[i].second) + ']';
  }
  out += ']';
  if (decoded != nullptr) {
    out += ",\"decoded\":";
    write_json_string(out, *decoded);
  }
  out += "}\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Encodes lines of text with a Hugging Face tokenizer (tokenizer.json, vocab.txt)"};
  std::string path;
  bool pair = false, no_padding = false, no_truncation = false, no_special = false,
       benchmark = false, decode = false;
  std::size_t max_length = 0;
  std::string strategy = "longest_first";
  app.add_option("--tokenizer", path, "tokenizer.json, vocab.txt, or a folder holding one")
      ->required();
  app.add_flag("--pair", pair, "each line is a pair of texts separated by a tab");
  app.add_option("--max-length", max_length, "truncate to this many tokens (special included)");
  app.add_option("--truncation", strategy, "longest_first, only_first or only_second")
      ->check(CLI::IsMember({"longest_first", "only_first", "only_second"}));
  app.add_flag("--no-truncation", no_truncation, "ignore tokenizer.json's truncation");
  app.add_flag("--no-padding", no_padding, "ignore tokenizer.json's padding");
  app.add_flag("--no-special-tokens", no_special, "do not add the post-processor's tokens");
  app.add_flag("--decode", decode, "add \"decoded\": decode(ids) (special tokens skipped)");
  app.add_flag("--benchmark", benchmark, "report tokens/s on stderr instead of the encodings");
  CLI11_PARSE(app, argc, argv);

  try {
    auto tok = sora::text::Tokenizer::from_file(path);
    if (no_truncation) tok.truncation.reset();
    if (no_padding) tok.padding.reset();
    if (max_length > 0) {
      sora::text::Truncation t = tok.truncation.value_or(sora::text::Truncation{});
      t.max_length = max_length;
      t.strategy = strategy == "only_first"    ? sora::text::TruncationStrategy::only_first
                   : strategy == "only_second" ? sora::text::TruncationStrategy::only_second
                                               : sora::text::TruncationStrategy::longest_first;
      tok.truncation = t;
    }
    std::vector<std::string> lines;
    for (std::string line; std::getline(std::cin, line);) lines.push_back(std::move(line));

    const auto encode = [&](const std::string& line) {
      if (!pair) return tok.encode(line, !no_special);
      const std::size_t tab = line.find('\t');
      if (tab == std::string::npos) return tok.encode_pair(line, "", !no_special);
      return tok.encode_pair(std::string_view(line).substr(0, tab),
                             std::string_view(line).substr(tab + 1), !no_special);
    };

    if (benchmark) {
      std::size_t tokens = 0, bytes = 0;
      const auto start = std::chrono::steady_clock::now();
      for (const std::string& line : lines) {
        tokens += encode(line).size();
        bytes += line.size();
      }
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr,
                   "sora-tokenize: %zu lines, %zu bytes, %zu tokens in %.3f s: %.0f tokens/s\n",
                   lines.size(), bytes, tokens, s, static_cast<double>(tokens) / s);
      std::printf("{\"tokens\":%zu,\"seconds\":%.6f}\n", tokens, s);
      return 0;
    }

    int status = 0;
    std::string out;
    for (const std::string& line : lines) {
      try {
        const sora::text::Encoding e = encode(line);
        if (decode) {
          const std::string text = tok.decode(e.ids);
          write_encoding(out, e, &text);
        } else {
          write_encoding(out, e, nullptr);
        }
      } catch (const sora::Error& e) {
        out += "{\"error\":";
        write_json_string(out, e.what());
        out += "}\n";
        status = 1;
      }
      if (out.size() > (1 << 16)) {
        std::fwrite(out.data(), 1, out.size(), stdout);
        out.clear();
      }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return status;
  } catch (const sora::Error& e) {
    std::fprintf(stderr, "sora-tokenize: %s\n", e.what());
    return 1;
  }
}
