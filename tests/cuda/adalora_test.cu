// AdaLoRA on the GPU (cuda::DeviceAdaLoraOptimizer) against the CPU optimizer
// (optim::AdaLoraOptimizer): a tiny transformer with AdaLoRA adapters on every target module,
// copied to the GPU, and both driven with the same batches through a schedule that passes
// warm-up, three masking steps of the cubic phase, the final allocation and the fixed phase
// within 12 steps. After every step: every parameter, the rank pattern (exactly), the budget
// and phase, the regularizer's value, the gradient norm, and — through save_to into a third,
// CPU optimizer — the importance statistics and the AdamW moments. Then the checkpoint
// exchange (GPU -> CPU -> a fresh GPU optimizer, which must continue as the original) and the
// errors on models that do not fit.
//
// Tolerances (scaled_error: the largest error over the tensor's largest magnitude): double
// 1e-9 over the 12 steps (cuBLAS and Eigen sum in different orders: ~1e-15 per op, amplified
// through the layers, Adam's division by sqrt(v) and the EMAs); GPU against GPU after a state
// exchange 1e-12 (the same kernels on the same inputs). Float runs compare the parameters only
// up to the first allocation: a near-tie between two triplet scores may be ordered differently
// by the two sides' roundings, and from there on the runs differ by design, so the float run
// checks what must hold on the device whatever the order (budgets kept, masked E zero).

#include <doctest/doctest.h>

#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "sora/cuda/adalora.cuh"
#include "sora/cuda/model.cuh"
#include "sora/optim/adalora.hpp"
#include "sora/optim/clip.hpp"
#include "support.cuh"
#include "tiny_model.cuh"

