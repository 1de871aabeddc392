#pragma once
// The sparsity scheduler: the SoRA paper's Algorithm 1 (docs/design.md section 4). It walks a model
// from dense to sparse to show how few adapter parameters a task needs:
//
//   1. dense phase (ξ = 0): train; at each evaluation record the metric on a fixed training
//      subset and on the validation set; their best values are the memorization and
//      generalization references;
//   2. for ξ_k in xi_schedule(kind, ξ0, ξmax, K) (linear, log-linear or exp-linear): train a
//      stage at threshold ξ_k; at each evaluation record a row
//        stage, ξ, non-zero adapter parameters,
//        memorization   = train-subset metric / train reference x 100,
//        generalization = validation metric / validation reference x 100;
//   3. write a CSV of the rows and an SVG plot of both curves against the parameter count;
//      stop early once generalization falls below a given share.
//
// Each phase (the dense one and every stage) gets a learning-rate schedule of its own, a fresh
// LrSchedule over that phase's steps. The official code kept one schedule for the whole walk,
// so by the later stages it had decayed to zero and those stages trained nothing.
//
// Metrics are "higher is better" (accuracy, F1, correlation) and the references must be > 0.
// The scheduler is generic: it drives callables (train a range of a stage's steps, evaluate,
// count, snapshot), so it knows no model; make_sparsity_hooks builds them for a model with
// forward(batch) / backward() / visit_params and an optimizer with set_xi / set_lr_multiplier
// / step (the Transformer with optim::FineTuneOptimizer, or a hand-made stack of SoRA layers).
//
// The hooks are backend generic, like train::fit: on a device model (model::Transformer<T,
// cuda::Cuda> with cuda::DeviceFineTuneOptimizer) the steps run on the device, the optimizer
// clips its own gradients there, and what the scheduler needs on the host (the gates for the
// non-zero count, the adapters of a snapshot) is downloaded through the backend's to_host at
// evaluations only.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sora/core/backend.hpp"
#include "sora/core/concepts.hpp"
#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/svg_plot.hpp"
#include "sora/optim/clip.hpp"
#include "sora/optim/lr_schedule.hpp"
#include "sora/optim/xi_schedule.hpp"
#include "sora/prune/prune.hpp"
#include "sora/train/trainer.hpp"

