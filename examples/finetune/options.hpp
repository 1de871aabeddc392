#pragma once
// sora-finetune's command line: every flag, its default and its check, in one place (CLI11).
// parse_options never exits the process: it returns an exit code for --help and for errors,
// so that tests can drive it.
//
// Exit codes, one per kind of outcome (also in --help): 0 success; 1 the run failed (data, files,
// training diverged); 2 the command line is wrong (any flag, whatever CLI11's own code for the
// error would be); 128 + N stopped by signal N (SIGINT: 130, SIGTERM: 143).

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "data.hpp"
#include "sora/model/peft.hpp"

namespace sora_finetune {

struct Options {
  // What to run.
  std::string method = "sora";
  bool compare = false;
  bool sparsity_schedule = false;
  // The default: the sentence-pair task. Its single-sentence sibling, polarity, is what the
  // pretraining corpus's verdict words already teach, so every method reaches its ceiling
  // there; comparing two sentences separates the methods (README, "The demo").
  std::string task = "pair";
  std::string glue_dir;
  // Data files of one's own (.tsv or .jsonl) and the columns that hold the text, the second
  // text of a pair and the label (data_files.hpp).
  std::string train_file, val_file, test_file;
  std::string text_column = "text", text_pair_column = "text_pair", label_column = "label";
  std::string export_task;  // write the embedded task as a GLUE folder there, and stop
  std::vector<std::string> pretrain_text;
  std::string out = "sora-finetune-out";
  std::string cache_dir;  // empty: <out>/cache
  bool no_cache = false;
  int seeds = 3;
  std::uint64_t seed = 0;
  std::uint64_t data_seed = 7;
  int threads = 0;
  bool plain = false;
  std::string distributed = "auto";  // auto: data-parallel when started by mpirun; off
  std::string device = "cpu";        // where pretraining and fine-tuning steps run
  std::string cuda_math = "exact";   // GEMMs on the GPU: exact fp32, tf32 or bf16 tensor cores
  std::string frozen_base = "fp32";  // bf16: adapter runs store the frozen weights in bf16
  // A pre-trained Hugging Face folder (config.json, safetensors, tokenizer) to fine-tune
  // instead of pretraining sora's own transformer; empty: pretrain.
  std::string model_dir;
  std::string target_modules;  // with --model, PEFT syntax; empty: the family's PEFT default
  // Checkpoints (CPU runs): every this many optimizer steps into <out>/checkpoint/ (0: only
  // when SIGINT or SIGTERM stops the run), and the checkpoint folder to continue from.
  int save_every = 0;
  std::string resume;
  // Every flag that decides the results, as "name=value" lines (set by parse_options): a
  // checkpoint records it, and --resume refuses a run whose flags differ.
  std::string fingerprint;

  // Data sizes (the synthetic tasks; GLUE: caps, 0 = the whole split).
  int train_size = 2000;
  int val_size = 500;
  int test_size = 1000;
  int max_len = 0;  // 0: 24 for the synthetic language, 128 for bytes

  // The model.
  int width = 64;
  int layers = 4;
  int heads = 4;
  double dropout = 0.0;

  // Pretraining.
  int pretrain_steps = 1200;
  int pretrain_batch = 32;
  double pretrain_lr = 3e-3;
  int corpus_tokens = 200000;

  // Fine-tuning, every method.
  int epochs = 6;
  int batch_size = 32;
  int grad_accum = 1;            // batches whose gradients make one optimizer step
  bool grad_checkpoint = false;  // recompute each block's activations in backward (CPU)
  int eval_every = 0;            // 0: once per epoch
  double max_grad_norm = 1.0;
  double warmup = 0.06;
  std::string lr_schedule = "linear";
  double weight_decay = 0.1;
  double full_lr = 1e-3;  // full fine-tuning
  double lr = 2e-3;       // adapter methods
  int rank = 8;
  double alpha = 16.0;
  std::string targets = "q,k,v,o,fc,proj";
  // SoRA.
  double xi = 1e-3;
  double gate_lr = -1.0;  // < 0: lr
  bool scale_xi_by_lr = false;
  // AdaLoRA.
  int adalora_target_rank = 4;
  double adalora_tinit = 0.1;   // share of the steps before any masking
  double adalora_tfinal = 0.2;  // share of the steps with the final pattern
  int adalora_delta_t = 10;
  double adalora_orth = 0.1;
  // Sparsity scheduler (Algorithm 1).
  std::string xi_schedule = "linear";
  double xi0 = 1e-3;
  double xi_max = 8e-3;
  int stages = 5;
  int dense_epochs = 3;
  int stage_epochs = 1;

