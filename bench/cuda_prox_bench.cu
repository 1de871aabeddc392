// The CUDA proximal operators and optimizer steps against the device's copy bandwidth
// (docs/design.md section 10: >= 85% for elementwise operators, >= 75% for group operators).
//
// Each benchmark measures, in the same process and on the same buffers, two baselines:
//   memcpy   cudaMemcpyAsync device-to-device of n elements into a second buffer
//   inplace  a copy kernel that reads every element and writes it back where it was (x *= 1
//            with the 1 hidden from the compiler): the exact traffic and footprint of an
//            in-place operator
// and reports the operator's bandwidth as a percentage of each (counters pct_memcpy and
// pct_inplace). Bytes are counted as the operator's nominal traffic: 2 n s for an in-place
// operator (read + write), 3 n s with a weight tensor, 7 n s for a fused AdamW step (read p,
// g, m, v; write p, m, v). Column groups of a row-major matrix need a third pass by nature
// (norms cannot be known while a column is in cache) and are reported at the same nominal
// 2 n s, so their percentage shows that cost.
//
// Timing: cudaEvents around each launch, fed to Google Benchmark's manual time.
// The multi-tensor gate step is timed per optimizer step (all gates of a 12-block model, six
// adapted modules per block, rank 8) against one fused launch per module.

#include <benchmark/benchmark.h>

#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "sora/cuda.cuh"
#include "sora/optim/adamw.hpp"

namespace {

namespace cu = sora::cuda;
namespace cp = sora::cuda::prox;
using sora::Index;

__global__ void inplace_copy_kernel(float4* x, Index packs, float one) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += Index(gridDim.x) * blockDim.x) {
    float4 v = x[i];
    v.x *= one;
    v.y *= one;
    v.z *= one;
    v.w *= one;
    x[i] = v;
  }
}

__global__ void fill_kernel(float* x, Index n, unsigned seed) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    // A cheap hash to values in about [-1, 1): the operators' work does not depend on them.
    unsigned h = static_cast<unsigned>(i) * 2654435761u + seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = static_cast<float>(h & 0xffffff) / float(1 << 23) - 1.0f;
  }
}

cu::DeviceTensor<float> filled(Index rows, Index cols, unsigned seed) {
  cu::DeviceTensor<float> t(rows, cols);
  fill_kernel<<<1024, 256>>>(t.data(), t.size(), seed);
  SORA_CUDA_CHECK(cudaGetLastError());
  return t;
}

// Milliseconds per call of fn, the median-free mean over `reps` calls after one warm-up.
float time_ms(const std::function<void()>& fn, int reps) {
  cu::Event start, stop;
  fn();
  start.record();
  for (int i = 0; i < reps; ++i) fn();
  stop.record();
  stop.synchronize();
  return stop.elapsed_ms_since(start) / static_cast<float>(reps);
}

// Baseline bandwidths (GB/s, counting read + write) for n fp32 elements.
struct Baselines {
  double memcpy_gbs = 0, inplace_gbs = 0;
};

Baselines baselines(Index n) {
  static std::vector<std::pair<Index, Baselines>> cache;
  for (const auto& [size, b] : cache) {
    if (size == n) return b;
  }
  auto a = filled(1, n, 1);
  cu::DeviceTensor<float> b(1, n);
  const double bytes = 2.0 * static_cast<double>(n) * sizeof(float);
  const int reps = n >= (Index(1) << 26) ? 10 : 50;
  const float ms_memcpy = time_ms(
      [&] {
        SORA_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<std::size_t>(n) * 4,
                                        cudaMemcpyDeviceToDevice));
      },
      reps);
  const Index packs = n / 4;
  const unsigned grid = cu::detail::grid_for(packs);
  const float ms_inplace = time_ms(
      [&] { inplace_copy_kernel<<<grid, 256>>>(reinterpret_cast<float4*>(a.data()), packs, 1.0f); },
      reps);
  Baselines out{bytes / (ms_memcpy * 1e6), bytes / (ms_inplace * 1e6)};
  cache.emplace_back(n, out);
  return out;
}

// Runs `fn` under manual timing; `bytes` per call; reports GB/s and the two percentages.
void run(benchmark::State& state, Index n, double bytes, const std::function<void()>& fn) {
  const Baselines base = baselines(n);
  cu::Event start, stop;
  fn();  // warm-up (and first-touch of any scratch)
  double total_ms = 0;
  for (auto _ : state) {
    start.record();
    fn();
    stop.record();
    stop.synchronize();
    const float ms = stop.elapsed_ms_since(start);
    total_ms += ms;
    state.SetIterationTime(ms / 1e3);
  }
  const double gbs = bytes * static_cast<double>(state.iterations()) / (total_ms * 1e6);
  state.SetBytesProcessed(static_cast<int64_t>(bytes * static_cast<double>(state.iterations())));
  state.counters["GBps"] = gbs;
  state.counters["memcpy_GBps"] = base.memcpy_gbs;
  state.counters["pct_memcpy"] = 100.0 * gbs / base.memcpy_gbs;
  state.counters["pct_inplace"] = 100.0 * gbs / base.inplace_gbs;
}

