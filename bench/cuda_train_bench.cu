// One transformer training step on the GPU (zero grads, forward, backward, clipping, optimizer
// step: model::Transformer<float, cuda::Cuda> with cuda::DeviceFineTuneOptimizer) for full
// fine-tuning, LoRA and SoRA at a GEMM-bound shape, next to one cuBLAS GEMM of the same number
// of FLOPs as the full step, in the same run (issue: CUDA backend, part 2).
//
// Shape: width C = 1024, L = 8 layers, H = 16 heads, FFN 4C, batch B = 16 of T = 256 tokens
// (N = 4096), byte vocabulary V = 256 with a tied LM head, rank r = 8 on q, k, v, o, fc, proj.
// Dropout 0. Each benchmark runs with the GEMMs in exact fp32 (math:0) and on TF32 tensor cores
// (math:1), the GEMM baseline likewise.
//
// Reported: tokens/s and FLOP/s (the method's own multiply-adds x 2 per second; the FLOP count
// is bench/step_shape.hpp's, shared with the CPU's bench/train_bench.cpp). Read: full step FLOP/s /
// GEMM FLOP/s at the same math mode; LoRA time / full time; SoRA time / LoRA time. Timing: CUDA
// events around each step on the context's stream (manual time), so the host's launch overhead
// counts only where it delays the GPU.

#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>

#include "sora/cuda/fine_tune.cuh"
#include "sora/cuda/gemm.cuh"
#include "sora/cuda/model.cuh"
#include "step_shape.hpp"

namespace cu = sora::cuda;
using sora::Index;
using sora::model::Method;

namespace {

constexpr Index kWidth = 1024, kLayers = 8, kHeads = 16, kBatch = 16, kSeq = 256, kVocab = 256;
constexpr Index kRank = 8;

constexpr sora::bench::StepShape kShape{kWidth, kLayers, kHeads, kBatch, kSeq, kVocab, kRank};

sora::model::TransformerConfig bench_config() {
  return kShape.config();
}
sora::model::Batch bench_batch() {
  return kShape.make_batch();
}
double step_flops(Method method) {
  return kShape.step_flops(method);
}

struct Run {
  cu::DeviceTransformer<float> m{bench_config()};
  sora::model::Batch batch = bench_batch();
  std::unique_ptr<cu::DeviceFineTuneOptimizer<float>> opt;

  explicit Run(Method method) {
    sora::model::PeftConfig peft;
    peft.method = method;
    peft.rank = kRank;
    if (method != Method::full) m.apply_peft(peft);
    sora::optim::FineTuneOptions o = sora::optim::sora_official_options();
    if (method != Method::sora) o.xi = 0.0;
    opt = std::make_unique<cu::DeviceFineTuneOptimizer<float>>(m, o);
  }

  // The loss is read back (one synchronisation, as a training loop that logs it would).
  void step() {
    m.zero_grad();
    benchmark::DoNotOptimize(m.forward(batch));
    m.backward();
    opt->clip_grad_norm(1.0);
    opt->step();
  }
};

cu::Math math_of(std::int64_t i) {
  return i == 0 ? cu::Math::exact : cu::Math::tf32;
}

void BM_CudaTrainStep(benchmark::State& state) {
  const auto method = static_cast<Method>(state.range(0));
  cu::context().set_math(math_of(state.range(1)));
  Run run(method);
  run.step();  // sizes every buffer: later steps allocate nothing
  cu::Event start, stop;
  for (auto _ : state) {
    start.record(cu::context().stream());
    run.step();
    stop.record(cu::context().stream());
    stop.synchronize();
    state.SetIterationTime(stop.elapsed_ms_since(start) / 1e3);
  }
  cu::context().set_math(cu::Math::exact);
  state.SetLabel(sora::model::method_name(method));
  state.counters["FLOP/s"] =
      benchmark::Counter(step_flops(method), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kBatch * kSeq),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["optstate_MB"] = static_cast<double>(run.opt->state_bytes()) / 1e6;
}
BENCHMARK(BM_CudaTrainStep)
    ->ArgNames({"method", "math"})
    ->ArgsProduct({{static_cast<int>(Method::full), static_cast<int>(Method::lora),
                    static_cast<int>(Method::sora)},
                   {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// One GEMM (4096 x 4096 x K) with K chosen so that it does the full step's FLOPs.
void BM_CudaGemmSameFlops(benchmark::State& state) {
  cu::context().set_math(math_of(state.range(0)));
  const Index M = 4096, N = 4096;
  const Index K = std::max<Index>(
      256, static_cast<Index>(step_flops(Method::full) / (2.0 * M * N) / 256.0) * 256);
  auto A = cu::DeviceTensor<float>::zeros(M, K);
  auto B = cu::DeviceTensor<float>::zeros(N, K);
  auto C = cu::DeviceTensor<float>::zeros(M, N);
  cu::gemm<float>(false, true, 1.0f, A.view(), B.view(), 0.0f, C.view());  // warm-up
  cu::Event start, stop;
  for (auto _ : state) {
    start.record(cu::context().stream());
    cu::gemm<float>(false, true, 1.0f, A.view(), B.view(), 0.0f, C.view());
    stop.record(cu::context().stream());
    stop.synchronize();
    state.SetIterationTime(stop.elapsed_ms_since(start) / 1e3);
  }
  cu::context().set_math(cu::Math::exact);
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(M * N * K),
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["K"] = static_cast<double>(K);
}
BENCHMARK(BM_CudaGemmSameFlops)
    ->ArgName("math")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
