#pragma once
// Losses: softmax cross-entropy (fused, with an ignore index) and mean squared error.
//
// Backward contract: the gradient with respect to the logits / predictions overwrites (=).
// The forward returns the scalar loss; backward takes its upstream gradient dloss (1 for a
// loss that is optimised directly).
//
// Sizes: N rows, V classes (vocabulary), K regression outputs.

#include <cmath>
#include <span>

#include "sora/ops/activation.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

inline constexpr int kIgnoreIndex = -100;  // PyTorch's default ignore_index

namespace detail {
inline Index count_targets(const char* op, std::span<const int> targets, Index V,
                           int ignore_index) {
  Index count = 0;
  for (std::size_t n = 0; n < targets.size(); ++n) {
    if (targets[n] == ignore_index) continue;
    SORA_CHECK(targets[n] >= 0 && targets[n] < V, op, ": target ", targets[n], " at row ", n,
               " is outside [0, ", V, ") and is not the ignore index ", ignore_index);
    ++count;
  }
  return count;
}
}  // namespace detail

// loss = mean over rows n with targets[n] != ignore_index of -log softmax(logits[n])[targets[n]]
// (0 when every row is ignored). probs = softmax(logits) is saved for backward.
template <class T>
T cross_entropy_forward(MatrixRef<T> probs,            // (N, V)
                        ConstMatrixRef<T> logits,      // (N, V)
                        std::span<const int> targets,  // (N)
                        int ignore_index = kIgnoreIndex) {
  const Index N = logits.rows(), V = logits.cols();
  SORA_CHECK(static_cast<Index>(targets.size()) == N, "cross_entropy_forward: logits ",
             shape_of(logits), " but ", targets.size(), " targets");
  detail::check_shape("cross_entropy_forward", "probs", probs, N, V);
  const Index count = detail::count_targets("cross_entropy_forward", targets, V, ignore_index);
  T total = 0;
  for (Index n = 0; n < N; ++n) {
    const T m = logits.row(n).maxCoeff();
    probs.row(n).array() = (logits.row(n).array() - m).exp();
    const T sum = probs.row(n).sum();
    probs.row(n) /= sum;
    // log-sum-exp form: -log p_y = log(sum) + m - logit_y, exact even where p_y underflows.
    if (targets[n] != ignore_index) total += std::log(sum) + m - logits(n, targets[n]);
  }
  return count == 0 ? T(0) : total / T(count);
}

// d loss / d logits[n] = (probs[n] - onehot(targets[n])) / count for kept rows, 0 for ignored.
template <class T>
void cross_entropy_backward(MatrixRef<T> dlogits,          // (N, V)
                            ConstMatrixRef<T> probs,       // (N, V)
                            std::span<const int> targets,  // (N)
                            int ignore_index = kIgnoreIndex, T dloss = T(1)) {
  const Index N = probs.rows(), V = probs.cols();
  SORA_CHECK(static_cast<Index>(targets.size()) == N, "cross_entropy_backward: probs ",
             shape_of(probs), " but ", targets.size(), " targets");
  detail::check_shape("cross_entropy_backward", "dlogits", dlogits, N, V);
  const Index count = detail::count_targets("cross_entropy_backward", targets, V, ignore_index);
  const T factor = count == 0 ? T(0) : dloss / T(count);
  for (Index n = 0; n < N; ++n) {
    if (targets[n] == ignore_index) {
      dlogits.row(n).setZero();
      continue;
    }
    dlogits.row(n) = probs.row(n) * factor;
    dlogits(n, targets[n]) -= factor;
  }
}

// loss = mean over all N K elements of (pred - target)^2.
template <class T>
T mse_forward(ConstMatrixRef<T> pred,      // (N, K)
              ConstMatrixRef<T> target) {  // (N, K)
  detail::check_shape("mse_forward", "target", target, pred.rows(), pred.cols());
  if (pred.size() == 0) return T(0);
  return (pred - target).squaredNorm() / T(pred.size());
}

// dpred = 2 (pred - target) / (N K) * dloss.
template <class T>
void mse_backward(MatrixRef<T> dpred,        // (N, K)
                  ConstMatrixRef<T> pred,    // (N, K)
                  ConstMatrixRef<T> target,  // (N, K)
                  T dloss = T(1)) {
  detail::check_shape("mse_backward", "target", target, pred.rows(), pred.cols());
  detail::check_shape("mse_backward", "dpred", dpred, pred.rows(), pred.cols());
  if (pred.size() == 0) return;
  dpred = (pred - target) * (T(2) * dloss / T(pred.size()));
}

}  // namespace sora::ops
