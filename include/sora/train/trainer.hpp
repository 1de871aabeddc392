#pragma once
// A small training loop: batches, steps, periodic evaluation, early stopping on the best
// validation metric, and the SoRA options of a step (an L1 loss term on the gates, global
// gradient-norm clipping before the optimizer steps).
//
// One step:  zero grads -> forward -> backward -> (+ L1 gate term) -> clip -> lr schedule ->
// optimizer step. The model is a sora::Model (core/concepts.hpp: forward(batch) -> loss,
// backward(), train(bool), visit_params(fn)); the optimizer needs step() and
// set_lr_multiplier(double)
// (optim::FineTuneOptimizer, optim::SGD, optim::AdaLoraOptimizer).
//
// The loop is the same on every backend (the model's BackendTag, core/backend.hpp; Cpu for a
// model without one). An optimizer with clip_grad_norm(max_norm) clips its own parameters'
// gradients (the GPU optimizers do, on the device, without reading anything back); otherwise
// optim::clip_grad_norm does, on the host. On a device backend the step reads back one value,
// the loss, and the L1 gate term's sum when that term is on (cuda/gate_l1.cuh).
//
// A run that diverges stops at once: a loss that is not finite (and, where the host clips, a
// gradient norm that is not finite) throws NonFiniteError before the optimizer takes the step,
// so no NaN reaches the parameters through it and the caller writes nothing from the run.
//
// Data-parallel (a communicator of size P > 1, dist/communicator.hpp): next_batch(step) gives
// the global batch on every rank and each rank trains on its shard (dist/shard.hpp). After
// backward, every trainable gradient, scaled by the rank's share of the batch's loss terms,
// and the scaled loss go into one flat buffer and ONE all_reduce_sum: the result is the
// gradient and loss of the whole global batch, the same bits on every rank. Everything after
// it (the L1 gate term, clipping, the schedule, the optimizer's prox / AdaLoRA masking, the
// evaluation metric, which rank 0 broadcasts, and so early stopping) then decides the same on
// every rank. A hash of the trainable parameters, all-gathered every check_every steps, turns
// any divergence into an error naming the step. An exception on any rank aborts every rank
// with its message (comm.abort), so no rank waits forever in a collective.
//
// A device model (cuda::Cuda) trains data-parallel over a device communicator (dist::Nccl,
// dist::DeviceCommunicator): the bucket is one device buffer (Backend::pack_gradients, on the
// model's stream, which the communicator is switched to), all-reduced in place, copied back
// (Backend::unpack_gradients reads back the summed loss only); the evaluation metric is
// broadcast from a one-element device buffer. A device communicator takes this path with a
// world of one too, so one GPU runs the same code as many. A host communicator with a device
// model, or the reverse, is an error.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "sora/core/backend.hpp"
#include "sora/core/concepts.hpp"
#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/dist/communicator.hpp"
#include "sora/dist/param_hash.hpp"
#include "sora/dist/shard.hpp"
#include "sora/optim/clip.hpp"
#include "sora/optim/lr_schedule.hpp"
#include "sora/optim/param_groups.hpp"

namespace sora::train {

using sora::backend_of;

// The optional L1 term on SoRA's gates, lambda * sum|g| / N_gates (N_gates: the number of gate
// scalars), added to the loss. Its (sub)gradient lambda sign(g) / N_gates is added onto each
// gate's gradient, with 0 at g = 0 (the subgradient the proximal step makes moot). Returns the
// term's value.
template <class T>
double add_gate_l1(const std::vector<Param<T>*>& gates, double lambda) {
  SORA_CHECK(std::isfinite(lambda) && lambda >= 0.0, "add_gate_l1: lambda must be >= 0, got ",
             lambda);
  Index count = 0;
  for (const Param<T>* g : gates) count += g->size();
  if (lambda == 0.0 || count == 0) return 0.0;
  const double weight = lambda / static_cast<double>(count);
  double sum = 0.0;
  for (Param<T>* g : gates) {
    sum += g->value.template cast<double>().cwiseAbs().sum();
    g->gradient().array() += static_cast<T>(weight) * g->value.array().sign();
  }
  return weight * sum;
}

// Training diverged: the loss or the gradient norm of `step` is `value` (NaN or infinite).
// Callers that know which flag set the learning rate or the scale add it to the message.
class NonFiniteError : public Error {
 public:
  // `where`: empty, or the rank whose shard gave the value (" on rank 1 of 2").
  NonFiniteError(long step, const char* quantity, double value, const std::string& where = {})
      : Error(sora::detail::concat("fit: step ", step, ": the ", quantity, " is ", value,
                                   " (not finite)", where,
                                   ": training diverged; a smaller learning rate or "
                                   "adapter alpha, or gradient clipping, may help")),
        step_(step),
        value_(value) {}
  long step() const { return step_; }
  double value() const { return value_; }