namespace {

namespace cu = sora::cuda;
namespace opt = sora::optim;
using sora::Index;
using sora::Matrix;
using sora::model::Method;

using cu::testing::error_of;
using cu::testing::randomize_adapters;
using cu::testing::tiny_batch;
using cu::testing::tiny_config;
using Pattern = std::vector<std::vector<bool>>;

// The models' tiny config, narrower (width 16, 2 heads) for this test's shape messages.
sora::model::TransformerConfig config() {
  auto c = tiny_config(sora::model::Head::classification, true);
  c.width = 16;
  c.heads = 2;
  c.seed = 7;
  return c;
}

sora::model::PeftConfig peft(Index rank = 4) {
  sora::model::PeftConfig p;
  p.method = Method::adalora;
  p.rank = rank;
  return p;
}

// 12 modules of rank 4: b_init = 48, b_target = 24. T = 12, t_init = 2, t_final = 3, ΔT = 2:
// steps 1-2 warm-up, 3-8 cubic (masking at 4, 6 and 8 to 32, 25 and 24), 9 the final
// allocation, 10-12 fixed.
opt::AdaLoraOptions schedule() {
  opt::AdaLoraOptions o;
  o.target_rank = 2;
  o.total_steps = 12;
  o.t_init = 2;
  o.t_final = 3;
  o.delta_t = 2;
  o.orth_reg_weight = 0.5;
  return o;
}

opt::AdamWOptions adamw() {
  opt::AdamWOptions a;
  a.lr = 5e-3;
  a.weight_decay = 0.01;
  return a;
}

template <class T, class BA, class BB>
void compare_parameters(sora::model::Transformer<T, BA>& a, sora::model::Transformer<T, BB>& b,
                        double tol) {
  std::map<std::string, Matrix<T>> want;
  b.visit_params([&](sora::Param<T, BB>& p) { want[p.name] = cu::detail::host_copy(p.value); });
  std::size_t compared = 0;
  a.visit_params([&](sora::Param<T, BA>& p) {
    INFO("parameter ", p.name);
    REQUIRE(want.count(p.name) == 1);
    CHECK_TWIN(cu::detail::host_copy(p.value), want[p.name], tol);
    ++compared;
  });
  CHECK(compared == want.size());
}

// The importance statistics and AdamW moments of two CPU optimizers (one holding a GPU
// optimizer's state through save_to).
template <class T>
void compare_states(const opt::AdaLoraOptimizer<T>& got, const opt::AdaLoraOptimizer<T>& want,
                    double tol) {
  const opt::AdaLoraOptimizerState<T> g = got.state(), w = want.state();
  CHECK(g.step == w.step);
  REQUIRE(g.adamw.size() == w.adamw.size());
  for (std::size_t i = 0; i < w.adamw.size(); ++i) {
    INFO("moments of ", w.adamw[i].name);
    CHECK(g.adamw[i].name == w.adamw[i].name);
    CHECK_TWIN(g.adamw[i].m, w.adamw[i].m, tol);
    CHECK_TWIN(g.adamw[i].v, w.adamw[i].v, tol);
  }
  REQUIRE(g.allocator.importance.size() == w.allocator.importance.size());
  const auto& modules = want.allocator().modules();
  for (std::size_t k = 0; k < modules.size(); ++k) {
    INFO("importance of ", modules[k].name);
    const opt::ModuleImportance<T>& a = g.allocator.importance[k];
    const opt::ModuleImportance<T>& b = w.allocator.importance[k];
    CHECK_TWIN(a.A.sensitivity, b.A.sensitivity, tol);
    CHECK_TWIN(a.A.uncertainty, b.A.uncertainty, tol);
    CHECK_TWIN(a.B.sensitivity, b.B.sensitivity, tol);
    CHECK_TWIN(a.B.uncertainty, b.B.uncertainty, tol);
    CHECK_TWIN(a.E.sensitivity, b.E.sensitivity, tol);
    CHECK_TWIN(a.E.uncertainty, b.E.uncertainty, tol);
  }
  CHECK(g.allocator.rank_pattern == w.allocator.rank_pattern);
  CHECK(g.allocator.finalized == w.allocator.finalized);
  CHECK(g.allocator.budget == w.allocator.budget);
  CHECK(std::abs(g.orth_loss - w.orth_loss) <= tol * std::max(1.0, std::abs(w.orth_loss)));
  CHECK(got.lr() == want.lr());
  CHECK(got.base_lr() == want.base_lr());
}

void check_same_budget(const opt::BudgetStep& a, const opt::BudgetStep& b) {
  CHECK(a.budget == b.budget);
  CHECK(a.mask == b.mask);
  CHECK(a.phase == b.phase);
}

Index kept(const Pattern& p) {
  Index n = 0;
  for (const auto& m : p)
    for (const bool k : m) n += k ? 1 : 0;
  return n;
}

// Every masked E_i of the GPU model is exactly 0 (right after a step that applied the mask).
template <class T>
void check_masked_zero(const cu::DeviceAdaLoraOptimizer<T>& o) {
  for (std::size_t k = 0; k < o.modules().size(); ++k) {
    const Matrix<T> E = cu::Cuda::to_host(o.modules()[k].E->value);
    for (Index i = 0; i < E.cols(); ++i) {
      if (o.rank_pattern()[k][static_cast<std::size_t>(i)]) continue;
      INFO("module ", o.modules()[k].name, " rank ", i);
      CHECK(E(0, i) == T(0));
    }
  }
}

// The learning-rate multiplier of step t (1-based): a decay, so that set_lr_multiplier is used.
double multiplier(long t) {
  return 1.0 - 0.03 * static_cast<double>(t);
}

// One step of a model and its optimizer, either backend: the regularizer added explicitly
// (before clipping) on two steps of three, by step() (after clipping) on the third.
template <class Model, class Optimizer>
void train_step(Model& m, Optimizer& o, const sora::model::Batch& b, long t) {
  o.zero_grad();
  m.forward(b);
  m.backward();
  if (t % 3 != 0) o.add_orth_regularizer();
  if constexpr (requires { o.clip_grad_norm(1.0); }) {
    o.clip_grad_norm(1.0);
  } else {
    opt::clip_grad_norm(o.adamw().params(), 1.0);
  }
  o.set_lr_multiplier(multiplier(t));
  o.step();
}

template <class T>
struct Tol;
template <>
struct Tol<double> {
  static constexpr double steps = 1e-9;
};
template <>
struct Tol<float> {
  static constexpr double steps = 5e-3;
};

template <class T>
void run_against_cpu() {
  const auto c = config();
  sora::model::Transformer<T> cpu(c);
  cpu.apply_peft(peft());
  randomize_adapters(cpu, 300);
  cu::DeviceTransformer<T> gpu(c);
  cu::copy_model(gpu, cpu);
  // A third model only to receive the GPU optimizer's state (its values are never used).
  sora::model::Transformer<T> probe(c);
  probe.apply_peft(peft());

  opt::AdaLoraOptimizer<T> cpu_opt(cpu, adamw(), schedule());
  cu::DeviceAdaLoraOptimizer<T> gpu_opt(gpu, adamw(), schedule());
  opt::AdaLoraOptimizer<T> probe_opt(probe, adamw(), schedule());
  REQUIRE(gpu_opt.modules().size() == 12);
  CHECK(gpu_opt.initial_budget() == 48);
  CHECK(gpu_opt.target_budget() == 24);
  CHECK(gpu_opt.state_bytes() == cpu_opt.state_bytes());
  for (std::size_t k = 0; k < gpu_opt.modules().size(); ++k)
    CHECK(gpu_opt.modules()[k].name == cpu_opt.allocator().modules()[k].name);

  const bool exact = std::is_same_v<T, double>;
  const double tol = Tol<T>::steps;
  std::set<int> phases;
  int masking_steps = 0;
  bool together = true;  // the patterns agreed so far (always, in double: checked)
  for (long t = 1; t <= 12; ++t) {
    INFO("step ", t);
    const auto b = tiny_batch(c, 40u + static_cast<unsigned>(t));  // alive until backward
    // train_step's sequence, with checks between its parts.
    cpu_opt.zero_grad();
    gpu_opt.zero_grad();
    cpu.forward(b);
    gpu.forward(b);
    cpu.backward();
    gpu.backward();
    if (t % 3 != 0) {
      cpu_opt.add_orth_regularizer();
      gpu_opt.add_orth_regularizer();
      if (together)
        CHECK(std::abs(gpu_opt.orth_loss() - cpu_opt.orth_loss()) <=
              tol * std::max(1.0, std::abs(cpu_opt.orth_loss())));
    }
    const double norm = opt::clip_grad_norm(cpu_opt.adamw().params(), 1.0);
    gpu_opt.clip_grad_norm(1.0);
    if (together) CHECK(std::abs(gpu_opt.last_grad_norm() - norm) <= tol * std::max(1.0, norm));
    cpu_opt.set_lr_multiplier(multiplier(t));
    gpu_opt.set_lr_multiplier(multiplier(t));
    CHECK(gpu_opt.lr() == cpu_opt.lr());
    cpu_opt.step();
    gpu_opt.step();

    CHECK(gpu_opt.step_count() == t);
    check_same_budget(gpu_opt.last_budget(), cpu_opt.last_budget());
    const opt::BudgetStep s = gpu_opt.last_budget();
    phases.insert(static_cast<int>(s.phase));
    if (s.mask) {
      ++masking_steps;
      CHECK(kept(gpu_opt.rank_pattern()) == s.budget);
      // Only where the pattern was (re)applied: on a budgeting step that does not mask (3, 5,
      // 7) AdamW moves the masked E_i like any other value, as on the CPU, until the next mask.
      check_masked_zero(gpu_opt);
    }
    CHECK(gpu_opt.finalized() == (t >= 9));
    CHECK(gpu_opt.current_budget() == cpu_opt.allocator().current_budget());
    if (exact) {
      CHECK(gpu_opt.rank_pattern() == cpu_opt.allocator().rank_pattern());
      CHECK(gpu_opt.ranks() == cpu_opt.allocator().ranks());
      CHECK(std::abs(gpu_opt.orth_loss() - cpu_opt.orth_loss()) <=
            tol * std::max(1.0, std::abs(cpu_opt.orth_loss())));
      compare_parameters(gpu, cpu, tol);
      gpu_opt.save_to(probe_opt);
      compare_states(probe_opt, cpu_opt, tol);
    } else if (t < 4) {  // float: until the first allocation
      CHECK(gpu_opt.rank_pattern() == cpu_opt.allocator().rank_pattern());
      compare_parameters(gpu, cpu, tol);
    } else if (together && gpu_opt.rank_pattern() != cpu_opt.allocator().rank_pattern()) {
      MESSAGE("float: the GPU and CPU rank patterns differ from step ", t, " on (a near-tie)");
      together = false;
    }
  }
  // The schedule went through every phase, masking at 4, 6, 8, 9 and every fixed step.
  CHECK(phases.size() == 4);
  CHECK(masking_steps == 3 + 1 + 3);
  CHECK(kept(gpu_opt.rank_pattern()) == 24);
  Index total = 0;
  for (const Index r : gpu_opt.ranks()) total += r;
  CHECK(total == 24);
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE_TEMPLATE("cuda adalora/the GPU optimizer steps, scores and masks as the CPU one", T,
                   double, float) {
  run_against_cpu<T>();
}

TEST_CASE("cuda adalora/state exchange: GPU -> CPU -> a fresh GPU optimizer continues alike") {
  using T = double;
  const auto c = config();
  sora::model::Transformer<T> cpu(c);
  cpu.apply_peft(peft());
  randomize_adapters(cpu, 300);
  cu::DeviceTransformer<T> gpu(c);
  cu::copy_model(gpu, cpu);
  cu::DeviceAdaLoraOptimizer<T> gpu_opt(gpu, adamw(), schedule());

  // Five GPU steps: warm-up, the cubic phase and its first allocation (t = 4).
  for (long t = 1; t <= 5; ++t) {
    const auto b = tiny_batch(c, 70u + static_cast<unsigned>(t));
    train_step(gpu, gpu_opt, b, t);
  }
  REQUIRE(kept(gpu_opt.rank_pattern()) == 32);

  // To the CPU: the model by copy_model, the optimizer by save_to (what a checkpoint writes).
  sora::model::Transformer<T> back(c);
  cu::copy_model(back, gpu);
  opt::AdaLoraOptimizer<T> back_opt(back, adamw(), schedule());
  gpu_opt.save_to(back_opt);
  CHECK(back_opt.step_count() == 5);
  CHECK(back_opt.allocator().rank_pattern() == gpu_opt.rank_pattern());
  CHECK(back_opt.allocator().current_budget() == gpu_opt.current_budget());
  CHECK(back_opt.lr() == gpu_opt.lr());
  CHECK(back_opt.base_lr() == gpu_opt.base_lr());
  CHECK(back_opt.orth_loss() == gpu_opt.orth_loss());
  check_same_budget(back_opt.last_budget(), gpu_opt.last_budget());

  // And back to a fresh GPU model and optimizer (what resuming from a checkpoint does).
  cu::DeviceTransformer<T> again(c);
  cu::copy_model(again, back);
  cu::DeviceAdaLoraOptimizer<T> again_opt(again, adamw(), schedule());
  again_opt.load_from(back_opt);
  CHECK(again_opt.step_count() == 5);
  CHECK(again_opt.rank_pattern() == gpu_opt.rank_pattern());
  CHECK(again_opt.finalized() == gpu_opt.finalized());
  CHECK(again_opt.lr() == gpu_opt.lr());
  CHECK(again_opt.orth_loss() == gpu_opt.orth_loss());
  check_same_budget(again_opt.last_budget(), gpu_opt.last_budget());
  compare_parameters(again, gpu, 0.0);
  {
    sora::model::Transformer<T> probe(c);
    probe.apply_peft(peft());
    opt::AdaLoraOptimizer<T> probe_opt(probe, adamw(), schedule());
    again_opt.save_to(probe_opt);
    compare_states(probe_opt, back_opt, 0.0);  // nothing lost on the way
  }

  // The three continue through the remaining allocations, the final one and the fixed phase.
  for (long t = 6; t <= 12; ++t) {
    INFO("step ", t);
    const auto b = tiny_batch(c, 70u + static_cast<unsigned>(t));
    train_step(gpu, gpu_opt, b, t);
    train_step(back, back_opt, b, t);
    train_step(again, again_opt, b, t);
    CHECK(back_opt.allocator().rank_pattern() == gpu_opt.rank_pattern());
    CHECK(again_opt.rank_pattern() == gpu_opt.rank_pattern());
    check_same_budget(again_opt.last_budget(), gpu_opt.last_budget());
    compare_parameters(gpu, back, 1e-9);
    compare_parameters(again, gpu, 1e-12);
  }
  CHECK(gpu_opt.finalized());
  CHECK(again_opt.finalized());
  CHECK(kept(again_opt.rank_pattern()) == 24);
}

TEST_CASE("cuda adalora/errors name what does not fit") {
  using T = float;
  const auto c = config();
  sora::model::Transformer<T> cpu(c);
  cpu.apply_peft(peft());
  cu::DeviceTransformer<T> gpu(c);
  cu::copy_model(gpu, cpu);
  cu::DeviceAdaLoraOptimizer<T> gpu_opt(gpu, adamw(), schedule());

  SUBCASE("options and models the optimizer cannot run") {
    auto too_big = schedule();
    too_big.target_rank = 5;
    CHECK(contains(error_of([&] { cu::DeviceAdaLoraOptimizer<T> o(gpu, adamw(), too_big); }),
                   "exceeds the initial one"));
    auto no_steps = schedule();
    no_steps.total_steps = 0;
    CHECK(contains(error_of([&] { cu::DeviceAdaLoraOptimizer<T> o(gpu, adamw(), no_steps); }),
                   "total_steps"));
    auto bad_lr = adamw();
    bad_lr.lr = -1.0;
    CHECK(contains(error_of([&] { cu::DeviceAdaLoraOptimizer<T> o(gpu, bad_lr, schedule()); }),
                   "lr must be finite"));
    CHECK(contains(error_of([&] { gpu_opt.set_lr(-1.0); }), "lr must be finite"));

    sora::model::Transformer<T> lora(c);
    auto p = peft();
    p.method = Method::lora;
    lora.apply_peft(p);
    cu::DeviceTransformer<T> gpu_lora(c);
    cu::copy_model(gpu_lora, lora);
    CHECK(
        contains(error_of([&] { cu::DeviceAdaLoraOptimizer<T> o(gpu_lora, adamw(), schedule()); }),
                 "no AdaLoRA module"));
  }

  SUBCASE("another rank") {
    const auto b1 = tiny_batch(c, 5);
    train_step(gpu, gpu_opt, b1, 1);
    sora::model::Transformer<T> other(c);
    other.apply_peft(peft(2));
    auto o = schedule();
    o.target_rank = 1;
    opt::AdaLoraOptimizer<T> other_opt(other, adamw(), o);
    const std::string save = error_of([&] { gpu_opt.save_to(other_opt); });
    CHECK(contains(save, "save_to: module 'blocks.0.attn.q' has A (4, 16)"));
    CHECK(contains(save, "but A (2, 16)"));
    CHECK(other_opt.step_count() == 0);  // untouched
    CHECK(contains(error_of([&] { gpu_opt.load_from(other_opt); }),
                   "load_from: module 'blocks.0.attn.q'"));
    CHECK(gpu_opt.step_count() == 1);  // untouched
  }

  SUBCASE("other target modules") {
    sora::model::Transformer<T> other(c);
    auto p = peft();
    p.target_modules = {"q", "v"};
    other.apply_peft(p);
    opt::AdaLoraOptimizer<T> other_opt(other, adamw(), schedule());
    CHECK(contains(error_of([&] { gpu_opt.save_to(other_opt); }),
                   "the CPU optimizer has 4 AdaLoRA modules, this one 12"));
    CHECK(contains(error_of([&] { gpu_opt.load_from(other_opt); }),
                   "the CPU optimizer has 4 AdaLoRA modules, this one 12"));
  }

  SUBCASE("other trainable parameters") {
    sora::model::Transformer<T> other(c);
    auto p = peft();
    p.train_layernorms = false;
    other.apply_peft(p);
    opt::AdaLoraOptimizer<T> other_opt(other, adamw(), schedule());
    CHECK(contains(error_of([&] { gpu_opt.save_to(other_opt); }),
                   "save_to: the CPU optimizer trains"));
    CHECK(contains(error_of([&] { gpu_opt.load_from(other_opt); }),
                   "load_from: the CPU optimizer has state for"));
  }

  SUBCASE("a load that fits is taken whole") {
    const auto b1 = tiny_batch(c, 5);
    train_step(gpu, gpu_opt, b1, 1);
    sora::model::Transformer<T> other(c);
    other.apply_peft(peft());
    opt::AdaLoraOptimizer<T> other_opt(other, adamw(), schedule());
    opt::AdaLoraOptimizerState<T> st = other_opt.state();
    st.step = 4;
    st.allocator.rank_pattern[1][2] = false;
    st.allocator.budget = 47;
    st.orth_loss = 0.25;
    other_opt.load_state(st);
    other_opt.set_lr(1.0);
    other_opt.set_lr_multiplier(0.5);
    gpu_opt.load_from(other_opt);
    CHECK(gpu_opt.step_count() == 4);
    CHECK(gpu_opt.lr() == 0.5);
    CHECK(gpu_opt.base_lr() == 1.0);
    CHECK(gpu_opt.orth_loss() == 0.25);
    CHECK(gpu_opt.rank_pattern() == st.allocator.rank_pattern);
    CHECK(gpu_opt.current_budget() == 47);
    check_same_budget(gpu_opt.last_budget(), other_opt.last_budget());
    CHECK(gpu_opt.last_budget().mask);  // step 4 is an allocation step of the schedule
  }
}
