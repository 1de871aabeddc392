#pragma once
// sora-finetune's checkpoints: --save-every N, --resume DIR, and the checkpoint that SIGINT or
// SIGTERM writes before the program exits.
//
// <out>/checkpoint/ (replaced whole, io::AtomicDirWriter) holds
//   state.json          the flags that decide the results (Options::fingerprint), the run id,
//                       metrics.csv so far, the finished runs (run_json), and, when a run was
//                       in progress, where it stood: its method and seed, the batch stream
//                       (permutation, position, RNG), fit's state (evaluations, best metric,
//                       patience) and the loss sums of the next metrics.csv line
//   train.safetensors   model, optimizer and learning-rate schedule (io::save_checkpoint)
//   best.safetensors    the trainable parameters at the best evaluation so far (restore_best)
// A resumed run (same flags, same thread count) skips the finished runs, continues the one in
// progress at the step after the checkpoint and computes bit for bit what the uninterrupted
// run computes. CPU runs only.

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data.hpp"
#include "run_result.hpp"
#include "sora/io/atomic_dir.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/checkpoint.hpp"
#include "sora/io/input_file.hpp"
#include "sora/io/named_tensors.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/train/trainer.hpp"

namespace sora_finetune {

inline constexpr const char* kCheckpointFormat = "sora-finetune.checkpoint";
inline constexpr int kCheckpointVersion = 1;

// Where a run in progress stood at the checkpoint.
struct RunInProgress {
  std::string method;
  std::uint64_t seed = 0;
  long step = 0;  // optimizer steps taken
  BatchStream::State stream;
  sora::train::TrainResult fit;  // fit's result so far
  long since_best = 0;
  bool has_best = false;  // best.safetensors holds the best evaluation's values
  // The pieces of train_model's own state that reach the outputs.
  double loss_sum = 0.0;
  long loss_count = 0;
  std::vector<double> eval_losses;
  double train_seconds = 0.0;  // before the checkpoint, evaluations excluded
};

// What state.json says.
struct CheckpointState {
  std::string fingerprint;
  std::string run_id;
  std::string csv;
  std::vector<RunResult> finished;
  std::optional<RunInProgress> current;
};

// The checkpointing of one program run: where to write, how often, and what to resume.
struct Checkpointing {
  fs::path folder;      // <out>/checkpoint
  long save_every = 0;  // 0: only when stopped by a signal
  std::string fingerprint;
  std::string run_id;
  const std::vector<RunResult>* finished = nullptr;  // the runs done so far (run())
  const std::string* csv = nullptr;                  // metrics.csv so far
  std::optional<CheckpointState> resume;             // --resume: what to continue
  fs::path resume_folder;
};

namespace checkpoint_detail {

inline json rng_json(const sora::Rng::State& s) {
  return sora::io::ckpt_detail::rng_string(s);
}

inline sora::Rng::State rng_from_json(const json& j) {
  const auto state = sora::io::ckpt_detail::parse_rng(j.get<std::string>());
  SORA_CHECK(state.has_value(), "malformed RNG state '", j.get<std::string>(), "'");
  return *state;
}

inline json fit_json(const sora::train::TrainResult& r) {
  json j;
  j["steps"] = r.steps;
  j["losses"] = r.losses;
  j["eval_steps"] = r.eval_steps;
  j["eval_metrics"] = r.eval_metrics;
  j["best_metric"] = r.best_metric;  // NaN (no evaluation yet) is written as null
  j["best_step"] = r.best_step;
  j["stopped_early"] = r.stopped_early;
  return j;
}

inline sora::train::TrainResult fit_from_json(const json& j) {
  sora::train::TrainResult r;
  r.steps = j.at("steps").get<long>();
  r.losses = json_numbers(j.at("losses"));
  r.eval_steps = j.at("eval_steps").get<std::vector<long>>();
  r.eval_metrics = json_numbers(j.at("eval_metrics"));
  r.best_metric = json_number(j.at("best_metric"));
  r.best_step = j.at("best_step").get<long>();
  r.stopped_early = j.at("stopped_early").get<bool>();
  return r;
}

// The flags that differ between two fingerprints, as "--flag: was A, now B" lines.
inline std::string fingerprint_difference(const std::string& saved, const std::string& now) {
  auto lines = [](const std::string& text) {
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      const std::string line = text.substr(start, end - start);
      const std::size_t eq = line.find('=');
      if (eq != std::string::npos) out.emplace_back(line.substr(0, eq), line.substr(eq + 1));
      start = end + 1;
    }
    return out;
  };
  const auto a = lines(saved), b = lines(now);
  std::string diff;
  for (const auto& [name, value] : b) {
    std::string before = "(no such flag)";
    for (const auto& [n, v] : a)
      if (n == name) before = v.empty() ? "(unset)" : v;
    const std::string after = value.empty() ? "(unset)" : value;
    if (before != after) diff += "\n  --" + name + ": checkpoint " + before + ", now " + after;
  }
  return diff;
}

}  // namespace checkpoint_detail

