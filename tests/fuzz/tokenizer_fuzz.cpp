// libFuzzer target for the tokenizer.json reader and the pipeline (run by scripts/fuzz-tokenizer).
//
// An input is a tokenizer.json, a NUL byte, then a text (a tab in it makes a pair). The file
// must be rejected with sora::Error or load; a loaded tokenizer must encode the text (or reject
// invalid UTF-8 with sora::Error) into an encoding whose fields have one entry per token and
// whose offsets lie inside the text they point into, and must decode its own ids. Anything
// else (a crash, a sanitizer report, another exception, a broken invariant) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sora/text/tokenizer.hpp>
#include <string>
#include <string_view>

using namespace sora::text;

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "tokenizer_fuzz: %s\n", what);
  std::abort();
}

void check(const Encoding& e, std::size_t len_a, std::size_t len_b) {
  const std::size_t n = e.ids.size();
  if (e.type_ids.size() != n || e.attention_mask.size() != n || e.offsets.size() != n ||
      e.special_tokens_mask.size() != n || e.tokens.size() != n) {
    finding("encoding fields of different lengths");
  }
  for (const auto& [b, en] : e.offsets) {
    if (b > en || en > std::max(len_a, len_b)) finding("offsets outside the text");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = all.find('\0');
  const std::string_view file = all.substr(0, nul);
  const std::string_view text = nul == std::string_view::npos ? "" : all.substr(nul + 1);
  std::optional<Tokenizer> tok;
  try {
    tok.emplace(Tokenizer::from_json(file, "fuzz.json"));
  } catch (const sora::Error&) {
    return 0;  // rejected cleanly: the expected outcome for most inputs
  }
  try {
    const std::size_t tab = text.find('\t');
    const Encoding e = tab == std::string_view::npos
                           ? tok->encode(text)
                           : tok->encode_pair(text.substr(0, tab), text.substr(tab + 1));
    check(e, tab == std::string_view::npos ? text.size() : tab,
          tab == std::string_view::npos ? 0 : text.size() - tab - 1);
    (void)tok->decode(e.ids, true);
    (void)tok->decode(e.ids, false);
  } catch (const sora::Error&) {
    return 0;  // invalid UTF-8, impossible truncation, unknown characters without unk
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "tokenizer_fuzz: unexpected exception: %s\n", ex.what());
    std::abort();
  }
  return 0;
}
