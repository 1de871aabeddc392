#pragma once
// sora-finetune's own data files: --train-file, --val-file and --test-file, each a TSV file
// (a header row names the columns, one example a line, fields separated by tabs) or a JSON
// Lines file (one object per line), told apart by the extension (.tsv, .jsonl). The columns
// are named by --text-column, --text-pair-column (optional: a pair task when the column is
// there) and --label-column. Labels that are all non-negative integers are classes 0..K-1;
// other numbers make a regression task; anything else is a class name (classes in sorted
// order of the names of all three files).

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "data.hpp"
#include "sora/core/error.hpp"
#include "sora/io/atomic_dir.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/glue_tsv.hpp"
#include "sora/io/input_file.hpp"

namespace sora_finetune {

struct DataColumns {
  std::string text = "text";
  std::string text_pair = "text_pair";
  std::string label = "label";
};

// One example as the file has it; the label still a string.
struct RawExample {
  std::string text, text_pair, label;
  bool has_pair = false;
  std::size_t line = 0;
};

namespace data_files_detail {

inline std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> cells;
  std::size_t start = 0;
  while (true) {
    const std::size_t tab = line.find('\t', start);
    cells.push_back(line.substr(start, tab == std::string_view::npos ? tab : tab - start));
    if (tab == std::string_view::npos) return cells;
    start = tab + 1;
  }
}

// The lines of `text` (a final line without '\n' included; "\r\n" endings accepted).
template <class F>
void for_each_line(const std::string& text, F&& f) {
  std::size_t start = 0, number = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    f(line, ++number);
    start = end + 1;
  }
}

inline std::vector<RawExample> read_tsv(const std::string& where, const std::string& text,
                                        const DataColumns& c) {
  std::vector<RawExample> out;
  int text_col = -1, pair_col = -1, label_col = -1;
  std::size_t columns = 0;
  for_each_line(text, [&](std::string_view line, std::size_t number) {
    const auto cells = split_tabs(line);
    if (number == 1) {
      columns = cells.size();
      for (std::size_t i = 0; i < cells.size(); ++i) {
        if (cells[i] == c.text) text_col = static_cast<int>(i);
        if (cells[i] == c.text_pair) pair_col = static_cast<int>(i);
        if (cells[i] == c.label) label_col = static_cast<int>(i);
      }
      std::string missing;
      if (text_col < 0) missing += " --text-column '" + c.text + "'";
      if (label_col < 0) missing += " --label-column '" + c.label + "'";
      SORA_CHECK(missing.empty(), where, ": the header row (line 1) has no column", missing,
                 " (columns: ", std::string(line), ")");
      return;
    }
    if (line.empty()) return;  // a blank line (e.g. at the end) is no example
    SORA_CHECK(cells.size() == columns, where, ": line ", number, " has ", cells.size(),
               " tab-separated fields, the header ", columns);
    RawExample e;
    e.text = std::string(cells[static_cast<std::size_t>(text_col)]);
    e.label = std::string(cells[static_cast<std::size_t>(label_col)]);
    e.has_pair = pair_col >= 0;
    if (e.has_pair) e.text_pair = std::string(cells[static_cast<std::size_t>(pair_col)]);
    e.line = number;
    out.push_back(std::move(e));
  });
  SORA_CHECK(columns > 0, where, ": the file is empty (a TSV file needs a header row)");
  return out;
}

