// Proximal operators against the memory-bandwidth limit (docs/design.md 5 and 10).
//
// An in-place elementwise operator over N elements of size s reads N s bytes and writes N s
// bytes back to the same cache lines, with a footprint of N s bytes. The baseline must move
// the same bytes with the same footprint, so:
//   BM_Copy            the in-place copy: every element read and written back to where it was
//                      (x *= one, with `one` hidden from the optimizer so that the pass cannot
//                      be deleted), 2 N s bytes over an N s footprint: exactly the traffic and
//                      cache behaviour of an in-place operator, i.e. its physical limit. The
//                      targets (>= 90% elementwise, >= 80% group variants) are against this.
//   BM_CopyTwoBuffers  std::memcpy into a second buffer, counted as 2 N s bytes. Shown for
//                      reference only: its footprint is twice as large (at 2^24 fp32, 128 MiB
//                      against a 32 MiB L3) and glibc uses non-temporal stores for it; on the
//                      development machine it runs at about half the in-place rate, so a
//                      ratio against it would flatter the operators.
// Everything here is single-threaded, baselines included (the operators do not split work
// over threads: kParallel in prox/detail.hpp is off).
//
// Each operator is applied repeatedly to the same buffer. The kernels do the same work
// whatever the values (soft and hard threshold read and write every element), and repeated
// shrinking never produces denormals (soft threshold lands on exact zeros), so the steady
// state is representative. Group hard threshold is the exception by design: a kept group is
// not written back, so its traffic depends on the fraction kept (about half here).
//
// Sizes 2^10 .. 2^24 elements; 2^24 fp32 (64 MiB) is far beyond the 32 MiB L3.
//
// Eigen tensors (prox/eigen_tensor.hpp) are a rank-3 (32, 32, N / 1024) column-major Tensor:
// the elementwise operators run on its flat storage, so they must match the dense rate; the
// group operators along axis 2 have contiguous 1024-element groups (one pass), along axis 1
// the general layout (32 groups interleaved in runs of 32: norms first, then the scaling).

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstring>
#include <sora/core/rng.hpp>
#include <sora/prox.hpp>
#include <sora/prox/eigen_tensor.hpp>

#include "paired_timing.hpp"

namespace {

using sora::Index;
using sora::prox::Groups;

template <class T>
sora::Array<T> random_array(Index rows, Index cols) {
  sora::Rng rng(42);
  sora::Array<T> a(rows, cols);
  rng.fill_uniform(a, -1.0, 1.0);
  return a;
}

template <class T>
void set_bytes(benchmark::State& state, Index n) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 2 * n *
                          static_cast<int64_t>(sizeof(T)));
}

