// sora::text: the pieces of the tokenizer pipeline on inputs whose results follow from the
// definitions (worked out by hand in the comments), and the errors for bad files and text.
// Parity with the Python library on real and trained tokenizers is tests/text/parity.py.
#include <doctest/doctest.h>

#include <sora/text/tokenizer.hpp>
#include <string>
#include <vector>

using namespace sora::text;

namespace {

// A tiny BERT-like tokenizer.json. Ids: [PAD]0 [UNK]1 [CLS]2 [SEP]3 hello4 world5 ,6 !7 un8
// ##aff9 ##able10 北11 京12 cafe13 a14
std::string tiny_bert(const std::string& extra = "") {
  return R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [
      {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
    ],
    "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 10,
              "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5,
                        ",": 6, "!": 7, "un": 8, "##aff": 9, "##able": 10, "北": 11, "京": 12,
                        "cafe": 13, "a": 14}}
    )" + extra +
         "}";
}

using Offsets = std::vector<std::pair<std::size_t, std::size_t>>;

}  // namespace

TEST_CASE("utf8: the first invalid byte is found, whatever makes it invalid") {
  CHECK(find_invalid_utf8("plain ascii") == std::string_view::npos);
  CHECK(find_invalid_utf8("caf\xC3\xA9 \xF0\x9F\x98\x80") == std::string_view::npos);
  CHECK(find_invalid_utf8("ab\xC0\x80") == 2);         // overlong NUL: C0 is never a lead byte
  CHECK(find_invalid_utf8("ab\xE0\x80\x80") == 3);     // overlong 3-byte form
  CHECK(find_invalid_utf8("\xED\xA0\x80") == 1);       // a UTF-16 surrogate
  CHECK(find_invalid_utf8("x\xF4\x90\x80\x80") == 2);  // past U+10FFFF
  CHECK(find_invalid_utf8("xy\xF5") == 2);             // F5 is never a lead byte
  CHECK(find_invalid_utf8("\xE2\x82") == 2);           // cut short at the end
  CHECK(find_invalid_utf8("a\x80") == 1);              // a lone continuation byte
}

TEST_CASE("BertNormalizer: cleaning, CJK spacing, accents and case, each aligned to its source") {
  // "Hé\x01\tB北": H->h, é (2 bytes) -> e, \x01 (control) dropped, \t -> space, B -> b,
  // 北 -> " 北 ".
  NormalizedString s("H\xC3\xA9\x01\tB\xE5\x8C\x97", 0);
  BertNormalizer(true, true, true, true).normalize(s);
  CHECK(s.text() == "he b \xE5\x8C\x97 ");
  // Each normalized byte maps to the original character it came from.
  CHECK(s.original(0, 1) == Range{0, 1});  // h <- H
  CHECK(s.original(1, 2) == Range{1, 3});  // e <- é (both bytes)
  CHECK(s.original(2, 3) == Range{4, 5});  // space <- \t (the control at 3 left no trace)
  CHECK(s.original(5, 8) == Range{6, 9});  // 北
  CHECK(s.original(4, 9) == Range{6, 9});  // the spaces around 北 belong to 北 too
}

TEST_CASE("BertNormalizer: U+0130 lowercases to i + combining dot, which strip_accents removes") {
  NormalizedString keep("\xC4\xB0", 0);
  BertNormalizer(true, true, false, true).normalize(keep);
  CHECK(keep.text() == "i\xCC\x87");
  NormalizedString strip("\xC4\xB0", 0);
  BertNormalizer(true, true, true, true).normalize(strip);
  CHECK(strip.text() == "i");
}

TEST_CASE("BertPreTokenizer: whitespace separates and vanishes, each punctuation mark is a word") {
  NormalizedString s("a,b  c!!", 0);
  std::vector<NormalizedString> words;
  BertPreTokenizer().split(s, true, words);
  std::vector<std::string> got;
  for (const auto& w : words) got.push_back(w.text());
  CHECK(got == std::vector<std::string>{"a", ",", "b", "c", "!", "!"});
  CHECK(words[3].original(0, 1) == Range{5, 6});
}

