// The whole transformer on the GPU against the same model on the CPU (issue: CUDA backend,
// part 2): model::Transformer<T, cuda::Cuda> is the CPU model's code over the op twins, so
// after cuda::copy_model the two must agree on logits, loss and every gradient, and after five
// optimizer steps (cuda::DeviceFineTuneOptimizer against optim::FineTuneOptimizer) on every
// parameter — for full fine-tuning, LoRA, SoRA (with the gates' proximal step on) and AdaLoRA's
// adapters, with the LM, classification and regression heads, causal and bidirectional, with
// padding. Dropout is off: the GPU draws its masks with Philox, the CPU with xoshiro.
//
// Tolerances (the largest error over a scale: the tensor's largest magnitude for logits, at
// least 0.1 for parameter values, and for gradients their own largest plus a tenth of the
// model's largest gradient; see compare_parameters): double 1e-10 (cuBLAS and the CPU sum in
// different orders: ~1e-15 per op, amplified through the layers and the optimizer's division
// by sqrt(v)); float 2e-3 for the forward and gradients and 5e-3 after five steps (Adam's first
// steps move every parameter by about lr regardless of the gradient's size, so a gradient near
// zero whose sign differs between the two sums moves the other way: the parameter comparison
// is relative to the parameter's scale). The predicted classes must agree (but for near-ties).

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "sora/cuda/fine_tune.cuh"
#include "sora/cuda/model.cuh"
#include "sora/optim/clip.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/train/sparsity_scheduler.hpp"
#include "sora/train/trainer.hpp"
#include "support.cuh"
#include "tiny_model.cuh"

namespace {

namespace cu = sora::cuda;
using sora::Index;
using sora::Matrix;
using sora::cuda::testing::randomize_adapters;
using sora::cuda::testing::tiny_batch;
using sora::cuda::testing::tiny_config;
using sora::model::Head;
using sora::model::Method;

template <class T>
struct Tol;
template <>
struct Tol<double> {
  static constexpr double forward = 1e-10, steps = 1e-10;
};
template <>
struct Tol<float> {
  static constexpr double forward = 2e-3, steps = 5e-3;
};

template <class T>
std::map<std::string, Matrix<T>> gradients(sora::model::Transformer<T, cu::Cuda>& m) {
  std::map<std::string, Matrix<T>> out;
  m.visit_params([&](sora::Param<T, cu::Cuda>& p) {
    if (p.trainable()) out[p.name] = cu::Cuda::to_host(p.gradient());
  });
  return out;
}

// max_i |got_i - want_i| / max(min_scale, |want|_max); +inf for a shape mismatch or a
// non-finite value on either side (as scaled_error).
template <class T>
double error_at_scale(const Matrix<T>& got, const Matrix<T>& want, double min_scale) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return INFINITY;
  double scale = 0.0, err = 0.0;
  for (Index i = 0; i < want.size(); ++i) {
    const double a = static_cast<double>(got.data()[i]), b = static_cast<double>(want.data()[i]);
    if (!std::isfinite(a) || !std::isfinite(b)) return INFINITY;
    scale = std::max(scale, std::abs(b));
    err = std::max(err, std::abs(a - b));
  }
  return err / std::max(min_scale, scale);
}

// Values: the error over max(0.1, max|p|). After a few steps every parameter has moved by about
// lr whatever its size, so a tensor of small values (a fresh bias) is compared at the scale of
// an lr-sized move, not of its own tiny entries.
// Gradients: the error over (own max + 0.1 * the model's largest gradient). A gradient that is
// zero in exact arithmetic (the key bias: softmax is shift-invariant) is rounding noise on both
// backends; relative to its own maximum that noise is an O(1) error, while relative to the
// model's gradients it is a few ulp. A tenth keeps a wrong small gradient visible.
template <class T>
void compare_parameters(sora::model::Transformer<T, cu::Cuda>& gpu,
                        sora::model::Transformer<T>& cpu, double tol, bool grads) {
  std::map<std::string, const sora::Param<T>*> want;
  double largest_grad = 0.0;
  cpu.visit_params([&](sora::Param<T>& p) {
    want[p.name] = &p;
    if (grads && p.trainable() && p.gradient().size() > 0)
      largest_grad =
          std::max(largest_grad, static_cast<double>(p.gradient().cwiseAbs().maxCoeff()));
  });
  const double grad_floor = 0.1 * largest_grad;
  if (grads) CHECK(largest_grad > 0.0);  // else the floor (and the comparison) means nothing
  Index compared = 0;
  gpu.visit_params([&](sora::Param<T, cu::Cuda>& p) {
    INFO("parameter ", p.name);
    REQUIRE(want.count(p.name) == 1);
    const sora::Param<T>& w = *want[p.name];
    REQUIRE(p.trainable() == w.trainable());
    const double value_err = error_at_scale(Matrix<T>(cu::Cuda::to_host(p.value)), w.value, 0.1);
    INFO("value error ", value_err, " (tolerance ", tol, ")");
    CHECK(value_err <= tol);
    if (grads && p.trainable()) {
      const double grad_err = cu::testing::scaled_error(Matrix<T>(cu::Cuda::to_host(p.gradient())),
                                                        w.gradient(), grad_floor);
      INFO("gradient error ", grad_err, " (tolerance ", tol, ")");
      CHECK(grad_err <= tol);
    }
    ++compared;
  });
  CHECK(compared == static_cast<Index>(want.size()));
}

