#pragma once
// sora-finetune's logic: pretraining (cached), one fine-tuning run per method and seed, the
// comparison table, the sparsity scheduler and the output folder. main.cpp only parses the
// command line and calls run(); tests call the same functions.
//
// Output folder:
//   metrics.csv              one row per evaluation of every run
//   summary.json             the setup, each run, each method's aggregate, the sparsity walk
//   curves.svg, loss.svg     validation metric and training loss against the step (first seed)
//   ranks_<method>.svg       final rank of every adapted module, layers x module kind
//   adapter_<method>/        the pruned adapter of the first seed in PEFT format
//   logits_adapter_<method>.json   --model only: a few validation inputs and the fine-tuned
//                            logits, for checking the adapter in transformers + PEFT
//   sparsity.csv, .svg       Algorithm 1, with --sparsity-schedule
//   cache/pretrained-*.safetensors   the pretrained model, reused by later runs
//   INCOMPLETE               present while the run writes (or after it died); gone once
//                            summary.json, written last, is complete
//   .sora-finetune.lock      flock'ed by the run (also in the cache folder): one run at a time
// Every run has an id (summary.json "run_id", the adapters' and the cache's "sora.run_id").
// An adapter folder is replaced whole (io::AtomicDirWriter); an adapter pruned to nothing is
// not written, and the summary says why. A run that diverges (a NaN or infinite loss) stops
// with an error naming the flag and writes nothing more.

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "data.hpp"
#include "data_files.hpp"
#include "device.hpp"
#include "distributed.hpp"
#include "options.hpp"
#include "pretrained.hpp"
#include "run_guard.hpp"
#include "run_result.hpp"
#include "sora/core/threading.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/named_tensors.hpp"
#include "sora/io/peft_adapter.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/io/svg_plot.hpp"
#include "sora/model/transformer.hpp"
#include "sora/optim/adalora.hpp"
#include "sora/optim/lr_schedule.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/optim/xi_schedule.hpp"
#include "sora/prune/prune.hpp"
#include "sora/train/progress.hpp"
#include "sora/train/sparsity_scheduler.hpp"
#include "sora/train/trainer.hpp"

namespace sora_finetune {

// ---- setup -----------------------------------------------------------------------------------

struct Setup {
  Options opt;
  TaskData task;
  Corpus corpus;
  sora::model::TransformerConfig lm_config;    // pretraining
  sora::model::TransformerConfig task_config;  // fine-tuning: the same body, a sequence head
  fs::path out, cache_dir;
  std::optional<PretrainedInfo> hf;      // --model: the pre-trained folder, and no pretraining
  std::string run_id;                    // written into every file of the run (run_guard.hpp)
  IncompleteMarker* marker = nullptr;    // told before every output write (none in some tests)
  Checkpointing* checkpoints = nullptr;  // CPU runs of run(): --save-every, --resume, SIGINT
  std::ostream* log = &std::cout;
  void before_output() const {
    if (marker != nullptr) marker->before_first_write();
  }
};

inline bool on_gpu(const Options& o) {
  return o.device == "cuda";
}

inline std::vector<std::string> split_commas(const std::string& text) {
  return split_target_list(text);
}

inline Setup make_setup(const Options& o, std::ostream& log) {
  Setup s;
  s.opt = o;
  s.log = &log;
  s.out = o.out;
  s.cache_dir = o.cache_dir.empty() ? s.out / "cache" : fs::path(o.cache_dir);
  const int max_len = o.max_len > 0 ? o.max_len : (o.synthetic() ? 32 : 128);
  if (o.synthetic()) {
    s.task =
        synthetic_task(o.task, o.data_seed, static_cast<std::size_t>(o.train_size),
                       static_cast<std::size_t>(o.val_size), static_cast<std::size_t>(o.test_size));
    s.corpus = synthetic_corpus_for(o.data_seed, static_cast<std::size_t>(o.corpus_tokens));
  } else if (o.files()) {
    DataColumns columns;
    columns.text = o.text_column;
    columns.text_pair = o.text_pair_column;
    columns.label = o.label_column;
    s.task =
        file_task(o.train_file, o.val_file, o.test_file, columns, max_len,
                  static_cast<std::size_t>(o.train_size), static_cast<std::size_t>(o.val_size));
    s.corpus = o.pretrain_text.empty() ? task_text_corpus(s.task) : text_corpus(o.pretrain_text);
  } else {
    s.task =
        glue_task(o.glue_dir, *sora::io::parse_glue_task(o.task), max_len,
                  static_cast<std::size_t>(o.train_size), static_cast<std::size_t>(o.val_size));
    s.corpus = o.pretrain_text.empty() ? task_text_corpus(s.task) : text_corpus(o.pretrain_text);
  }
  if (o.pretrained()) {
    // The folder's tokenizer replaces sora's vocabulary; nothing is pretrained.
    s.hf = tokenize_for_model(s.task, o.model_dir, o.max_len > 0 ? o.max_len : 128);
    s.corpus = Corpus{};
  }
  sora::model::TransformerConfig c;
  c.vocab_size = s.task.vocab_size;
  c.width = o.width;
  c.heads = o.heads;
  c.layers = o.layers;
  c.max_len = std::max<Index>(max_len, s.task.longest());
  c.causal = true;  // GPT-style: pretrained by next-token prediction, pools the last token
  c.dropout = o.dropout;
  c.tied_lm_head = true;
  c.head = sora::model::Head::lm;
  c.seed = o.seed;
  s.lm_config = c;
  c.head = s.task.regression ? sora::model::Head::regression : sora::model::Head::classification;
  c.num_labels = s.task.num_labels;
  s.task_config = c;
  return s;
}

// ---- pretraining and its cache ---------------------------------------------------------------

inline std::string pretrain_key(const Setup& s) {
  const auto& c = s.lm_config;
  const Options& o = s.opt;
  return sora::detail::concat("sora-finetune pretrain v1; corpus: ", s.corpus.description,
                              "; vocab ", c.vocab_size, " width ", c.width, " heads ", c.heads,
                              " layers ", c.layers, " max_len ", c.max_len, " dropout ", c.dropout,
                              " seed ", c.seed, "; steps ", o.pretrain_steps, " batch ",
                              o.pretrain_batch, " lr ", o.pretrain_lr,
                              // GPU arithmetic differs in its last bits (and more with tf32 or
                              // bf16): a GPU-pretrained model is cached apart from a CPU one.
                              on_gpu(o) ? "; device cuda, math " + o.cuda_math : "");
}

inline std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

// How often the pretrained language model, given "<s> <sentence>" (a task input), puts most of
// its verdict probability on verdicts of the right sign (great / awful / fine): whether pretraining
// learned the sentiment the downstream tasks ask about. Synthetic corpus only.
inline double verdict_accuracy(Model& lm, std::uint64_t seed, int count = 400) {
  const Lexicon lex;
  sora::Rng rng(seed, 41);
  int hits = 0;
  lm.eval();
  for (int i = 0; i < count; ++i) {
    const Lexicon::Sentence sentence = lex.sentence(rng);
    sora::model::Batch b;
    b.tokens.push_back(Lexicon::kBos);
    b.tokens.insert(b.tokens.end(), sentence.tokens.begin(), sentence.tokens.end());
    b.batch = 1;
    b.seq = static_cast<Index>(b.tokens.size());
    const auto& logits = lm.forward_logits(b);
    // Probability mass per sign (-1, 0, +1): three words share each of the signs +1 and -1.
    double mass[3] = {0.0, 0.0, 0.0};
    const double top = logits.row(b.seq - 1).maxCoeff();
    for (int v = 0; v < lex.size(); ++v)
      if (lex.is_verdict(v)) mass[lex.word(v).polarity + 1] += std::exp(logits(b.seq - 1, v) - top);
    const int best = static_cast<int>(std::max_element(mass, mass + 3) - mass) - 1;
    const int sign = (sentence.sentiment > 0) - (sentence.sentiment < 0);
    hits += best == sign;
  }
  lm.train();
  return static_cast<double>(hits) / count;
}

struct Pretrained {
  fs::path path;
  bool reused = false;
  double verdict_accuracy = std::nan("");  // synthetic corpus only
  double final_loss = std::nan("");        // mean loss of the last 10% of steps (when trained now)
  double seconds = 0.0;
};

inline sora::train::ProgressBar::Options progress_options(const Options& o) {
  sora::train::ProgressBar::Options p;
  p.force_plain = o.plain;
  if (!is_root_rank()) p.stream = null_file();  // under mpirun only rank 0 draws
  return p;
}

// A checksum of named float tensors (FNV-1a over each name and its row-major values, in name
// order), stored in the cache's metadata: a cache damaged after it was written (a bad disk, a
// partial copy) is retrained instead of silently fine-tuned from.
inline std::string tensor_checksum(
    std::vector<std::pair<std::string, std::vector<float>>> tensors) {
  std::sort(tensors.begin(), tensors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string bytes;
  for (const auto& [name, values] : tensors) {
    bytes += name;
    bytes += '\0';
    bytes.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(bytes)));
  return hex;
}

// Reads a cached pretraining's metadata: nullopt when it was made for other settings (another
// key); its verdict accuracy (NaN when absent) when it is for these. A file that cannot be
// parsed, or whose metadata is malformed, is a sora::Error naming the field.
inline std::optional<double> read_cached_pretraining(const fs::path& path, const std::string& key) {
  const auto file = sora::io::SafetensorsFile::open(path);
  const auto& meta = file.metadata();
  const auto it = meta.find("sora.pretrain_key");
  if (it == meta.end() || it->second != key) return std::nullopt;
  const auto sum = meta.find("sora.checksum");
  SORA_CHECK(sum != meta.end(), path.string(), ": metadata 'sora.checksum' is missing");
  std::vector<std::pair<std::string, std::vector<float>>> tensors;
  for (const sora::io::TensorInfo& t : file.tensors()) {
    std::size_t count = 1;
    for (const std::uint64_t d : t.shape) count *= static_cast<std::size_t>(d);
    std::vector<float> values(count);
    file.read<float>(t, std::span<float>(values));
    // An older sora-finetune cached diverged pretrainings: never fine-tune from one.
    SORA_CHECK(std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); }),
               path.string(), ": tensor '", t.name, "' holds a NaN or an infinity");
    tensors.emplace_back(t.name, std::move(values));
  }
  SORA_CHECK(tensor_checksum(std::move(tensors)) == sum->second, path.string(),
             ": the tensors do not match metadata 'sora.checksum' (the file is damaged)");
  double accuracy = std::nan("");
  const auto acc = meta.find("sora.verdict_accuracy");
  if (acc != meta.end()) {
    char* end = nullptr;
    accuracy = std::strtod(acc->second.c_str(), &end);
    SORA_CHECK(!acc->second.empty() && end == acc->second.c_str() + acc->second.size() &&
                   std::isfinite(accuracy),
               path.string(), ": metadata 'sora.verdict_accuracy' is not a number");
  }
  return accuracy;
}

