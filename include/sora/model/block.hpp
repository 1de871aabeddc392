#pragma once
// One pre-LayerNorm transformer block (GPT-2's arrangement, docs/design.md section 7):
//
//   mid = x + dropout(attn(ln1(x)))
//   out = mid + dropout(mlp(ln2(mid)))
//
// Backward contract: parameter gradients accumulate (+=); the returned input gradient is
// overwritten (=). The residual stream's gradient is the sum of the skip path and the branch
// path, formed here rather than by += into a caller's buffer, so that a block never depends on
// what its caller's buffer held before.
//
// Sizes: N = B * T tokens, C channels.

#include <cstdint>

#include "sora/core/rng.hpp"
#include "sora/model/config.hpp"
#include "sora/nn/attention.hpp"
#include "sora/nn/layernorm.hpp"
#include "sora/nn/mlp.hpp"
#include "sora/ops/dropout.hpp"

namespace sora::model {

using namespace nn::op_names;  // ops found by name and by the tensor type (nn/common.hpp)

// Attn: nn::Attention (separate q, k, v slots) or nn::FusedAttention (GPT-2's c_attn); the
// named visitors below are for the former (the GPT-2 model names its own slots).
template <class T, class Backend = Cpu, class Attn = nn::Attention<T, Backend>>
class Block {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;
  using Linear = nn::AdaptedLinear<T, Backend>;

  nn::LayerNorm<T, Backend> ln1;
  Attn attn;
  nn::LayerNorm<T, Backend> ln2;
  nn::MLP<T, Backend> mlp;

  Block(const TransformerConfig& config, std::uint64_t seed)
      : ln1(config.width, true, static_cast<T>(config.ln_eps)),
        attn(config.width, config.heads, config.causal, config.bias, 2 * seed + 1),
        ln2(config.width, true, static_cast<T>(config.ln_eps)),
        mlp(config.width, config.hidden(), config.gelu, config.bias, 2 * seed + 2),
        dropout_(static_cast<T>(config.dropout)) {
    if constexpr (requires { attn.set_blocked(true); })
      attn.set_blocked(config.blocked_attention);
    else
      SORA_CHECK(!config.blocked_attention, "Block: this attention has no blocked kernel");
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
    const Tensor& a = attn.forward(ln1.forward(x), B, T_len, key_mask);  // (N, C)
    mid_.resize(N, C);
    if (dropping_) {
      mask1_.resize(N, C);
      dropout_forward<T>(mid_, mask1_, a, dropout_, rng);
      residual_forward<T>(mid_, mid_, x);
    } else {
      residual_forward<T>(mid_, a, x);
    }
    const Tensor& m = mlp.forward(ln2.forward(mid_));  // (N, C)
    out_.resize(N, C);
    if (dropping_) {
      mask2_.resize(N, C);
      dropout_forward<T>(out_, mask2_, m, dropout_, rng);
      residual_forward<T>(out_, out_, mid_);
    } else {
      residual_forward<T>(out_, m, mid_);
    }
    return out_;
  }

  // dout: the gradient of out. Returns the gradient of x when want_dx (otherwise only the
  // parameter gradients are formed, and the returned tensor is meaningless).
  const Tensor& backward(const Tensor& dout, bool want_dx = true) {
    const Tensor* branch = &dout;
    if (dropping_) {
      dbranch_.resize(dout.rows(), dout.cols());
      dropout_backward<T>(dbranch_, dout, mask2_);
      branch = &dbranch_;
    }
    const Tensor& dln2 = ln2.backward(mlp.backward(*branch, true), true);
    dmid_.resize(dout.rows(), dout.cols());
    residual_forward<T>(dmid_, dout, dln2);  // skip path + MLP branch
    branch = &dmid_;
    if (dropping_) {
      dropout_backward<T>(dbranch_, dmid_, mask1_);
      branch = &dbranch_;
    }
    // The attention's input gradient is ln1's output gradient: needed for x's gradient and for
    // ln1's own parameters. With neither wanted (a frozen first block under frozen
    // embeddings) only the adapters' gradients are formed.
    const bool ln1_trains = ln1.weight.trainable() || ln1.bias.trainable();
    const Tensor& dh1 = attn.backward(*branch, want_dx || ln1_trains);
    if (!want_dx && !ln1_trains) return dx_;
    const Tensor& dln1 = ln1.backward(dh1, want_dx);
    if (want_dx) {
      dx_.resize(dout.rows(), dout.cols());
      residual_forward<T>(dx_, dmid_, dln1);
    }
    return dx_;
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    nn::release_buffers(mid_, out_, mask1_, mask2_, dbranch_, dmid_, dx_);
    ln1.release_activations();
    attn.release_activations();
    ln2.release_activations();
    mlp.release_activations();
  }

  const Tensor& output() const { return out_; }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    ln1.visit_params(nn::join_name(prefix, "ln1"), fn);
    attn.visit_params(nn::join_name(prefix, "attn"), fn);
    ln2.visit_params(nn::join_name(prefix, "ln2"), fn);
    mlp.visit_params(nn::join_name(prefix, "mlp"), fn);
  }

  // fn(name, AdaptedLinear&) for the six projection slots, in parameter order.
  template <class Fn>
  void visit_linears(std::string_view prefix, Fn&& fn) {
    const std::string a = nn::join_name(prefix, "attn"), m = nn::join_name(prefix, "mlp");
    fn(nn::join_name(a, "q"), attn.q);
    fn(nn::join_name(a, "k"), attn.k);
    fn(nn::join_name(a, "v"), attn.v);
    fn(nn::join_name(a, "o"), attn.o);
    fn(nn::join_name(m, "fc"), mlp.fc);
    fn(nn::join_name(m, "proj"), mlp.proj);
  }

 private:
  T dropout_ = T(0);
  bool training_ = true;
  bool dropping_ = false;
  Tensor mid_, out_;            // (N, C) residual stream after attention, after the MLP
  Tensor mask1_, mask2_;        // (N, C) dropout factors of the two branches
  Tensor dbranch_, dmid_, dx_;  // (N, C)
};

}  // namespace sora::model
