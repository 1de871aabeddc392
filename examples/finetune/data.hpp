#pragma once
// sora-finetune's data: the downstream task (examples with a label or a value) and the
// pretraining corpus (a token stream), from the embedded synthetic language or from files
// (GLUE TSV folders, any text), and the batches the model consumes.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/rng.hpp"
#include "sora/io/glue_tsv.hpp"
#include "sora/io/input_file.hpp"
#include "sora/model/config.hpp"
#include "sora/train/metrics.hpp"
#include "synthetic.hpp"

namespace sora_finetune {

using sora::Index;

struct Example {
  std::vector<int> tokens;  // the whole input, special tokens included
  std::vector<int> types;   // segment ids of `tokens` (BERT's token types); empty: none
  int label = -1;           // class (classification)
  double value = 0.0;       // target (regression)
  // The input as text (and its second sentence for pair tasks): what a pre-trained model's own
  // tokenizer encodes under --model.
  std::string text_a, text_b;
};

enum class Metric { accuracy, f1, matthews, pearson };

inline const char* metric_name(Metric m) {
  switch (m) {
    case Metric::accuracy:
      return "accuracy";
    case Metric::f1:
      return "f1";
    case Metric::matthews:
      return "matthews_corr";
    case Metric::pearson:
      return "pearson";
  }
  return "?";
}

struct TaskData {
  std::string name;         // polarity, pair, score, or the GLUE task's name
  std::string source;       // "synthetic (seed 7)" or the GLUE folder
  bool regression = false;  // one output, mean squared error
  int num_labels = 2;       // classes (1 for regression)
  Metric metric = Metric::accuracy;
  int vocab_size = 0;
  int pad_token = 0;
  bool token_types = false;  // batches carry the examples' segment ids (the BERT family)
  std::vector<Example> train, val, test;
  // Where the reported metric comes from: a held-out test split when there is one (the
  // synthetic tasks), else the validation split (GLUE's labelled dev set, as is usual).
  bool has_test() const { return !test.empty(); }
  Index longest() const {
    std::size_t n = 0;
    for (const auto* split : {&train, &val, &test})
      for (const Example& e : *split) n = std::max(n, e.tokens.size());
    return static_cast<Index>(n);
  }
};

struct Corpus {
  std::vector<int> tokens;
  int vocab_size = 0;
  std::string description;  // what the pretraining cache key is made of
};

// ---- the embedded default ------------------------------------------------------------------

inline const char* kSyntheticTasks = "polarity, pair or score";

inline bool is_synthetic_task(const std::string& name) {
  return name == "polarity" || name == "pair" || name == "score";
}

inline TaskData synthetic_task(const std::string& name, std::uint64_t seed, std::size_t train,
                               std::size_t val, std::size_t test) {
  SORA_CHECK(is_synthetic_task(name), "unknown synthetic task '", name, "' (expected ",
             kSyntheticTasks, ")");
  const Lexicon lex;
  TaskData data;
  data.name = name;
  data.source = sora::detail::concat("synthetic language (data seed ", seed, ")");
  data.vocab_size = lex.size();
  data.pad_token = Lexicon::kPad;
  data.regression = name == "score";
  data.num_labels = data.regression ? 1 : 2;
  data.metric = data.regression ? Metric::pearson : Metric::accuracy;
  // A stream of its own per task and split, so that changing one split's size never changes
  // another split's examples.
  auto make = [&](std::size_t count, std::uint64_t stream) {
    sora::Rng rng(seed, 100 + stream);
    std::vector<Example> out(count);
    for (Example& e : out) {
      e.tokens.push_back(Lexicon::kBos);
      if (name == "pair") {
        const auto a = lex.signed_sentence(rng);
        const auto b = lex.signed_sentence(rng);
        e.tokens.insert(e.tokens.end(), a.tokens.begin(), a.tokens.end());
        e.tokens.push_back(Lexicon::kSep);
        e.tokens.insert(e.tokens.end(), b.tokens.begin(), b.tokens.end());
        e.label = (a.sentiment > 0) == (b.sentiment > 0) ? 1 : 0;
        e.text_a = lex.text(a.tokens);
        e.text_b = lex.text(b.tokens);
      } else if (name == "polarity") {
        const auto s = lex.signed_sentence(rng);
        e.tokens.insert(e.tokens.end(), s.tokens.begin(), s.tokens.end());
        e.label = s.sentiment > 0 ? 1 : 0;
        e.text_a = lex.text(s.tokens);
      } else {
        const auto s = lex.sentence(rng);
        e.tokens.insert(e.tokens.end(), s.tokens.begin(), s.tokens.end());
        e.value = std::clamp(s.sentiment, -4, 4) / 4.0;
        e.text_a = lex.text(s.tokens);
      }
    }
    return out;
  };
  const std::uint64_t task_id = name == "polarity" ? 0 : name == "pair" ? 10 : 20;
  data.train = make(train, task_id + 1);
  data.val = make(val, task_id + 2);
  data.test = make(test, task_id + 3);
  return data;
}

inline Corpus synthetic_corpus_for(std::uint64_t seed, std::size_t tokens) {
  const Lexicon lex;
  Corpus c;
  c.tokens = synthetic_corpus(lex, seed, tokens);
  c.vocab_size = lex.size();
  c.description = sora::detail::concat("synthetic corpus v2, seed ", seed, ", ", tokens, " tokens");
  return c;
}

// ---- real data -------------------------------------------------------------------------------

inline std::vector<Example> glue_examples(const sora::io::GlueDataset& data, int max_len) {
  std::vector<Example> out;
  out.reserve(data.size());
  sora::io::EncodeOptions options;
  options.max_length = max_len;
  options.pad_to_longest = true;  // one example at a time: its own length
  for (std::size_t i = 0; i < data.size(); ++i) {
    const sora::io::EncodedBatch b = sora::io::encode_glue(data, i, 1, options);
    Example e;
    e.tokens.assign(b.tokens.begin(), b.tokens.begin() + b.lengths[0]);
    e.label = b.labels[0];
    e.value = b.scores[0];
    e.text_a = data.examples[i].text_a;
    e.text_b = data.examples[i].text_b;
    out.push_back(std::move(e));
  }
  return out;
}

inline Metric glue_metric(sora::io::GlueTask task) {
  using sora::io::GlueTask;
  switch (task) {
    case GlueTask::CoLA:
      return Metric::matthews;
    case GlueTask::MRPC:
    case GlueTask::QQP:
      return Metric::f1;
    case GlueTask::STSB:
      return Metric::pearson;
    default:
      return Metric::accuracy;
  }
}

// train.tsv and the labelled dev file of a GLUE task folder; at most `max_train` training
// examples (0: all), taken from the start of the file.
inline TaskData glue_task(const std::filesystem::path& dir, sora::io::GlueTask task, int max_len,
                          std::size_t max_train, std::size_t max_val) {
  using sora::io::ByteVocab;
  const sora::io::GlueLayout layout = sora::io::glue_layout(task);
  sora::io::GlueDataset train = sora::io::read_glue_tsv(dir / "train.tsv", task);
  const std::filesystem::path dev =
      dir / (task == sora::io::GlueTask::MNLI ? "dev_matched.tsv" : "dev.tsv");
  sora::io::GlueDataset val = sora::io::read_glue_tsv(dev, task);
  if (max_train > 0 && train.examples.size() > max_train) train.examples.resize(max_train);
  if (max_val > 0 && val.examples.size() > max_val) val.examples.resize(max_val);
  SORA_CHECK(!train.examples.empty() && !val.examples.empty(), dir.string(),
             ": the task needs training and validation examples");
  TaskData data;
  data.name = std::string(layout.name);
  data.source = dir.string();
  data.regression = layout.regression;
  data.num_labels = layout.regression ? 1 : layout.num_classes;
  data.metric = glue_metric(task);
  data.vocab_size = ByteVocab::kSize;
  data.pad_token = ByteVocab::kPad;
  data.train = glue_examples(train, max_len);
  data.val = glue_examples(val, max_len);
  return data;
}

// The raw bytes of text files as one token stream (files separated by a newline).
inline Corpus text_corpus(const std::vector<std::string>& files) {
  Corpus c;
  c.vocab_size = sora::io::ByteVocab::kSize;
  c.description = "byte-level text:";
  for (const std::string& f : files) {
    std::string text;
    try {
      text = sora::io::read_input_file(f);  // a regular file only: a FIFO would hang
    } catch (const sora::Error& e) {
      sora::detail::throw_error("--pretrain-text: ", e.what());
    }
    const std::vector<int> t = sora::io::byte_tokens(text);
    c.tokens.insert(c.tokens.end(), t.begin(), t.end());
    c.tokens.push_back('\n');
    std::error_code ec;
    const auto size = std::filesystem::file_size(f, ec);
    c.description += sora::detail::concat(" ", std::filesystem::absolute(f).string(), " (",
                                          ec ? 0 : size, " bytes)");
  }
  return c;
}

// A GLUE task's own training sentences as the pretraining text, when no corpus is given.
inline Corpus task_text_corpus(const TaskData& data) {
  Corpus c;
  c.vocab_size = data.vocab_size;
  c.description = "byte-level text of " + data.source + " train split";
  for (const Example& e : data.train) {
    for (int t : e.tokens)
      if (t < 256) c.tokens.push_back(t);
    c.tokens.push_back('\n');
  }
  return c;
}

// ---- batches ---------------------------------------------------------------------------------

// Examples order[first, first + count) padded on the right to the longest of them.
inline void fill_batch(sora::model::Batch& batch, const TaskData& data,
                       const std::vector<Example>& examples, std::span<const std::size_t> order) {
  const std::size_t B = order.size();
  std::size_t T = 1;
  for (std::size_t i : order) T = std::max(T, examples[i].tokens.size());
  batch.batch = static_cast<Index>(B);
  batch.seq = static_cast<Index>(T);
  batch.tokens.assign(B * T, data.pad_token);
  batch.mask.assign(B * T, 0.0f);
  batch.labels.assign(B, -1);
  batch.values.assign(data.regression ? B : 0, 0.0);
  batch.token_types.assign(data.token_types ? B * T : 0, 0);
  for (std::size_t b = 0; b < B; ++b) {
    const Example& e = examples[order[b]];
    std::copy(e.tokens.begin(), e.tokens.end(), batch.tokens.begin() + b * T);
    std::fill(batch.mask.begin() + b * T, batch.mask.begin() + b * T + e.tokens.size(), 1.0f);
    if (data.token_types)
      std::copy(e.types.begin(), e.types.end(), batch.token_types.begin() + b * T);
    batch.labels[b] = e.label;
    if (data.regression) batch.values[b] = e.value;
  }
}

// The training batches of one run: a fresh permutation of the training set every epoch.
class BatchStream {
 public:
  BatchStream(const TaskData& data, int batch_size, std::uint64_t seed)
      : data_(data), batch_size_(static_cast<std::size_t>(batch_size)), rng_(seed, 31) {
    order_.resize(data.train.size());
    std::iota(order_.begin(), order_.end(), std::size_t{0});
  }
  std::size_t steps_per_epoch() const { return (order_.size() + batch_size_ - 1) / batch_size_; }
  // Where the stream stands between two batches: enough to go on exactly (checkpoints).
  struct State {
    sora::Rng::State rng;
    std::vector<std::size_t> order;  // the current epoch's permutation of the training set
    std::size_t pos = 0;             // its next example
  };
  State state() const { return State{rng_.state(), order_, pos_}; }
  void restore(const State& state) {
    std::vector<std::size_t> sorted = state.order;
    std::sort(sorted.begin(), sorted.end());
    bool permutation = sorted.size() == order_.size();
    for (std::size_t i = 0; permutation && i < sorted.size(); ++i) permutation = sorted[i] == i;
    SORA_CHECK(permutation && state.pos < order_.size(),
               "the batch stream's saved order is not a permutation of the ", order_.size(),
               " training examples (another data set?)");
    rng_.set_state(state.rng);
    order_ = state.order;
    pos_ = state.pos;
  }
  const sora::model::Batch& next() {
    if (pos_ == 0) shuffle();
    const std::size_t count = std::min(batch_size_, order_.size() - pos_);
    fill_batch(batch_, data_, data_.train,
               std::span<const std::size_t>(order_).subspan(pos_, count));
    pos_ += count;
    if (pos_ >= order_.size()) pos_ = 0;
    return batch_;
  }