namespace sora::train {

struct SparsitySchedulerOptions {
  optim::XiScheduleKind xi_kind = optim::XiScheduleKind::linear;
  double xi0 = 1e-4;        // first threshold (> 0 for log-linear)
  double xi_max = 1e-3;     // last threshold
  int stages = 5;           // K, the number of ξ values
  double exp_base = 10.0;   // exp-linear's base
  long dense_steps = 1000;  // the dense phase (ξ = 0)
  long stage_steps = 1000;  // each sparse stage
  // Evaluate every this many steps within a phase, and always at its end; 0: at the end only.
  long eval_every = 0;
  optim::LrScheduleKind lr_kind = optim::LrScheduleKind::warmup_linear;
  double lr = 8e-4;            // each phase's base learning rate
  double warmup_ratio = 0.06;  // of each phase's steps
  // Stop after the first evaluation whose generalization % is below this; 0: never.
  double min_generalization = 0.0;
  std::filesystem::path csv_path;  // empty: no CSV
  std::filesystem::path svg_path;  // empty: no plot
  std::string title = "SoRA sparsity scheduler";
};

struct SparsityRow {
  int stage = 0;        // 0: the dense phase; k >= 1: the k-th ξ of the schedule
  double xi = 0.0;      // the stage's threshold (0 in the dense phase)
  long step = 0;        // steps into the stage at this evaluation
  long total_step = 0;  // steps since the start of the walk
  Index nonzero = 0;    // non-zero adapter parameters (count_nonzero)
  double train_metric = 0.0;
  double val_metric = 0.0;
  double memorization = 0.0;    // train_metric / train reference x 100
  double generalization = 0.0;  // val_metric / validation reference x 100
};

struct SparsityResult {
  std::vector<double> xis;  // the schedule, stage k uses xis[k - 1]
  double train_reference = 0.0;
  double val_reference = 0.0;
  std::vector<SparsityRow> rows;
  int stages_completed = 0;  // sparse stages trained to their end
  bool stopped_early = false;
};

struct SparsityHooks {
  // Trains steps [begin, end) of a phase at threshold xi. Step s (counted from the phase's
  // start) uses schedule.lr(s), i.e. schedule.multiplier(s) times the base rate: every phase
  // hands over a fresh schedule whose step 0 is its first step.
  std::function<void(double xi, const optim::LrSchedule& schedule, long begin, long end)>
      train_stage;
  std::function<double()> evaluate_train_subset;  // the memorization metric
  std::function<double()> evaluate_validation;    // the generalization metric
  std::function<Index()> count_nonzero;           // non-zero adapter parameters
  std::function<void(int stage)> snapshot;        // optional: after each phase's last evaluation
};

// The CSV of the rows: a header and one line per evaluation.
inline std::string sparsity_csv(const std::vector<SparsityRow>& rows) {
  std::string out =
      "stage,xi,step,total_step,nonzero_params,train_metric,val_metric,memorization_pct,"
      "generalization_pct\n";
  char line[512];
  for (const SparsityRow& r : rows) {
    std::snprintf(line, sizeof line, "%d,%.10g,%ld,%ld,%lld,%.10g,%.10g,%.10g,%.10g\n", r.stage,
                  r.xi, r.step, r.total_step, static_cast<long long>(r.nonzero), r.train_metric,
                  r.val_metric, r.memorization, r.generalization);
    out += line;
  }
  return out;
}

// Memorization and generalization against the non-zero parameter count (log scale). Within
// a stage, evaluations at an unchanged count (every evaluation of the dense phase, a sparse
// stage where no gate died between two evaluations) would stack vertically at one x, drawn as
// a vertical line; only the last of them (the stage's latest state at that count) is plotted.
// Each stage's end is marked by a dashed line labelled "dense" or its ξ.
inline std::string sparsity_svg(const std::vector<SparsityRow>& rows, const std::string& title) {
  io::LinePlot plot;
  plot.title = title;
  plot.x_label = "non-zero adapter parameters";
  plot.y_label = "% of the dense reference";
  plot.log_x = true;
  io::Series mem, gen;
  mem.name = "memorization";
  gen.name = "generalization";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const SparsityRow& r = rows[i];
    const bool last_of_stage = i + 1 == rows.size() || rows[i + 1].stage != r.stage;
    if (!last_of_stage && rows[i + 1].nonzero == r.nonzero) continue;  // a later row replaces it
    mem.x.push_back(static_cast<double>(r.nonzero));
    mem.y.push_back(r.memorization);
    gen.x.push_back(static_cast<double>(r.nonzero));
    gen.y.push_back(r.generalization);
    if (last_of_stage) {
      char label[48];
      std::snprintf(label, sizeof label, "xi %.3g", r.xi);
      plot.marks.push_back({static_cast<double>(r.nonzero), r.stage == 0 ? "dense" : label});
    }
  }
  plot.add(std::move(mem));
  plot.add(std::move(gen));
  return plot.svg();
}