// The predicted class (argmax) of each row must agree; in float two rows may differ only where
// the CPU's logits of the two classes are within the forward tolerance (a near-tie).
template <class T>
void compare_predictions(const sora::model::Transformer<T, cu::Cuda>& gpu,
                         const sora::model::Transformer<T>& cpu) {
  const std::vector<int> got = gpu.predictions(), want = cpu.predictions();
  REQUIRE(got.size() == want.size());
  const Matrix<T>& z = cpu.logits();
  const double scale = std::max(1.0, static_cast<double>(z.cwiseAbs().maxCoeff()));
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (got[i] == want[i]) continue;
    const Index r = static_cast<Index>(i);
    const double gap = std::abs(static_cast<double>(z(r, want[i]) - z(r, got[i])));
    INFO("row ", i, ": GPU class ", got[i], ", CPU class ", want[i], ", CPU logit gap ", gap);
    CHECK(gap <= Tol<T>::forward * scale);
  }
}

template <class T>
void check_method(Method method, Head head, bool causal) {
  INFO("method ", static_cast<int>(method), " head ", sora::model::head_name(head), " causal ",
       causal);
  const auto config = tiny_config(head, causal);
  sora::model::Transformer<T> cpu(config);
  sora::model::PeftConfig peft;
  peft.method = method;
  peft.rank = 4;
  if (method != Method::full) {
    cpu.apply_peft(peft);
    randomize_adapters(cpu, 100);
  }
  cu::DeviceTransformer<T> gpu(config);
  cu::copy_model(gpu, cpu);

  const auto batch = tiny_batch(config, 11);
  const T loss_cpu = cpu.forward(batch);
  const T loss_gpu = gpu.forward(batch);
  CHECK(std::abs(static_cast<double>(loss_gpu - loss_cpu)) <=
        Tol<T>::forward * std::max(1.0, std::abs(static_cast<double>(loss_cpu))));
  CHECK_TWIN(cu::Cuda::to_host(gpu.logits()), cpu.logits(), Tol<T>::forward);
  compare_predictions(gpu, cpu);

  cpu.zero_grad();
  gpu.zero_grad();
  cpu.backward();
  gpu.backward();
  compare_parameters(gpu, cpu, Tol<T>::forward, /*grads=*/true);

  // Five steps of each backend's optimizer, clipping on, the gates' proximal step on.
  sora::optim::FineTuneOptions o;
  o.lr = 3e-3;
  o.weight_decay = 0.05;
  o.xi = method == Method::sora ? 1e-3 : 0.0;
  auto cpu_opt = sora::optim::FineTuneOptimizer<T>::for_model(cpu, o);
  cu::DeviceFineTuneOptimizer<T> gpu_opt(gpu, o);
  Index gates = 0;
  cpu.visit_params([&](sora::Param<T>& p) { gates += sora::optim::is_sora_gate(p) ? 1 : 0; });
  CHECK(gpu_opt.gate_tensors() == gates);  // every gate in the one batched launch
  for (int step = 0; step < 5; ++step) {
    const auto b = tiny_batch(config, 20u + static_cast<unsigned>(step));
    cpu.zero_grad();
    gpu.zero_grad();
    cpu.forward(b);
    gpu.forward(b);
    cpu.backward();
    gpu.backward();
    const double norm = sora::optim::clip_grad_norm(cpu_opt.params(), 1.0);
    gpu_opt.clip_grad_norm(1.0);
    CHECK(std::abs(gpu_opt.last_grad_norm() - norm) <= Tol<T>::forward * 10 * std::max(1.0, norm));
    cpu_opt.step();
    gpu_opt.step();
  }
  compare_parameters(gpu, cpu, Tol<T>::steps, /*grads=*/false);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda model/transformer on GPU equals CPU", T, double, float) {
  for (Method method : {Method::full, Method::lora, Method::sora, Method::adalora}) {
    check_method<T>(method, Head::classification, true);
  }
  check_method<T>(Method::sora, Head::lm, true);
  check_method<T>(Method::lora, Head::classification, false);
  check_method<T>(Method::sora, Head::regression, false);
}

