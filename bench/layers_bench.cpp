// Forward + backward of a SoRA linear vs a LoRA linear at the same rank vs the frozen linear
// alone, at transformer-like shapes (docs/design.md 10: SoRA within 5% of LoRA).
//
// Arguments: N tokens, C width (in = out = C), R rank. Each iteration runs forward(x) and
// backward(dy) with the input gradient, as inside a transformer (the frozen base's weight
// gradient is never computed: it owns none). Compare the aggregates of
//   sora_bench_layers --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// or, on a busy machine, read BM_SoraOverLoraPaired's counters (ratios measured in one run).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <sora/nn.hpp>

#include <vector>
#include "paired_timing.hpp"

namespace {

using sora::Index;
using sora::MatrixF;

struct Inputs {
  MatrixF x, dy;
  Inputs(Index N, Index C) : x(N, C), dy(N, C) {
    sora::Rng rng(1);
    rng.fill_normal(x);
    rng.fill_normal(dy);
  }
};

template <class Layer>
void run(benchmark::State& state, Layer& layer, const Inputs& in) {
  layer.forward(in.x);  // size the activations before timing
  layer.backward(in.dy);
  for (auto _ : state) {
    const MatrixF& y = layer.forward(in.x);
    benchmark::DoNotOptimize(y.data());
    const MatrixF& dx = layer.backward(in.dy);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * in.x.rows());
}

// The adapter with a trained-looking, non-zero B (a zero B would not change the cost, but keep
// the numbers honest).
template <class Layer>
void randomize(Layer& layer) {
  sora::Rng rng(2);
  rng.fill_normal(layer.adapter->lora_B.value, 0.0, 0.02);
}

void BM_FrozenLinear(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1);
  sora::nn::Linear<float> layer(C, C, true, /*trainable=*/false);
  Inputs in(N, C);
  run(state, layer, in);
}

void BM_LoraLinear(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1), R = state.range(2);
  sora::nn::LoraLinear<float> layer(C, C, {sora::nn::AdapterKind::lora, R});
  randomize(layer);
  Inputs in(N, C);
  run(state, layer, in);
}

void BM_SoraLinear(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1), R = state.range(2);
  sora::nn::SoraLinear<float> layer(C, C, {sora::nn::AdapterKind::sora, R});
  randomize(layer);
  layer.adapter->gate.value(0, 0) = 0.0f;  // some gates pruned: the cost must not depend on it
  Inputs in(N, C);
  run(state, layer, in);
}

// SoRA against LoRA with paired timing (bench/paired_timing.hpp): separate runs on a shared
// machine drift by more than the 5% being measured.
template <class Layer>
void forward_backward(Layer& layer, const Inputs& in) {
  benchmark::DoNotOptimize(layer.forward(in.x).data());
  benchmark::DoNotOptimize(layer.backward(in.dy).data());
}

void BM_SoraOverLoraPaired(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1), R = state.range(2);
  sora::nn::LoraLinear<float> lora(C, C, {sora::nn::AdapterKind::lora, R});
  sora::nn::SoraLinear<float> sora(C, C, {sora::nn::AdapterKind::sora, R});
  randomize(lora);
  randomize(sora);
  sora.adapter->gate.value(0, 0) = 0.0f;
  Inputs in(N, C);
  sora::bench::run_paired(
      state, "sora_over_lora", "sora", [&] { forward_backward(sora, in); }, "lora",
      [&] { forward_backward(lora, in); });
}

void Shapes(benchmark::internal::Benchmark* b, bool with_rank) {
  const std::pair<Index, Index> shapes[] = {{512, 256}, {2048, 256}, {2048, 1024}, {4096, 1024}};
  for (auto [N, C] : shapes) {
    if (!with_rank) {
      b->Args({N, C});
      continue;
    }
    for (Index R : {4, 16}) b->Args({N, C, R});
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_FrozenLinear)->Apply([](auto* b) { Shapes(b, false); }) -> ArgNames({"N", "C"});
BENCHMARK(BM_LoraLinear)->Apply([](auto* b) { Shapes(b, true); }) -> ArgNames({"N", "C", "R"});
BENCHMARK(BM_SoraLinear)->Apply([](auto* b) { Shapes(b, true); }) -> ArgNames({"N", "C", "R"});
BENCHMARK(BM_SoraOverLoraPaired)
    ->Apply([](auto* b) { Shapes(b, true); }) -> ArgNames({"N", "C", "R"}) -> MinTime(2.0);
