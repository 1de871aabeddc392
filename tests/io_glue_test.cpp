// io/glue_tsv.hpp: the column layouts of the GLUE tasks, malformed rows, byte-level
// tokenization with longest-first truncation and padding.
#include <doctest/doctest.h>

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <sora/io/glue_tsv.hpp>
#include <string>
#include <vector>
#include "support/temp_dir.hpp"

using namespace sora;
using namespace sora::io;
namespace fs = std::filesystem;

namespace {

std::string glue_error(std::string_view text, GlueTask task, GlueSplit split = GlueSplit::labeled) {
  try {
    parse_glue_tsv(text, task, split, "task/dev.tsv");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

// MNLI's 16-column dev header (train has 12: label1 and gold_label only).
const std::string kMnliDevHeader =
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
    "label5\tgold_label\n";

std::string mnli_row(const char* s1, const char* s2, const char* gold) {
  return std::string("0\t1\t1n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t") + s1 + "\t" + s2 +
         "\tneutral\tneutral\tneutral\tneutral\tneutral\t" + gold + "\n";
}

}  // namespace

TEST_CASE("SST-2: header, sentence and integer label") {
  const auto d =
      parse_glue_tsv("sentence\tlabel\nit 's a charming journey . \t1\nawful\t0\n", GlueTask::SST2);
  REQUIRE(d.size() == 2);
  CHECK(d.examples[0].text_a == "it 's a charming journey . ");
  CHECK(d.examples[0].text_b.empty());
  CHECK(d.labels() == std::vector<int>{1, 0});
  CHECK(d.examples[1].line == 3);
  CHECK_FALSE(d.layout.pair());
  CHECK(d.layout.num_classes == 2);
}

TEST_CASE("CoLA: no header in train/dev, four columns; a header in test") {
  const auto d = parse_glue_tsv(
      "gj04\t1\t\tOur friends won't buy this analysis.\nclc95\t0\t*\tThey drank the pub.\n",
      GlueTask::CoLA);
  REQUIRE(d.size() == 2);
  CHECK(d.examples[0].text_a == "Our friends won't buy this analysis.");
  CHECK(d.examples[1].label == 0);
  CHECK(d.examples[0].line == 1);
  const auto t = parse_glue_tsv("index\tsentence\n0\tBill whistled past the house.\n",
                                GlueTask::CoLA, GlueSplit::test);
  REQUIRE(t.size() == 1);
  CHECK(t.examples[0].text_a == "Bill whistled past the house.");
  CHECK(t.examples[0].label == -1);
}

TEST_CASE("MRPC: label first, the two strings last; a byte order mark is skipped") {
  const auto d = parse_glue_tsv(
      "\xEF\xBB\xBFQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
      "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi .\r\n",
      GlueTask::MRPC);
  REQUIRE(d.size() == 1);
  CHECK(d.examples[0].label == 1);
  CHECK(d.examples[0].text_a == "Amrozi accused his brother .");
  CHECK(d.examples[0].text_b == "Referring to him , Amrozi .");  // no trailing \r
  CHECK(d.layout.pair());
}

TEST_CASE("STS-B: ten columns, a float score (regression)") {
  const auto d = parse_glue_tsv(
      "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
      "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air "
      "plane is taking off.\t5.000\n"
      "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays.\tA man talks.\t0.5\n",
      GlueTask::STSB);
  REQUIRE(d.size() == 2);
  CHECK(d.layout.regression);
  CHECK(d.scores() == std::vector<double>{5.0, 0.5});
  CHECK(d.examples[1].text_b == "A man talks.");
  CHECK(d.examples[1].label == -1);
}

TEST_CASE("QQP, QNLI, RTE, WNLI: pair tasks with their label columns and names") {
  const auto qqp = parse_glue_tsv(
      "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
      "133273\t213221\t213222\tHow is the life?\tHow is life?\t1\n",
      GlueTask::QQP);
  CHECK(qqp.examples.at(0).text_a == "How is the life?");
  CHECK(qqp.examples.at(0).label == 1);
  const auto qnli = parse_glue_tsv(
      "index\tquestion\tsentence\tlabel\n0\tWhat came?\tThe thing came.\tentailment\n"
      "1\tWho?\tNobody.\tnot_entailment\n",
      GlueTask::QNLI);
  CHECK(qnli.labels() == std::vector<int>{0, 1});
  CHECK(qnli.examples.at(1).text_b == "Nobody.");
  const auto rte = parse_glue_tsv(
      "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tChristopher Reeve had an "
      "accident.\tnot_entailment\n",
      GlueTask::RTE);
  CHECK(rte.labels() == std::vector<int>{1});
  const auto wnli = parse_glue_tsv(
      "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin.\tThe pin stuck.\t1\n", GlueTask::WNLI);
  CHECK(wnli.labels() == std::vector<int>{1});
  const auto qqp_test =
      parse_glue_tsv("id\tquestion1\tquestion2\n0\tA?\tB?\n", GlueTask::QQP, GlueSplit::test);
  CHECK(qqp_test.examples.at(0).text_b == "B?");
}

TEST_CASE("MNLI: label is the last column in both the 12-column train and 16-column dev") {
  const auto dev =
      parse_glue_tsv(kMnliDevHeader + mnli_row("The cat sat.", "A cat sat.", "entailment") +
                         mnli_row("He left.", "He stayed.", "contradiction"),
                     GlueTask::MNLI);
  REQUIRE(dev.size() == 2);
  CHECK(dev.examples[0].text_a == "The cat sat.");
  CHECK(dev.examples[1].text_b == "He stayed.");
  CHECK(dev.labels() == std::vector<int>{0, 2});
  const auto train = parse_glue_tsv(
      "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
      "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
      "0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tConceptually cream.\t"
      "Product and geography.\tneutral\tneutral\n",
      GlueTask::MNLI);
  CHECK(train.labels() == std::vector<int>{1});
}

TEST_CASE("malformed rows are errors naming the file, the line and what was expected") {
  struct Bad {
    std::string what;
    GlueTask task;
    std::string text;
    const char* error;
  };
  const std::vector<Bad> table = {
      {"SST-2 missing label", GlueTask::SST2, "sentence\tlabel\ngood\t1\nbad\n",
       "task/dev.tsv:3: SST-2: expected 2 tab-separated columns, found 1"},
      {"SST-2 label out of range", GlueTask::SST2, "sentence\tlabel\ngood\t2\n",
       "task/dev.tsv:2: SST-2: label '2' is not a class index in [0, 2)"},
      {"SST-2 label not a number", GlueTask::SST2, "sentence\tlabel\ngood\tpositive\n",
       "label 'positive' is not a class index"},
      {"SST-2 wrong header", GlueTask::SST2, "index\tsentence\n0\tgood\n",
       "task/dev.tsv:1: SST-2: header column 1 is 'index', expected 'sentence'"},
      {"CoLA with a header", GlueTask::CoLA, "index\tsentence\n0\tgood\n",
       "task/dev.tsv:1: CoLA: expected 4 tab-separated columns, found 2"},
      {"CoLA bad label", GlueTask::CoLA, "gj04\t1\t\tfine.\ngj04\t*\t\tbad.\n",
       "task/dev.tsv:2: CoLA: label '*' is not a class index"},
      {"MRPC extra column", GlueTask::MRPC,
       "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\tc\n",
       "task/dev.tsv:2: MRPC: expected 5 tab-separated columns, found 6"},
      {"STS-B score not a number", GlueTask::STSB,
       "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
       "0\tg\tf\ty\to\ts\ts\ta\tb\tfive\n",
       "task/dev.tsv:2: STS-B: label 'five' is not a finite number"},
      {"STS-B score nan", GlueTask::STSB,
       "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
       "0\tg\tf\ty\to\ts\ts\ta\tb\tnan\n",
       "not a finite number"},
      {"QNLI unknown label", GlueTask::QNLI, "index\tquestion\tsentence\tlabel\n0\tq\ts\tyes\n",
       "task/dev.tsv:2: QNLI: label 'yes' is not one of entailment, not_entailment"},
      {"MNLI unknown label", GlueTask::MNLI, kMnliDevHeader + mnli_row("a", "b", "-"),
       "task/dev.tsv:2: MNLI: label '-' is not one of entailment, neutral, contradiction"},
      {"MNLI short header", GlueTask::MNLI, "index\tsentence1\tsentence2\tlabel\n",
       "task/dev.tsv:1: MNLI: header has 4 columns, expected at least 9"},
      {"RTE blank line in the middle", GlueTask::RTE,
       "index\tsentence1\tsentence2\tlabel\n\n0\ta\tb\tentailment\n",
       "task/dev.tsv:2: RTE: expected 4 tab-separated columns, found 1"},
      {"QQP empty file", GlueTask::QQP, "", "empty file"},
  };
  for (const Bad& b : table) {
    CAPTURE(b.what);
    const std::string error = glue_error(b.text, b.task);
    CHECK_MESSAGE(error.find(b.error) != std::string::npos, "got: ", error);
  }
}

TEST_CASE("reading from a file names the file in errors") {
  const fs::path dir = sora::testing::unique_temp_dir("sora-glue");
  std::ofstream(dir / "train.tsv") << "sentence\tlabel\nfine\t1\nbroken\t1\textra\n";
  std::ofstream(dir / "good.tsv") << "sentence\tlabel\nfine\t1\n";
  CHECK(read_glue_tsv(dir / "good.tsv", GlueTask::SST2).size() == 1);
  const std::string where = (dir / "train.tsv").string() + ":3: SST-2: expected 2";
  CHECK_THROWS_WITH_AS(read_glue_tsv(dir / "train.tsv", GlueTask::SST2),
                       doctest::Contains(where.c_str()), Error);
  CHECK_THROWS_WITH_AS(read_glue_tsv(dir / "missing.tsv", GlueTask::SST2),
                       doctest::Contains("cannot open"), Error);
  fs::remove_all(dir);
}

TEST_CASE("task names parse in the usual spellings") {
  CHECK(parse_glue_task("SST-2") == GlueTask::SST2);
  CHECK(parse_glue_task("sst2") == GlueTask::SST2);
  CHECK(parse_glue_task("sts-b") == GlueTask::STSB);
  CHECK(parse_glue_task("STSB") == GlueTask::STSB);
  CHECK(parse_glue_task("cola") == GlueTask::CoLA);
  CHECK(parse_glue_task("mnli") == GlueTask::MNLI);
  CHECK_FALSE(parse_glue_task("squad").has_value());
}

TEST_CASE("byte-level encoding: [CLS] a [SEP] for single sentences, padded") {
  const auto d = parse_glue_tsv("sentence\tlabel\nab\t1\n\xC3\xA9\t0\n", GlueTask::SST2);
  const EncodedBatch b = encode_glue(d, 0, 2, {.max_length = 6, .pad_to_longest = false});
  CHECK(b.batch == 2);
  CHECK(b.seq == 6);
  const int P = ByteVocab::kPad, C = ByteVocab::kCls, S = ByteVocab::kSep;
  CHECK(b.tokens == std::vector<int>{C, 'a', 'b', S, P, P, C, 0xC3, 0xA9, S, P, P});
  CHECK(b.mask == std::vector<int>{1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0});
  CHECK(b.segments == std::vector<int>(12, 0));
  CHECK(b.lengths == std::vector<int>{4, 4});
  CHECK(b.labels == std::vector<int>{1, 0});
  CHECK(ByteVocab::kSize == 260);
  CHECK(byte_tokens("\xFF") == std::vector<int>{255});
}

TEST_CASE("pairs: [CLS] a [SEP] b [SEP], segments, longest-first truncation, pad to longest") {
  const auto d = parse_glue_tsv(
      "index\tsentence1\tsentence2\tlabel\n"
      "0\tabcdef\txy\tentailment\n"      // a is longer: a loses bytes first
      "1\tab\tuvwxyz\tnot_entailment\n"  // b is longer
      "2\tabcd\twxyz\tentailment\n"      // tie: b loses first, then they alternate
      "3\ta\tb\tentailment\n",           // fits
      GlueTask::RTE);
  const int C = ByteVocab::kCls, S = ByteVocab::kSep, P = ByteVocab::kPad;
  // max_length 8 leaves 5 bytes for the two texts.
  const EncodedBatch b = encode_glue(d, 0, 4, {.max_length = 8, .pad_to_longest = false});
  CHECK(b.seq == 8);
  const auto row = [&](int i) {
    return std::vector<int>(b.tokens.begin() + 8 * i, b.tokens.begin() + 8 * (i + 1));
  };
  CHECK(row(0) == std::vector<int>{C, 'a', 'b', 'c', S, 'x', 'y', S});
  CHECK(row(1) == std::vector<int>{C, 'a', 'b', S, 'u', 'v', 'w', S});
  CHECK(row(2) == std::vector<int>{C, 'a', 'b', 'c', S, 'w', 'x', S});
  CHECK(row(3) == std::vector<int>{C, 'a', S, 'b', S, P, P, P});
  CHECK(std::vector<int>(b.segments.begin(), b.segments.begin() + 8) ==
        std::vector<int>{0, 0, 0, 0, 0, 1, 1, 1});
  CHECK(b.lengths == std::vector<int>{8, 8, 8, 5});
  CHECK(b.labels == std::vector<int>{0, 1, 0, 0});

  const EncodedBatch tight = encode_glue(d, 3, 1, {.max_length = 64, .pad_to_longest = true});
  CHECK(tight.seq == 5);
  CHECK(tight.tokens == std::vector<int>{C, 'a', S, 'b', S});

  CHECK_THROWS_WITH_AS(encode_glue(d, 0, 1, {.max_length = 2, .pad_to_longest = false}),
                       doctest::Contains("no room for the 3 special tokens"), Error);
  CHECK_THROWS_WITH_AS(encode_glue(d, 3, 2), doctest::Contains("out of range"), Error);
}

TEST_CASE("truncate_longest_first removes from the longer text, from the second on ties") {
  std::size_t a = 10, b = 3;
  truncate_longest_first(a, b, 8);
  CHECK(a == 5);
  CHECK(b == 3);
  a = 4, b = 4;
  truncate_longest_first(a, b, 5);
  CHECK(a == 3);
  CHECK(b == 2);
  a = 0, b = 0;
  truncate_longest_first(a, b, 0);
  CHECK(a + b == 0);
}