  bool synthetic() const { return glue_dir.empty() && !files(); }
  bool files() const { return !train_file.empty(); }
  bool pretrained() const { return !model_dir.empty(); }
};

// "q, k,v" -> {"q", "k", "v"}: the comma-separated list of --targets, blanks dropped.
inline std::vector<std::string> split_target_list(const std::string& text) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : text) {
    if (c == ',') {
      if (!cur.empty()) parts.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  return parts;
}

// CLI11's PositiveNumber and NonNegativeNumber let a NaN through and print the largest double
// (300 digits) as their bound; these say what is wanted in words, and refuse NaN and infinity.
inline CLI::Validator finite_number(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](std::string& text) -> std::string {
        double value = 0.0;
        if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not a number";
        if (!std::isfinite(value)) return "'" + text + "' is not a finite number";
        if (zero_allowed ? value < 0.0 : value <= 0.0)
          return "'" + text + (zero_allowed ? "' is negative" : "' is not > 0");
        return std::string();
      },
      zero_allowed ? "FINITE >= 0" : "FINITE > 0");
}

inline const std::vector<std::string>& method_names() {
  static const std::vector<std::string> names = {"full", "lora", "sora", "adalora"};
  return names;
}

// The flags that decide a run's results, one "name=value" line each, defaults included: what
// a checkpoint must agree on to be resumed. Where the outputs go, how progress is shown, the
// thread count, the checkpoint flags themselves and --grad-checkpoint (which changes memory,
// not results) may change between the two runs.
inline std::string result_fingerprint(const CLI::App& app) {
  static const char* const kFree[] = {"out",        "cache-dir", "no-cache",
                                      "plain",      "threads",   "resume",
                                      "save-every", "help",      "grad-checkpoint"};
  std::string lines;
  for (const CLI::Option* opt : app.get_options()) {
    const std::string name = opt->get_single_name();
    if (std::find(std::begin(kFree), std::end(kFree), name) != std::end(kFree)) continue;
    std::string value;
    for (const std::string& r : opt->results()) value += (value.empty() ? "" : ",") + r;
    if (opt->count() == 0) value = opt->get_default_str();
    lines += name + "=" + value + "\n";
  }
  return lines;
}