inline SparsityResult run_sparsity_scheduler(const SparsityHooks& hooks,
                                             const SparsitySchedulerOptions& options) {
  SORA_CHECK(hooks.train_stage && hooks.evaluate_train_subset && hooks.evaluate_validation &&
                 hooks.count_nonzero,
             "run_sparsity_scheduler: train_stage, evaluate_train_subset, evaluate_validation "
             "and count_nonzero are required");
  SORA_CHECK(options.dense_steps > 0 && options.stage_steps > 0,
             "run_sparsity_scheduler: dense_steps and stage_steps must be > 0, got ",
             options.dense_steps, " and ", options.stage_steps);
  SORA_CHECK(options.eval_every >= 0, "run_sparsity_scheduler: eval_every must be >= 0, got ",
             options.eval_every);
  SORA_CHECK(std::isfinite(options.min_generalization) && options.min_generalization >= 0.0,
             "run_sparsity_scheduler: min_generalization must be a finite share >= 0, got ",
             options.min_generalization);

  SparsityResult result;
  result.xis = optim::xi_schedule(options.xi_kind, options.xi0, options.xi_max, options.stages,
                                  options.exp_base);
  long total_step = 0;

  auto write_outputs = [&] {
    if (!options.csv_path.empty())
      io::write_file_atomic(options.csv_path, sparsity_csv(result.rows));
    if (!options.svg_path.empty())
      io::write_file_atomic(options.svg_path, sparsity_svg(result.rows, options.title));
  };
  auto percent = [](double metric, double reference) { return metric / reference * 100.0; };

  // Trains one phase, evaluating every eval_every steps and at its end; `on_eval` sees each
  // row and returns true to stop the phase there.
  auto run_phase = [&](int stage, double xi, long steps, auto&& on_eval) {
    const optim::LrSchedule schedule = optim::LrSchedule::with_warmup_ratio(
        options.lr_kind, options.lr, options.warmup_ratio, steps);
    const long chunk = options.eval_every > 0 ? options.eval_every : steps;
    for (long begin = 0; begin < steps;) {
      const long end = std::min(steps, begin + chunk);
      hooks.train_stage(xi, schedule, begin, end);
      total_step += end - begin;
      begin = end;
      SparsityRow row;
      row.stage = stage;
      row.xi = xi;
      row.step = end;
      row.total_step = total_step;
      row.nonzero = hooks.count_nonzero();
      row.train_metric = hooks.evaluate_train_subset();
      row.val_metric = hooks.evaluate_validation();
      if (on_eval(row)) return true;
    }
    return false;
  };

  // 1. Dense phase: the references are the best metrics seen in it.
  const std::size_t dense_first = result.rows.size();
  double best_train = -std::numeric_limits<double>::infinity(), best_val = best_train;
  run_phase(0, 0.0, options.dense_steps, [&](SparsityRow& row) {
    best_train = std::max(best_train, row.train_metric);
    best_val = std::max(best_val, row.val_metric);
    result.rows.push_back(row);
    return false;
  });
  SORA_CHECK(best_train > 0.0 && best_val > 0.0,
             "run_sparsity_scheduler: the dense references must be > 0 (higher-is-better "
             "metrics), got train ",
             best_train, " and validation ", best_val);
  result.train_reference = best_train;
  result.val_reference = best_val;
  for (std::size_t i = dense_first; i < result.rows.size(); ++i) {
    result.rows[i].memorization = percent(result.rows[i].train_metric, best_train);
    result.rows[i].generalization = percent(result.rows[i].val_metric, best_val);
  }
  if (hooks.snapshot) hooks.snapshot(0);
  write_outputs();

  // 2. Sparse stages, one per ξ, each with a fresh learning-rate schedule.
  for (int k = 1; k <= options.stages; ++k) {
    const double xi = result.xis[static_cast<std::size_t>(k - 1)];
    const bool stop = run_phase(k, xi, options.stage_steps, [&](SparsityRow& row) {
      row.memorization = percent(row.train_metric, best_train);
      row.generalization = percent(row.val_metric, best_val);
      result.rows.push_back(row);
      return options.min_generalization > 0.0 && row.generalization < options.min_generalization;
    });
    if (hooks.snapshot) hooks.snapshot(k);
    write_outputs();
    if (stop) {
      result.stopped_early = true;
      break;
    }
    result.stages_completed = k;
  }
  return result;
}

// ---- helpers for models ----------------------------------------------------------------------

// Non-zero adapter parameters of a model, counted truly (prune::count_parameters): a rank
// with a non-zero gate costs in + out (+1 for its gate), a zero-gated rank nothing. Modules
// without an adapter are left out.
template <class Model>
Index adapter_nonzero(Model& model) {
  Index total = 0;
  for (const prune::ModuleCount& m : prune::count_parameters(model).modules)
    if (m.rank > 0) total += m.nonzero;
  return total;
}

// The adapter parameters (lora_A, lora_B, gates) by name: enough to re-evaluate a stage.
// Always host matrices: a device model's are downloaded (Backend::to_host).
template <class T>
using AdapterSnapshot = std::vector<std::pair<std::string, Matrix<T>>>;

template <class T, class Model>
AdapterSnapshot<T> snapshot_adapters(Model& model) {
  using Backend = typename backend_of<Model>::type;
  AdapterSnapshot<T> out;
  model.visit_params([&](Param<T, Backend>& p) {
    if (is_adapter_role(p.role)) out.emplace_back(p.name, Backend::to_host(p.value));
  });
  return out;
}