// Trains the language model on the corpus, or reuses the cached one with the same key.
inline Pretrained pretrain(const Setup& s) {
  const std::string key = pretrain_key(s);
  char name[64];
  std::snprintf(name, sizeof name, "pretrained-%016llx.safetensors",
                static_cast<unsigned long long>(fnv1a(key)));
  Pretrained result;
  result.path = s.cache_dir / name;
  if (!s.opt.no_cache && fs::exists(result.path)) {
    // A cache that cannot be read or checked is a warning and a retraining, never a crash.
    try {
      if (const auto cached = read_cached_pretraining(result.path, key)) {
        result.reused = true;
        result.verdict_accuracy = *cached;
        *s.log << "pretrained model: reusing the cached " << result.path.string() << "\n";
        return result;
      }
    } catch (const sora::Error& e) {
      *s.log << "pretrained model: warning: ignoring the unusable cache (" << e.what()
             << "); training again\n";
    }
  }
  *s.log << "pretrained model: training (" << s.opt.pretrain_steps << " steps on "
         << s.corpus.tokens.size() << " corpus tokens), cache " << result.path.string() << "\n";
  const auto start = std::chrono::steady_clock::now();
  Model model(s.lm_config);
  model.apply_peft(sora::model::PeftConfig{sora::model::Method::full});
  sora::optim::FineTuneOptions fo;
  fo.lr = s.opt.pretrain_lr;
  fo.weight_decay = 0.01;
  sora::model::Batch batch;
  sora::Rng rng(s.opt.data_seed, 21);
  sora::train::TrainerOptions to;
  to.max_steps = s.opt.pretrain_steps;
  to.max_grad_norm = 1.0;
  to.schedule = sora::optim::LrSchedule::with_warmup_ratio(
      sora::optim::LrScheduleKind::warmup_cosine, s.opt.pretrain_lr, 0.05, s.opt.pretrain_steps);
  const Index T = std::min<Index>(s.lm_config.max_len, 32);
  sora::train::ProgressBar bar("pretrain", s.opt.pretrain_steps, progress_options(s.opt));
  to.on_step = [&](long step, double loss) {
    throw_if_stopped();
    char status[48];
    std::snprintf(status, sizeof status, "loss %.4f", loss);
    bar.update(step + 1, status);
  };
  const auto next = [&](long) -> const sora::model::Batch& {
    fill_lm_batch(batch, s.corpus, s.opt.pretrain_batch, T, rng);
    return batch;
  };
  sora::train::TrainResult r;
  try {
    if (on_gpu(s.opt)) {
      CudaRun run;
      run.method = sora::model::Method::full;
      run.finetune = fo;
      run.math = s.opt.cuda_math;
      run.trainer = to;
      run.next_batch = next;
      r = fit_on_cuda(model, run).result;
    } else {
      auto optimizer = sora::optim::FineTuneOptimizer<float>::for_model(model, fo);
      r = sora::train::fit(model, optimizer, next, {}, to);
    }
  } catch (const sora::train::NonFiniteError& e) {
    bar.finish();
    sora::detail::throw_error("pretraining diverged with --pretrain-lr ", s.opt.pretrain_lr, ": ",
                              e.what(), "; nothing was cached");
  }
  bar.finish();
  const std::size_t tail = std::max<std::size_t>(1, r.losses.size() / 10);
  result.final_loss =
      std::accumulate(r.losses.end() - static_cast<std::ptrdiff_t>(tail), r.losses.end(), 0.0) /
      static_cast<double>(tail);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto slots = sora::io::slots_of<float>([&](auto f) { model.visit_params(f); });
  std::vector<std::pair<std::string, std::vector<float>>> values;
  for (const auto& slot : slots)  // sora's matrices are row-major, as the file's tensors
    values.emplace_back(
        slot.name, std::vector<float>(slot.value->data(), slot.value->data() + slot.value->size()));
  std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"sora.pretrain_key", key},
      {"sora.run_id", s.run_id},
      {"sora.checksum", tensor_checksum(std::move(values))}};
  if (s.opt.synthetic()) {
    result.verdict_accuracy = verdict_accuracy(model, s.opt.data_seed);
    metadata["sora.verdict_accuracy"] = sora::detail::concat(result.verdict_accuracy);
  }
  fs::create_directories(s.cache_dir);
  sora::io::save_tensors<float>(result.path, slots, sora::io::Dtype::F32, metadata);
  *s.log << "pretrained model: final loss " << result.final_loss;
  if (s.opt.synthetic()) *s.log << ", verdict accuracy " << result.verdict_accuracy;
  *s.log << ", saved\n";
  return result;
}