inline std::vector<RawExample> read_jsonl(const std::string& where, const std::string& text,
                                          const DataColumns& c) {
  using json = nlohmann::json;
  std::vector<RawExample> out;
  for_each_line(text, [&](std::string_view line, std::size_t number) {
    if (line.find_first_not_of(" \t") == std::string_view::npos) return;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      sora::detail::throw_error(where, ": line ", number, " is not JSON: ", e.what());
    }
    SORA_CHECK(j.is_object(), where, ": line ", number, " is not a JSON object");
    auto field = [&](const std::string& name, bool required, std::string& into) {
      const auto it = j.find(name);
      if (it == j.end() || it->is_null()) {
        SORA_CHECK(!required, where, ": line ", number, " has no \"", name, "\"");
        return false;
      }
      if (it->is_string()) {
        into = it->get<std::string>();
      } else if (it->is_number() || it->is_boolean()) {
        into = it->is_boolean() ? (it->get<bool>() ? "1" : "0") : it->dump();
      } else {
        sora::detail::throw_error(where, ": line ", number, ": \"", name,
                                  "\" must be a string or a number");
      }
      return true;
    };
    RawExample e;
    field(c.text, true, e.text);
    field(c.label, true, e.label);
    e.has_pair = field(c.text_pair, false, e.text_pair);
    e.line = number;
    out.push_back(std::move(e));
  });
  return out;
}

inline std::optional<long> as_class_index(const std::string& s) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), ::isdigit)) return std::nullopt;
  return std::stol(s);
}

inline std::optional<double> as_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace data_files_detail

// Reads one data file (by its extension: .tsv or .jsonl); `flag` names it in errors.
inline std::vector<RawExample> read_data_file(const std::filesystem::path& path,
                                              const DataColumns& columns, const std::string& flag) {
  const std::string where = flag + " " + path.string();
  std::string text;
  try {
    text = sora::io::read_input_file(path);
  } catch (const sora::Error& e) {
    sora::detail::throw_error(flag, ": ", e.what());
  }
  const std::string ext = path.extension().string();
  std::vector<RawExample> rows;
  if (ext == ".tsv") {
    rows = data_files_detail::read_tsv(where, text, columns);
  } else if (ext == ".jsonl") {
    rows = data_files_detail::read_jsonl(where, text, columns);
  } else {
    sora::detail::throw_error(where, ": unknown format '", ext,
                              "' (expected a .tsv or a .jsonl file)");
  }
  SORA_CHECK(!rows.empty(), where, ": no examples");
  for (const RawExample& r : rows)
    SORA_CHECK(r.has_pair == rows.front().has_pair, where, ": line ", r.line,
               r.has_pair ? " has" : " lacks", " a \"", columns.text_pair, "\" field, line ",
               rows.front().line, r.has_pair ? " lacks one" : " has one");
  return rows;
}

