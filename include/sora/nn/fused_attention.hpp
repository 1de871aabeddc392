#pragma once
// Multi-head self-attention whose q, k and v come from one linear layer (C -> 3C), GPT-2's
// `c_attn`: the projection is one GEMM over the stacked weights, and an adapter on it is one
// adapter on the fused layer, as PEFT puts it there (so an exported adapter loads in PEFT
// unchanged). The output projection is a second slot (`c_proj`).
//
// The same attention op as nn::Attention: q, k and v are column blocks [0, C), [C, 2C),
// [2C, 3C) of the fused output, viewed in place (CPU backend).
//
// Parameter gradients accumulate (+=); the returned input gradient is overwritten (=).

#include <cstdint>

#include "sora/nn/adapter.hpp"
#include "sora/ops/attention.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class FusedAttention {
 public:
  using Tensor = typename Backend::template Tensor<T>;

  AdaptedLinear<T, Backend> qkv, o;

  FusedAttention() = default;
  FusedAttention(Index channels, Index heads, bool causal, bool with_bias = true,
                 std::uint64_t seed = 0)
      : qkv(channels, 3 * channels, with_bias, seed * 2 + 1),
        o(channels, channels, with_bias, seed * 2 + 2),
        H_(heads),
        causal_(causal) {
    SORA_CHECK(heads > 0 && channels % heads == 0, "FusedAttention: ", channels,
               " channels do not split into ", heads, " heads");
  }

  Index heads() const { return H_; }
  void train(bool on) {
    qkv.train(on);
    o.train(on);
  }

  // x: (B T, C); key_mask (B, T) or empty. x and key_mask must stay alive until backward.
  const Tensor& forward(const Tensor& x, Index B, Index T_len, const Tensor& key_mask = Tensor()) {
    B_ = B;
    T_ = T_len;
    const Index C = x.cols();
    const Tensor& y = qkv.forward(x);  // (N, 3C)
    att_.resize(B * H_ * T_len, T_len);
    out_.resize(x.rows(), C);
    attention_forward<T>(out_, att_, y.leftCols(C), y.middleCols(C, C), y.rightCols(C), key_mask, B,
                         T_len, H_, causal_);
    return o.forward(out_);
  }

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    const Tensor& dout = o.backward(dy);  // (N, C)
    const Index C = dout.cols();
    const Tensor& y = qkv.output();  // (N, 3C)
    dqkv_.resize(dout.rows(), 3 * C);
    datt_.resize(att_.rows(), att_.cols());
    attention_backward<T>(dqkv_.leftCols(C), dqkv_.middleCols(C, C), dqkv_.rightCols(C), datt_,
                          dout, y.leftCols(C), y.middleCols(C, C), y.rightCols(C), att_, B_, T_,
                          H_);
    return qkv.backward(dqkv_, want_dx);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    release_buffers(att_, datt_, out_, dqkv_);
    qkv.release_activations();
    o.release_activations();
  }

 private:
  Index H_ = 1, B_ = 0, T_ = 0;
  bool causal_ = true;
  Tensor att_, datt_;  // (B H T, T)
  Tensor out_;         // (N, C)
  Tensor dqkv_;        // (N, 3C)
};

}  // namespace sora::nn