TEST_CASE("cuda model/copy_model moves a pruned model and a run between CPU and GPU") {
  using T = double;
  const auto config = tiny_config(Head::classification, true);
  sora::model::Transformer<T> cpu(config);
  sora::model::PeftConfig peft;
  peft.method = Method::sora;
  peft.rank = 4;
  cpu.apply_peft(peft);
  randomize_adapters(cpu, 100);
  // Pruned on the CPU (a smaller rank in one module, none left in another), then mirrored.
  cpu.blocks[0].attn.q.attach(sora::nn::LowRankAdapter<T>::from_weights(
      sora::nn::AdapterKind::lora, cu::testing::random_matrix<T>(2, 24, 1),
      cu::testing::random_matrix<T>(24, 2, 2), Matrix<T>(), T(0.5), 4));
  cpu.blocks[1].mlp.fc.detach();
  cu::DeviceTransformer<T> gpu(config);
  cu::copy_model(gpu, cpu);
  REQUIRE(gpu.blocks[0].attn.q.adapter.has_value());
  CHECK(gpu.blocks[0].attn.q.adapter->rank() == 2);
  CHECK(!gpu.blocks[0].attn.q.adapter->gated());
  CHECK(!gpu.blocks[1].mlp.fc.adapter.has_value());

  // Three steps on the GPU, then the model and optimizer state back to the CPU (what a
  // checkpoint writes), then two more steps on each: they must stay together.
  sora::optim::FineTuneOptions o;
  o.lr = 2e-3;
  o.xi = 5e-4;
  cu::DeviceFineTuneOptimizer<T> gpu_opt(gpu, o);
  auto step_gpu = [&](unsigned s) {
    const auto b = tiny_batch(config, s);  // alive until backward
    gpu.zero_grad();
    gpu.forward(b);
    gpu.backward();
    gpu_opt.step();
  };
  for (unsigned s = 0; s < 3; ++s) step_gpu(s);
  sora::model::Transformer<T> back(config);
  cu::copy_model(back, gpu);
  auto back_opt = sora::optim::FineTuneOptimizer<T>::for_model(back, o);
  gpu_opt.save_to(back_opt);
  CHECK(back_opt.adamw().step_count() == 3);
  for (unsigned s = 3; s < 5; ++s) {
    step_gpu(s);
    const auto b = tiny_batch(config, s);
    back.zero_grad();
    back.forward(b);
    back.backward();
    back_opt.step();
  }
  compare_parameters(gpu, back, 1e-10, /*grads=*/false);

  // And the other way: a fresh GPU model and optimizer resumed from the CPU state.
  cu::DeviceTransformer<T> again(config);
  cu::copy_model(again, back);
  cu::DeviceFineTuneOptimizer<T> again_opt(again, o);
  again_opt.load_from(back_opt);
  CHECK(again_opt.step_count() == 5);
  compare_parameters(again, back, 0.0, /*grads=*/false);
}

TEST_CASE("cuda model/copy_model rejects a model of another shape") {
  auto small = tiny_config(Head::classification, true);
  auto wide = small;
  wide.width = 48;
  sora::model::Transformer<float> cpu(small);
  cu::DeviceTransformer<float> gpu(wide);
  CHECK_THROWS_AS(cu::copy_model(gpu, cpu), sora::Error);
}