// A task model with the pretrained body; its sequence head keeps its fresh initialisation.
inline void load_pretrained(Model& model, const fs::path& path) {
  std::vector<sora::io::TensorSlot<float>> slots;
  model.visit_params([&](sora::Param<float>& p) {
    if (!p.name.starts_with("head.")) slots.push_back(sora::io::slot(p));
  });
  sora::io::load_into(sora::io::SafetensorsFile::open(path), slots);
}

// ---- one fine-tuning run ---------------------------------------------------------------------

// The metric of `examples`, from the logits of whichever device runs the model.
inline double evaluate(const LogitsFn& logits_of, const TaskData& data,
                       const std::vector<Example>& examples) {
  std::vector<int> pred;
  std::vector<double> values;
  sora::model::Batch batch;
  constexpr std::size_t kEvalBatch = 128;
  std::vector<std::size_t> order(examples.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  for (std::size_t first = 0; first < examples.size(); first += kEvalBatch) {
    const std::size_t count = std::min(kEvalBatch, examples.size() - first);
    fill_batch(batch, data, examples, std::span<const std::size_t>(order).subspan(first, count));
    const sora::Matrix<float>& logits = logits_of(batch);
    for (Index i = 0; i < logits.rows(); ++i) {
      if (data.regression) {
        values.push_back(logits(i, 0));
      } else {
        Index best = 0;  // the first largest, as Transformer::predictions
        logits.row(i).maxCoeff(&best);
        pred.push_back(static_cast<int>(best));
      }
    }
  }
  return task_metric(data, pred, values, examples);
}

template <class M>
LogitsFn cpu_logits(M& model) {
  return [&model](const sora::model::Batch& batch) -> const sora::Matrix<float>& {
    return model.forward_logits(batch);
  };
}

template <class M>
double evaluate(M& model, const TaskData& data, const std::vector<Example>& examples) {
  return evaluate(cpu_logits(model), data, examples);
}

template <class M>
std::size_t train_state_bytes(M& model) {
  std::size_t bytes = 0;
  model.visit_params([&](sora::Param<float>& p) { bytes += p.grad_bytes(); });
  return bytes;
}

inline sora::model::PeftConfig peft_config(const Options& o, sora::model::Method method,
                                           std::uint64_t seed) {
  sora::model::PeftConfig p;
  p.method = method;
  p.rank = o.rank;
  p.alpha = o.alpha;
  p.target_modules = split_commas(o.targets);
  p.seed = seed * 7919 + 17;
  return p;
}

inline sora::optim::FineTuneOptions finetune_options(const Options& o, sora::model::Method m) {
  sora::optim::FineTuneOptions f;
  f.lr = m == sora::model::Method::full ? o.full_lr : o.lr;
  f.gate_lr = o.gate_lr;
  f.weight_decay = o.weight_decay;
  f.xi = m == sora::model::Method::sora ? o.xi : 0.0;
  f.scale_xi_by_lr = o.scale_xi_by_lr;
  return f;
}

// --grad-accum N: the model as fit sees it, where one forward() runs N batches (the one fit
// gives and N - 1 more from the stream), each followed by its backward pass (parameter
// gradients accumulate, +=, by the ops' contract), and backward() divides the summed gradients
// by N: the gradient of the mean of the N batches' mean losses, with one batch's activations in
// memory at a time. Evaluation uses the wrapped model directly.
template <class M>
class Accumulating {
 public:
  using Scalar = typename M::Scalar;
  using Batch = sora::model::Batch;
  Accumulating(M& model, int batches, BatchStream& stream)
      : model_(model), batches_(batches), stream_(stream) {}
  template <class F>
  void visit_params(F&& f) {
    model_.visit_params(f);
  }
  void train(bool on = true) { model_.train(on); }
  Scalar forward(const Batch& first) {
    double loss = static_cast<double>(model_.forward(first));
    model_.backward();
    for (int k = 1; k < batches_; ++k) {
      loss += static_cast<double>(model_.forward(stream_.next()));
      model_.backward();
    }
    return static_cast<Scalar>(loss / batches_);
  }
  void backward() {
    const Scalar scale = Scalar(1) / static_cast<Scalar>(batches_);
    model_.visit_params([&](sora::Param<Scalar>& p) {
      if (p.trainable()) p.gradient() *= scale;
    });
  }

 private:
  M& model_;
  int batches_;
  BatchStream& stream_;
};

// sora::train::fit on the CPU, through Accumulating when --grad-accum > 1.
template <class M, class Optimizer>
sora::train::TrainResult fit_cpu(M& model, Optimizer& optimizer, BatchStream& stream,
                                 const std::function<const sora::model::Batch&(long)>& next,
                                 const std::function<double()>& evaluate,
                                 const sora::train::TrainerOptions& to, int grad_accum,
                                 sora::train::FitState<float>& state) {
  if (grad_accum <= 1) return fit_in_world(model, optimizer, next, evaluate, to, &state);
  Accumulating<M> accumulating(model, grad_accum, stream);
  return fit_in_world(accumulating, optimizer, next, evaluate, to, &state);
}

inline std::string run_label(const std::string& method, std::uint64_t seed) {
  return method + " seed " + std::to_string(seed);
}

// The memory settings of a run, applied where every run starts (train_model, run_sparsity_on),
// whichever model and task built it: gradient checkpointing (the gradients of the plain
// backward, model/block_checkpoints.hpp: no result changes) and, for adapter runs, a frozen
// base stored in bf16 (model/frozen_base.hpp).
template <class M>
void apply_memory_options(const Options& o, M& model, sora::model::Method method) {
  model.set_grad_checkpoint(o.grad_checkpoint);
  if (o.frozen_base == "bf16" && method != sora::model::Method::full)
    sora::model::store_frozen_base(model, sora::Precision::bf16);
}

// Fine-tunes `model` (its method applied) with `method_name`; appends a metrics.csv line per
// evaluation to *csv; exports the pruned adapter to `adapter_dir` unless it is empty, with
// `export_options` (PEFT's task type, modules_to_save). Any model of the library's protocol:
// sora's own transformer or a Hugging Face one (only sora's own trains on the GPU).
template <class M>
RunResult train_model(const Setup& s, M& model, const std::string& method_name, std::uint64_t seed,
                      const fs::path& adapter_dir, std::string* csv,
                      sora::io::PeftExportOptions export_options) {
  const Options& o = s.opt;
  const sora::model::Method method = sora::model::parse_method(method_name);
  apply_memory_options(o, model, method);

  BatchStream stream(s.task, o.batch_size, seed);
  // An optimizer step takes --grad-accum batches.
  const long per_epoch =
      (static_cast<long>(stream.steps_per_epoch()) + o.grad_accum - 1) / o.grad_accum;
  const long steps = per_epoch * o.epochs;
  sora::train::TrainerOptions to;
  to.max_steps = steps;
  to.eval_every = o.eval_every > 0 ? o.eval_every : per_epoch;
  to.max_grad_norm = o.max_grad_norm;
  to.higher_is_better = true;
  to.restore_best = true;
  const double base_lr = method == sora::model::Method::full ? o.full_lr : o.lr;
  to.schedule = sora::optim::LrSchedule::with_warmup_ratio(
      sora::optim::parse_lr_schedule(o.lr_schedule), base_lr, o.warmup, steps);

  RunResult r;
  r.method = method_name;
  r.seed = seed;
  sora::train::ProgressBar bar(run_label(method_name, seed), steps, progress_options(o));
  double loss_sum = 0.0;
  long loss_count = 0, done = 0;
  // A CPU run stops for SIGINT / SIGTERM at the end of a step, after writing a checkpoint
  // (after_step below); a GPU run stops at once.
  Checkpointing* const checkpoints = on_gpu(o) ? nullptr : s.checkpoints;
  to.on_step = [&](long step, double loss) {
    loss_sum += loss;
    ++loss_count;
    done = step + 1;
    if (checkpoints == nullptr) throw_if_stopped();
    char status[48];
    std::snprintf(status, sizeof status, "loss %.4f", loss);
    bar.update(step + 1, status);
  };
  double eval_seconds = 0.0;
  // The validation metric from the logits of the device that trains; the CPU model is current
  // whenever this runs (the GPU run copies its parameters back first).
  auto evaluate_val = [&](const LogitsFn& logits) {
    const auto t0 = std::chrono::steady_clock::now();
    const double metric = evaluate(logits, s.task, s.task.val);
    const double mean_loss = loss_count > 0 ? loss_sum / static_cast<double>(loss_count) : 0.0;
    loss_sum = 0.0;
    loss_count = 0;
    r.eval_losses.push_back(mean_loss);
    const Index nonzero = sora::train::adapter_nonzero(model);
    if (csv != nullptr) {
      char line[256];
      std::snprintf(line, sizeof line, "%s,%llu,%ld,%.4f,%.6f,%.6f,%lld\n", method_name.c_str(),
                    static_cast<unsigned long long>(seed), done,
                    static_cast<double>(done) / static_cast<double>(per_epoch), mean_loss, metric,
                    static_cast<long long>(nonzero));
      *csv += line;
    }
    eval_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return metric;
  };
  auto next = [&](long) -> const sora::model::Batch& { return stream.next(); };

  const auto start = std::chrono::steady_clock::now();
  // --save-every / --resume / a stop signal: see checkpoint.hpp. Set up once the optimizer
  // exists: it is part of the checkpoint.
  sora::train::FitState<float> fit_state;
  double seconds_before = 0.0;  // training time before the checkpoint resumed from
  auto use_checkpoints = [&](auto& optimizer) {
    if (checkpoints == nullptr) return;
    const auto& resume = checkpoints->resume;
    if (resume && resume->current && resume->current->method == method_name &&
        resume->current->seed == seed) {
      const RunInProgress& p = *resume->current;
      stream.restore(p.stream);
      restore_checkpoint(checkpoints->resume_folder, p, model, optimizer, fit_state);
      to.start_step = p.step;
      done = p.step;
      loss_sum = p.loss_sum;
      loss_count = p.loss_count;
      r.eval_losses = p.eval_losses;
      seconds_before = p.train_seconds;
      bar.update(p.step, "resumed");
      *s.log << "  " << run_label(method_name, seed) << ": resumed at step " << p.step << " of "
             << steps << "\n";
    }
    to.after_step = [&, checkpoints](long steps_done) {
      const int sig = stop_signal().load();
      const bool due = checkpoints->save_every > 0 && steps_done % checkpoints->save_every == 0;
      if (sig == 0 && !due) return;
      RunInProgress p;
      p.method = method_name;
      p.seed = seed;
      p.step = steps_done;
      p.stream = stream.state();
      p.loss_sum = loss_sum;
      p.loss_count = loss_count;
      p.eval_losses = r.eval_losses;
      p.train_seconds =
          seconds_before - eval_seconds +
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      write_checkpoint(*checkpoints, p, model, optimizer, fit_state, to.schedule);
      if (sig != 0) {
        bar.finish();
        throw_stopped_with_checkpoint(
            sig, checkpoints->folder,
            sora::detail::concat(" at step ", steps_done, " of ", run_label(method_name, seed)));
      }
    };
  };
  sora::train::TrainResult tr;
  sora::optim::AdamWOptions adalora_adamw;
  adalora_adamw.lr = o.lr;
  adalora_adamw.weight_decay = o.weight_decay;
  sora::optim::AdaLoraOptions adalora;
  adalora.target_rank = o.adalora_target_rank;
  adalora.total_steps = steps;
  adalora.t_init = static_cast<long>(o.adalora_tinit * static_cast<double>(steps));
  adalora.t_final = static_cast<long>(o.adalora_tfinal * static_cast<double>(steps));
  adalora.delta_t = o.adalora_delta_t;
  adalora.orth_reg_weight = o.adalora_orth;
  std::optional<double> test_metric;  // measured on the GPU, before the copy back
  try {
    bool trained = false;  // on the GPU
    if constexpr (std::is_same_v<M, Model>) {
      if (on_gpu(o)) {
        CudaRun run;
        run.method = method;
        run.finetune = finetune_options(o, method);
        run.adalora_adamw = adalora_adamw;
        run.adalora = adalora;
        run.math = o.cuda_math;
        run.trainer = to;
        run.next_batch = next;
        run.evaluate = evaluate_val;
        if (s.task.has_test())
          run.after = [&](const LogitsFn& logits) {
            const auto t0 = std::chrono::steady_clock::now();
            test_metric = evaluate(logits, s.task, s.task.test);
            eval_seconds +=
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          };
        const CudaOutcome outcome = fit_on_cuda(model, run);
        tr = outcome.result;
        r.train_state_bytes = outcome.optimizer_state_bytes;
        trained = true;
      }
    }
    if (trained) {
      // done on the GPU
    } else if (method == sora::model::Method::adalora) {
      sora::optim::AdaLoraOptimizer<float> optimizer(model, adalora_adamw, adalora);
      use_checkpoints(optimizer);
      tr = fit_cpu(
          model, optimizer, stream, next, [&] { return evaluate_val(cpu_logits(model)); }, to,
          o.grad_accum, fit_state);
      r.train_state_bytes = optimizer.state_bytes();
      // The allocator's importance statistics (two per element of A, E and B) are state too.
      for (std::size_t k = 0; k < optimizer.allocator().modules().size(); ++k) {
        const auto& st = optimizer.allocator().importance(k);
        for (const auto* s2 : {&st.A, &st.B, &st.E})
          r.train_state_bytes +=
              static_cast<std::size_t>(s2->sensitivity.size() + s2->uncertainty.size()) *
              sizeof(float);
      }
    } else {
      auto optimizer =
          sora::optim::FineTuneOptimizer<float>::for_model(model, finetune_options(o, method));
      use_checkpoints(optimizer);
      tr = fit_cpu(
          model, optimizer, stream, next, [&] { return evaluate_val(cpu_logits(model)); }, to,
          o.grad_accum, fit_state);
      r.train_state_bytes = optimizer.state_bytes();
    }
  } catch (const sora::train::NonFiniteError& e) {
    bar.finish();
    const bool full = method == sora::model::Method::full;
    sora::detail::throw_error(
        "fine-tuning ", run_label(method_name, seed), " diverged with ",
        full ? sora::detail::concat("--full-lr ", o.full_lr)
             : sora::detail::concat("--lr ", o.lr, " and --alpha ", o.alpha),
        ": ", e.what(), "; no adapter or metrics were written for it, earlier outputs are kept");
  }
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bar.finish();
  r.train_state_bytes += train_state_bytes(model);
  r.train_seconds = seconds_before + total - eval_seconds;
  r.steps = tr.steps;
  r.epochs = static_cast<double>(tr.steps) / static_cast<double>(per_epoch);
  r.eval_steps = tr.eval_steps;
  r.eval_metrics = tr.eval_metrics;
  r.best_val = tr.best_metric;

  // The model now holds the best evaluated parameters (restore_best).
  model.eval();
  if (!s.task.has_test()) {
    r.metric = r.best_val;
  } else {
    r.metric = test_metric ? *test_metric : evaluate(model, s.task, s.task.test);
  }
  const sora::prune::ParamCounts counts = sora::prune::count_parameters(model);
  r.trainable = counts.trainable;
  r.nonzero = counts.nonzero;
  r.after_pruning = counts.after_pruning;
  for (const auto& m : counts.modules)
    if (m.rank > 0) r.ranks.emplace_back(m.module, m.kept_rank);
  // The adapters' share: kept ranks x (in + out).
  model.visit_linears([&](const std::string&, typename M::Linear& lin) {
    if (!lin.adapter) return;
    const Index kept = static_cast<Index>(sora::prune::kept_ranks(*lin.adapter).size());
    r.adapter_after_pruning += kept * (lin.in_features() + lin.out_features());
  });
  if (!adapter_dir.empty() && method != sora::model::Method::full) {
    sora::io::PeftExportOptions eo = std::move(export_options);
    eo.metadata["sora.method"] = method_name;
    eo.metadata["sora.task"] = s.task.name;
    eo.metadata["sora.run_id"] = s.run_id;
    s.before_output();
    try {
      sora::io::export_peft_adapter(model, adapter_dir, eo);
      r.adapter_dir = adapter_dir;
    } catch (const sora::io::NothingToExport& e) {
      // Not an error of the run: a large --xi may prune everything. PEFT could not load the
      // empty adapter, so there is none; the summary says why.
      r.adapter_not_exported = sora::detail::concat(
          "every rank was pruned (--xi ", o.xi, " too large?); PEFT cannot load an empty adapter");
      *s.log << "  " << run_label(method_name, seed)
             << ": no adapter written: " << r.adapter_not_exported << "\n";
    }
  }
  // --model: the fine-tuned model's logits on a few validation inputs beside the adapter, so
  // that transformers + PEFT can check that they compute the same (tests/finetune/).
  if (s.hf && !r.adapter_dir.empty()) {
    std::vector<std::size_t> first(std::min<std::size_t>(4, s.task.val.size()));
    std::iota(first.begin(), first.end(), std::size_t{0});
    sora::model::Batch batch;
    fill_batch(batch, s.task, s.task.val, first);
    const sora::Matrix<float> logits = model.forward_logits(batch);
    json lj;
    lj["adapter_dir"] = r.adapter_dir.filename().string();
    lj["input_ids"] = json::array();
    lj["token_type_ids"] = json::array();
    lj["attention_mask"] = json::array();
    lj["logits"] = json::array();
    const auto T = static_cast<std::size_t>(batch.seq);
    for (std::size_t b = 0; b < first.size(); ++b) {
      json ids = json::array(), types = json::array(), mask = json::array(), row = json::array();
      for (std::size_t t = 0; t < T; ++t) {
        ids.push_back(batch.tokens[b * T + t]);
        types.push_back(batch.token_types.empty() ? 0 : batch.token_types[b * T + t]);
        mask.push_back(static_cast<int>(batch.mask[b * T + t]));
      }
      for (Index k = 0; k < logits.cols(); ++k)
        row.push_back(static_cast<double>(logits(static_cast<Index>(b), k)));
      lj["input_ids"].push_back(ids);
      lj["token_type_ids"].push_back(types);
      lj["attention_mask"].push_back(mask);
      lj["logits"].push_back(row);
    }
    sora::io::write_file_atomic(s.out / ("logits_" + r.adapter_dir.filename().string() + ".json"),
                                lj.dump(1) + "\n");
  }
  return r;
}

// Fine-tunes a fresh copy of the pretrained model (sora's own, or the --model folder's) with
// `method`: see train_model.
inline RunResult run_method(const Setup& s, const Pretrained& pre, const std::string& method_name,
                            std::uint64_t seed, const fs::path& adapter_dir, std::string* csv) {
  const Options& o = s.opt;
  const sora::model::Method method = sora::model::parse_method(method_name);
  if (s.hf) {
    hf::LoadOptions lo;
    lo.task = hf::Task::sequence_classification;
    lo.num_labels = s.task.num_labels;
    lo.seed = seed;  // the new classifier's initialisation differs per seed, as the adapters'
    return hf::with_pretrained<float>(s.hf->dir, lo, [&](auto& model) {
      sora::model::PeftConfig p = peft_config(o, method, seed);
      p.target_modules = pretrained_targets(o.target_modules, s.hf->config.family);
      model.apply_peft(p);
      model.reseed_dropout(seed * 104729 + 3);
      model.train(true);
      return train_model(s, model, method_name, seed, adapter_dir, csv,
                         hf::peft_export_options(model));
    });
  }
  Model model(s.task_config);
  load_pretrained(model, pre.path);
  model.apply_peft(peft_config(o, method, seed));
  model.reseed_dropout(seed * 104729 + 3);
  sora::io::PeftExportOptions eo;
  eo.task_type = "SEQ_CLS";
  return train_model(s, model, method_name, seed, adapter_dir, csv, std::move(eo));
}

// ---- the sparsity scheduler ------------------------------------------------------------------

struct SparsityOutcome {
  sora::train::SparsityResult result;
  fs::path csv, svg;
};

// Algorithm 1 on `model` (SoRA applied, pretrained weights in place).
template <class M>
SparsityOutcome run_sparsity_on(const Setup& s, M& model) {
  const Options& o = s.opt;
  apply_memory_options(o, model, sora::model::Method::sora);
  auto fo = finetune_options(o, sora::model::Method::sora);
  fo.xi = 0.0;
  BatchStream stream(s.task, o.batch_size, o.seed + 1000);
  const long per_epoch = static_cast<long>(stream.steps_per_epoch());

  // Memorization is measured on a fixed training subset (docs/design.md 4).
  const std::vector<Example> subset(
      s.task.train.begin(),
      s.task.train.begin() +
          static_cast<std::ptrdiff_t>(std::min<std::size_t>(512, s.task.train.size())));
  const std::function<const sora::model::Batch&(long)> next_batch =
      [&](long) -> const sora::model::Batch& { return stream.next(); };

  sora::train::SparsitySchedulerOptions so;
  so.xi_kind = sora::optim::parse_xi_schedule(o.xi_schedule);
  so.xi0 = o.xi0;
  so.xi_max = o.xi_max;
  so.stages = o.stages;
  so.dense_steps = per_epoch * o.dense_epochs;
  so.stage_steps = per_epoch * o.stage_epochs;
  so.eval_every = per_epoch;
  so.lr = o.lr;
  so.warmup_ratio = o.warmup;
  SparsityOutcome outcome;
  outcome.csv = s.out / "sparsity.csv";
  outcome.svg = s.out / "sparsity.svg";
  so.csv_path = outcome.csv;
  so.svg_path = outcome.svg;
  so.title = "SoRA sparsity schedule: " + s.task.name;

  const long total = so.dense_steps + so.stage_steps * so.stages;
  sora::train::ProgressBar bar("sparsity schedule", total, progress_options(o));
  long done = 0;
  // The walk over the hooks of whichever device trains, with the progress bar.
  auto walk = [&](sora::train::SparsityHooks& hooks) {
    auto train_stage = hooks.train_stage;
    hooks.train_stage = [&, train_stage](double xi, const sora::optim::LrSchedule& sched,
                                         long begin, long end) {
      throw_if_stopped();
      train_stage(xi, sched, begin, end);
      done += end - begin;
      char status[48];
      std::snprintf(status, sizeof status, "xi %.2g", xi);
      bar.update(done, status);
    };
    return sora::train::run_sparsity_scheduler(hooks, so);
  };
  try {
    bool walked = false;  // on the GPU
    if constexpr (std::is_same_v<M, Model>) {
      if (on_gpu(o)) {
        CudaSparsityRun run;
        run.finetune = fo;
        run.math = o.cuda_math;
        run.max_grad_norm = o.max_grad_norm;
        run.next_batch = next_batch;
        run.evaluate_train_subset = [&](const LogitsFn& l) { return evaluate(l, s.task, subset); };
        run.evaluate_validation = [&](const LogitsFn& l) {
          return evaluate(l, s.task, s.task.val);
        };
        run.walk = walk;
        outcome.result = sparsity_on_cuda(model, run);
        walked = true;
      }
    }
    if (!walked) {
      auto optimizer = sora::optim::FineTuneOptimizer<float>::for_model(model, fo);
      auto hooks = sora::train::make_sparsity_hooks(
          model, optimizer, next_batch, [&] { return evaluate(model, s.task, subset); },
          [&] { return evaluate(model, s.task, s.task.val); }, o.max_grad_norm);
      outcome.result = walk(hooks);
    }
  } catch (const sora::train::NonFiniteError& e) {
    bar.finish();
    sora::detail::throw_error("the sparsity schedule diverged with --lr ", o.lr, " and --alpha ",
                              o.alpha, ": ", e.what(), "; the finished runs' summary.json is kept");
  }
  bar.finish();
  return outcome;
}

// The sparsity schedule on sora's own pretrained model, or on the --model folder's.
inline SparsityOutcome run_sparsity(const Setup& s, const Pretrained& pre) {
  const Options& o = s.opt;
  const sora::model::PeftConfig peft = peft_config(o, sora::model::Method::sora, o.seed);
  if (s.hf) {
    hf::LoadOptions lo;
    lo.task = hf::Task::sequence_classification;
    lo.num_labels = s.task.num_labels;
    lo.seed = o.seed;
    return hf::with_pretrained<float>(s.hf->dir, lo, [&](auto& model) {
      sora::model::PeftConfig p = peft;
      p.target_modules = pretrained_targets(o.target_modules, s.hf->config.family);
      model.apply_peft(p);
      model.reseed_dropout(o.seed * 104729 + 3);
      model.train(true);
      return run_sparsity_on(s, model);
    });
  }
  Model model(s.task_config);
  load_pretrained(model, pre.path);
  model.apply_peft(peft);
  return run_sparsity_on(s, model);
}

// ---- reporting -------------------------------------------------------------------------------

struct MethodSummary {
  std::string method;
  std::vector<const RunResult*> runs;
  double mean = 0.0, std = 0.0;
};

inline std::vector<MethodSummary> summarize(const std::vector<RunResult>& runs) {
  std::vector<MethodSummary> out;
  for (const RunResult& r : runs) {
    auto it = std::find_if(out.begin(), out.end(),
                           [&](const MethodSummary& m) { return m.method == r.method; });
    if (it == out.end()) {
      out.push_back(MethodSummary{r.method, {}, 0.0, 0.0});
      it = out.end() - 1;
    }
    it->runs.push_back(&r);
  }
  for (MethodSummary& m : out) {
    const double n = static_cast<double>(m.runs.size());
    for (const RunResult* r : m.runs) m.mean += r->metric / n;
    double ss = 0.0;
    for (const RunResult* r : m.runs) ss += (r->metric - m.mean) * (r->metric - m.mean);
    m.std = m.runs.size() > 1 ? std::sqrt(ss / (n - 1.0)) : 0.0;  // sample standard deviation
  }
  return out;
}

inline std::string with_commas(long long v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (v < 0 ? "-" : "") + out;
}

inline std::string format_bytes(double bytes) {
  char buffer[32];
  if (bytes >= 1024.0 * 1024.0) {
    std::snprintf(buffer, sizeof buffer, "%.2f MiB", bytes / (1024.0 * 1024.0));
  } else {
    std::snprintf(buffer, sizeof buffer, "%.1f KiB", bytes / 1024.0);
  }
  return buffer;
}

// The comparison table: one line per method, means over the seeds.
inline std::string table(const Setup& s, const std::vector<MethodSummary>& methods) {
  std::ostringstream t;
  const std::string metric = metric_name(s.task.metric);
  const std::size_t n = methods.empty() ? 0 : methods.front().runs.size();
  t << "task " << s.task.name << ": " << metric << " on the "
    << (s.task.has_test() ? "test" : "validation") << " split, mean \u00b1 std over " << n
    << (n == 1 ? " seed" : " seeds") << "\n";
  char line[256];
  std::snprintf(line, sizeof line, "%-8s  %-17s  %11s  %13s  %10s  %10s\n", "method",
                metric.c_str(), "trainable", "after pruning", "time/epoch", "train mem");
  t << line;
  for (const MethodSummary& m : methods) {
    char value[48];
    std::snprintf(value, sizeof value, "%.4f \u00b1 %.4f", m.mean, m.std);
    double trainable = 0, after = 0, seconds = 0, bytes = 0;
    for (const RunResult* r : m.runs) {
      trainable += static_cast<double>(r->trainable);
      after += static_cast<double>(r->after_pruning);
      seconds += r->time_per_epoch();
      bytes += static_cast<double>(r->train_state_bytes);
    }
    const double k = static_cast<double>(m.runs.size());
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.2f s", seconds / k);
    // "±" is two bytes in UTF-8 but one column: pad by hand.
    std::snprintf(line, sizeof line, "%-8s  %-18s  %11s  %13s  %10s  %10s\n", m.method.c_str(),
                  value, with_commas(std::llround(trainable / k)).c_str(),
                  with_commas(std::llround(after / k)).c_str(), secs,
                  format_bytes(bytes / k).c_str());
    t << line;
  }
  return t.str();
}

inline long peak_rss_bytes() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss * 1024L;  // Linux reports KiB
}

