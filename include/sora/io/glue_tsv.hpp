#pragma once
// GLUE-format task files (tab-separated, no quoting, as distributed by the GLUE benchmark)
// and byte-level tokenization into padded batches.
//
// Each task has its own column layout; glue_layout() holds them for the labelled files
// (train.tsv, dev.tsv, MNLI's dev_matched.tsv / dev_mismatched.tsv) and for test.tsv,
// which has no labels. Every row is checked against the layout: the column count must
// match the header's (CoLA's labelled files have no header: 4 columns), labels must be one
// of the task's classes or, for STS-B, a finite number. A bad row is a sora::Error naming
// the file, the line and what was expected.
//
// Tokens are bytes 0..255 plus four specials (PAD, CLS/BOS, SEP, EOS): no vocabulary file,
// any language, and the tiny embedding table a small from-scratch model wants.

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <iterator>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/input_file.hpp"

namespace sora::io {

enum class GlueTask { CoLA, SST2, MRPC, STSB, QQP, MNLI, QNLI, RTE, WNLI };
enum class GlueSplit {
  labeled,  // train.tsv, dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv)
  test,     // test.tsv: an index column and the text, no labels
};

// Column positions; a negative position counts from the end (-1 is the last column), which
// is how MNLI's label is found in both its 12-column train and 16-column dev files.
struct GlueLayout {
  static constexpr int kNone = -1000;

  std::string_view name;
  bool has_header = true;
  std::size_t columns = 0;  // required count without a header; with one, the header's count
  int text_a = kNone;
  int text_b = kNone;  // kNone: single-sentence task
  int label = kNone;   // kNone: unlabelled (test split)
  // What the header must call those columns (a check that the file is the task's).
  std::string_view text_a_header, text_b_header, label_header;
  bool regression = false;
  std::vector<std::string_view> label_names;  // empty: labels are the integers 0..classes-1
  int num_classes = 0;                        // 0 for regression

  bool pair() const { return text_b != kNone; }
  bool labeled() const { return label != kNone; }
};

inline GlueLayout glue_layout(GlueTask task, GlueSplit split = GlueSplit::labeled) {
  const bool test = split == GlueSplit::test;
  GlueLayout l;
  switch (task) {
    case GlueTask::CoLA:
      l.name = "CoLA";
      if (test) {  // index, sentence
        l.text_a = 1, l.text_a_header = "sentence";
      } else {  // source, label, original judgement, sentence; no header line
        l.has_header = false, l.columns = 4, l.text_a = 3, l.label = 1;
      }
      l.num_classes = 2;
      break;
    case GlueTask::SST2:
      l.name = "SST-2";
      if (test) {
        l.text_a = 1;
      } else {
        l.text_a = 0, l.label = 1, l.label_header = "label";
      }
      l.text_a_header = "sentence";
      l.num_classes = 2;
      break;
    case GlueTask::MRPC:  // Quality, #1 ID, #2 ID, #1 String, #2 String (test: index first)
      l.name = "MRPC";
      l.text_a = 3, l.text_b = 4, l.text_a_header = "#1 String", l.text_b_header = "#2 String";
      if (!test) l.label = 0, l.label_header = "Quality";
      l.num_classes = 2;
      break;
    case GlueTask::STSB:  // index genre filename year old_index source1 source2 s1 s2 score
      l.name = "STS-B";
      l.text_a = 7, l.text_b = 8, l.text_a_header = "sentence1", l.text_b_header = "sentence2";
      if (!test) l.label = -1, l.label_header = "score";
      l.regression = true;
      break;
    case GlueTask::QQP:  // id qid1 qid2 question1 question2 is_duplicate (test: id q1 q2)
      l.name = "QQP";
      if (test) {
        l.text_a = 1, l.text_b = 2;
      } else {
        l.text_a = 3, l.text_b = 4, l.label = 5, l.label_header = "is_duplicate";
      }
      l.text_a_header = "question1", l.text_b_header = "question2";
      l.num_classes = 2;
      break;
    case GlueTask::MNLI:  // index promptID pairID genre 4 parses sentence1 sentence2 ... gold
      l.name = "MNLI";
      l.text_a = 8, l.text_b = 9, l.text_a_header = "sentence1", l.text_b_header = "sentence2";
      if (!test) l.label = -1, l.label_header = "gold_label";
      l.label_names = {"entailment", "neutral", "contradiction"};
      l.num_classes = 3;
      break;
    case GlueTask::QNLI:  // index question sentence label
      l.name = "QNLI";
      l.text_a = 1, l.text_b = 2, l.text_a_header = "question", l.text_b_header = "sentence";
      if (!test) l.label = -1, l.label_header = "label";
      l.label_names = {"entailment", "not_entailment"};
      l.num_classes = 2;
      break;
    case GlueTask::RTE:  // index sentence1 sentence2 label
    case GlueTask::WNLI:
      l.name = task == GlueTask::RTE ? "RTE" : "WNLI";
      l.text_a = 1, l.text_b = 2, l.text_a_header = "sentence1", l.text_b_header = "sentence2";
      if (!test) l.label = -1, l.label_header = "label";
      if (task == GlueTask::RTE) l.label_names = {"entailment", "not_entailment"};
      l.num_classes = 2;
      break;
  }
  return l;
}

// "SST-2", "sst2", "sts-b", "MNLI", ... (case and '-' ignored).
inline std::optional<GlueTask> parse_glue_task(std::string_view text) {
  std::string key;
  for (char c : text) {
    if (c != '-' && c != '_') key += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  constexpr GlueTask all[] = {GlueTask::CoLA, GlueTask::SST2, GlueTask::MRPC,
                              GlueTask::STSB, GlueTask::QQP,  GlueTask::MNLI,
                              GlueTask::QNLI, GlueTask::RTE,  GlueTask::WNLI};
  for (GlueTask t : all) {
    std::string name;
    for (char c : glue_layout(t).name) {
      if (c != '-') name += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (name == key) return t;
  }
  return std::nullopt;
}

struct GlueExample {
  std::string text_a;
  std::string text_b;  // empty for single-sentence tasks
  int label = -1;      // class index; -1 when unlabelled or regression
  double score = 0;    // regression target (STS-B)
  std::size_t line = 0;
};

struct GlueDataset {
  GlueLayout layout;
  std::string source;
  std::vector<GlueExample> examples;

  std::size_t size() const { return examples.size(); }
  std::vector<int> labels() const {
    std::vector<int> out;
    for (const GlueExample& e : examples) out.push_back(e.label);
    return out;
  }
  std::vector<double> scores() const {
    std::vector<double> out;
    for (const GlueExample& e : examples) out.push_back(e.score);
    return out;
  }
};

namespace glue_detail {

inline std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    out.push_back(line.substr(start, tab == std::string_view::npos ? tab : tab - start));
    if (tab == std::string_view::npos) return out;
    start = tab + 1;
  }
}

inline std::size_t resolve(int column, std::size_t count) {
  return column < 0 ? count - static_cast<std::size_t>(-column) : static_cast<std::size_t>(column);
}

}  // namespace glue_detail

// Parses the text of a task file; `source` names it in error messages.
inline GlueDataset parse_glue_tsv(std::string_view text, GlueTask task,
                                  GlueSplit split = GlueSplit::labeled,
                                  std::string source = "<memory>") {
  GlueDataset data;
  data.layout = glue_layout(task, split);
  data.source = std::move(source);
  const GlueLayout& l = data.layout;
  // Files saved by some editors start with a UTF-8 byte order mark (MRPC's did).
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);