// Puts a snapshot back (uploaded to a device model); every name must exist with the same shape.
template <class T, class Model>
void restore_adapters(Model& model, const AdapterSnapshot<T>& snapshot) {
  using Backend = typename backend_of<Model>::type;
  std::size_t restored = 0;
  model.visit_params([&](Param<T, Backend>& p) {
    for (const auto& [name, value] : snapshot) {
      if (name != p.name) continue;
      SORA_CHECK(value.rows() == p.value.rows() && value.cols() == p.value.cols(),
                 "restore_adapters: '", name, "' is ", shape_of(value), " in the snapshot but (",
                 p.value.rows(), ", ", p.value.cols(), ") in the model");
      Backend::upload(p.value, value);
      ++restored;
    }
  });
  SORA_CHECK(restored == snapshot.size(), "restore_adapters: ", snapshot.size() - restored,
             " of the snapshot's tensors are not in the model");
}

// Hooks for a model trained by an optimizer with set_xi(ξ), set_lr_multiplier(m) and step()
// (optim::FineTuneOptimizer for the Transformer, cuda::DeviceFineTuneOptimizer for its device
// twin). One step: zero the trainable gradients, forward(next_batch(global step)) ->
// backward(), clip to max_grad_norm (0: off; by the optimizer's own clip_grad_norm where it
// has one, as train::fit does, else optim::clip_grad_norm on the host), learning rate
// multiplier schedule.multiplier(s), ξ, step. A loss that is not finite throws NonFiniteError
// before the step. Every phase's snapshot (adapter tensors, on the host) is appended to
// *snapshots when it is given.
template <class Model, class Optimizer, class BatchFn>
SparsityHooks make_sparsity_hooks(
    Model& model, Optimizer& optimizer, BatchFn next_batch, std::function<double()> eval_train,
    std::function<double()> eval_val, double max_grad_norm = 0.0,
    std::vector<AdapterSnapshot<typename Model::Scalar>>* snapshots = nullptr) {
  using T = typename Model::Scalar;
  using Backend = typename backend_of<Model>::type;
  using P = Param<T, Backend>;
  SORA_CHECK(!std::isnan(max_grad_norm), "make_sparsity_hooks: max_grad_norm is NaN");
  auto params = std::make_shared<std::vector<P*>>();
  model.visit_params([&](P& p) {
    if (p.trainable()) params->push_back(&p);
  });
  auto global = std::make_shared<long>(0);
  SparsityHooks hooks;
  hooks.train_stage = [&model, &optimizer, next_batch, params, global, max_grad_norm](
                          double xi, const optim::LrSchedule& schedule, long begin, long end) {
    model.train(true);
    optimizer.set_xi(xi);
    for (long s = begin; s < end; ++s) {
      for (P* p : *params) p->zero_grad();
      const long step = (*global)++;
      const auto loss = static_cast<double>(model.forward(next_batch(step)));
      if (!std::isfinite(loss)) throw NonFiniteError(step, "loss", loss);
      model.backward();
      if constexpr (requires { optimizer.clip_grad_norm(max_grad_norm); }) {
        if (max_grad_norm > 0.0) optimizer.clip_grad_norm(max_grad_norm);
      } else {
        static_assert(std::is_same_v<Backend, Cpu>,
                      "make_sparsity_hooks: on a device backend the optimizer must offer "
                      "clip_grad_norm");
        optim::clip_grad_norm(*params, max_grad_norm);
      }
      optimizer.set_lr_multiplier(schedule.multiplier(s));
      optimizer.step();
    }
  };
  hooks.evaluate_train_subset = [&model, eval_train] {
    model.train(false);
    const double metric = eval_train();
    model.train(true);
    return metric;
  };
  hooks.evaluate_validation = [&model, eval_val] {
    model.train(false);
    const double metric = eval_val();
    model.train(true);
    return metric;
  };
  hooks.count_nonzero = [&model] { return adapter_nonzero(model); };
  if (snapshots != nullptr)
    hooks.snapshot = [&model, snapshots](int) {
      snapshots->push_back(snapshot_adapters<T>(model));
    };
  return hooks;
}

}  // namespace sora::train