// Reads and checks `folder`/state.json: a sora::Error names the folder and what is wrong (not
// a checkpoint, another version, flags that differ from `fingerprint`).
inline CheckpointState read_checkpoint_state(const fs::path& folder, const std::string& fingerprint,
                                             const fs::path& out) {
  namespace cd = checkpoint_detail;
  const fs::path path = folder / "state.json";
  const std::string text = [&] {
    try {
      return sora::io::read_input_file(path);
    } catch (const sora::Error& e) {
      sora::detail::throw_error("--resume: ", folder.string(),
                                " is not a sora-finetune checkpoint folder (", e.what(), ")");
    }
  }();
  CheckpointState st;
  try {
    const json j = json::parse(text);
    SORA_CHECK(j.at("format").get<std::string>() == kCheckpointFormat, "--resume: ", path.string(),
               " is not a sora-finetune checkpoint");
    SORA_CHECK(j.at("version").get<int>() == kCheckpointVersion, "--resume: ", path.string(),
               " has version ", j.at("version").dump(), ", this program reads version ",
               kCheckpointVersion);
    st.fingerprint = j.at("flags").get<std::string>();
    st.run_id = j.at("run_id").get<std::string>();
    st.csv = j.at("metrics_csv").get<std::string>();
    for (const json& r : j.at("finished")) st.finished.push_back(run_from_json(r, out));
    if (!j.at("current").is_null()) {
      const json& c = j.at("current");
      RunInProgress p;
      p.method = c.at("method").get<std::string>();
      p.seed = c.at("seed").get<std::uint64_t>();
      p.step = c.at("step").get<long>();
      p.stream.rng = cd::rng_from_json(c.at("stream").at("rng"));
      p.stream.order = c.at("stream").at("order").get<std::vector<std::size_t>>();
      p.stream.pos = c.at("stream").at("pos").get<std::size_t>();
      p.fit = cd::fit_from_json(c.at("fit"));
      p.since_best = c.at("since_best").get<long>();
      p.has_best = c.at("has_best").get<bool>();
      p.loss_sum = c.at("loss_sum").get<double>();
      p.loss_count = c.at("loss_count").get<long>();
      p.eval_losses = json_numbers(c.at("eval_losses"));
      p.train_seconds = c.at("train_seconds").get<double>();
      st.current = std::move(p);
    }
  } catch (const json::exception& e) {
    sora::detail::throw_error("--resume: ", path.string(), " is malformed: ", e.what());
  }
  const std::string diff = cd::fingerprint_difference(st.fingerprint, fingerprint);
  SORA_CHECK(diff.empty(), "--resume: ", folder.string(),
             " was written by a run with other flags; give the same flags as that run:", diff);
  return st;
}

namespace checkpoint_detail {

inline json state_json(const Checkpointing& cp) {
  json j;
  j["format"] = kCheckpointFormat;
  j["version"] = kCheckpointVersion;
  j["run_id"] = cp.run_id;
  j["flags"] = cp.fingerprint;
  j["metrics_csv"] = cp.csv != nullptr ? *cp.csv : std::string();
  j["finished"] = json::array();
  if (cp.finished != nullptr)
    for (const RunResult& r : *cp.finished) j["finished"].push_back(run_json(r));
  j["current"] = nullptr;
  return j;
}

}  // namespace checkpoint_detail

