#pragma once
// The optional L1 term on SoRA's gates (train/trainer.hpp add_gate_l1) for gates on the GPU:
// lambda * sum|g| / N_gates added to the loss, lambda sign(g) / N_gates (0 at g = 0) added onto
// each gate's gradient. train::fit finds it by argument-dependent lookup (its argument holds
// Param<T, Cuda>).
//
// One warp per gate tensor updates the gradient and sums |g| in double; the per-tensor sums
// are read back (the term's value is part of the logged loss: the one read-back a step with
// this term makes besides the loss) and added on the host in a fixed order, so the value does
// not depend on the run.

#include <cmath>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"

namespace sora::cuda {

namespace detail {

template <class T>
__global__ void gate_l1_kernel(const T* g, T* grad, Index n, T weight, double* sum_out) {
  double sum = 0.0;
  for (Index i = ops_detail::lane(); i < n; i += ops_detail::kWarp) {
    const T v = g[i];
    sum += static_cast<double>(v < T(0) ? -v : v);
    grad[i] += weight * static_cast<T>((v > T(0)) - (v < T(0)));
  }
  sum = ops_detail::warp_sum(sum);
  if (ops_detail::lane() == 0) *sum_out = sum;
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
  for (std::size_t k = 0; k < gates.size(); ++k) {
    Param<T, Cuda>& g = *gates[k];
    detail::gate_l1_kernel<T><<<1, ops_detail::kWarp, 0, stream>>>(
        g.value.data(), g.gradient().data(), g.size(), static_cast<T>(weight), sums + k);
    SORA_CUDA_CHECK_LAUNCH("gate_l1_kernel");
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
