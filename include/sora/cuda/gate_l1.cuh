#pragma once
// The optional L1 term on SoRA's gates (train/trainer.hpp add_gate_l1) for gates on the GPU:
// lambda * sum|g| / N_gates added to the loss, lambda sign(g) / N_gates (0 at g = 0) added onto
// each gate's gradient. train::fit finds it by argument-dependent lookup (its argument holds
// Param<T, Cuda>).
//
// One launch covers up to kGateL1Batch gate tensors (a model's gates in one or two launches,
// like GateBatch, instead of one per tensor): their addresses travel as the kernel's argument,
// so nothing is uploaded. A warp per tensor updates the gradient and sums |g| in double; the
// per-tensor sums are read back (the term's value is part of the logged loss: the one
// read-back a step with this term makes besides the loss) and added on the host in a fixed
// order, so the value does not depend on the run.

#include <algorithm>
#include <cmath>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"

namespace sora::cuda {

namespace detail {

// Tensors per launch. The table is a kernel argument: 64 x (two pointers + a size) = 1.5 KiB,
// inside the 4 KiB every CUDA version accepts.
inline constexpr int kGateL1Batch = 64;

template <class T>
struct GateL1Table {
  const T* value[kGateL1Batch];
  T* grad[kGateL1Batch];
  Index size[kGateL1Batch];
};

// Block k (one warp) handles tensor k of the table and writes its sum of |g| to sum_out[k].
template <class T>
__global__ void gate_l1_batch_kernel(GateL1Table<T> table, T weight, double* sum_out) {
  const int k = static_cast<int>(blockIdx.x);
  const T* g = table.value[k];
  T* grad = table.grad[k];
  const Index n = table.size[k];
  double sum = 0.0;
  for (Index i = ops_detail::lane(); i < n; i += ops_detail::kWarp) {
    const T v = g[i];
    sum += static_cast<double>(v < T(0) ? -v : v);
    grad[i] += weight * static_cast<T>((v > T(0)) - (v < T(0)));
  }
  sum = ops_detail::warp_sum(sum);
  if (ops_detail::lane() == 0) sum_out[k] = sum;
}

}  // namespace detail

template <class T>
double add_gate_l1(const std::vector<Param<T, Cuda>*>& gates, double lambda) {
  SORA_CHECK(std::isfinite(lambda) && lambda >= 0.0, "add_gate_l1: lambda must be >= 0, got ",
             lambda);
  Index count = 0;
  for (const Param<T, Cuda>* g : gates) count += g->size();
  if (lambda == 0.0 || count == 0) return 0.0;
  const double weight = lambda / static_cast<double>(count);
  cudaStream_t stream = context().stream();
  // (gates) per-tensor sums of |g|
  auto* sums = static_cast<double*>(context().scratch(gates.size() * sizeof(double)));
  for (std::size_t base = 0; base < gates.size(); base += detail::kGateL1Batch) {
    const std::size_t n = std::min<std::size_t>(detail::kGateL1Batch, gates.size() - base);
    detail::GateL1Table<T> table{};
    for (std::size_t k = 0; k < n; ++k) {
      Param<T, Cuda>& g = *gates[base + k];
      table.value[k] = g.value.data();
      table.grad[k] = g.gradient().data();
      table.size[k] = g.size();
    }
    detail::gate_l1_batch_kernel<T><<<static_cast<unsigned>(n), ops_detail::kWarp, 0, stream>>>(
        table, static_cast<T>(weight), sums + base);
    SORA_CUDA_CHECK_LAUNCH("gate_l1_batch_kernel");
  }
  std::vector<double> host(gates.size());
  SORA_CUDA_CHECK(cudaMemcpyAsync(host.data(), sums, host.size() * sizeof(double),
                                  cudaMemcpyDeviceToHost, stream));
  SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  double sum = 0.0;
  for (const double s : host) sum += s;
  return weight * sum;
}

}  // namespace sora::cuda