// Writes the checkpoint folder with the finished runs only (between two runs). Replaces the
// folder whole; a failure leaves the previous checkpoint as it was.
inline void write_checkpoint(const Checkpointing& cp) {
  sora::io::AtomicDirWriter dir(cp.folder);
  sora::io::write_file_atomic(dir.path() / "state.json",
                              checkpoint_detail::state_json(cp).dump(1) + "\n");
  dir.commit();
}

// Writes the checkpoint folder with the finished runs and the run in progress: `current`,
// its model, optimizer and fit state (between two steps). Replaces the folder whole.
template <class Model, class Optimizer>
void write_checkpoint(const Checkpointing& cp, const RunInProgress& current, Model& model,
                      Optimizer& optimizer, sora::train::FitState<float>& fit,
                      const sora::optim::LrSchedule& schedule) {
  namespace cd = checkpoint_detail;
  json j = cd::state_json(cp);
  const RunInProgress& p = current;
  json c;
  c["method"] = p.method;
  c["seed"] = p.seed;
  c["step"] = p.step;
  c["stream"] = {
      {"rng", cd::rng_json(p.stream.rng)}, {"order", p.stream.order}, {"pos", p.stream.pos}};
  c["fit"] = cd::fit_json(fit.result);
  c["since_best"] = fit.since_best;
  c["has_best"] = !fit.best.empty();
  c["loss_sum"] = p.loss_sum;
  c["loss_count"] = p.loss_count;
  c["eval_losses"] = p.eval_losses;
  c["train_seconds"] = p.train_seconds;
  j["current"] = c;

  sora::io::AtomicDirWriter dir(cp.folder);
  sora::io::TrainingState ts;
  ts.step = p.step;
  ts.schedule = schedule;
  sora::io::save_checkpoint(dir.path() / "train.safetensors", model, optimizer, ts);
  if (!fit.best.empty()) {
    // fit's snapshot is parallel to the trainable parameters in visit order.
    std::vector<sora::io::TensorSlot<float>> slots;
    std::size_t i = 0;
    model.visit_params([&](sora::Param<float>& param) {
      if (!param.trainable()) return;
      slots.push_back({param.name, &fit.best.at(i++), param.is_vector});
    });
    sora::io::save_tensors<float>(dir.path() / "best.safetensors", slots, sora::io::Dtype::F32,
                                  {{"format", "pt"}});
  }
  sora::io::write_file_atomic(dir.path() / "state.json", j.dump(1) + "\n");
  dir.commit();
}

// The error that ends a run stopped by a signal once its checkpoint is written.
[[noreturn]] inline void throw_stopped_with_checkpoint(int sig, const fs::path& folder,
                                                       const std::string& where) {
  sora::detail::throw_error("stopped by ", sig == SIGINT ? "SIGINT" : "SIGTERM", where,
                            "; the checkpoint is in ", folder.string(),
                            "; to continue, run again with the same flags and --resume ",
                            folder.string());
}

// Puts the run in progress back: model and optimizer from train.safetensors, fit's state and
// its best snapshot.
template <class Model, class Optimizer>
void restore_checkpoint(const fs::path& folder, const RunInProgress& p, Model& model,
                        Optimizer& optimizer, sora::train::FitState<float>& fit) {
  const sora::io::TrainingState ts =
      sora::io::load_checkpoint(folder / "train.safetensors", model, optimizer);
  SORA_CHECK(ts.step == p.step, "--resume: ", folder.string(), ": train.safetensors is at step ",
             ts.step, ", state.json at step ", p.step, " (a mixed-up folder)");
  fit.result = p.fit;
  fit.since_best = p.since_best;
  fit.best.clear();
  if (p.has_best) {
    model.visit_params([&](sora::Param<float>& param) {
      if (!param.trainable()) return;
      fit.best.push_back(param.value);  // shaped like the parameter; overwritten below
    });
    std::vector<sora::io::TensorSlot<float>> slots;
    std::size_t i = 0;
    model.visit_params([&](sora::Param<float>& param) {
      if (!param.trainable()) return;
      slots.push_back({param.name, &fit.best[i++], param.is_vector});
    });
    sora::io::load_into(sora::io::SafetensorsFile::open(folder / "best.safetensors"), slots);
  }
}

}  // namespace sora_finetune
