#pragma once
// Gradient-norm clipping on the device, the twin of optim/clip.hpp's clip_grad_norm (and of
// torch's clip_grad_norm_), shared by the GPU optimizers (cuda/fine_tune.cuh,
// cuda/adalora.cuh): a cuBLAS norm per gradient written to device memory, one kernel for the
// factor and one scaling kernel per gradient. Nothing is read back, so a step never waits for
// the GPU; last_norm() reads the norm back, for logging only.

#include <cublas_v2.h>

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace detail {

// factor = max_norm / (norm + 1e-6) where the global norm exceeds max_norm, else 1: the CPU's
// optim::clip_grad_norm. The per-tensor norms are squared and summed in double, in order.
template <class T>
__global__ void clip_factor_kernel(const T* norms, int count, double max_norm, T* factor) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double sum = 0.0;
  for (int i = 0; i < count; ++i) sum += static_cast<double>(norms[i]) * norms[i];
  const double total = sqrt(sum);
  factor[0] = static_cast<T>(total > max_norm ? max_norm / (total + 1e-6) : 1.0);
  factor[1] = static_cast<T>(total);
}

template <class T>
__global__ void scale_by_kernel(T* x, Index n, const T* factor) {
  const T f = factor[0];
  if (f == T(1)) return;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x)
    x[i] *= f;
}

template <class T>
cublasStatus_t nrm2(cublasHandle_t h, int n, const T* x, T* result) {
  if constexpr (std::is_same_v<T, float>) {
    return cublasSnrm2(h, n, x, 1, result);
  } else {
    return cublasDnrm2(h, n, x, 1, result);
  }
}

}  // namespace detail

// Clips the gradients of a fixed set of trainable device parameters together.
template <class T>
class GradNormClipper {
 public:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "gradients are clipped in fp32 or fp64");

  GradNormClipper() = default;
  // params: trainable parameters, which must outlive the clipper (and stay trainable).
  explicit GradNormClipper(std::vector<Param<T, Cuda>*> params)
      : params_(std::move(params)),
        norms_(
            DeviceTensor<T>::zeros(1, static_cast<Index>(params_.size()) + 2, context().stream())) {
    // clip_factor_kernel takes the count as an int.
    detail::check_int_sizes("clip_grad_norm", "clip_factor_kernel",
                            {{"parameters", static_cast<Index>(params_.size())}});
  }

  // Scales every gradient so that their global L2 norm is at most max_norm (<= 0: off), on the
  // device, without reading anything back.
  void clip(double max_norm) {
    SORA_CHECK(!std::isnan(max_norm), "clip_grad_norm: max_norm is NaN");
    if (max_norm <= 0.0 || params_.empty()) return;
    cublasHandle_t h = context().cublas();
    T* norms = norms_.data();  // (count) per-gradient norms, then the factor and the total
    // nrm2 takes the length as an int; checked before the handle leaves host pointer mode.
    for (const Param<T, Cuda>* p : params_)
      detail::check_int_sizes("clip_grad_norm", "cublas nrm2",
                              {{p->name.c_str(), p->gradient().size()}});
    SORA_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto& g = params_[i]->gradient();
      const cublasStatus_t st = detail::nrm2<T>(h, static_cast<int>(g.size()), g.data(), norms + i);
      if (st != CUBLAS_STATUS_SUCCESS) {
        (void)cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST);
        SORA_CUBLAS_CHECK(st);
      }
    }
    SORA_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
    T* factor = norms + params_.size();
    detail::clip_factor_kernel<T><<<1, 1, 0, context().stream()>>>(
        norms, static_cast<int>(params_.size()), max_norm, factor);
    SORA_CUDA_CHECK_LAUNCH("clip_factor_kernel");
    for (Param<T, Cuda>* p : params_) {
      auto& g = p->gradient();
      if (g.size() == 0) continue;
      detail::scale_by_kernel<T>
          <<<detail::grid_for(g.size()), detail::kThreads, 0, context().stream()>>>(
              g.data(), g.size(), factor);
      SORA_CUDA_CHECK_LAUNCH("scale_by_kernel");
    }
  }

  // The global norm before the last clipping (0 before the first; reads it back: for logging).
  double last_norm() const {
    if (norms_.size() == 0) return 0.0;
    const Matrix<T> n = norms_.to_host(context().stream());
    return static_cast<double>(n(0, static_cast<Index>(params_.size()) + 1));
  }

  std::size_t tensors() const { return params_.size(); }

 private:
  std::vector<Param<T, Cuda>*> params_;
  DeviceTensor<T> norms_;  // (1, count + 2) per-gradient norms, clip factor, total norm
};

}  // namespace sora::cuda