TEST_CASE("tokenizer: BERT pipeline on a tiny vocabulary, ids and byte offsets") {
  const Tokenizer tok = Tokenizer::from_json(tiny_bert());
  // "Hello, WORLD!" -> hello , world ! between [CLS] and [SEP].
  const Encoding e = tok.encode("Hello, WORLD!");
  CHECK(e.ids == std::vector<std::uint32_t>{2, 4, 6, 5, 7, 3});
  CHECK(e.offsets == Offsets{{0, 0}, {0, 5}, {5, 6}, {7, 12}, {12, 13}, {0, 0}});
  CHECK(e.type_ids == std::vector<std::uint32_t>(6, 0));
  CHECK(e.attention_mask == std::vector<std::uint32_t>(6, 1));
  // WordPiece: un + ##aff + ##able; "unaffablex" has no last piece, so it is one [UNK];
  // "aaaaaaaaaaa" (11 > max_input_chars_per_word 10) is [UNK] although "a" is known.
  CHECK(tok.encode("unaffable", false).ids == std::vector<std::uint32_t>{8, 9, 10});
  CHECK(tok.encode("unaffable", false).offsets == Offsets{{0, 2}, {2, 5}, {5, 9}});
  CHECK(tok.encode("unaffablex", false).ids == std::vector<std::uint32_t>{1});
  CHECK(tok.encode("aaaaaaaaaaa", false).ids == std::vector<std::uint32_t>{1});
  CHECK(tok.encode("aaaaaaaaaaa", false).offsets == Offsets{{0, 11}});
  // "Café" -> cafe, its offsets cover the two bytes of é; 北京 are two words.
  const Encoding c = tok.encode("Caf\xC3\xA9 \xE5\x8C\x97\xE4\xBA\xAC", false);
  CHECK(c.ids == std::vector<std::uint32_t>{13, 11, 12});
  CHECK(c.offsets == Offsets{{0, 5}, {6, 9}, {9, 12}});
}

TEST_CASE("tokenizer: special tokens in the text are matched before normalization") {
  const Tokenizer tok = Tokenizer::from_json(tiny_bert());
  // "[sep]" is not the token (it is matched on the original text, case-sensitively), so it is
  // normalized and split: [ -> [UNK], sep -> [UNK], ] -> [UNK].
  const Encoding e = tok.encode("hello[SEP]world [sep]", false);
  CHECK(e.ids == std::vector<std::uint32_t>{4, 3, 5, 1, 1, 1});
  CHECK(e.offsets == Offsets{{0, 5}, {5, 10}, {10, 15}, {16, 17}, {17, 20}, {20, 21}});
}

