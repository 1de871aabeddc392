#pragma once
// Projections that read the same input (attention's q, k and v) computed together: one GEMM
// over their stacked base weights and one over the stacked A matrices of their adapters, in
// forward and in backward, instead of one GEMM per projection. The input x is read once per
// product instead of once per projection, and the input gradient comes out of one product
// over the stacked weights instead of three products and two passes that sum them.
//
// The arithmetic is that of AdaptedLinear (nn/adapter.hpp) and the low-rank product
// (ops/linear.hpp) rearranged:
//   forward:   y = x [W_1; ...; W_P]^T + [b_1 ... b_P]            (N, sum OC)
//              h = x [A_1; ...; A_P]^T                             (N, sum R)
//              y_p += u_p B_p^T,  u_p = s_p (h_p ⊙ g_p)
//   backward:  dB_p += dy_p^T u_p;  dh_p = s_p (dy_p B_p) ⊙ g_p;  dg_p += s_p sum_n (dy_p B_p ⊙
//   h_p)
//              dA = dh^T x (stacked, then added into each A's gradient)
//              dx = dy [W_1; ...; W_P] + dh [A_1; ...; A_P]
// with the base gradients (full fine-tuning) per block: dW_p += dy_p^T x, db_p += sum_n dy_p.
//
// Only the projections with an active adapter (attached, not merged into its base) take part in
// the adapter products. It applies when the projections share their input size, either all have
// a bias or none has, and no active adapter drops its input in training (each would draw its own
// mask); otherwise the caller runs the projections one by one. CPU backend.
//
// Backward contract: parameter gradients accumulate (+=), the input gradient is overwritten (=).

#include <array>

#include "sora/core/threading.hpp"
#include "sora/nn/adapter.hpp"

namespace sora::nn {

template <class T, std::size_t P>
class StackedProjections {
 public:
  using Layer = AdaptedLinear<T, Cpu>;
  using Layers = std::array<Layer*, P>;

  static bool applies(const Layers& layers) {
    const Index in = layers[0]->in_features();
    const bool biased = layers[0]->base.has_bias();
    for (const Layer* l : layers) {
      if (l->in_features() != in || l->base.has_bias() != biased) return false;
      if (active(*l) && l->adapter->training() && l->adapter->dropout() > T(0)) return false;
    }
    return true;
  }

  // Column block p of the output holds projection p. x must stay alive until backward.
  const Matrix<T>& forward(const Layers& layers, const Matrix<T>& x) {
    SORA_CHECK(applies(layers), "StackedProjections::forward: the projections do not stack");
    x_ = &x;
    const Index N = x.rows(), C = x.cols();
    Index OC = 0, R = 0;
    for (std::size_t p = 0; p < P; ++p) {
      active_[p] = active(*layers[p]);
      out_offset_[p] = OC;
      OC += layers[p]->out_features();
      rank_offset_[p] = R;
      if (active_[p]) R += layers[p]->adapter->rank();
    }
    adapted_ = R > 0;
    const bool biased = layers[0]->base.has_bias();
    if (biased) b_.resize(1, OC);
    for (std::size_t p = 0; p < P; ++p) {
      const Layer& l = *layers[p];
      if (biased) b_.middleCols(out_offset_[p], l.out_features()) = l.base.bias.value;
    }
    const Matrix<T>& w = stack_weights(layers, OC, C);
    y_.resize(N, OC);
    ops::linear_forward<T>(y_, x, w,
                           biased ? ConstMatrixRef<T>(b_) : ConstMatrixRef<T>(ops::absent<T>()));
    if (!adapted_) return y_;

    a_.resize(R, C);
    for (std::size_t p = 0; p < P; ++p)
      if (active_[p])
        a_.middleRows(rank_offset_[p], layers[p]->adapter->rank()) =
            layers[p]->adapter->lora_A.value;
    h_.resize(N, R);
    u_.resize(N, R);
    {
      GemmThreads threads(N, R, C);
      h_.noalias() = x * a_.transpose();
    }
    for (std::size_t p = 0; p < P; ++p) {
      if (!active_[p]) continue;
      const auto& ad = *layers[p]->adapter;
      const Index Rp = ad.rank(), OCp = layers[p]->out_features();
      const auto h = h_.middleCols(rank_offset_[p], Rp);  // (N, Rp)
      auto u = u_.middleCols(rank_offset_[p], Rp);        // (N, Rp)
      if (ad.gated()) {
        u.array() = (h.array().rowwise() * ad.gate.value.row(0).array()) * ad.scale();
      } else {
        u.array() = h.array() * ad.scale();
      }
      GemmThreads threads(N, OCp, Rp);
      y_.middleCols(out_offset_[p], OCp).noalias() += u * ad.lora_B.value.transpose();
    }
    return y_;
  }

  const Matrix<T>& output() const { return y_; }