void BM_MemcpyD2D(benchmark::State& state) {
  const Index n = state.range(0);
  auto a = filled(1, n, 1);
  cu::DeviceTensor<float> b(1, n);
  run(state, n, 2.0 * n * 4, [&] {
    SORA_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<std::size_t>(n) * 4,
                                    cudaMemcpyDeviceToDevice));
  });
}

void BM_InplaceCopyKernel(benchmark::State& state) {
  const Index n = state.range(0);
  auto a = filled(1, n, 1);
  const unsigned grid = cu::detail::grid_for(n / 4);
  run(state, n, 2.0 * n * 4, [&] {
    inplace_copy_kernel<<<grid, 256>>>(reinterpret_cast<float4*>(a.data()), n / 4, 1.0f);
  });
}

// Elementwise operators, fp32, in place on a (n / 4096, 4096) tensor.
template <class Fn>
void elementwise(benchmark::State& state, Fn op) {
  const Index n = state.range(0);
  auto x = filled(n / 4096, 4096, 2);
  run(state, n, 2.0 * n * 4, [&] { op(x.view()); });
}

void BM_Soft(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::soft_threshold_inplace(x, 0.1f); });
}
void BM_Hard(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::hard_threshold_inplace(x, 0.1f); });
}
void BM_L1(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::l1_prox_inplace(x, 0.5f, 0.2f); });
}
void BM_L0(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::l0_prox_inplace(x, 0.5f, 0.01f); });
}
void BM_ElasticNet(benchmark::State& s) {
  elementwise(s,
              [](cu::DeviceView<float> x) { cp::elastic_net_prox_inplace(x, 0.5f, 0.2f, 0.1f); });
}
void BM_NonnegSoft(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::nonneg_soft_threshold_inplace(x, 0.1f); });
}
void BM_Firm(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::firm_threshold_inplace(x, 0.5f, 0.2f, 3.0f); });
}
void BM_Box(benchmark::State& s) {
  elementwise(s, [](cu::DeviceView<float> x) { cp::box_project_inplace(x, -0.5f, 0.5f); });
}

// Weighted soft threshold: reads a weight per element too (3 n s bytes). The weight check
// (one more read of w and a synchronisation) is part of every call, as in the library.
void BM_SoftWeighted(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = filled(n / 4096, 4096, 2);
  auto w = filled(n / 4096, 4096, 3);
  cp::box_project_inplace(w, 0.0f, 1.0f);
  run(state, n, 3.0 * n * 4, [&] { cp::soft_threshold_inplace(x, 0.1f, w); });
}

// Group operators, fp32, in place. Rows of `cols` elements (rows groups), blocks of b.
template <class Fn>
void grouped(benchmark::State& state, Index cols, Fn op) {
  const Index n = state.range(0);
  auto x = filled(n / cols, cols, 4);
  run(state, n, 2.0 * n * 4, [&] { op(x.view()); });
}

void BM_GroupSoftRows4096(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::rows());
  grouped(s, 4096, [&](cu::DeviceView<float> x) { cp::group_soft_threshold_inplace(x, g, 1.0f); });
}
void BM_GroupSoftRows256(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::rows());
  grouped(s, 256, [&](cu::DeviceView<float> x) { cp::group_soft_threshold_inplace(x, g, 1.0f); });
}
void BM_GroupSoftRows65536(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::rows());
  grouped(s, 65536, [&](cu::DeviceView<float> x) { cp::group_soft_threshold_inplace(x, g, 1.0f); });
}
void BM_GroupSoftBlocks16(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::blocks(16));
  grouped(s, 4096, [&](cu::DeviceView<float> x) { cp::group_soft_threshold_inplace(x, g, 0.5f); });
}
void BM_GroupL0Blocks64(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::blocks(64));
  grouped(s, 4096, [&](cu::DeviceView<float> x) { cp::group_l0_prox_inplace(x, g, 1.0f, 2.0f); });
}
void BM_GroupHardRows4096(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::rows());
  grouped(s, 4096, [&](cu::DeviceView<float> x) { cp::group_hard_threshold_inplace(x, g, 36.9f); });
}
void BM_GroupSoftCols4096(benchmark::State& s) {
  const cp::DeviceGroups g(sora::prox::Groups::cols());
  grouped(s, 4096, [&](cu::DeviceView<float> x) { cp::group_soft_threshold_inplace(x, g, 1.0f); });
}

