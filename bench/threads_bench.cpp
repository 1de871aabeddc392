// The thresholds of the threading policy (core/threading.hpp): one thread against two on the
// same work, with the thread count forced (the policy bypassed), for the two kinds of region:
//   BM_Gemm/macs/threads     an (M, K) x (K, N) product of about `macs` multiply-adds, the
//                            shapes of a linear layer (N = 4K) at a falling token count M
//   BM_RowLoop/rows/threads  a tanh-GELU over `rows` rows of 512, the row-wise ops' pattern
//   BM_WakeJoin              an empty two-thread region after the worker has gone to sleep:
//                            the fixed cost a split must repay
// Read a threshold as the smallest size whose threads:2 time is <= 1 / 1.2 of its threads:1
// time. Run it on an idle machine, under OMP_WAIT_POLICY=passive as the programs run; on a busy
// one the threads:2 rows measure the load, not the split (the policy then uses one thread).

#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <sora/core/threading.hpp>
#include <thread>

using namespace sora;

namespace {

void BM_Gemm(benchmark::State& state) {
  const double macs = static_cast<double>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const Index K = 512, N = 4 * K;
  const Index M = std::max<Index>(1, static_cast<Index>(std::lround(macs / (K * N))));
  MatrixF a = MatrixF::Random(M, K), b = MatrixF::Random(K, N), c(M, N);  // (M, K) (K, N)
  Eigen::setNbThreads(threads);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(1);
  state.counters["M"] = static_cast<double>(M);
}
BENCHMARK(BM_Gemm)
    ->ArgNames({"macs", "threads"})
    ->ArgsProduct({{1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24, 1 << 26}, {1, 2}})
    ->UseRealTime();

void BM_RowLoop(benchmark::State& state) {
  const Index rows = state.range(0), C = 512;
  const int threads = static_cast<int>(state.range(1));
  MatrixF x = MatrixF::Random(rows, C), y(rows, C);  // (rows, C)
  for (auto _ : state) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (Index n = 0; n < rows; ++n) {
      const auto v = x.row(n).array();
      y.row(n).array() = 0.5f * v * (1.0f + (0.7978845608f * (v + 0.044715f * v.cube())).tanh());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  (void)threads;
  state.counters["elements"] = static_cast<double>(rows * C);
}
BENCHMARK(BM_RowLoop)
    ->ArgNames({"rows", "threads"})
    ->ArgsProduct({{4, 16, 32, 64, 128, 512}, {1, 2}})
    ->UseRealTime();

void BM_WakeJoin(benchmark::State& state) {
  int sink = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::this_thread::sleep_for(std::chrono::microseconds(300));  // the worker falls asleep
    state.ResumeTiming();
#ifdef _OPENMP
#pragma omp parallel num_threads(2)
    benchmark::DoNotOptimize(sink += omp_get_thread_num());
#endif
  }
}
BENCHMARK(BM_WakeJoin)->UseRealTime();

}  // namespace