// Final rank of every adapted module as a heat map: layers x module kind. A module's layer is
// the first number among its name's parts ("blocks.3.attn.q", "bert.encoder.layer.3.attention
// .self.query"), its kind what follows it; modules without a number form a row of their own.
inline std::string rank_heatmap(const RunResult& r) {
  struct Cell {
    long layer;
    std::string kind;
    Index rank;
  };
  std::vector<Cell> cells;
  std::vector<std::string> kinds;
  long layers = 0;
  bool unnumbered = false;
  for (const auto& [module, rank] : r.ranks) {
    Cell c{-1, module, rank};
    std::size_t start = 0;
    while (start <= module.size()) {
      std::size_t end = module.find('.', start);
      if (end == std::string::npos) end = module.size();
      const std::string part = module.substr(start, end - start);
      if (!part.empty() && part.size() < 9 &&
          std::all_of(part.begin(), part.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
        c.layer = std::stol(part);
        c.kind = end < module.size() ? module.substr(end + 1) : part;
        break;
      }
      start = end + 1;
    }
    if (c.layer < 0) unnumbered = true;
    layers = std::max(layers, c.layer + 1);
    if (std::find(kinds.begin(), kinds.end(), c.kind) == kinds.end()) kinds.push_back(c.kind);
    cells.push_back(std::move(c));
  }
  sora::io::Heatmap h;
  h.title = r.method + ": final rank per module (seed " + std::to_string(r.seed) + ")";
  h.value_label = "rank";
  h.col_labels = kinds;
  for (long l = unnumbered ? -1 : 0; l < layers; ++l) {
    h.row_labels.push_back(l < 0 ? std::string("other") : "layer " + std::to_string(l));
    std::vector<double> row(kinds.size(), std::nan(""));
    for (const Cell& c : cells)
      if (c.layer == l)
        row[static_cast<std::size_t>(std::find(kinds.begin(), kinds.end(), c.kind) -
                                     kinds.begin())] = static_cast<double>(c.rank);
    h.values.push_back(std::move(row));
  }
  return h.svg();
}

inline void write_plots(const Setup& s, const std::vector<MethodSummary>& methods) {
  sora::io::LinePlot curves, losses;
  curves.title = s.task.name + ": validation " + metric_name(s.task.metric);
  curves.x_label = "training step";
  curves.y_label = metric_name(s.task.metric);
  losses.title = s.task.name + ": training loss";
  losses.x_label = "training step";
  losses.y_label = "mean loss since the previous evaluation";
  for (const MethodSummary& m : methods) {
    const RunResult& r = *m.runs.front();
    sora::io::Series c, l;
    c.name = l.name = r.method;
    for (std::size_t i = 0; i < r.eval_steps.size(); ++i) {
      c.x.push_back(static_cast<double>(r.eval_steps[i]));
      c.y.push_back(r.eval_metrics[i]);
      l.x.push_back(static_cast<double>(r.eval_steps[i]));
      l.y.push_back(r.eval_losses[i]);
    }
    curves.add(std::move(c));
    losses.add(std::move(l));
    if (r.method != "full" && !r.ranks.empty())
      sora::io::write_file_atomic(s.out / ("ranks_" + r.method + ".svg"), rank_heatmap(r));
  }
  sora::io::write_file_atomic(s.out / "curves.svg", curves.svg());
  sora::io::write_file_atomic(s.out / "loss.svg", losses.svg());
}

inline json config_json(const sora::model::TransformerConfig& c) {
  json j;
  j["vocab_size"] = c.vocab_size;
  j["width"] = c.width;
  j["heads"] = c.heads;
  j["layers"] = c.layers;
  j["max_len"] = c.max_len;
  j["dropout"] = c.dropout;
  j["causal"] = c.causal;
  return j;
}

// ---- the program -----------------------------------------------------------------------------

// Every path the run records (in summary.json, as JSON strings) must be UTF-8: checked before
// any work rather than failing in the JSON encoder after all of it.
inline void check_paths_encodable(const Options& o) {
  std::vector<std::pair<std::string, std::string>> paths = {{"--out", o.out},
                                                            {"--cache-dir", o.cache_dir},
                                                            {"--glue-dir", o.glue_dir},
                                                            {"--model", o.model_dir},
                                                            {"--train-file", o.train_file},
                                                            {"--val-file", o.val_file},
                                                            {"--test-file", o.test_file}};
  for (const std::string& f : o.pretrain_text) paths.emplace_back("--pretrain-text", f);
  for (const auto& [flag, path] : paths)
    SORA_CHECK(is_utf8(path), flag,
               ": the path is not valid UTF-8, which summary.json cannot "
               "record; rename it");
}

// Creates `dir` (and its parents) if needed; an error names the flag.
inline void make_folder(const fs::path& dir, const char* flag) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  SORA_CHECK(!ec, flag, ": cannot create the folder '", dir.string(), "': ", ec.message());
  SORA_CHECK(fs::is_directory(dir), flag, ": '", dir.string(), "' is not a folder");
}