// Parses argv into `o`. Returns std::nullopt to go on, or the exit code to leave with (0 after
// --help). Messages go to `out` (help) and `err` (errors), each error naming its flag.
inline std::optional<int> parse_options(int argc, const char* const* argv, Options& o,
                                        std::ostream& out, std::ostream& err) {
  CLI::App app{
      "sora-finetune: pretrain a small transformer (cached), fine-tune it with full, LoRA, SoRA "
      "or AdaLoRA, compare the methods, walk SoRA's sparsity schedule and export the pruned "
      "adapter in PEFT format. With no arguments: the embedded synthetic language and its "
      "'pair' task, SoRA, 3 seeds.",
      "sora-finetune"};
  app.get_formatter()->column_width(34);
  app.footer(
      "Exit codes: 0 success, 1 the run failed, 2 a wrong command line, 128 + N stopped by "
      "signal N.");
  auto* g_run = "What to run";
  app.add_option("--method", o.method, "fine-tuning method")
      ->check(CLI::IsMember(method_names()))
      ->capture_default_str()
      ->group(g_run);
  app.add_flag("--compare", o.compare,
               "run all four methods on the same pretrained model, data and seeds; print a table")
      ->group(g_run);
  app.add_flag("--sparsity-schedule", o.sparsity_schedule,
               "also run SoRA's sparsity scheduler (Algorithm 1): CSV + SVG of memorization and "
               "generalization against non-zero parameters")
      ->group(g_run);
  app.add_option("--task", o.task,
                 "embedded task (polarity, pair, score) or, with --glue-dir, a GLUE task "
                 "(sst2, cola, mrpc, rte, stsb, qnli, qqp, mnli)")
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--glue-dir", o.glue_dir, "GLUE task folder with train.tsv and dev.tsv")
      ->check(CLI::ExistingDirectory)
      ->group(g_run);
  app.add_option("--train-file", o.train_file,
                 "training examples of your own: a .tsv file (header row naming the columns) "
                 "or a .jsonl file (one JSON object a line); needs --val-file")
      ->check(CLI::ExistingFile)
      ->group(g_run);
  app.add_option("--val-file", o.val_file, "validation examples (.tsv or .jsonl)")
      ->check(CLI::ExistingFile)
      ->group(g_run);
  app.add_option("--test-file", o.test_file,
                 "test examples (.tsv or .jsonl; optional: the metric is then the test split's)")
      ->check(CLI::ExistingFile)
      ->group(g_run);
  app.add_option("--text-column", o.text_column, "the data files' text column")
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--text-pair-column", o.text_pair_column,
                 "the data files' second-text column (a pair task when the files have it)")
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--label-column", o.label_column,
                 "the data files' label column: class indices 0..K-1, class names, or numbers "
                 "(regression)")
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--export-task", o.export_task,
                 "write the embedded task (polarity: SST-2 layout, pair: RTE layout) as a GLUE "
                 "task folder for --glue-dir or other tools, and stop")
      ->group(g_run);
  app.add_option("--pretrain-text", o.pretrain_text,
                 "text files to pretrain on (byte level); needs --glue-dir")
      ->check(CLI::ExistingFile)
      ->group(g_run);
  app.add_option("--out", o.out, "output folder")->capture_default_str()->group(g_run);
  app.add_option("--cache-dir", o.cache_dir, "pretrained-model cache (default: <out>/cache)")
      ->group(g_run);
  app.add_flag("--no-cache", o.no_cache, "pretrain again even when a cached model exists")
      ->group(g_run);
  app.add_option("--seeds", o.seeds, "seeds per method (fine-tuning: adapter init, data order)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--seed", o.seed, "first seed (also the model's initialisation)")
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--data-seed", o.data_seed, "seed of the synthetic corpus and tasks")
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--threads", o.threads, "threads (0: all cores, or SORA_NUM_THREADS when set)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str()
      ->group(g_run);
  app.add_flag("--plain", o.plain, "plain progress lines even on a terminal")->group(g_run);
  app.add_option("--distributed", o.distributed,
                 "auto: under mpirun -np N, fine-tune data-parallel over the N ranks (rank 0 "
                 "prints and writes); off: every process runs alone")
      ->check(CLI::IsMember({"auto", "off"}))
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--model", o.model_dir,
                 "fine-tune this pre-trained Hugging Face folder (BERT family, GPT-2, LLaMA "
                 "family; config.json, safetensors, tokenizer) instead of pretraining; CPU only")
      ->check(CLI::ExistingDirectory)
      ->group(g_run);
  app.add_option("--target-modules", o.target_modules,
                 "with --model: comma-separated adapted modules in PEFT syntax, or all-linear "
                 "(default: PEFT's default for the family)")
      ->group(g_run);
  app.add_option("--save-every", o.save_every,
                 "write a checkpoint to <out>/checkpoint/ every N optimizer steps (CPU; SIGINT "
                 "and SIGTERM always write one)")
      ->check(CLI::Range(0, 1 << 30))
      ->group(g_run);
  app.add_option("--resume", o.resume,
                 "continue the run whose checkpoint folder this is (give the same flags)")
      ->check(CLI::ExistingDirectory)
      ->group(g_run);
  app.add_option("--device", o.device,
                 "where pretraining and fine-tuning run: cpu, or cuda (a GPU; needs a build "
                 "with the CUDA backend)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--cuda-math", o.cuda_math,
                 "GEMMs on the GPU: exact (fp32), tf32 or bf16 tensor cores (fp32 accumulation)")
      ->check(CLI::IsMember({"exact", "tf32", "bf16"}))
      ->capture_default_str()
      ->group(g_run);
  app.add_option("--frozen-base", o.frozen_base,
                 "how lora, sora and adalora runs store the frozen base weights: fp32, or bf16 "
                 "(half the memory, outputs within bf16 rounding; CPU; full fine-tuning stays "
                 "fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str()
      ->group(g_run);

  auto* g_data = "Data";
  app.add_option("--train-size", o.train_size,
                 "training examples (GLUE and data files: cap, 0 = all)")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_data);
  app.add_option("--val-size", o.val_size,
                 "validation examples (GLUE and data files: cap, 0 = all)")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_data);
  app.add_option("--test-size", o.test_size, "test examples (synthetic tasks only)")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_data);
  app.add_option("--max-len,--max-length", o.max_len,
                 "longest sequence in tokens (0: 32 synthetic, 128 bytes for real data, 128 "
                 "tokens with --model)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str()
      ->group(g_data);

  auto* g_model = "Model";
  app.add_option("--width", o.width, "model width C")
      ->check(CLI::Range(4, 4096))
      ->capture_default_str()
      ->group(g_model);
  app.add_option("--layers", o.layers, "transformer blocks")
      ->check(CLI::Range(1, 64))
      ->capture_default_str()
      ->group(g_model);
  app.add_option("--heads", o.heads, "attention heads (must divide --width)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str()
      ->group(g_model);
  app.add_option("--dropout", o.dropout, "dropout of the model")
      ->check(CLI::Range(0.0, 0.9))
      ->capture_default_str()
      ->group(g_model);

  auto* g_pre = "Pretraining";
  app.add_option("--pretrain-steps", o.pretrain_steps, "language-modelling steps")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str()
      ->group(g_pre);
  app.add_option("--pretrain-batch", o.pretrain_batch, "windows per pretraining batch")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str()
      ->group(g_pre);
  app.add_option("--pretrain-lr", o.pretrain_lr, "pretraining learning rate")
      ->check(finite_number(false))
      ->capture_default_str()
      ->group(g_pre);
  app.add_option("--corpus-tokens", o.corpus_tokens, "tokens of the synthetic corpus")
      ->check(CLI::Range(64, 1000000000))
      ->capture_default_str()
      ->group(g_pre);

  auto* g_ft = "Fine-tuning (every method)";
  app.add_option("--epochs", o.epochs, "passes over the training set")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--batch-size", o.batch_size, "examples per step")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--grad-accum", o.grad_accum,
                 "batches of --batch-size whose gradients are summed (and averaged) into one "
                 "optimizer step: an effective batch of both, the memory of one (CPU)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str()
      ->group(g_ft);
  app.add_flag("--grad-checkpoint", o.grad_checkpoint,
               "keep one block's activations instead of all: each block's forward runs again "
               "in backward (about a third more compute; the same gradients) (CPU)")
      ->group(g_ft);
  app.add_option("--eval-every", o.eval_every, "steps between evaluations (0: once per epoch)")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--max-grad-norm", o.max_grad_norm, "global gradient clipping (0: off)")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--warmup", o.warmup, "warm-up share of the steps")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--lr-schedule", o.lr_schedule, "learning-rate schedule")
      ->check(CLI::IsMember({"constant", "linear", "cosine"}))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay on matrices")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--full-lr", o.full_lr, "learning rate of full fine-tuning")
      ->check(finite_number(false))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--lr", o.lr, "learning rate of LoRA, SoRA and AdaLoRA")
      ->check(finite_number(false))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--rank", o.rank, "adapter rank r (SoRA's r_max, AdaLoRA's initial rank)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--alpha", o.alpha, "adapter alpha (scale alpha / r)")
      ->check(finite_number(false))
      ->capture_default_str()
      ->group(g_ft);
  app.add_option("--targets", o.targets, "comma-separated adapted modules (PEFT suffix rule)")
      ->capture_default_str()
      ->group(g_ft);

  auto* g_sora = "SoRA";
  app.add_option("--xi", o.xi, "gate sparsity threshold xi (per step)")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_sora);
  app.add_option("--gate-lr", o.gate_lr, "gate learning rate (default: --lr)")
      ->check(finite_number(false))
      ->group(g_sora);
  app.add_flag("--scale-xi-by-lr", o.scale_xi_by_lr,
               "threshold xi * lr (proximal-gradient form) instead of xi")
      ->group(g_sora);

  auto* g_ada = "AdaLoRA";
  app.add_option("--adalora-target-rank", o.adalora_target_rank,
                 "final average rank per module (budget = this x modules)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str()
      ->group(g_ada);
  app.add_option("--adalora-tinit", o.adalora_tinit, "share of the steps before any masking")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->group(g_ada);
  app.add_option("--adalora-tfinal", o.adalora_tfinal,
                 "share of the steps trained with the final rank pattern")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->group(g_ada);
  app.add_option("--adalora-delta-t", o.adalora_delta_t, "steps between two allocations")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str()
      ->group(g_ada);
  app.add_option("--adalora-orth", o.adalora_orth, "orthogonal regularizer weight")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_ada);

  auto* g_sched = "Sparsity scheduler";
  app.add_option("--xi-schedule", o.xi_schedule, "spacing of the xi values")
      ->check(CLI::IsMember({"linear", "log-linear", "exp-linear"}))
      ->capture_default_str()
      ->group(g_sched);
  app.add_option("--xi0", o.xi0, "first xi")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_sched);
  app.add_option("--xi-max", o.xi_max, "last xi")
      ->check(finite_number(true))
      ->capture_default_str()
      ->group(g_sched);
  app.add_option("--stages", o.stages, "number of xi values (sparse stages)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str()
      ->group(g_sched);
  app.add_option("--dense-epochs", o.dense_epochs, "epochs of the dense phase (xi = 0)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str()
      ->group(g_sched);
  app.add_option("--stage-epochs", o.stage_epochs, "epochs of each sparse stage")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str()
      ->group(g_sched);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    err << "sora-finetune: " << e.what() << "\n(run sora-finetune --help for the flags)\n";
    return 2;  // every command-line error alike (CLI11's own codes differ by error: 105, 114, ...)
  }

  // Checks across flags, each naming the flag at fault.
  auto fail = [&](const std::string& message) -> std::optional<int> {
    err << "sora-finetune: " << message << "\n";
    return 2;
  };
  o.fingerprint = result_fingerprint(app);
  if (o.device != "cpu" && (o.save_every > 0 || !o.resume.empty()))
    return fail(
        "--save-every and --resume: checkpoints are written by CPU runs only; drop them "
        "or --device");
  if (o.frozen_base == "bf16" && o.device != "cpu")
    return fail("--frozen-base bf16 is a CPU feature: drop it or --device");
  if (o.frozen_base == "bf16" && o.method == "full" && !o.compare)
    return fail(
        "--frozen-base bf16: full fine-tuning trains the base weights; use it with "
        "--method lora, sora or adalora");
  if (o.files() || !o.val_file.empty() || !o.test_file.empty()) {
    if (o.train_file.empty() || o.val_file.empty())
      return fail("--train-file and --val-file go together (--test-file is optional)");
    if (!o.glue_dir.empty())
      return fail("--train-file and --glue-dir are two data sources: give one");
  }
  if (!o.export_task.empty() && !o.synthetic())
    return fail("--export-task writes an embedded task: drop --glue-dir / --train-file");
  if (o.files()) {
    // The task is the files'; --task does not apply.
  } else if (o.synthetic()) {
    if (!is_synthetic_task(o.task))
      return fail("--task: '" + o.task + "' is not an embedded task (expected " + kSyntheticTasks +
                  "; GLUE tasks need --glue-dir)");
    if (!o.pretrain_text.empty())
      return fail(
          "--pretrain-text needs --glue-dir: the embedded tasks use the synthetic language's "
          "own word vocabulary, not bytes");
    if (o.train_size < 1 || o.val_size < 1 || o.test_size < 1)
      return fail("--train-size, --val-size and --test-size must be >= 1 for the embedded tasks");
  } else {
    const auto task = sora::io::parse_glue_task(o.task);
    if (!task || *task == sora::io::GlueTask::WNLI)
      return fail("--task: '" + o.task +
                  "' is not a GLUE task (expected sst2, cola, mrpc, rte, stsb, qnli, qqp or mnli)");
  }
  if (o.pretrained()) {
    // Checked before any work: the pre-trained path runs on the CPU only, and its model's
    // shape comes from the folder, so the flags of sora's own model do not apply.
    if (o.device != "cpu")
      return fail("--device " + o.device +
                  ": --model fine-tunes on the CPU only (the GPU runs train sora's own "
                  "transformer); drop --device");
    if (!o.pretrain_text.empty()) return fail("--pretrain-text does not apply with --model");
  } else if (!o.target_modules.empty()) {
    return fail("--target-modules needs --model (sora's own model takes --targets)");
  }
  if (o.grad_accum > 1 && o.device != "cpu")
    return fail("--grad-accum: accumulation runs on the CPU only; drop it or --device");
  if (o.grad_checkpoint && o.device != "cpu")
    return fail("--grad-checkpoint: checkpointing runs on the CPU only; drop it or --device");
  // A NaN passes CLI11's range checks (every comparison with it is false) and an infinity
  // passes the one-sided ones: every real-valued flag must be a finite number.
  const std::pair<const char*, double> reals[] = {{"--dropout", o.dropout},
                                                  {"--pretrain-lr", o.pretrain_lr},
                                                  {"--max-grad-norm", o.max_grad_norm},
                                                  {"--warmup", o.warmup},
                                                  {"--weight-decay", o.weight_decay},
                                                  {"--full-lr", o.full_lr},
                                                  {"--lr", o.lr},
                                                  {"--alpha", o.alpha},
                                                  {"--xi", o.xi},
                                                  {"--gate-lr", o.gate_lr},
                                                  {"--adalora-tinit", o.adalora_tinit},
                                                  {"--adalora-tfinal", o.adalora_tfinal},
                                                  {"--adalora-orth", o.adalora_orth},
                                                  {"--xi0", o.xi0},
                                                  {"--xi-max", o.xi_max}};
  for (const auto& [flag, value] : reals)
    if (!std::isfinite(value)) return fail(std::string(flag) + ": must be a finite number");
  // The adapter's scale alpha / r is a float: an alpha beyond float's range is infinite.
  if (o.alpha > 1e6)
    return fail(sora::detail::concat("--alpha: ", o.alpha, " is absurdly large (at most 1e6)"));
  if (!o.pretrained() && o.rank > o.width)
    return fail("--rank " + std::to_string(o.rank) + " exceeds --width " + std::to_string(o.width) +
                " (a rank-r update needs r <= the layer's width)");
  if (!o.pretrained() && o.width % o.heads != 0)
    return fail("--heads: " + std::to_string(o.heads) + " does not divide --width " +
                std::to_string(o.width));
  if (o.xi_max < o.xi0) return fail("--xi-max must be >= --xi0");
  if (o.xi_schedule == "log-linear" && o.xi0 <= 0)
    return fail("--xi0 must be > 0 for a log-linear --xi-schedule");
  if (o.adalora_target_rank > o.rank)
    return fail("--adalora-target-rank " + std::to_string(o.adalora_target_rank) +
                " exceeds --rank " + std::to_string(o.rank));
  if (o.adalora_tinit + o.adalora_tfinal >= 1.0)
    return fail("--adalora-tinit + --adalora-tfinal must be < 1");
  if (o.pretrained()) return std::nullopt;  // --target-modules is checked against the model
  if (o.targets.empty()) return fail("--targets: give at least one module name");
  // Every pattern must adapt something, or a typo would silently train fewer modules.
  const char* kinds[] = {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"};
  for (const std::string& pattern : split_target_list(o.targets)) {
    bool matched = false;
    for (int l = 0; l < o.layers && !matched; ++l)
      for (const char* kind : kinds)
        matched = matched ||
                  sora::model::matches_target("blocks." + std::to_string(l) + "." + kind, pattern);
    if (!matched)
      return fail("--targets: '" + pattern +
                  "' matches no module (modules: blocks.<layer>.attn.q|k|v|o, "
                  "blocks.<layer>.mlp.fc|proj)");
  }
  return std::nullopt;
}

}  // namespace sora_finetune