  std::size_t columns = l.columns;
  std::size_t line_no = 0;
  auto fail = [&](auto&&... parts) {
    detail::throw_error(data.source, ":", line_no, ": ", l.name, ": ", parts...);
  };
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // CRLF files
    const std::vector<std::string_view> cells = glue_detail::split_tabs(line);

    if (line_no == 1 && l.has_header) {
      columns = cells.size();
      const auto check_header = [&](int column, std::string_view expected) {
        if (column == GlueLayout::kNone) return;
        const auto minimum = static_cast<std::size_t>(column < 0 ? -column : column + 1);
        if (columns < minimum) {
          fail("header has ", columns, " columns, expected at least ", minimum);
        }
        if (expected.empty()) return;
        const std::string_view found = cells[glue_detail::resolve(column, columns)];
        if (found != expected) {
          fail("header column ", glue_detail::resolve(column, columns) + 1, " is '", found,
               "', expected '", expected, "' (is this the right task and split?)");
        }
      };
      check_header(l.text_a, l.text_a_header);
      check_header(l.text_b, l.text_b_header);
      check_header(l.label, l.label_header);
      continue;
    }
    if (line.empty() && text.empty()) break;  // the final newline
    if (cells.size() != columns) {
      fail("expected ", columns, " tab-separated columns, found ", cells.size());
    }

    GlueExample e;
    e.line = line_no;
    e.text_a = cells[glue_detail::resolve(l.text_a, columns)];
    if (l.pair()) e.text_b = cells[glue_detail::resolve(l.text_b, columns)];
    if (l.labeled()) {
      const std::string_view label = cells[glue_detail::resolve(l.label, columns)];
      if (l.regression) {
        double v = 0;
        const auto [end, ec] = std::from_chars(label.data(), label.data() + label.size(), v);
        if (ec != std::errc() || end != label.data() + label.size() || !std::isfinite(v)) {
          fail("label '", label, "' is not a finite number");
        }
        e.score = v;
      } else if (!l.label_names.empty()) {
        const auto it = std::find(l.label_names.begin(), l.label_names.end(), label);
        if (it == l.label_names.end()) {
          std::string names;
          for (std::string_view n : l.label_names)
            names += (names.empty() ? "" : ", ") + std::string(n);
          fail("label '", label, "' is not one of ", names);
        }
        e.label = static_cast<int>(it - l.label_names.begin());
      } else {
        int v = -1;
        const auto [end, ec] = std::from_chars(label.data(), label.data() + label.size(), v);
        if (ec != std::errc() || end != label.data() + label.size() || v < 0 ||
            v >= l.num_classes) {
          fail("label '", label, "' is not a class index in [0, ", l.num_classes, ")");
        }
        e.label = v;
      }
    }
    data.examples.push_back(std::move(e));
  }
  SORA_CHECK(line_no > 0 || !l.has_header, data.source, ": ", l.name,
             ": empty file (expected a header line)");
  return data;
}