TEST_CASE("tokenizer: pairs, truncation strategies and padding") {
  Tokenizer tok = Tokenizer::from_json(tiny_bert());
  const Encoding p = tok.encode_pair("hello world", "hello !");
  CHECK(p.ids == std::vector<std::uint32_t>{2, 4, 5, 3, 4, 7, 3});
  CHECK(p.type_ids == std::vector<std::uint32_t>{0, 0, 0, 0, 1, 1, 1});
  CHECK(p.offsets == Offsets{{0, 0}, {0, 5}, {6, 11}, {0, 0}, {0, 5}, {6, 7}, {0, 0}});

  // 6 + 2 words, budget 8 - 3 specials = 5: the shorter (2) fits in half, the longer keeps 3.
  tok.truncation = Truncation{8, TruncationStrategy::longest_first, false};
  const std::string six = "hello world hello world hello world";
  CHECK(tok.encode_pair(six, "hello world").ids ==
        std::vector<std::uint32_t>{2, 4, 5, 4, 3, 4, 5, 3});
  // Both 6 long, budget 6 - 3 = 3: the first keeps 3/2 = 1, the second 1 + 3%2 = 2.
  tok.truncation = Truncation{6, TruncationStrategy::longest_first, false};
  CHECK(tok.encode_pair(six, six).ids == std::vector<std::uint32_t>{2, 4, 3, 4, 5, 3});
  // only_second takes the whole excess from the second: budget 10 - 3 = 7 for 6 + 3 tokens
  // leaves it 1; with budget 7 - 3 = 4 its 1 token cannot give up 3, an error.
  tok.truncation = Truncation{10, TruncationStrategy::only_second, false};
  CHECK(tok.encode_pair(six, "hello world hello").ids ==
        std::vector<std::uint32_t>{2, 4, 5, 4, 5, 4, 5, 3, 4, 3});
  tok.truncation = Truncation{7, TruncationStrategy::only_second, false};
  CHECK_THROWS_WITH_AS(tok.encode_pair(six, "hello"),
                       doctest::Contains("second sequence has 1 tokens, too few to remove 3"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(tok.encode(six), doctest::Contains("only_second needs a pair"), sora::Error);
  // Left truncation keeps the end.
  tok.truncation = Truncation{4, TruncationStrategy::longest_first, true};
  CHECK(tok.encode("hello world !").ids == std::vector<std::uint32_t>{2, 5, 7, 3});

  tok.truncation.reset();
  Padding pad;
  pad.fixed_length = 6;
  pad.pad_id = 0;
  tok.padding = pad;
  const Encoding padded = tok.encode("hello");
  CHECK(padded.ids == std::vector<std::uint32_t>{2, 4, 3, 0, 0, 0});
  CHECK(padded.attention_mask == std::vector<std::uint32_t>{1, 1, 1, 0, 0, 0});
  pad.left = true;
  pad.pad_to_multiple_of = 4;  // 6 rounds up to 8
  tok.padding = pad;
  CHECK(tok.encode("hello").ids == std::vector<std::uint32_t>{0, 0, 0, 0, 0, 2, 4, 3});
}

TEST_CASE("tokenizer: decode drops special tokens and glues word pieces") {
  const Tokenizer tok = Tokenizer::from_json(tiny_bert());
  CHECK(tok.decode({2, 4, 6, 8, 9, 10, 7, 3}) == "hello, unaffable!");
  CHECK(tok.decode({2, 4, 3}, false) == "[CLS] hello [SEP]");
  CHECK(tok.token_to_id("##aff") == 9u);
  CHECK(tok.id_to_token(5) == "world");
  CHECK_FALSE(tok.token_to_id("nope").has_value());
  CHECK_THROWS_WITH_AS(tok.decode({99}), doctest::Contains("id 99 is not in the vocabulary"),
                       sora::Error);
}

TEST_CASE("tokenizer: invalid UTF-8 in the text is an error naming the byte offset") {
  const Tokenizer tok = Tokenizer::from_json(tiny_bert());
  CHECK_THROWS_WITH_AS(tok.encode("abc\xFFxyz"),
                       doctest::Contains("text: invalid UTF-8 at byte offset 3"), sora::Error);
  // Cut short by the end: the offset is the text's size, and no byte past the end is read
  // (scripts/fuzz-tokenizer found the read past the end of this message under ASan).
  CHECK_THROWS_WITH_AS(tok.encode_pair("ok", std::string_view("h\xC3\x80", 2)),
                       "second text: invalid UTF-8 at byte offset 2 (a sequence cut short by "
                       "the end of the text)",
                       sora::Error);
}

TEST_CASE("tokenizer.json: errors name the JSON path and the problem") {
  const auto error_of = [](const std::string& text) {
    try {
      (void)Tokenizer::from_json(text, "t.json");
    } catch (const sora::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("{").find("t.json: not valid JSON") == 0);
  CHECK(error_of("[]") == "t.json: $: expected an object, found array");
  CHECK(error_of("{}") == "t.json: $.model: missing field");
  CHECK(error_of(R"({"model": {"type": "Nope"}})") ==
        "t.json: $.model.type: unsupported model 'Nope'");
  CHECK(error_of(R"({"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"a": -1}}})") ==
        "t.json: $.model.vocab.a: expected a non-negative integer, found a negative number");
  CHECK(error_of(R"({"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"a": 0}}})") ==
        "t.json: $.model.unk_token: '[UNK]' is not in the vocabulary");
  CHECK(error_of(
            R"({"model": {"type": "WordPiece", "unk_token": "a", "vocab": {"a": 0, "b": 0}}})") ==
        "t.json: $.model.vocab.b: id 0 is used by two tokens");
  std::string bad = tiny_bert();
  bad.replace(bad.find("\"BertPreTokenizer\""), 18, "\"Whitespacey\"");
  CHECK(error_of(bad) == "t.json: $.pre_tokenizer.type: unsupported pre-tokenizer 'Whitespacey'");
  CHECK(
      error_of(
          tiny_bert(
              R"(, "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "("}, "content": ""}]})"))
          .find("t.json: $.normalizer.normalizers[1].pattern.Regex: regex '(': missing closing "
                "parenthesis") == 0);
}

