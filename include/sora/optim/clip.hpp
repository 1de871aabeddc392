#pragma once
// Gradient-norm clipping over all trainable parameters together (as torch's
// clip_grad_norm_): if the global L2 norm exceeds max_norm, every gradient is scaled by
// max_norm / (norm + 1e-6). Frozen parameters own no gradient and are skipped.

#include <cmath>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"

namespace sora::optim {

// The global L2 norm of the gradients of the trainable parameters, accumulated in double.
template <class T>
double global_grad_norm(const std::vector<Param<T>*>& params) {
  double sum_sq = 0.0;
  for (const Param<T>* p : params) {
    if (p == nullptr || !p->has_grad()) continue;
    sum_sq += p->gradient().template cast<double>().squaredNorm();
  }
  return std::sqrt(sum_sq);
}

// Clips in place; returns the norm before clipping (what training logs report).
// max_norm <= 0 disables clipping but still returns the norm.
template <class T>
double clip_grad_norm(const std::vector<Param<T>*>& params, double max_norm) {
  SORA_CHECK(!std::isnan(max_norm), "clip_grad_norm: max_norm is NaN");
  const double norm = global_grad_norm(params);
  if (max_norm > 0.0 && norm > max_norm) {
    const T scale = static_cast<T>(max_norm / (norm + 1e-6));
    for (Param<T>* p : params) {
      if (p != nullptr && p->has_grad()) p->gradient() *= scale;
    }
  }
  return norm;
}

}  // namespace sora::optim
