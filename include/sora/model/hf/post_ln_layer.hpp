#pragma once
// One post-LayerNorm encoder layer, the BERT family's arrangement (BERT, RoBERTa, MiniLM):
//
//   h   = LN_attn(x + dropout(attn(x)))
//   out = LN_out(h + dropout(mlp(h)))
//
// Built from the same nn/ layers as sora's pre-LN block (model/block.hpp); only the place of
// the LayerNorms differs. Parameter names are the checkpoint's own (transformers' BertLayer):
// attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate.dense,
// output.{dense,LayerNorm}.
//
// Dropout as transformers places it: on both branches (hidden_dropout_prob) and on the attention
// probabilities (attention_probs_dropout_prob), in training only.
//
// Backward contract: parameter gradients accumulate (+=); the returned input gradient is
// overwritten (=). Sizes: N = B * T tokens, C channels.

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "sora/core/rng.hpp"
#include "sora/nn/attention.hpp"
#include "sora/nn/layernorm.hpp"
#include "sora/nn/mlp.hpp"
#include "sora/ops/dropout.hpp"

namespace sora::model::hf {

using namespace nn::op_names;  // ops found by name and by the tensor type (nn/common.hpp)

template <class T, class Backend = Cpu>
class PostLnLayer {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;
  using Linear = nn::AdaptedLinear<T, Backend>;

  nn::Attention<T, Backend> attn;
  nn::LayerNorm<T, Backend> ln_attn;
  nn::MLP<T, Backend> mlp;
  nn::LayerNorm<T, Backend> ln_out;

  PostLnLayer(Index channels, Index heads, Index hidden, ops::Gelu gelu, double eps, double dropout,
              double attention_dropout, std::uint64_t seed)
      : attn(channels, heads, /*causal=*/false, /*with_bias=*/true, 2 * seed + 1),
        ln_attn(channels, true, static_cast<T>(eps)),
        mlp(channels, hidden, gelu, /*with_bias=*/true, 2 * seed + 2),
        ln_out(channels, true, static_cast<T>(eps)),
        dropout_(static_cast<T>(dropout)) {
    if constexpr (std::is_same_v<Backend, Cpu>) attn.set_probability_dropout(attention_dropout);
  }

  void train(bool on) {
    training_ = on;
    attn.train(on);
    mlp.train(on);
  }

  // x (N, C) and key_mask (B, T) or empty must stay alive and unchanged until backward.
  const Tensor& forward(const Tensor& x, Index B, Index T_len, const Tensor& key_mask, Rng& rng) {
    const Index N = x.rows(), C = x.cols();
    dropping_ = training_ && dropout_ > T(0);
    const Tensor& a = attn.forward(x, B, T_len, key_mask, &rng);  // (N, C)
    sum1_.resize(N, C);
    add_branch(sum1_, mask1_, a, x, rng);
    const Tensor& h = ln_attn.forward(sum1_);  // (N, C)
    const Tensor& m = mlp.forward(h);          // (N, C)
    sum2_.resize(N, C);
    add_branch(sum2_, mask2_, m, h, rng);
    return ln_out.forward(sum2_);
  }

  // dout: the gradient of out. Returns the gradient of x when want_dx.
  const Tensor& backward(const Tensor& dout, bool want_dx = true) {
    const Tensor& dsum2 = ln_out.backward(dout, true);  // (N, C) into both h and the MLP branch
    const Tensor& dh_mlp = mlp.backward(branch_grad(dsum2, mask2_), true);
    dh_.resize(dout.rows(), dout.cols());
    residual_forward<T>(dh_, dsum2, dh_mlp);  // skip path + MLP branch
    const Tensor& dsum1 = ln_attn.backward(dh_, true);
    const Tensor& dx_attn = attn.backward(branch_grad(dsum1, mask1_), want_dx);
    if (want_dx) {
      dx_.resize(dout.rows(), dout.cols());
      residual_forward<T>(dx_, dsum1, dx_attn);
    }
    return dx_;
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    visit_linears(prefix,
                  [&](const std::string& name, Linear& lin) { lin.visit_params(name, fn); });
    ln_attn.visit_params(nn::join_name(prefix, "attention.output.LayerNorm"), fn);
    ln_out.visit_params(nn::join_name(prefix, "output.LayerNorm"), fn);
  }

  // fn(name, AdaptedLinear&) for the six projections, in the checkpoint's order.
  template <class Fn>
  void visit_linears(std::string_view prefix, Fn&& fn) {
    fn(nn::join_name(prefix, "attention.self.query"), attn.q);
    fn(nn::join_name(prefix, "attention.self.key"), attn.k);
    fn(nn::join_name(prefix, "attention.self.value"), attn.v);
    fn(nn::join_name(prefix, "attention.output.dense"), attn.o);
    fn(nn::join_name(prefix, "intermediate.dense"), mlp.fc);
    fn(nn::join_name(prefix, "output.dense"), mlp.proj);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    nn::release_buffers(sum1_, sum2_, mask1_, mask2_, dh_, dbranch_, dx_);
    attn.release_activations();
    ln_attn.release_activations();
    mlp.release_activations();
    ln_out.release_activations();
  }

 private:
  // sum = dropout(branch) + skip.
  void add_branch(Tensor& sum, Tensor& mask, const Tensor& branch, const Tensor& skip, Rng& rng) {
    if (dropping_) {
      mask.resize(branch.rows(), branch.cols());
      dropout_forward<T>(sum, mask, branch, dropout_, rng);
      residual_forward<T>(sum, sum, skip);
    } else {
      residual_forward<T>(sum, branch, skip);
    }
  }
  // The gradient reaching a branch through its dropout.
  const Tensor& branch_grad(const Tensor& dsum, const Tensor& mask) {
    if (!dropping_) return dsum;
    dbranch_.resize(dsum.rows(), dsum.cols());
    dropout_backward<T>(dbranch_, dsum, mask);
    return dbranch_;
  }

  T dropout_ = T(0);
  bool training_ = true;
  bool dropping_ = false;
  Tensor sum1_, sum2_;        // (N, C) the LayerNorms' inputs
  Tensor mask1_, mask2_;      // (N, C) dropout factors of the two branches
  Tensor dh_, dbranch_, dx_;  // (N, C)
};

}  // namespace sora::model::hf