namespace {

Tokenizer from_model(const std::string& model, const std::string& rest = "") {
  return Tokenizer::from_json(R"({"model": )" + model + rest + "}");
}

std::vector<std::string> words_of(const PreTokenizer& p, const std::string& text) {
  std::vector<NormalizedString> words;
  p.split(NormalizedString(text, 0), true, words);
  std::vector<std::string> out;
  for (const auto& w : words) out.push_back(w.text());
  return out;
}

}  // namespace

TEST_CASE("BPE: the lowest-ranked pair merges first, whatever its position") {
  const std::string vocab = R"("vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5})";
  // Rank 0 is b+c, so "abc" becomes a, bc, then a+bc (rank 2).
  const Tokenizer t1 =
      from_model(R"({"type": "BPE", )" + vocab + R"(, "merges": ["b c", "a b", "a bc"]})");
  CHECK(t1.encode("abc").ids == std::vector<std::uint32_t>{5});
  // With a+b first, "cab" is c, ab (no merge joins c and ab).
  const Tokenizer t2 = from_model(R"({"type": "BPE", )" + vocab +
                                  R"(, "merges": [["a", "b"], ["b", "c"], ["ab", "c"]]})");
  const Encoding e = t2.encode("cab");
  CHECK(e.ids == std::vector<std::uint32_t>{2, 3});
  CHECK(e.offsets == Offsets{{0, 1}, {1, 3}});
}

TEST_CASE("BPE: byte fallback gives one token per byte, unknowns fuse") {
  const Tokenizer fb = from_model(
      R"({"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "merges": [],
          "vocab": {"<unk>": 0, "a": 1, "<0xC3>": 2, "<0xA9>": 3}})");
  const Encoding e = fb.encode("a\xC3\xA9");  // "aé": é is not in the vocabulary
  CHECK(e.ids == std::vector<std::uint32_t>{1, 2, 3});
  // Offsets map through the character alignment: both byte tokens cover the whole é.
  CHECK(e.offsets == Offsets{{0, 1}, {1, 3}, {1, 3}});
  const Tokenizer fuse = from_model(
      R"({"type": "BPE", "fuse_unk": true, "unk_token": "<unk>", "merges": [],
          "vocab": {"<unk>": 0, "a": 1}})");
  CHECK(fuse.encode("x\xC3\xA9"
                    "a")
            .ids == std::vector<std::uint32_t>{0, 1});
  CHECK(fuse.encode("x\xC3\xA9"
                    "a")
            .offsets == Offsets{{0, 3}, {3, 4}});
}

TEST_CASE("Unigram: the best-scoring segmentation, unknown characters fused") {
  const Tokenizer t = from_model(
      R"({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -1.0],
          ["ab", -1.5], ["abc", -5.0], ["c", -2.0]]})");
  // a+b+c = -4, ab+c = -3.5, abc = -5: ab, c.
  CHECK(t.encode("abc").ids == std::vector<std::uint32_t>{3, 5});
  // x and y have no piece: one unknown token over both.
  const Encoding e = t.encode("xyab");
  CHECK(e.ids == std::vector<std::uint32_t>{0, 3});
  CHECK(e.offsets == Offsets{{0, 2}, {2, 4}});
}

