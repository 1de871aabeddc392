#pragma once
// Multi-head self-attention: q, k, v projections, scaled dot-product attention (causal or
// bidirectional, optional key padding mask) and an output projection. The four projections
// are AdaptedLinear slots named "q", "k", "v", "o", the default SoRA targets (docs/design.md 4).
//
// Parameter gradients accumulate (+=); the returned input gradient is overwritten (=).

#include <cstdint>
#include <type_traits>

#include "sora/core/rng.hpp"

#include "sora/nn/adapter.hpp"
#include "sora/ops/attention.hpp"
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
    const Tensor& qv = q.forward(x);
    const Tensor& kv = k.forward(x);
    const Tensor& vv = v.forward(x);
    att_.resize(B * H_ * T_len, T_len);
    y_.resize(x.rows(), x.cols());
    dropping_ = false;
    if constexpr (std::is_same_v<Backend, Cpu>) {
      dropping_ = training_ && prob_dropout_ > T(0) && rng != nullptr;
      if (dropping_) {
        // The factors of every probability: 0 with probability p, else 1 / (1 - p).
        drop_.resize(B * H_ * T_len, T_len);
        const T keep = T(1) / (T(1) - prob_dropout_);
        for (Index i = 0; i < drop_.size(); ++i)
          drop_.data()[i] = rng->uniform() < static_cast<double>(prob_dropout_) ? T(0) : keep;
        attention_forward<T>(y_, att_, qv, kv, vv, key_mask, B, T_len, H_, H_, causal_, drop_);
        return o.forward(y_);
      }
    }
    attention_forward<T>(y_, att_, qv, kv, vv, key_mask, B, T_len, H_, causal_);
    return o.forward(y_);
  }

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    const Tensor& dyo = o.backward(dy);  // (N, C) gradient of the attention output
    dq_.resize(dyo.rows(), dyo.cols());
    dk_.resize(dyo.rows(), dyo.cols());
    dv_.resize(dyo.rows(), dyo.cols());
    datt_.resize(att_.rows(), att_.cols());
    if constexpr (std::is_same_v<Backend, Cpu>) {
      if (dropping_) {
        attention_backward<T>(dq_, dk_, dv_, datt_, dyo, q.output(), k.output(), v.output(), att_,
                              B_, T_, H_, H_, drop_);
      } else {
        attention_backward<T>(dq_, dk_, dv_, datt_, dyo, q.output(), k.output(), v.output(), att_,
                              B_, T_, H_);
      }
    } else {
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

 private:
  Index H_ = 1, B_ = 0, T_ = 0;
  bool causal_ = false;
  bool training_ = true;
  bool dropping_ = false;
  T prob_dropout_ = T(0);
  Tensor att_, datt_;             // (B H T, T)
  Tensor drop_;                   // (B H T, T) dropout factors of the probabilities
  Tensor y_, dq_, dk_, dv_, dx_;  // (N, C)
};

}  // namespace sora::nn
