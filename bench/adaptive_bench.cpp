// One training step of AdaLoRA against SoRA at the same initial rank on a small transformer
// (the paper reports SoRA about 30% faster per epoch than AdaLoRA).
//
// A step is what a fine-tuning loop runs: zero the gradients, forward, backward, clip the
// global gradient norm, optimizer step. SoRA's step is AdamW + SparseAdamW's proximal gate
// step (optim::FineTuneOptimizer). AdaLoRA's adds the orthogonal regularizer (A Aᵀ and Bᵀ B of
// every module, and their gradients) and, inside its step, the importance update of every
// element of A, E, B and the masking of the lowest triplets (optim::AdaLoraOptimizer, ΔT = 1
// and the run kept in the budgeting phase, PEFT's default and its most expensive phase).
//
// Arguments: C width, L layers, T sequence length, B batch, R rank. On a shared machine
// separate runs drift, so BM_AdaLoraOverSoraPaired alternates the two models step by step
// (ABBA order) on the thread's CPU clock and reports the ratio of the minima and the median of
// the per-pair ratios; BM_AdaLoraOverhead times the AdaLoRA-only work alone. Run with
// OMP_NUM_THREADS=1: the thread CPU clock does not see OpenMP's worker threads.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <sora/model.hpp>
#include <sora/optim/adalora.hpp>
#include <sora/optim/clip.hpp>
#include <sora/optim/param_groups.hpp>
#include <vector>

#include "paired_timing.hpp"

namespace {

using sora::Index;
using Model = sora::model::Transformer<float>;

struct Shape {
  Index C, L, T, B, R;
};

Shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(3), state.range(4)};
}

std::unique_ptr<Model> make_model(const Shape& s, sora::model::Method method) {
  sora::model::TransformerConfig c;
  c.vocab_size = 256;
  c.width = s.C;
  c.heads = 4;
  c.layers = s.L;
  c.max_len = s.T;
  c.causal = false;
  c.head = sora::model::Head::classification;
  c.num_labels = 2;
  auto model = std::make_unique<Model>(c);
  sora::model::PeftConfig peft;
  peft.method = method;
  peft.rank = s.R;
  peft.alpha = 16.0;
  model->apply_peft(peft);
  return model;
}

sora::model::Batch make_batch(const Shape& s) {
  sora::Rng rng(5);
  sora::model::Batch b;
  b.batch = s.B;
  b.seq = s.T;
  for (Index i = 0; i < s.B * s.T; ++i) b.tokens.push_back(static_cast<int>(rng.below(256)));
  for (Index i = 0; i < s.B; ++i) b.labels.push_back(static_cast<int>(rng.below(2)));
  return b;
}

sora::optim::AdamWOptions adamw_options() {
  sora::optim::AdamWOptions a;
  a.lr = 8e-4;
  a.weight_decay = 0.1;
  return a;
}

// AdaLoRA kept in its budgeting phase with an allocation every step (PEFT's default ΔT = 1).
sora::optim::AdaLoraOptions adalora_options(Index R) {
  sora::optim::AdaLoraOptions o;
  o.target_rank = std::max<Index>(1, R / 2);
  o.total_steps = 1000000000;
  o.t_init = 0;
  o.t_final = 0;
  o.delta_t = 1;
  return o;
}

// One model, its optimizer and its step.
struct SoraRun {
  std::unique_ptr<Model> model;
  std::vector<sora::Param<float>*> params;
  std::unique_ptr<sora::optim::FineTuneOptimizer<float>> opt;
  explicit SoraRun(const Shape& s) : model(make_model(s, sora::model::Method::sora)) {
    params = model->trainable_parameters();
    sora::optim::FineTuneOptions o;
    o.xi = 1e-4;
    opt = std::make_unique<sora::optim::FineTuneOptimizer<float>>(
        sora::optim::FineTuneOptimizer<float>::for_model(*model, o));
  }
  void step(const sora::model::Batch& batch) {
    model->zero_grad();
    benchmark::DoNotOptimize(model->forward(batch));
    model->backward();
    sora::optim::clip_grad_norm(params, 0.1);
    opt->step();
  }
};

struct AdaLoraRun {
  std::unique_ptr<Model> model;
  std::vector<sora::Param<float>*> params;
  std::unique_ptr<sora::optim::AdaLoraOptimizer<float>> opt;
  explicit AdaLoraRun(const Shape& s) : model(make_model(s, sora::model::Method::adalora)) {
    params = model->trainable_parameters();
    opt = std::make_unique<sora::optim::AdaLoraOptimizer<float>>(*model, adamw_options(),
                                                                 adalora_options(s.R));
  }
  void step(const sora::model::Batch& batch) {
    model->zero_grad();
    benchmark::DoNotOptimize(model->forward(batch));
    model->backward();
    opt->add_orth_regularizer();  // part of the loss in PEFT, so clipped with it
    sora::optim::clip_grad_norm(params, 0.1);
    opt->step();
  }
};

template <class Run>
void BM_Step(benchmark::State& state) {
  const Shape s = shape_of(state);
  Run run(s);
  const auto batch = make_batch(s);
  run.step(batch);  // size every buffer before timing
  for (auto _ : state) {
    run.step(batch);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * s.B * s.T);
}

// AdaLoRA against SoRA with paired timing (bench/paired_timing.hpp).
void BM_AdaLoraOverSoraPaired(benchmark::State& state) {
  const Shape s = shape_of(state);
  SoraRun sora_run(s);
  AdaLoraRun ada_run(s);
  const auto batch = make_batch(s);
  sora::bench::run_paired(
      state, "adalora_over_sora", "adalora", [&] { ada_run.step(batch); }, "sora",
      [&] { sora_run.step(batch); });
}

// The AdaLoRA-only work of a step: the orthogonal regularizer with its gradients, and the
// importance update plus masking (the allocation), without forward, backward or AdamW.
void BM_AdaLoraOverhead(benchmark::State& state) {
  const Shape s = shape_of(state);
  AdaLoraRun run(s);
  const auto batch = make_batch(s);
  run.step(batch);
  auto& alloc = run.opt->allocator();
  long t = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(alloc.orthogonal_regularizer(true));
    alloc.update_and_allocate(++t);
    benchmark::ClobberMemory();
  }
}

void Shapes(benchmark::internal::Benchmark* b) {
  // C, L, T, B, R
  b->Args({128, 2, 64, 8, 8});  // small: the allocator's share is largest here
  b->Args({256, 4, 128, 8, 8});
  b->Args({512, 4, 128, 4, 8});
  b->ArgNames({"C", "L", "T", "B", "R"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_Step<SoraRun>)->Apply(Shapes);
BENCHMARK(BM_Step<AdaLoraRun>)->Apply(Shapes);
BENCHMARK(BM_AdaLoraOverSoraPaired)->Apply(Shapes)->MinTime(3.0);
BENCHMARK(BM_AdaLoraOverhead)->Apply(Shapes);