TEST_CASE("pre-tokenizers: byte-level GPT-2 split, Metaspace, Split behaviours") {
  // GPT-2's regex: of two spaces before a word, the first stands alone (\s+(?!\S)) and the
  // second starts the word; every byte becomes a character (space -> U+0120).
  CHECK(words_of(ByteLevelPreTokenizer(false, true), "Hi  there") ==
        std::vector<std::string>{"Hi", "\xC4\xA0", "\xC4\xA0there"});
  CHECK(words_of(ByteLevelPreTokenizer(true, true), "Hi") ==
        std::vector<std::string>{"\xC4\xA0Hi"});
  CHECK(words_of(MetaspacePreTokenizer(U'\u2581', MetaspacePreTokenizer::Prepend::always, true),
                 "a b") == std::vector<std::string>{"\xE2\x96\x81"
                                                    "a",
                                                    "\xE2\x96\x81"
                                                    "b"});
  // "the-final--countdown" on "-": the crate's documented examples.
  const auto split = [](SplitBehavior b) {
    return words_of(SplitPreTokenizer(Pattern::literal("-"), b, false), "the-final--countdown");
  };
  CHECK(split(SplitBehavior::removed) == std::vector<std::string>{"the", "final", "countdown"});
  CHECK(split(SplitBehavior::merged_with_previous) ==
        std::vector<std::string>{"the-", "final-", "-", "countdown"});
  CHECK(split(SplitBehavior::merged_with_next) ==
        std::vector<std::string>{"the", "-final", "-", "-countdown"});
  CHECK(split(SplitBehavior::contiguous) ==
        std::vector<std::string>{"the", "-", "final", "--", "countdown"});
}

TEST_CASE("NFC: a composed character keeps its starter's alignment") {
  NormalizedString s("A\xCC\x81x", 0);  // A + U+0301, x
  UnicodeNormalizer(true, false).normalize(s);
  CHECK(s.text() == "\xC3\x81x");  // Á x
  CHECK(s.original(0, 2) == Range{0, 1});
  CHECK(s.original(2, 3) == Range{3, 4});
  NormalizedString d("\xC3\xA9", 0);  // é
  UnicodeNormalizer(false, false).normalize(d);
  CHECK(d.text() == "e\xCC\x81");
  CHECK(d.original(0, 3) == Range{0, 2});
}

#ifdef SORA_TEXT_WITH_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>

#include "support/temp_dir.hpp"

TEST_CASE("SentencePiece: a .model file trained here encodes like the library, with offsets") {
  const sora::testing::TempDir temp("sora-text-sp-test");
  const auto& dir = temp.path;
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 50; ++i) {
      corpus << "the quick brown fox jumps over the lazy dog\n"
             << "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9 and more words here\n";
    }
  }
  const std::string prefix = (dir / "m").string();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "corpus.txt").string() + " --model_prefix=" + prefix +
      " --vocab_size=36 --model_type=unigram --minloglevel=2");
  REQUIRE_MESSAGE(status.ok(), status.ToString());
  const Tokenizer tok = Tokenizer::from_file(prefix + ".model");
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load(prefix + ".model").ok());
  const std::string text = "the  caf\xC3\xA9 fox";
  std::vector<int> want;
  REQUIRE(sp.Encode(text, &want).ok());
  const Encoding e = tok.encode(text);
  CHECK(std::vector<int>(e.ids.begin(), e.ids.end()) == want);
  // Offsets never go backwards, stay inside the text, and the last one ends at its end.
  std::size_t prev = 0;
  for (const auto& [b, en] : e.offsets) {
    CHECK(b >= prev);
    CHECK(b <= en);
    CHECK(en <= text.size());
    prev = b;
  }
  CHECK(e.offsets.back().second == text.size());
  CHECK(tok.decode(e.ids) == "the caf\xC3\xA9 fox");  // the model folds the double space
  std::filesystem::remove_all(dir);
}
#endif