 private:
  long step_;
  double value_;
};

struct TrainerOptions {
  long max_steps = 1000;  // the step to stop at (global: a resumed run counts from 0 too)
  // The first step to run: 0 for a fresh run, the checkpoint's step when resuming (the
  // schedule and next_batch then see the same global steps as an uninterrupted run).
  long start_step = 0;
  long eval_every = 0;  // evaluate every this many steps (and after the last); 0: never
  // Stop after this many evaluations in a row without improving the best metric by more than
  // min_delta; 0: never stop early.
  long patience = 0;
  double min_delta = 0.0;
  bool higher_is_better = true;  // accuracy, F1, correlation; false for a loss
  bool restore_best = true;      // put the best evaluated parameters back at the end
  double max_grad_norm = 0.0;    // global clipping over all trainable parameters; 0: off
  double gate_l1 = 0.0;          // lambda of add_gate_l1; 0: off
  optim::LrSchedule schedule;    // multiplier on the optimizer's base rates (constant: 1)
  // Called after every step with (step, loss); e.g. a progress bar. Data-parallel: on every
  // rank, with the global batch's loss (let rank 0 print).
  std::function<void(long, double)> on_step;
  // Called at the end of every step that does not end the run, after that step's evaluation,
  // with the number of steps taken: the one point where model, optimizer and FitState agree,
  // so the place to write a checkpoint (sora-finetune's --save-every and SIGINT).
  std::function<void(long)> after_step;
  // Data-parallel only (ignored with one process):
  // all-gather a hash of the trainable parameters before the first step, every this many
  // steps and after the last; 0: only before the first and after the last.
  long check_every = 100;
  // Data-parallel runs: before each step, each rank's dropout streams restart from a seed mixed
  // from this, the step and the rank. The ranks' shards must not share dropout masks, and a
  // run resumed at any step draws what the uninterrupted run drew there, whatever state the
  // generators were restored with (a checkpoint holds rank 0's).
  std::uint64_t dropout_seed = 0;
};

struct TrainResult {
  long steps = 0;                    // optimizer steps taken
  std::vector<double> losses;        // training loss of every step (with the L1 term)
  std::vector<long> eval_steps;      // the step after which each evaluation ran
  std::vector<double> eval_metrics;  // parallel to eval_steps
  double best_metric = std::numeric_limits<double>::quiet_NaN();
  long best_step = -1;
  bool stopped_early = false;
};

// What fit carries from one step to the next besides the model and the optimizer: the result
// so far and the snapshot of the best evaluation. A caller that passes its own FitState can
// save it between steps (after_step) and hand it back with options.start_step to continue the
// run exactly where it stopped: the same evaluations, the same early stop, the same best.
template <class T, class Backend = Cpu>
struct FitState {
  TrainResult result;
  long since_best = 0;  // evaluations since the best one
  // The trainable parameters' values at the best evaluation, in visit_params order; empty
  // until the first evaluation (or when restore_best is off).
  std::vector<typename Backend::template Tensor<T>> best;
};

namespace detail {

template <class Model, class Optimizer, dist::Communicator Comm>
TrainResult fit_impl(Model& model, Optimizer& optimizer,
                     const std::function<const typename Model::Batch&(long)>& next_batch,
                     const std::function<double()>& evaluate, const TrainerOptions& options,
                     Comm& comm,
                     FitState<typename Model::Scalar, typename backend_of<Model>::type>* state) {
  SORA_REQUIRE_MODEL(Model, "train::fit");
  using T = typename Model::Scalar;
  using Batch = typename Model::Batch;
  using Backend = typename backend_of<Model>::type;
  using P = Param<T, Backend>;
  using Tensor = typename Backend::template Tensor<T>;
  SORA_CHECK(options.max_steps >= 0, "fit: max_steps must be >= 0, got ", options.max_steps);
  SORA_CHECK(options.start_step >= 0 && options.start_step <= options.max_steps,
             "fit: start_step must be in [0, max_steps = ", options.max_steps, "], got ",
             options.start_step);
  SORA_CHECK(options.eval_every == 0 || evaluate, "fit: eval_every is set but no evaluate()");
  SORA_CHECK(!std::isnan(options.max_grad_norm), "fit: max_grad_norm is NaN");
  SORA_CHECK(options.check_every >= 0, "fit: check_every must be >= 0, got ", options.check_every);
  std::vector<P*> params;
  std::vector<P*> gates;
  model.visit_params([&](P& p) {
    if (!p.trainable()) return;
    params.push_back(&p);
    if (optim::is_sora_gate(p)) gates.push_back(&p);
  });

  constexpr bool device_model = !std::is_same_v<Backend, Cpu>;
  constexpr bool device_comm = dist::DeviceCommunicator<Comm>;
  const int ranks = comm.size(), rank = comm.rank();
  // A device communicator always takes the all-reduce path, a world of one included.
  const bool parallel = ranks > 1 || device_comm;
  Batch shard;                 // this rank's rows of the global batch (parallel runs)
  std::vector<T> flat;         // (trainable scalars + 1): w_r * gradients, then w_r * loss (host)
  Tensor flat_device;          // (1, trainable scalars + 1): the same on the device
  std::vector<Tensor*> grads;  // the trainable gradients in params order (device bucket)
  if (parallel) {
    if constexpr (device_model != device_comm) {
      sora::detail::throw_error(
          "fit: ",
          device_model ? "a device model trains data-parallel over a device communicator "
                         "(dist::Nccl), not over host memory"
                       : "a CPU model trains data-parallel over a host communicator (dist::Mpi), "
                         "not over device memory (dist::Nccl)",
          " (", ranks, " ranks)");
    } else if constexpr (!dist::Shardable<Batch>) {
      sora::detail::throw_error("fit: this model's batches cannot be sharded over ", ranks,
                                " ranks (no shard_batch / loss_terms for them)");
    } else {
      if constexpr (device_model) {
        for (P* p : params) grads.push_back(&p->gradient());
        // The all-reduce is ordered between the kernels that write the gradients and those
        // that read them by running on their stream.
        if constexpr (requires { comm.set_stream(Backend::stream()); })
          comm.set_stream(Backend::stream());
      } else {
        std::size_t scalars = 0;
        for (const P* p : params) scalars += static_cast<std::size_t>(p->value.size());
        flat.resize(scalars + 1);
      }
    }
  }
  // Every rank must hold the same parameters: the same before the first step (a model
  // initialised or loaded differently on one rank), and the same after each step taken from
  // the same summed gradient.
  // (A device model's values are downloaded to be hashed.)
  auto check_same_params = [&](long step) {
    const std::vector<std::uint64_t> hashes = comm.all_gather(dist::hash_values(params));
    for (int r = 1; r < ranks; ++r) {
      SORA_CHECK(hashes[static_cast<std::size_t>(r)] == hashes[0], "fit: step ", step,
                 ": the trainable parameters of rank ", r, " differ from rank 0's (hash ",
                 hashes[static_cast<std::size_t>(r)], " vs ", hashes[0],
                 "): the ranks diverged; something decided differently on one rank");
    }
  };
  // The global batch's loss and gradient from this rank's shard: forward and backward on the
  // shard, then the one all-reduce of the weighted gradients and loss.
  auto forward_backward = [&](long step) -> double {
    const Batch& global = next_batch(step);
    if (!parallel) {
      const double loss = static_cast<double>(model.forward(global));
      model.backward();
      return loss;
    }
    if constexpr (device_model == device_comm && dist::Shardable<Batch>) {
      using dist::loss_terms;  // found by argument-dependent lookup for other batch types
      using dist::shard_batch;
      shard_batch(shard, global, rank, ranks);
      if constexpr (requires { model.reseed_dropout(std::uint64_t{}); }) {
        // (seed, step) through an odd multiplier is one-to-one; the rank picks among them.
        const std::uint64_t mixed =
            (options.dropout_seed * 1000003ULL + static_cast<std::uint64_t>(step)) *
                0x9E3779B97F4A7C15ULL +
            static_cast<std::uint64_t>(rank);
        model.reseed_dropout(mixed);
      }
      const auto total = static_cast<double>(loss_terms(global));
      const double weight = total > 0 ? static_cast<double>(loss_terms(shard)) / total : 0.0;
      // A batch smaller than the world (an epoch's last) leaves some ranks no rows: they
      // add zeros to the sum.
      const double local = shard.batch > 0 ? static_cast<double>(model.forward(shard)) : 0.0;
      // Caught here, before the all-reduce, so the message names the rank whose data it was.
      if (!std::isfinite(local))
        throw NonFiniteError(step, "loss", local,
                             sora::detail::concat(" on rank ", rank, " of ", ranks));
      if (shard.batch > 0) model.backward();
      const T w = static_cast<T>(weight);
      if constexpr (device_model) {
        Backend::pack_gradients(flat_device, grads, w, static_cast<T>(weight * local));
        comm.all_reduce_sum(
            std::span<T>(flat_device.data(), static_cast<std::size_t>(flat_device.size())));
        return Backend::unpack_gradients(flat_device, grads);
      } else {
        std::size_t offset = 0;
        for (const P* p : params) {
          const T* g = p->gradient().data();
          const auto n = static_cast<std::size_t>(p->value.size());
          for (std::size_t i = 0; i < n; ++i) flat[offset + i] = w * g[i];
          offset += n;
        }
        flat[offset] = static_cast<T>(weight * local);
        comm.all_reduce_sum(std::span<T>(flat));
        offset = 0;
        for (P* p : params) {
          const auto n = static_cast<std::size_t>(p->value.size());
          std::copy_n(flat.data() + offset, n, p->gradient().data());
          offset += n;
        }
        return static_cast<double>(flat[offset]);
      }
    }
    return 0.0;  // unreachable: the set-up above threw
  };

  FitState<T, Backend> local;
  FitState<T, Backend>& st = state != nullptr ? *state : local;
  SORA_CHECK(st.best.empty() || st.best.size() == params.size(), "fit: the FitState holds ",
             st.best.size(), " best-value tensors, the model has ", params.size(),
             " trainable parameters");
  TrainResult& result = st.result;
  std::vector<Tensor>& best = st.best;  // snapshot of the trainable values at the best evaluation
  long& since_best = st.since_best;
  auto better = [&](double metric) {
    if (std::isnan(result.best_metric)) return !std::isnan(metric);
    return options.higher_is_better ? metric > result.best_metric + options.min_delta
                                    : metric < result.best_metric - options.min_delta;
  };
  auto run_eval = [&](long step) {
    model.train(false);
    double metric = evaluate();
    model.train(true);
    // An evaluation sharded with dist::gather_outputs gives every rank the same metric; rank
    // 0's broadcast makes the decisions below agree whatever evaluate() does.
    if (parallel) {
      if constexpr (device_model && device_comm) {
        auto on_device =
            Backend::template from_host<double>(Matrix<double>::Constant(1, 1, metric));
        comm.broadcast(std::span<double>(on_device.data(), 1), 0);
        metric = Backend::to_host(on_device)(0, 0);
      } else if constexpr (!device_comm) {
        comm.broadcast(std::span<double>(&metric, 1), 0);
      }  // else: a CPU model with a device communicator threw before the first step
    }
    result.eval_steps.push_back(step);
    result.eval_metrics.push_back(metric);
    if (better(metric)) {
      result.best_metric = metric;
      result.best_step = step;
      since_best = 0;
      if (options.restore_best) {
        best.resize(params.size());
        for (std::size_t i = 0; i < params.size(); ++i) Backend::copy(best[i], params[i]->value);
      }
    } else {
      ++since_best;
    }
    return options.patience > 0 && since_best >= options.patience;
  };

  model.train(true);
  if (parallel) check_same_params(options.start_step);
  for (long step = options.start_step; step < options.max_steps; ++step) {
    for (P* p : params) p->zero_grad();
    double loss = forward_backward(step);
    // Unqualified: a device backend's add_gate_l1 is found by argument-dependent lookup.
    if (options.gate_l1 > 0.0) loss += add_gate_l1(gates, options.gate_l1);
    if (!std::isfinite(loss)) throw NonFiniteError(step, "loss", loss);
    if (options.max_grad_norm > 0.0) {
      if constexpr (requires { optimizer.clip_grad_norm(options.max_grad_norm); }) {
        optimizer.clip_grad_norm(options.max_grad_norm);
      } else {
        static_assert(std::is_same_v<Backend, Cpu>,
                      "fit: on a device backend the optimizer must offer clip_grad_norm");
        // The norm is computed for clipping anyway: checking it costs nothing.
        const double norm = optim::clip_grad_norm(params, options.max_grad_norm);
        if (!std::isfinite(norm)) throw NonFiniteError(step, "gradient norm", norm);
      }
    }
    optimizer.set_lr_multiplier(options.schedule.multiplier(step));
    optimizer.step();
    result.losses.push_back(loss);
    result.steps = step + 1;
    if (options.on_step) options.on_step(step, loss);
    const bool last = step + 1 == options.max_steps;
    if (parallel && (last || (options.check_every > 0 && (step + 1) % options.check_every == 0)))
      check_same_params(step + 1);
    if (options.eval_every > 0 && ((step + 1) % options.eval_every == 0 || last)) {
      if (run_eval(step + 1)) {
        result.stopped_early = !last;
        break;
      }
    }
    if (!last && options.after_step) options.after_step(step + 1);
  }
  if (options.restore_best && !best.empty()) {
    for (std::size_t i = 0; i < params.size(); ++i) Backend::copy(params[i]->value, best[i]);
  }
  return result;  // a copy: st.result stays the caller's
}

}  // namespace detail

// next_batch(step) supplies the batch of each step (it must stay alive until the step ends);
// evaluate() returns the validation metric and is called with the model in eval mode.
// Data-parallel over `comm` (see the top of this file): next_batch gives the global batch on
// every rank; an exception on any rank ends every rank through comm.abort.
// `state`: see FitState (a caller's own, to checkpoint and resume the run).
template <class Model, class Optimizer, dist::Communicator Comm>
TrainResult fit(
    Model& model, Optimizer& optimizer,
    const std::function<const typename Model::Batch&(long)>& next_batch,
    const std::function<double()>& evaluate, const TrainerOptions& options, Comm& comm,
    FitState<typename Model::Scalar, typename backend_of<Model>::type>* state = nullptr) {
  if (comm.size() == 1)
    return detail::fit_impl(model, optimizer, next_batch, evaluate, options, comm, state);
  try {
    return detail::fit_impl(model, optimizer, next_batch, evaluate, options, comm, state);
  } catch (const std::exception& e) {
    comm.abort(e.what());  // the other ranks may be waiting in a collective: end them all
  }
}

// One process (dist::Single).
template <class Model, class Optimizer>
TrainResult fit(
    Model& model, Optimizer& optimizer,
    const std::function<const typename Model::Batch&(long)>& next_batch,
    const std::function<double()>& evaluate, const TrainerOptions& options,
    FitState<typename Model::Scalar, typename backend_of<Model>::type>* state = nullptr) {
  dist::Single single;
  return detail::fit_impl(model, optimizer, next_batch, evaluate, options, single, state);
}

}  // namespace sora::train