 private:
  void shuffle() {
    for (std::size_t i = order_.size(); i > 1; --i)
      std::swap(order_[i - 1], order_[static_cast<std::size_t>(rng_.below(i))]);
  }
  const TaskData& data_;
  std::size_t batch_size_;
  sora::Rng rng_;
  std::vector<std::size_t> order_;
  std::size_t pos_ = 0;
  sora::model::Batch batch_;
};

// A batch of B language-modelling windows of T + 1 tokens from random offsets of the corpus.
inline void fill_lm_batch(sora::model::Batch& batch, const Corpus& corpus, Index B, Index T,
                          sora::Rng& rng) {
  const std::size_t span = static_cast<std::size_t>(T) + 1;
  SORA_CHECK(corpus.tokens.size() > span, "the pretraining corpus has ", corpus.tokens.size(),
             " tokens, fewer than one window of ", span);
  batch.batch = B;
  batch.seq = T;
  batch.tokens.resize(static_cast<std::size_t>(B * T));
  batch.mask.clear();
  batch.labels.resize(static_cast<std::size_t>(B * T));
  batch.values.clear();
  for (Index b = 0; b < B; ++b) {
    const std::size_t start = static_cast<std::size_t>(rng.below(corpus.tokens.size() - span));
    for (Index t = 0; t < T; ++t) {
      const auto i = static_cast<std::size_t>(b * T + t);
      batch.tokens[i] = corpus.tokens[start + static_cast<std::size_t>(t)];
      batch.labels[i] = corpus.tokens[start + static_cast<std::size_t>(t) + 1];
    }
  }
}

// The task's metric from predictions (classes) or predicted values (regression).
inline double task_metric(const TaskData& data, const std::vector<int>& pred,
                          const std::vector<double>& values, const std::vector<Example>& examples) {
  namespace tr = sora::train;
  if (data.metric == Metric::pearson) {
    std::vector<double> target;
    for (const Example& e : examples) target.push_back(e.value);
    return tr::pearson(values, target);
  }
  std::vector<int> label;
  for (const Example& e : examples) label.push_back(e.label);
  switch (data.metric) {
    case Metric::f1:
      return tr::f1_score(pred, label);
    case Metric::matthews:
      return tr::matthews_corrcoef(pred, label);
    default:
      return tr::accuracy(pred, label);
  }
}

}  // namespace sora_finetune