namespace {

// One train::fit run of a SoRA model with everything of a step on: the L1 gate term, clipping,
// a warm-up schedule, evaluations and restore_best. The metric is -(evaluations so far) plus a
// small multiple of an evaluation batch's loss: the first evaluation is always the best (so
// restore_best must put step 2's parameters back), and the metric still reads the model.
template <class T, class Model, class Optimizer>
sora::train::TrainResult fit_sora(Model& model, Optimizer& optimizer,
                                  const sora::model::TransformerConfig& config,
                                  std::vector<sora::model::Batch>& batches) {
  const auto eval_batch = tiny_batch(config, 99);
  int evaluations = 0;
  sora::train::TrainerOptions to;
  to.max_steps = 6;
  to.eval_every = 2;
  to.max_grad_norm = 0.5;
  to.gate_l1 = 0.1;
  to.restore_best = true;
  to.schedule = sora::optim::LrSchedule::with_warmup_ratio(
      sora::optim::LrScheduleKind::warmup_linear, 1.0, 0.3, to.max_steps);
  return sora::train::fit(
      model, optimizer, [&](long step) -> const sora::model::Batch& { return batches[step % 3]; },
      [&] {
        ++evaluations;
        return -evaluations + 1e-3 * static_cast<double>(model.forward(eval_batch));
      },
      to);
}

template <class T>
void check_fit() {
  const auto config = tiny_config(Head::classification, true);
  sora::model::Transformer<T> cpu(config);
  sora::model::PeftConfig peft;
  peft.method = Method::sora;
  peft.rank = 4;
  cpu.apply_peft(peft);
  randomize_adapters(cpu, 100);
  cu::DeviceTransformer<T> gpu(config);
  cu::copy_model(gpu, cpu);
  std::vector<sora::model::Batch> batches;
  for (unsigned s = 0; s < 3; ++s) batches.push_back(tiny_batch(config, 40 + s));

  sora::optim::FineTuneOptions o;
  o.lr = 3e-3;
  o.xi = 2e-3;
  auto cpu_opt = sora::optim::FineTuneOptimizer<T>::for_model(cpu, o);
  cu::DeviceFineTuneOptimizer<T> gpu_opt(gpu, o);
  const auto want = fit_sora<T>(cpu, cpu_opt, config, batches);
  const auto got = fit_sora<T>(gpu, gpu_opt, config, batches);

  REQUIRE(got.steps == want.steps);
  REQUIRE(got.losses.size() == want.losses.size());
  for (std::size_t i = 0; i < want.losses.size(); ++i) {
    INFO("step ", i);  // the loss includes the L1 gate term, summed on the device
    CHECK(std::abs(got.losses[i] - want.losses[i]) <=
          Tol<T>::steps * std::max(1.0, std::abs(want.losses[i])));
  }
  CHECK(got.eval_steps == want.eval_steps);
  REQUIRE(got.eval_metrics.size() == want.eval_metrics.size());
  for (std::size_t i = 0; i < want.eval_metrics.size(); ++i)
    CHECK(std::abs(got.eval_metrics[i] - want.eval_metrics[i]) <= Tol<T>::steps);
  CHECK(want.best_step == 2);
  CHECK(got.best_step == want.best_step);
  // Both restored the parameters of step 2 (a device-to-device copy on the GPU).
  compare_parameters(gpu, cpu, Tol<T>::steps, /*grads=*/false);
}

// The sparsity schedule (train::make_sparsity_hooks + run_sparsity_scheduler) on a model of
// either backend: a log-linear walk of 3 stages, evaluating every 3 steps, clipping at 0.5.
// The metric is 1 / (1 + mean loss over the batches), higher is better.
template <class T, class Model, class Optimizer>
sora::train::SparsityResult walk_sparsity(Model& model, Optimizer& optimizer,
                                          std::vector<sora::model::Batch>& batches,
                                          std::vector<sora::train::AdapterSnapshot<T>>& snapshots) {
  auto metric = [&] {
    double loss = 0.0;
    for (const auto& b : batches) loss += static_cast<double>(model.forward(b));
    return 1.0 / (1.0 + loss / static_cast<double>(batches.size()));
  };
  auto hooks = sora::train::make_sparsity_hooks(
      model, optimizer, [&](long step) -> const sora::model::Batch& { return batches[step % 3]; },
      metric, metric, 0.5, &snapshots);
  sora::train::SparsitySchedulerOptions so;
  so.xi_kind = sora::optim::XiScheduleKind::log_linear;
  so.xi0 = 1e-2;  // per step: ~0.5 of shrinkage over the walk, against gates in [0.1, 1]
  so.xi_max = 5e-2;
  so.stages = 3;
  so.dense_steps = 4;
  so.stage_steps = 6;
  so.eval_every = 3;
  so.lr = 1e-2;
  return sora::train::run_sparsity_scheduler(hooks, so);
}

template <class T>
void check_sparsity_schedule() {
  const auto config = tiny_config(Head::classification, false);
  sora::model::Transformer<T> cpu(config);
  sora::model::PeftConfig peft;
  peft.method = Method::sora;
  peft.rank = 4;
  cpu.apply_peft(peft);
  randomize_adapters(cpu, 200);
  // Gates spread over [0.1, 1] (initialised all equal, they would die together): the walk
  // then kills them over several stages.
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> magnitude(0.1, 1.0);
  Index gate_count = 0;
  cpu.visit_params([&](sora::Param<T>& p) {
    if (p.role != sora::ParamRole::gate) return;
    for (Index i = 0; i < p.value.size(); ++i) p.value.data()[i] = static_cast<T>(magnitude(gen));
    gate_count += p.value.size();
  });
  REQUIRE(gate_count > 0);
  cu::DeviceTransformer<T> gpu(config);
  cu::copy_model(gpu, cpu);
  std::vector<sora::model::Batch> batches;
  for (unsigned s = 0; s < 3; ++s) batches.push_back(tiny_batch(config, 60 + s));

  sora::optim::FineTuneOptions o;
  o.lr = 1e-2;
  o.xi = 0.0;
  auto cpu_opt = sora::optim::FineTuneOptimizer<T>::for_model(cpu, o);
  cu::DeviceFineTuneOptimizer<T> gpu_opt(gpu, o);
  std::vector<sora::train::AdapterSnapshot<T>> want_snaps, got_snaps;
  const auto want = walk_sparsity<T>(cpu, cpu_opt, batches, want_snaps);
  const auto got = walk_sparsity<T>(gpu, gpu_opt, batches, got_snaps);

  // The CPU walk must prune something over the stages, or equal counts would prove little.
  REQUIRE(want.stages_completed == 3);
  REQUIRE(want.rows.size() == 2 + 3 * 2);
  CHECK(want.rows.back().nonzero < want.rows.front().nonzero);
  CHECK(want.rows.back().nonzero > 0);
  CHECK(got.stages_completed == want.stages_completed);
  CHECK(got.xis == want.xis);
  REQUIRE(got.rows.size() == want.rows.size());
  for (std::size_t i = 0; i < want.rows.size(); ++i) {
    INFO("row ", i, ": stage ", want.rows[i].stage, ", step ", want.rows[i].step);
    CHECK(got.rows[i].stage == want.rows[i].stage);
    CHECK(got.rows[i].nonzero == want.rows[i].nonzero);
    CHECK(std::abs(got.rows[i].train_metric - want.rows[i].train_metric) <= Tol<T>::steps);
    CHECK(std::abs(got.rows[i].generalization - want.rows[i].generalization) <=
          100.0 * Tol<T>::steps);
  }
  // Each phase's snapshot (downloaded from the device) and the final parameters, gates
  // included: the same to rounding.
  REQUIRE(got_snaps.size() == want_snaps.size());
  REQUIRE(want_snaps.size() == 4);
  for (std::size_t k = 0; k < want_snaps.size(); ++k) {
    REQUIRE(got_snaps[k].size() == want_snaps[k].size());
    for (std::size_t j = 0; j < want_snaps[k].size(); ++j) {
      INFO("stage ", k, ", ", want_snaps[k][j].first);
      CHECK(got_snaps[k][j].first == want_snaps[k][j].first);
      CHECK(error_at_scale(got_snaps[k][j].second, want_snaps[k][j].second, 0.1) <= Tol<T>::steps);
    }
  }
  compare_parameters(gpu, cpu, Tol<T>::steps, /*grads=*/false);
  // A snapshot restored onto the device model is what the CPU model holds at that stage.
  sora::train::restore_adapters(gpu, want_snaps[1]);
  sora::train::restore_adapters(cpu, want_snaps[1]);
  compare_parameters(gpu, cpu, Tol<T>::steps, /*grads=*/false);
  CHECK(sora::train::adapter_nonzero(gpu) == want.rows[3].nonzero);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda model/train::fit on the GPU follows train::fit on the CPU", T, double,
                   float) {
  check_fit<T>();
}

TEST_CASE_TEMPLATE("cuda model/the sparsity schedule on the GPU follows the CPU stage by stage", T,
                   double, float) {
  check_sparsity_schedule<T>();
}