inline GlueDataset read_glue_tsv(const std::filesystem::path& path, GlueTask task,
                                 GlueSplit split = GlueSplit::labeled) {
  return parse_glue_tsv(read_input_file(path), task, split, path.string());
}

// Byte-level vocabulary: ids 0..255 are the bytes, then the special tokens.
struct ByteVocab {
  static constexpr int kPad = 256;
  static constexpr int kCls = 257;  // also the beginning of a sequence for language modelling
  static constexpr int kBos = kCls;
  static constexpr int kSep = 258;
  static constexpr int kEos = 259;
  static constexpr int kSize = 260;
};

inline std::vector<int> byte_tokens(std::string_view text) {
  std::vector<int> out(text.size());
  std::transform(text.begin(), text.end(), out.begin(),
                 [](char c) { return static_cast<int>(static_cast<unsigned char>(c)); });
  return out;
}

// A batch of B sequences of T tokens, row-major (B * T), padded with ByteVocab::kPad.
struct EncodedBatch {
  Index batch = 0;             // B
  Index seq = 0;               // T
  std::vector<int> tokens;     // (B * T): [CLS] a [SEP] (b [SEP]) PAD...
  std::vector<int> segments;   // (B * T): 0 for [CLS] a [SEP], 1 for b [SEP], 0 for padding
  std::vector<int> mask;       // (B * T): 1 for real tokens, 0 for padding
  std::vector<int> lengths;    // (B): real tokens per sequence
  std::vector<int> labels;     // (B): class indices (-1 where none)
  std::vector<double> scores;  // (B): regression targets
};

struct EncodeOptions {
  int max_length = 128;         // T, special tokens included
  bool pad_to_longest = false;  // T = the longest sequence of the batch instead of max_length
};

// Truncates (a, b) so that la + lb <= budget, longest first: one byte at a time from the
// longer of the two, from the second on ties (the convention of BERT-style tokenizers).
inline void truncate_longest_first(std::size_t& la, std::size_t& lb, std::size_t budget) {
  while (la + lb > budget) {
    if (la > lb) {
      --la;
    } else {
      --lb;
    }
  }
}

// Encodes examples [first, first + count) of `data`.
inline EncodedBatch encode_glue(const GlueDataset& data, std::size_t first, std::size_t count,
                                const EncodeOptions& options = {}) {
  SORA_CHECK(first <= data.size() && count <= data.size() - first, "encode_glue: examples [", first,
             ", ", first + count, ") out of range for ", data.size());
  const bool pair = data.layout.pair();
  const int specials = pair ? 3 : 2;
  SORA_CHECK(options.max_length >= specials, "encode_glue: max_length ", options.max_length,
             " leaves no room for the ", specials, " special tokens");
  const auto budget = static_cast<std::size_t>(options.max_length - specials);

  EncodedBatch out;
  out.batch = static_cast<Index>(count);
  std::vector<std::pair<std::size_t, std::size_t>> kept(count);
  std::size_t longest = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const GlueExample& e = data.examples[first + i];
    std::size_t la = e.text_a.size(), lb = pair ? e.text_b.size() : 0;
    truncate_longest_first(la, lb, budget);
    kept[i] = {la, lb};
    longest = std::max(longest, la + lb + static_cast<std::size_t>(specials));
  }
  const std::size_t T =
      options.pad_to_longest ? longest : static_cast<std::size_t>(options.max_length);
  out.seq = static_cast<Index>(T);
  out.tokens.assign(count * T, ByteVocab::kPad);
  out.segments.assign(count * T, 0);
  out.mask.assign(count * T, 0);
  for (std::size_t i = 0; i < count; ++i) {
    const GlueExample& e = data.examples[first + i];
    int* tok = out.tokens.data() + i * T;
    int* seg = out.segments.data() + i * T;
    std::size_t n = 0;
    tok[n++] = ByteVocab::kCls;
    for (std::size_t k = 0; k < kept[i].first; ++k) {
      tok[n++] = static_cast<unsigned char>(e.text_a[k]);
    }
    tok[n++] = ByteVocab::kSep;
    if (pair) {
      const std::size_t start = n;
      for (std::size_t k = 0; k < kept[i].second; ++k) {
        tok[n++] = static_cast<unsigned char>(e.text_b[k]);
      }
      tok[n++] = ByteVocab::kSep;
      std::fill(seg + start, seg + n, 1);
    }
    std::fill(out.mask.begin() + static_cast<std::ptrdiff_t>(i * T),
              out.mask.begin() + static_cast<std::ptrdiff_t>(i * T + n), 1);
    out.lengths.push_back(static_cast<int>(n));
    out.labels.push_back(e.label);
    out.scores.push_back(e.score);
  }
  return out;
}

}  // namespace sora::io