  // dy: (N, sum OC), column block p the gradient of projection p's output.
  const Matrix<T>& backward(const Layers& layers, const Matrix<T>& dy, bool want_dx = true) {
    SORA_CHECK(x_ != nullptr, "StackedProjections::backward called before forward");
    SORA_CHECK(dy.rows() == y_.rows() && dy.cols() == y_.cols(),
               "StackedProjections::backward: dy ", shape_of(dy), " is not the output's shape ",
               shape_of(y_));
    const Matrix<T>& x = *x_;
    const Index N = x.rows(), C = x.cols();
    // Base gradients (full fine-tuning), block by block into each layer's own gradient.
    for (std::size_t p = 0; p < P; ++p) {
      Layer& l = *layers[p];
      if (!l.base.weight.trainable()) continue;
      const Index OCp = l.out_features();
      auto dyp = dy.middleCols(out_offset_[p], OCp);  // (N, OCp)
      GemmThreads threads(OCp, C, N);
      l.base.weight.gradient().noalias() += dyp.transpose() * x;
      if (l.base.has_bias() && l.base.bias.trainable())
        l.base.bias.gradient().row(0) += dyp.colwise().sum();
    }
    if (want_dx) {
      // A bf16 base was widened into the shared scratch, which other layers have used since.
      const Matrix<T>& w = bf16_ ? stack_weights(layers, dy.cols(), C) : w_;
      dx_.resize(N, C);
      GemmThreads threads(N, C, w.rows());
      dx_.noalias() = dy * w;
    }
    if (!adapted_) return dx_;

    const Index R = a_.rows();
    dh_.resize(N, R);
    for (std::size_t p = 0; p < P; ++p) {
      if (!active_[p]) continue;
      auto& ad = *layers[p]->adapter;
      const Index Rp = ad.rank(), OCp = layers[p]->out_features();
      const auto dyp = dy.middleCols(out_offset_[p], OCp);  // (N, OCp)
      const auto h = h_.middleCols(rank_offset_[p], Rp);    // (N, Rp)
      const auto u = u_.middleCols(rank_offset_[p], Rp);    // (N, Rp)
      auto dh = dh_.middleCols(rank_offset_[p], Rp);        // (N, Rp)
      GemmThreads threads(N, Rp, OCp);
      if (ad.lora_B.trainable()) ad.lora_B.gradient().noalias() += dyp.transpose() * u;
      dh.noalias() = dyp * ad.lora_B.value;  // du
      if (ad.gated()) {
        if (ad.gate.trainable())
          ad.gate.gradient().row(0) +=
              ad.scale() * (dh.array() * h.array()).colwise().sum().matrix();
        dh.array() = (dh.array().rowwise() * ad.gate.value.row(0).array()) * ad.scale();
      } else {
        dh *= ad.scale();
      }
    }
    {
      GemmThreads threads(R, C, N);
      da_.noalias() = dh_.transpose() * x;  // (R, C)
    }
    for (std::size_t p = 0; p < P; ++p) {
      if (!active_[p]) continue;
      auto& ad = *layers[p]->adapter;
      if (ad.lora_A.trainable()) ad.lora_A.gradient() += da_.middleRows(rank_offset_[p], ad.rank());
    }
    if (want_dx) {
      GemmThreads threads(N, C, R);
      dx_.noalias() += dh_ * a_;
    }
    return dx_;
  }

  // Frees the stacked copies and the activations (nn/common.hpp); forward stacks again.
  void release_activations() {
    x_ = nullptr;
    release_buffers(w_, b_, a_, y_, h_, u_, dh_, da_, dx_);
  }

 private:
  static bool active(const Layer& l) { return l.adapter.has_value() && !l.merged(); }

  // The base weights stacked, (OC, C) = [W_1; ...; W_P]. Stacked on every forward: full
  // fine-tuning changes them each step, and the copy is a few thousandths of the product that
  // reads it. Into w_ for an fp32 base; a base with a weight stored in bf16 is widened into the
  // shared scratch instead (nn/common.hpp), so that the model holds no fp32 copy of it.
  const Matrix<T>& stack_weights(const Layers& layers, Index OC, Index C) {
    bf16_ = false;
    for (const Layer* l : layers) bf16_ = bf16_ || l->base.weight.storage() == Precision::bf16;
    if (bf16_) w_.resize(0, 0);  // an fp32 stack left from before the base was stored in bf16
    Matrix<T>& w = bf16_ ? detail::weight_scratch<T>() : w_;
    w.resize(OC, C);
    for (std::size_t p = 0; p < P; ++p) {
      const Layer& l = *layers[p];
      l.base.weight.copy_value_to(w.middleRows(out_offset_[p], l.out_features()));
    }
    return w;
  }

  bool adapted_ = false;  // some projection has an active adapter
  bool bf16_ = false;     // some base weight is stored in bf16: w_ is unused
  std::array<bool, P> active_{};
  std::array<Index, P> out_offset_{}, rank_offset_{};
  const Matrix<T>* x_ = nullptr;
  Matrix<T> w_;           // (sum OC, C) stacked base weights (fp32 base only)
  Matrix<T> b_;           // (1, sum OC) stacked biases
  Matrix<T> a_;           // (sum R, C) stacked A matrices
  Matrix<T> y_;           // (N, sum OC)
  Matrix<T> h_, u_, dh_;  // (N, sum R) x A^T, s (h ⊙ g), and its gradient
  Matrix<T> da_;          // (sum R, C)
  Matrix<T> dx_;          // (N, C)
};

}  // namespace sora::nn