// The task of --train-file / --val-file [/ --test-file], encoded for sora's own model at the
// byte level (as the GLUE tasks are; --model re-encodes the texts with its tokenizer).
// `max_train` / `max_val` cap the splits (0: all).
inline TaskData file_task(const std::filesystem::path& train_file,
                          const std::filesystem::path& val_file,
                          const std::filesystem::path& test_file, const DataColumns& columns,
                          int max_len, std::size_t max_train, std::size_t max_val) {
  namespace dd = data_files_detail;
  std::vector<RawExample> train = read_data_file(train_file, columns, "--train-file");
  std::vector<RawExample> val = read_data_file(val_file, columns, "--val-file");
  std::vector<RawExample> test;
  if (!test_file.empty()) test = read_data_file(test_file, columns, "--test-file");
  if (max_train > 0 && train.size() > max_train) train.resize(max_train);
  if (max_val > 0 && val.size() > max_val) val.resize(max_val);
  const bool pair = train.front().has_pair;
  for (const auto* split : {&val, &test})
    SORA_CHECK(split->empty() || split->front().has_pair == pair, "the data files disagree on \"",
               columns.text_pair, "\": --train-file ", pair ? "has" : "lacks", " it, another file ",
               pair ? "lacks" : "has", " it");

  // The labels decide the kind of task.
  bool classes = true, numbers = true;
  std::set<std::string> names;
  long largest = -1;
  for (const auto* split : {&train, &val, &test}) {
    for (const RawExample& r : *split) {
      const auto k = dd::as_class_index(r.label);
      classes = classes && k.has_value();
      if (k) largest = std::max(largest, *k);
      numbers = numbers && dd::as_number(r.label).has_value();
      names.insert(r.label);
    }
  }
  TaskData data;
  data.name = train_file.stem().string();
  data.source = std::filesystem::absolute(train_file).string();
  data.regression = !classes && numbers;
  const std::vector<std::string> class_names(names.begin(), names.end());
  if (!classes && !numbers) {
    data.source += " (classes:";
    for (std::size_t k = 0; k < class_names.size(); ++k)
      data.source += sora::detail::concat(k == 0 ? " " : ", ", k, " = ", class_names[k]);
    data.source += ")";
  }
  if (data.regression) {
    data.num_labels = 1;
    data.metric = Metric::pearson;
  } else {
    data.num_labels = classes ? static_cast<int>(largest + 1) : static_cast<int>(names.size());
    data.metric = Metric::accuracy;
    SORA_CHECK(data.num_labels >= 2, "--label-column '", columns.label,
               "': the data files hold a single class (", *names.begin(),
               "); a classifier needs two");
    SORA_CHECK(data.num_labels <= 1000, "--label-column '", columns.label, "': ", data.num_labels,
               " classes; at most 1000");
  }
  data.vocab_size = sora::io::ByteVocab::kSize;
  data.pad_token = sora::io::ByteVocab::kPad;
  auto encode = [&](const std::vector<RawExample>& rows) {
    sora::io::GlueDataset d;
    d.layout.text_a = 0;
    d.layout.text_b = pair ? 1 : sora::io::GlueLayout::kNone;
    for (const RawExample& r : rows) {
      sora::io::GlueExample e;
      e.text_a = r.text;
      e.text_b = r.text_pair;
      e.line = r.line;
      if (data.regression) {
        e.score = *dd::as_number(r.label);
      } else if (classes) {
        e.label = static_cast<int>(*dd::as_class_index(r.label));
      } else {
        e.label =
            static_cast<int>(std::lower_bound(class_names.begin(), class_names.end(), r.label) -
                             class_names.begin());
      }
      d.examples.push_back(std::move(e));
    }
    return glue_examples(d, max_len);
  };
  data.train = encode(train);
  data.val = encode(val);
  data.test = encode(test);
  return data;
}

// --export-task DIR: an embedded classification task's splits as a GLUE task folder, SST-2's
// layout for single sentences and RTE's for pairs (label 1, the same sentiment, is
// "entailment"), so that --glue-dir (and any GLUE tooling) reads the same examples: train.tsv,
// dev.tsv, and test.tsv with its labels (GLUE's own test files have none; --glue-dir ignores
// it). The folder is written whole or not at all.
inline void write_glue_task(const TaskData& data, const std::filesystem::path& dir) {
  SORA_CHECK(!data.regression, "--export-task: the regression task '", data.name,
             "' has no GLUE layout here (STS-B's ten columns); export polarity or pair");
  const bool pair = !data.train.empty() && !data.train.front().text_b.empty();
  auto clean = [](const std::string& text) {
    std::string out = text;
    std::replace(out.begin(), out.end(), '\t', ' ');
    std::replace(out.begin(), out.end(), '\n', ' ');
    return out;
  };
  auto tsv = [&](const std::vector<Example>& examples) {
    std::string text = pair ? "index\tsentence1\tsentence2\tlabel\n" : "sentence\tlabel\n";
    for (std::size_t i = 0; i < examples.size(); ++i) {
      const Example& e = examples[i];
      if (pair) {
        text += sora::detail::concat(i, '\t', clean(e.text_a), '\t', clean(e.text_b), '\t',
                                     e.label == 1 ? "entailment" : "not_entailment", '\n');
      } else {
        text += sora::detail::concat(clean(e.text_a), '\t', e.label, '\n');
      }
    }
    return text;
  };
  sora::io::AtomicDirWriter out(dir);
  sora::io::write_file_atomic(out.path() / "train.tsv", tsv(data.train));
  sora::io::write_file_atomic(out.path() / "dev.tsv", tsv(data.val));
  sora::io::write_file_atomic(out.path() / "test.tsv", tsv(data.test));
  out.commit();
}

}  // namespace sora_finetune