template <class T>
void BM_Copy(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(1, n);
  for (auto _ : state) {
    T one = T(1);
    benchmark::DoNotOptimize(one);
    x *= one;
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_CopyTwoBuffers(benchmark::State& state) {
  const Index n = state.range(0);
  auto src = random_array<T>(1, n);
  sora::Array<T> dst = sora::Array<T>::Zero(1, n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), static_cast<std::size_t>(n) * sizeof(T));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_SoftThreshold_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(1, n);
  for (auto _ : state) {
    sora::prox::soft_threshold_inplace(x, T(0.01));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_SoftThreshold_OutOfPlace(benchmark::State& state) {
  const Index n = state.range(0);
  const auto x = random_array<T>(1, n);
  for (auto _ : state) {
    auto y = sora::prox::soft_threshold(x, T(0.5));  // allocates its result, as the API does
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_HardThreshold_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(1, n);
  for (auto _ : state) {
    sora::prox::hard_threshold_inplace(x, T(0.5));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_HardThreshold_OutOfPlace(benchmark::State& state) {
  const Index n = state.range(0);
  const auto x = random_array<T>(1, n);
  for (auto _ : state) {
    auto y = sora::prox::hard_threshold(x, T(0.5));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

// Groups of 1024 elements = the rows of an (N / 1024, 1024) row-major array (one pass, each
// 4 KiB group norm-then-scaled while in L1); for N = 1024 a single group.
constexpr Index kGroup = 1024;

template <class T>
void BM_GroupSoftThreshold_Rows1024_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(n / kGroup, kGroup);
  for (auto _ : state) {
    sora::prox::group_soft_threshold_inplace(x, Groups::rows(), T(0.05));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_GroupSoftThreshold_Rows1024_OutOfPlace(benchmark::State& state) {
  const Index n = state.range(0);
  const auto x = random_array<T>(n / kGroup, kGroup);
  for (auto _ : state) {
    auto y = sora::prox::group_soft_threshold(x, Groups::rows(), T(10));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

// Small groups (16 elements, a rank-like size) through Groups::blocks over the flat array.
template <class T>
void BM_GroupSoftThreshold_Blocks16_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(1, n);
  for (auto _ : state) {
    sora::prox::group_soft_threshold_inplace(x, Groups::blocks(16), T(0.01));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

// ||x_g|| of 1024 U(-1, 1) values is about sqrt(1024 / 3) = 18.5: τ = 18.5 keeps about half.
template <class T>
void BM_GroupHardThreshold_Rows1024_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(n / kGroup, kGroup);
  for (auto _ : state) {
    sora::prox::group_hard_threshold_inplace(x, Groups::rows(), T(18.5));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_GroupHardThreshold_Rows1024_OutOfPlace(benchmark::State& state) {
  const Index n = state.range(0);
  const auto x = random_array<T>(n / kGroup, kGroup);
  for (auto _ : state) {
    auto y = sora::prox::group_hard_threshold(x, Groups::rows(), T(18.5));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_GroupHardThreshold_Blocks16_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_array<T>(1, n);
  for (auto _ : state) {
    sora::prox::group_hard_threshold_inplace(x, Groups::blocks(16), T(2.3));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
Eigen::Tensor<T, 3> random_tensor(Index n) {
  Eigen::Tensor<T, 3> t(32, 32, n / 1024);
  sora::prox::flat(t) = random_array<T>(1, n).transpose();
  return t;
}

template <class T>
void BM_TensorSoftThreshold_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_tensor<T>(n);
  for (auto _ : state) {
    sora::prox::soft_threshold_inplace(x, T(0.01));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

template <class T>
void BM_TensorGroupSoftThreshold_Axis2_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_tensor<T>(n);
  for (auto _ : state) {
    sora::prox::group_soft_threshold_inplace(x, sora::prox::Axis{2}, T(0.05));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

// Axis 1: each of the 32 groups holds N / 32 elements, norm about sqrt(N / 96); a τ of that
// keeps about half, and repeated application then leaves the same groups kept.
template <class T>
void BM_TensorGroupHardThreshold_Axis1_InPlace(benchmark::State& state) {
  const Index n = state.range(0);
  auto x = random_tensor<T>(n);
  const T tau = static_cast<T>(std::sqrt(static_cast<double>(n) / 96.0));
  for (auto _ : state) {
    sora::prox::group_hard_threshold_inplace(x, sora::prox::Axis{1}, tau);
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_bytes<T>(state, n);
}

// The group hard threshold's rate as a share of the in-place copy's, measured in pairs: the
// separate BM_Copy and BM_GroupHardThreshold_* runs above drift apart by more than the margin
// to the target on a shared machine, so this alternates one copy and one operator pass per
// iteration (bench/paired_timing.hpp) and reports copy time / operator time
// (copy_over_op_median: 1 = at the copy's rate; the target is >= 0.80).
template <class T>
void BM_GroupHardThreshold_RateOfCopy(benchmark::State& state) {
  const Index n = state.range(0), block = state.range(1);  // block 0: rows of 1024
  auto x = random_array<T>(n / 1024, 1024);
  const Groups groups = block == 0 ? Groups::rows() : Groups::blocks(block);
  // About half of the groups kept: a block of b uniform(-1, 1) entries has norm about sqrt(b / 3).
  const T tau = static_cast<T>(std::sqrt(static_cast<double>(block == 0 ? 1024 : block) / 3.0));
  sora::prox::group_hard_threshold_inplace(x, groups, tau);  // the steady state
  sora::bench::run_paired(
      state, "copy_over_op", "copy",
      [&] {
        T one = T(1);
        benchmark::DoNotOptimize(one);
        x *= one;
        benchmark::DoNotOptimize(x.data());
      },
      "op",
      [&] {
        sora::prox::group_hard_threshold_inplace(x, groups, tau);
        benchmark::DoNotOptimize(x.data());
      });
}
BENCHMARK_TEMPLATE(BM_GroupHardThreshold_RateOfCopy, float)
    ->Args({1 << 24, 16})
    ->Args({1 << 24, 0})
    ->Iterations(11)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_GroupHardThreshold_RateOfCopy, double)
    ->Args({1 << 24, 16})
    ->Args({1 << 24, 0})
    ->Iterations(11)
    ->UseRealTime();

#define SORA_PROX_BENCH(fn)                                                                   \
  BENCHMARK_TEMPLATE(fn, float)->RangeMultiplier(16)->Range(1 << 10, 1 << 24)->UseRealTime(); \
  BENCHMARK_TEMPLATE(fn, double)->RangeMultiplier(16)->Range(1 << 10, 1 << 24)->UseRealTime()

SORA_PROX_BENCH(BM_Copy);
SORA_PROX_BENCH(BM_CopyTwoBuffers);
SORA_PROX_BENCH(BM_SoftThreshold_InPlace);
SORA_PROX_BENCH(BM_SoftThreshold_OutOfPlace);
SORA_PROX_BENCH(BM_HardThreshold_InPlace);
SORA_PROX_BENCH(BM_HardThreshold_OutOfPlace);
SORA_PROX_BENCH(BM_GroupSoftThreshold_Rows1024_InPlace);
SORA_PROX_BENCH(BM_GroupSoftThreshold_Rows1024_OutOfPlace);
SORA_PROX_BENCH(BM_GroupSoftThreshold_Blocks16_InPlace);
SORA_PROX_BENCH(BM_GroupHardThreshold_Rows1024_InPlace);
SORA_PROX_BENCH(BM_GroupHardThreshold_Rows1024_OutOfPlace);
SORA_PROX_BENCH(BM_GroupHardThreshold_Blocks16_InPlace);
SORA_PROX_BENCH(BM_TensorSoftThreshold_InPlace);
SORA_PROX_BENCH(BM_TensorGroupSoftThreshold_Axis2_InPlace);
SORA_PROX_BENCH(BM_TensorGroupHardThreshold_Axis1_InPlace);

}  // namespace
