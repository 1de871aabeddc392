#pragma once
// Multi-head self-attention: q, k, v projections, scaled dot-product attention (causal or
// bidirectional, optional key padding mask) and an output projection. The four projections
// are AdaptedLinear slots named "q", "k", "v", "o", the default SoRA targets (docs/design.md 4).
// On the CPU, q, k and v run as one stacked projection when they agree (nn/stacked_projections
// .hpp says when): the same results, from two GEMMs over the shared input instead of six.
//
// Parameter gradients accumulate (+=); the returned input gradient is overwritten (=).

#include <cstdint>
#include <type_traits>

#include "sora/core/rng.hpp"

#include "sora/nn/adapter.hpp"
#include "sora/nn/stacked_projections.hpp"
#include "sora/ops/attention.hpp"
#include "sora/ops/blocked_attention.hpp"
#include "sora/ops/dropout.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class Attention {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  AdaptedLinear<T, Backend> q, k, v, o;

  Attention() = default;
  Attention(Index channels, Index heads, bool causal, bool with_bias = true, std::uint64_t seed = 0)
      : q(channels, channels, with_bias, seed * 4 + 1),
        k(channels, channels, with_bias, seed * 4 + 2),
        v(channels, channels, with_bias, seed * 4 + 3),
        o(channels, channels, with_bias, seed * 4 + 4),
        H_(heads),
        causal_(causal) {
    SORA_CHECK(heads > 0 && channels % heads == 0, "Attention: ", channels,
               " channels do not split into ", heads, " heads");
  }

  Index heads() const { return H_; }
  bool causal() const { return causal_; }
  // Blocked attention (ops/blocked_attention.hpp): memory linear in T instead of (B H T, T)
  // probabilities kept from forward to backward, the same results to rounding. CPU backend; a
  // training forward that drops attention probabilities still runs the dense op.
  void set_blocked(bool on) {
    constexpr bool cpu = std::is_same_v<Backend, Cpu>;
    SORA_CHECK(!on || cpu, "Attention: blocked attention is a CPU kernel");
    blocked_ = on;
  }
  bool blocked() const { return blocked_; }
  void train(bool on) {
    training_ = on;
    for (auto* p : {&q, &k, &v, &o}) p->train(on);
  }
  // Attention-probability dropout (BERT's attention_probs_dropout_prob), in training, drawn from
  // the rng forward is given. CPU backend.
  void set_probability_dropout(double p) {
    SORA_CHECK(p >= 0.0 && p < 1.0, "Attention: probability dropout ", p, " is not in [0, 1)");
    prob_dropout_ = static_cast<T>(p);
  }

  // x: (B T, C) for B sequences of length T. key_mask: (B, T), non-zero = a real token, or
  // empty for no padding. x and key_mask must stay alive until backward.
  const Tensor& forward(const Tensor& x, Index B, Index T_len, const Tensor& key_mask = Tensor(),
                        Rng* rng = nullptr) {
    B_ = B;
    T_ = T_len;
    stacked_ = false;
    if constexpr (std::is_same_v<Backend, Cpu>) {
      if (StackedProjections<T, 3>::applies({&q, &k, &v})) {
        stacked_ = true;
        const Index C = x.cols();
        const Matrix<T>& y = qkv_.forward({&q, &k, &v}, x);  // (N, 3C): [q | k | v]
        return attend(x, y.leftCols(C), y.middleCols(C, C), y.rightCols(C), key_mask, rng);
      }
    }
    const Tensor& qv = q.forward(x);
    const Tensor& kv = k.forward(x);
    const Tensor& vv = v.forward(x);
    return attend(x, qv, kv, vv, key_mask, rng);
  }

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    const Tensor& dyo = o.backward(dy);  // (N, C) gradient of the attention output
    if constexpr (std::is_same_v<Backend, Cpu>) {
      if (stacked_) {
        const Index C = dyo.cols();
        const Matrix<T>& y = qkv_.output();  // (N, 3C)
        dqkv_.resize(dyo.rows(), 3 * C);
        attend_backward(dqkv_.leftCols(C), dqkv_.middleCols(C, C), dqkv_.rightCols(C), dyo,
                        y.leftCols(C), y.middleCols(C, C), y.rightCols(C));
        return qkv_.backward({&q, &k, &v}, dqkv_, want_dx);
      }
    }
    dq_.resize(dyo.rows(), dyo.cols());
    dk_.resize(dyo.rows(), dyo.cols());
    dv_.resize(dyo.rows(), dyo.cols());
    if constexpr (std::is_same_v<Backend, Cpu>) {
      attend_backward(dq_, dk_, dv_, dyo, q.output(), k.output(), v.output());
    } else {
      datt_.resize(att_.rows(), att_.cols());
      attention_backward<T>(dq_, dk_, dv_, datt_, dyo, q.output(), k.output(), v.output(), att_, B_,
                            T_, H_);
    }
    // x feeds three projections: its gradient is the sum of theirs.
    const Tensor& dxq = q.backward(dq_, want_dx);
    const Tensor& dxk = k.backward(dk_, want_dx);
    if (want_dx) {
      dx_.resize(dxq.rows(), dxq.cols());
      residual_forward<T>(dx_, dxq, dxk);
    }
    const Tensor& dxv = v.backward(dv_, want_dx);
    if (want_dx) residual_backward<T>(dx_, Backend::template absent<T>(), dxv);
    return dx_;
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    q.visit_params(join_name(prefix, "q"), fn);
    k.visit_params(join_name(prefix, "k"), fn);
    v.visit_params(join_name(prefix, "v"), fn);
    o.visit_params(join_name(prefix, "o"), fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    key_mask_ = nullptr;
    release_buffers(att_, datt_, drop_, lse_, y_, dq_, dk_, dv_, dx_, dqkv_);
    qkv_.release_activations();
    for (auto* p : {&q, &k, &v, &o}) p->release_activations();
  }

 private:
  // The attention op and the output projection, on q, k, v however they were projected.
  template <class Q, class K, class V>
  const Tensor& attend(const Tensor& x, const Q& qv, const K& kv, const V& vv,
                       const Tensor& key_mask, Rng* rng) {
    const Index B = B_, T_len = T_;
    y_.resize(x.rows(), x.cols());
    dropping_ = false;
    blocked_run_ = false;
    if constexpr (std::is_same_v<Backend, Cpu>) {
      dropping_ = training_ && prob_dropout_ > T(0) && rng != nullptr;
      if (blocked_ && !dropping_) {
        // No (B H T, T) buffers: the log-sum-exp of each query row is what backward needs.
        blocked_run_ = true;
        key_mask_ = &key_mask;
        lse_.resize(B * H_, T_len);
        ops::blocked_attention_forward<T>(y_, lse_, qv, kv, vv, key_mask, B, T_len, H_, H_,
                                          causal_);
        return o.forward(y_);
      }
      att_.resize(B * H_ * T_len, T_len);
      if (dropping_) {
        // The factors of every probability: 0 with probability p, else 1 / (1 - p).
        drop_.resize(B * H_ * T_len, T_len);
        const T keep = T(1) / (T(1) - prob_dropout_);
        for (Index i = 0; i < drop_.size(); ++i)
          drop_.data()[i] = rng->uniform() < static_cast<double>(prob_dropout_) ? T(0) : keep;
        attention_forward<T>(y_, att_, qv, kv, vv, key_mask, B, T_len, H_, H_, causal_, drop_);
        return o.forward(y_);
      }
    } else {
      (void)rng;
    }
    att_.resize(B * H_ * T_len, T_len);
    attention_forward<T>(y_, att_, qv, kv, vv, key_mask, B, T_len, H_, causal_);
    return o.forward(y_);
  }

  // The attention op's backward on the CPU, for the kernel and dropout the forward ran with.
  void attend_backward(MatrixRef<T> dq, MatrixRef<T> dk, MatrixRef<T> dv, ConstMatrixRef<T> dyo,
                       ConstMatrixRef<T> qv, ConstMatrixRef<T> kv, ConstMatrixRef<T> vv) {
    if (blocked_run_) {
      ops::blocked_attention_backward<T>(dq, dk, dv, dyo, y_, lse_, qv, kv, vv, *key_mask_, B_, T_,
                                         H_, H_, causal_);
      return;
    }
    datt_.resize(att_.rows(), att_.cols());
    attention_backward<T>(
        dq, dk, dv, datt_, dyo, qv, kv, vv, att_, B_, T_, H_, H_,
        dropping_ ? ConstMatrixRef<T>(drop_) : ConstMatrixRef<T>(Cpu::absent<T>()));
  }

  Index H_ = 1, B_ = 0, T_ = 0;
  bool causal_ = false;
  bool training_ = true;
  bool dropping_ = false;
  bool stacked_ = false;              // the last forward ran q, k, v stacked (qkv_)
  bool blocked_ = false;              // blocked attention asked for (set_blocked)
  bool blocked_run_ = false;          // the last forward ran it
  const Tensor* key_mask_ = nullptr;  // the last forward's, for the blocked backward
  T prob_dropout_ = T(0);
  Tensor att_, datt_;             // (B H T, T)
  Tensor drop_;                   // (B H T, T) dropout factors of the probabilities
  Tensor lse_;                    // (B H, T) blocked attention's log-sum-exp per query row
  Tensor y_, dq_, dk_, dv_, dx_;  // (N, C)
  StackedProjections<T, 3> qkv_;  // q, k, v stacked (CPU)
  Matrix<T> dqkv_;                // (N, 3C) gradients of the stacked q, k, v
};

}  // namespace sora::nn