// Fused AdamW over n fp32 parameters: 7 n s bytes per step.
void BM_FusedAdamW(benchmark::State& state) {
  const Index n = state.range(0);
  auto p = filled(1, n, 5);
  auto g = filled(1, n, 6);
  auto m = cu::DeviceTensor<float>::zeros(1, n);
  auto v = cu::DeviceTensor<float>::zeros(1, n);
  sora::optim::AdamWOptions o;
  const auto sc = sora::optim::adamw_scalars(o, 10);
  run(state, n, 7.0 * n * 4, [&] { cu::optim::adamw_step(p, g, m, v, sc, 0.1); });
}

// All gates of a 12-block model (6 adapted modules per block, rank 8): one launch (GateBatch)
// against one launch per module. Reported as microseconds per optimizer step.
struct Gates {
  std::vector<cu::DeviceTensor<float>> p, g, m, v;
  explicit Gates(int modules, Index rank) {
    for (int i = 0; i < modules; ++i) {
      p.push_back(filled(1, rank, 10u + unsigned(i)));
      g.push_back(filled(1, rank, 100u + unsigned(i)));
      m.push_back(cu::DeviceTensor<float>::zeros(1, rank));
      v.push_back(cu::DeviceTensor<float>::zeros(1, rank));
    }
  }
};

void gate_bench(benchmark::State& state, bool batched) {
  const int modules = static_cast<int>(state.range(0));
  Gates gates(modules, 8);
  std::vector<cu::optim::GateBatch<float>::Entry> entries;
  for (int i = 0; i < modules; ++i) {
    entries.push_back({gates.p[i].view(), gates.g[i].view(), gates.m[i].view(), gates.v[i].view()});
  }
  const cu::optim::GateBatch<float> batch(entries);
  sora::optim::AdamWOptions o;
  o.lr = 8e-4;
  const auto sc = sora::optim::adamw_scalars(o, 10);
  auto step = [&] {
    if (batched) {
      batch.step(sc, 3e-4);
    } else {
      for (int i = 0; i < modules; ++i) {
        cu::optim::sparse_adamw_step(gates.p[i], gates.g[i], gates.m[i], gates.v[i], sc, 3e-4);
      }
    }
  };
  // 200 optimizer steps per timed iteration: the per-step cost is a few microseconds.
  constexpr int kSteps = 200;
  cu::Event start, stop;
  step();
  double total_ms = 0;
  for (auto _ : state) {
    start.record();
    for (int k = 0; k < kSteps; ++k) step();
    stop.record();
    stop.synchronize();
    const float ms = stop.elapsed_ms_since(start);
    total_ms += ms;
    state.SetIterationTime(ms / 1e3 / kSteps);
  }
  state.counters["us_per_step"] =
      1e3 * total_ms / (static_cast<double>(state.iterations()) * kSteps);
  state.counters["launches_per_step"] = batched ? 1 : modules;
}

void BM_GateStepBatched(benchmark::State& s) {
  gate_bench(s, true);
}
void BM_GateStepPerModule(benchmark::State& s) {
  gate_bench(s, false);
}

void sizes(benchmark::internal::Benchmark* b) {
  b->RangeMultiplier(16)
      ->Range(Index(1) << 20, Index(1) << 28)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_MemcpyD2D)->Apply(sizes);
BENCHMARK(BM_InplaceCopyKernel)->Apply(sizes);
BENCHMARK(BM_Soft)->Apply(sizes);
BENCHMARK(BM_Hard)->Apply(sizes);
BENCHMARK(BM_L1)->Apply(sizes);
BENCHMARK(BM_L0)->Apply(sizes);
BENCHMARK(BM_ElasticNet)->Apply(sizes);
BENCHMARK(BM_NonnegSoft)->Apply(sizes);
BENCHMARK(BM_Firm)->Apply(sizes);
BENCHMARK(BM_Box)->Apply(sizes);
BENCHMARK(BM_SoftWeighted)->Apply(sizes);
BENCHMARK(BM_GroupSoftRows256)->Apply(sizes);
BENCHMARK(BM_GroupSoftRows4096)->Apply(sizes);
BENCHMARK(BM_GroupSoftRows65536)->Apply(sizes);
BENCHMARK(BM_GroupSoftBlocks16)->Apply(sizes);
BENCHMARK(BM_GroupL0Blocks64)->Apply(sizes);
BENCHMARK(BM_GroupHardRows4096)->Apply(sizes);
BENCHMARK(BM_GroupSoftCols4096)->Apply(sizes);
BENCHMARK(BM_FusedAdamW)
    ->RangeMultiplier(16)
    ->Range(Index(1) << 20, Index(1) << 26)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GateStepBatched)->Arg(72)->Arg(288)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GateStepPerModule)->Arg(72)->Arg(288)->UseManualTime()->Unit(benchmark::kMicrosecond);

// Without a GPU there is nothing to measure: say so and succeed (CI builds this binary only).
int main(int argc, char** argv) {
  if (!cu::gpu_available()) {
    std::printf("sora_bench_cuda: no CUDA device available, nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  SORA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("sora_bench_cuda: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