// Runs what the options ask for; returns the process exit code. Progress and tables go to
// `log` (stdout in the program); progress bars to stderr.
inline int run(const Options& o, std::ostream& log) {
  if (!o.export_task.empty()) {
    const Setup s = make_setup(o, log);
    write_glue_task(s.task, o.export_task);
    log << "wrote " << s.task.name << " (" << s.task.train.size() << " train / "
        << s.task.val.size() << " dev / " << s.task.test.size() << " test) to " << o.export_task
        << "\n";
    return 0;
  }
  if (o.threads > 0) sora::set_num_threads(o.threads);
  const auto wall_start = std::chrono::steady_clock::now();
  // Asked before any work or output: a missing GPU or a CPU-only build is an error up front.
  const std::string device =
      on_gpu(o) ? "cuda (" + cuda_device_name() + ", " + o.cuda_math + " GEMMs)" : "cpu";
  // The folders, before any work: writable, not in use by another run, free of a killed
  // run's temporaries; the inputs are read (and checked) by make_setup, also before any work.
  check_paths_encodable(o);
  const fs::path out = o.out;
  const fs::path cache_dir = o.cache_dir.empty() ? out / "cache" : fs::path(o.cache_dir);
  make_folder(out, "--out");
  const FolderLock out_lock(out, "output folder (--out)");
  // A pre-trained folder (--model) needs no pretraining, and so no cache.
  std::optional<FolderLock> cache_lock;
  if (!o.pretrained()) {
    make_folder(cache_dir, o.cache_dir.empty() ? "the cache folder <out>/cache" : "--cache-dir");
    cache_lock.emplace(cache_dir, "cache folder");
    remove_stale_temporaries(cache_dir);
  }
  remove_stale_temporaries(out);
  Setup s = make_setup(o, log);
  s.run_id = new_run_id();
  // Checkpoints (CPU runs): a --resume folder is read and checked against the flags before
  // any work; the resumed run keeps its run id.
  Checkpointing checkpoints;
  checkpoints.folder = out / "checkpoint";
  checkpoints.save_every = o.save_every;
  checkpoints.fingerprint = o.fingerprint;
  if (!o.resume.empty()) {
    checkpoints.resume_folder = o.resume;
    checkpoints.resume = read_checkpoint_state(o.resume, o.fingerprint, out);
    s.run_id = checkpoints.resume->run_id;
  }
  checkpoints.run_id = s.run_id;
  if (!on_gpu(o)) s.checkpoints = &checkpoints;
  IncompleteMarker marker(out, s.run_id);
  s.marker = &marker;
  log << "run " << s.run_id << "\n";
  log << "task " << s.task.name << " (" << s.task.source << "): " << s.task.train.size()
      << " train / " << s.task.val.size() << " validation / " << s.task.test.size()
      << " test examples, metric " << metric_name(s.task.metric) << "\n";
  if (s.hf) {
    const hf::HfConfig& c = s.hf->config;
    log << "model: " << s.hf->dir.string() << " (" << c.model_type << "): " << c.num_layers
        << " layers, width " << c.hidden_size << ", " << c.num_heads << " heads, vocabulary "
        << c.vocab_size << " (tokenizer " << s.hf->tokenizer_vocab << "), max length "
        << s.hf->max_length << ", " << sora::num_threads() << " thread(s)\n";
  } else {
    log << "model: " << s.task_config.layers << " layers, width " << s.task_config.width << ", "
        << s.task_config.heads << " heads, vocabulary " << s.task_config.vocab_size << ", "
        << sora::num_threads() << " thread(s)\n";
  }
  if (on_gpu(o)) log << "device: " << device << "\n";
  // A pre-trained folder needs no pretraining.
  const Pretrained pre = s.hf ? Pretrained{} : pretrain(s);

  const std::vector<std::string> methods =
      o.compare ? method_names() : std::vector<std::string>{o.method};
  std::string csv = "method,seed,step,epoch,train_loss,val_metric,adapter_nonzero_params\n";
  std::vector<RunResult> runs;
  runs.reserve(methods.size() * static_cast<std::size_t>(o.seeds));
  std::size_t resumed_finished = 0;  // runs the checkpoint had finished
  if (const auto& resume = checkpoints.resume) {
    csv = resume->csv;
    runs = resume->finished;
    resumed_finished = runs.size();
  }
  checkpoints.finished = &runs;
  checkpoints.csv = &csv;
  std::size_t index = 0;
  for (const std::string& m : methods) {
    for (int k = 0; k < o.seeds; ++k, ++index) {
      const std::uint64_t seed = o.seed + static_cast<std::uint64_t>(k);
      if (index < resumed_finished) {
        SORA_CHECK(runs[index].method == m && runs[index].seed == seed, "--resume: run ", index + 1,
                   " of the checkpoint is ", run_label(runs[index].method, runs[index].seed),
                   ", this run's is ", run_label(m, seed));
        log << "  " << run_label(m, seed) << ": finished before the checkpoint\n";
        continue;
      }
      const bool resuming_this = index == resumed_finished && checkpoints.resume &&
                                 checkpoints.resume->current.has_value();
      if (resuming_this)
        SORA_CHECK(
            checkpoints.resume->current->method == m && checkpoints.resume->current->seed == seed,
            "--resume: the checkpoint's run in progress is ",
            run_label(checkpoints.resume->current->method, checkpoints.resume->current->seed),
            ", this run's next is ", run_label(m, seed));
      // A stop between two runs: the finished ones are saved (the resumed run's checkpoint,
      // not yet read back, is left as it is).
      if (const int sig = stop_signal().load(); sig != 0 && s.checkpoints != nullptr) {
        if (resuming_this) throw_stopped_with_checkpoint(sig, checkpoints.resume_folder, "");
        write_checkpoint(checkpoints);
        throw_stopped_with_checkpoint(sig, checkpoints.folder, " before " + run_label(m, seed));
      }
      const fs::path adapter =
          k == 0 ? s.out / (o.compare ? "adapter_" + m : std::string("adapter")) : fs::path();
      runs.push_back(run_method(s, pre, m, seed, adapter, &csv));
      const RunResult& r = runs.back();
      char line[256];
      std::snprintf(line, sizeof line,
                    "  %-8s seed %llu: %s %.4f (best validation %.4f), %lld trainable -> %lld "
                    "after pruning, %.2f s/epoch\n",
                    m.c_str(), static_cast<unsigned long long>(seed), metric_name(s.task.metric),
                    r.metric, r.best_val, static_cast<long long>(r.trainable),
                    static_cast<long long>(r.after_pruning), r.time_per_epoch());
      log << line << std::flush;
      s.before_output();
      sora::io::write_file_atomic(s.out / "metrics.csv", csv);
    }
  }
  const std::vector<MethodSummary> summary = summarize(runs);
  const std::string tab = table(s, summary);
  log << "\n" << tab << std::flush;
  write_plots(s, summary);

  json j;
  j["program"] = "sora-finetune";
  j["run_id"] = s.run_id;
  j["task"] = {{"name", s.task.name},
               {"source", s.task.source},
               {"metric", metric_name(s.task.metric)},
               {"reported_split", s.task.has_test() ? "test" : "validation"},
               {"train", s.task.train.size()},
               {"validation", s.task.val.size()},
               {"test", s.task.test.size()}};
  if (s.hf) {
    const hf::HfConfig& c = s.hf->config;
    j["model"] = {{"pretrained", fs::absolute(s.hf->dir).string()},
                  {"model_type", c.model_type},
                  {"vocab_size", c.vocab_size},
                  {"width", c.hidden_size},
                  {"heads", c.num_heads},
                  {"layers", c.num_layers},
                  {"max_length", s.hf->max_length},
                  {"target_modules", pretrained_targets(o.target_modules, c.family)}};
  } else {
    j["model"] = config_json(s.task_config);
  }
  j["device"] = device;
  if (s.hf)
    j["pretrain"] = nullptr;  // a pre-trained folder (model.pretrained)
  else
    j["pretrain"] = {
        {"cache", pre.path.string()},
        {"reused", pre.reused},
        {"steps", o.pretrain_steps},
        {"final_loss", std::isnan(pre.final_loss) ? json(nullptr) : json(pre.final_loss)},
        {"verdict_accuracy",
         std::isnan(pre.verdict_accuracy) ? json(nullptr) : json(pre.verdict_accuracy)},
        {"seconds", pre.seconds}};
  j["hyperparameters"] = {{"epochs", o.epochs},
                          {"batch_size", o.batch_size},
                          {"grad_accum", o.grad_accum},
                          {"grad_checkpoint", o.grad_checkpoint},
                          {"lr", o.lr},
                          {"full_lr", o.full_lr},
                          {"rank", o.rank},
                          {"alpha", o.alpha},
                          {"xi", o.xi},
                          {"targets", split_commas(o.targets)},
                          {"max_grad_norm", o.max_grad_norm},
                          {"adalora_target_rank", o.adalora_target_rank}};
  json ms = json::array();
  for (const MethodSummary& m : summary) {
    json e;
    e["method"] = m.method;
    e["metric_mean"] = m.mean;
    e["metric_std"] = m.std;
    e["seeds"] = m.runs.size();
    e["trainable_params"] = m.runs.front()->trainable;
    double after = 0;
    for (const RunResult* r : m.runs) after += static_cast<double>(r->after_pruning);
    e["params_after_pruning_mean"] = after / static_cast<double>(m.runs.size());
    double tpe = 0;
    for (const RunResult* r : m.runs) tpe += r->time_per_epoch();
    e["time_per_epoch_s"] = tpe / static_cast<double>(m.runs.size());
    e["train_state_bytes"] = m.runs.front()->train_state_bytes;
    e["adapter_dir"] = m.runs.front()->adapter_dir.empty()
                           ? json(nullptr)
                           : json(m.runs.front()->adapter_dir.filename().string());
    ms.push_back(e);
  }
  j["methods"] = ms;
  json rs = json::array();
  for (const RunResult& r : runs) rs.push_back(run_json(r));
  j["runs"] = rs;
  j["table"] = tab;

  // The finished runs' summary, before the optional phase that follows (which may fail).
  const auto write_summary = [&] {
    j["peak_rss_bytes"] = peak_rss_bytes();
    j["wall_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
    sora::io::write_file_atomic(s.out / "summary.json", j.dump(2) + "\n");
  };
  if (o.sparsity_schedule) {
    j["sparsity_schedule"] = "running";
    write_summary();
  }

  if (o.sparsity_schedule) {
    log << "\nsparsity schedule (Algorithm 1): dense phase, then " << o.stages << " xi stages from "
        << o.xi0 << " to " << o.xi_max << " (" << o.xi_schedule << ")"
        << (on_gpu(o) ? ", on the GPU" : "") << "\n";
    const SparsityOutcome sp = run_sparsity(s, pre);
    for (const auto& row : sp.result.rows) {
      char line[200];
      std::snprintf(line, sizeof line,
                    "  stage %d  xi %-9.3g  non-zero %7lld  memorization %6.1f%%  "
                    "generalization %6.1f%%\n",
                    row.stage, row.xi, static_cast<long long>(row.nonzero), row.memorization,
                    row.generalization);
      log << line;
    }
    json sj;
    sj["csv"] = sp.csv.filename().string();
    sj["svg"] = sp.svg.filename().string();
    sj["xis"] = sp.result.xis;
    sj["train_reference"] = sp.result.train_reference;
    sj["validation_reference"] = sp.result.val_reference;
    sj["stages_completed"] = sp.result.stages_completed;
    sj["rows"] = sp.result.rows.size();
    if (!sp.result.rows.empty()) {
      sj["final_nonzero"] = sp.result.rows.back().nonzero;
      sj["final_generalization_pct"] = sp.result.rows.back().generalization;
    }
    j["sparsity_schedule"] = sj;
  }
  write_summary();
  marker.finished();  // summary.json is complete: so is the folder
  // The run is complete: its checkpoint (if one was written) is of no further use.
  if (s.checkpoints != nullptr) {
    std::error_code ec;
    fs::remove_all(checkpoints.folder, ec);
  }
  log << "\nreport: " << fs::absolute(s.out).string()
      << "/ (summary.json, metrics.csv, curves.svg, loss.svg, ranks_*.svg, adapter*/"
      << (o.sparsity_schedule ? ", sparsity.csv, sparsity.svg" : "") << ")\n";
  return 0;
}

}  // namespace sora_finetune
