#pragma once
// The LLaMA family (LLaMA, Mistral, Qwen2) as `transformers` computes it, from library blocks:
//
//   x = embed_tokens[ids]                                                     (N, C)
//   L x LlamaLayer:
//     mid = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))), n = RMSNorm(x)
//     out = mid + down_proj(silu(gate_proj(m)) * up_proj(m)),                    m = RMSNorm(mid)
//   h = norm(x)                                                               (N, C) hidden
//   causal LM:               logits = h lm_head^T (or embed_tokens^T when tied)  (N, V)
//   sequence classification: logits = score(h[last token before the first pad])  (B, K)
//
// Grouped-query attention: H query heads of D channels, Hkv key/value heads, query head h
// reading kv head h / (H / Hkv) (transformers' repeat_kv). Rotary positions in transformers'
// half-rotation layout, positions 0..T-1 (right padding), base rope_theta, and LLaMA 3's
// frequency scaling when config.json asks for it (rope_scaling type llama3). Causal, with the
// padding mask on keys. No dropout (LLaMA's default attention_dropout is 0; a config with
// another value is trained without it).
//
// Names are the checkpoint's: model.layers.0.self_attn.q_proj.weight, model.norm.weight,
// lm_head.weight, score.weight (without "model." for the bare model). CPU backend.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sora/model/config.hpp"
#include "sora/model/hf/common.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/hf/decoder.hpp"
#include "sora/model/peft.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/nn/embedding.hpp"
#include "sora/nn/rmsnorm.hpp"
#include "sora/nn/swiglu_mlp.hpp"
#include "sora/ops/attention.hpp"
#include "sora/ops/loss.hpp"
#include "sora/ops/rope.hpp"

namespace sora::model::hf {

// Self-attention with rotary positions and grouped key/value heads. Parameter gradients
// accumulate (+=); the returned input gradient is overwritten (=).
template <class T>
class RotaryAttention {
 public:
  using Tensor = Matrix<T>;
  nn::AdaptedLinear<T> q_proj, k_proj, v_proj, o_proj;

  RotaryAttention(const HfConfig& c, std::uint64_t seed)
      : q_proj(c.hidden_size, c.num_heads * c.dim_per_head(), c.attention_bias, 4 * seed + 1),
        k_proj(c.hidden_size, c.kv_heads() * c.dim_per_head(), c.attention_bias, 4 * seed + 2),
        v_proj(c.hidden_size, c.kv_heads() * c.dim_per_head(), c.attention_bias, 4 * seed + 3),
        o_proj(c.num_heads * c.dim_per_head(), c.hidden_size, c.o_bias, 4 * seed + 4),
        H_(c.num_heads),
        Hkv_(c.kv_heads()) {}

  void train(bool on) {
    for (auto* p : {&q_proj, &k_proj, &v_proj, &o_proj}) p->train(on);
  }

  // positions (N) and table must stay alive until backward, like x and key_mask.
  const Tensor& forward(const Tensor& x, Index B, Index T_len, const Tensor& key_mask,
                        std::span<const int> positions, const ops::RopeTable<T>& table) {
    B_ = B;
    T_ = T_len;
    positions_ = positions;
    table_ = &table;
    const Tensor& q = q_proj.forward(x);  // (N, H D)
    const Tensor& k = k_proj.forward(x);  // (N, Hkv D)
    const Tensor& v = v_proj.forward(x);  // (N, Hkv D)
    qr_.resize(q.rows(), q.cols());
    kr_.resize(k.rows(), k.cols());
    ops::rope_forward<T>(qr_, q, positions, table, H_);
    ops::rope_forward<T>(kr_, k, positions, table, Hkv_);
    att_.resize(B * H_ * T_len, T_len);
    y_.resize(q.rows(), q.cols());
    ops::attention_forward<T>(y_, att_, qr_, kr_, v, key_mask, B, T_len, H_, Hkv_, true);
    return o_proj.forward(y_);
  }

  const Tensor& backward(const Tensor& dout, bool want_dx = true) {
    const Tensor& dy = o_proj.backward(dout);  // (N, H D)
    dq_.resize(qr_.rows(), qr_.cols());
    dk_.resize(kr_.rows(), kr_.cols());
    dv_.resize(kr_.rows(), kr_.cols());
    datt_.resize(att_.rows(), att_.cols());
    ops::attention_backward<T>(dq_, dk_, dv_, datt_, dy, qr_, kr_, v_proj.output(), att_, B_, T_,
                               H_, Hkv_);
    ops::rope_backward<T>(dq_, dq_, positions_, *table_, H_);  // in place: R(-angle)
    ops::rope_backward<T>(dk_, dk_, positions_, *table_, Hkv_);
    const Tensor& dxq = q_proj.backward(dq_, want_dx);
    if (want_dx) dx_ = dxq;
    const Tensor& dxk = k_proj.backward(dk_, want_dx);
    if (want_dx) dx_ += dxk;
    const Tensor& dxv = v_proj.backward(dv_, want_dx);
    if (want_dx) dx_ += dxv;
    return dx_;
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    table_ = nullptr;
    nn::release_buffers(qr_, dq_, y_, kr_, dk_, dv_, att_, datt_, dx_);
    for (auto* p : {&q_proj, &k_proj, &v_proj, &o_proj}) p->release_activations();
  }

 private:
  Index H_, Hkv_, B_ = 0, T_ = 0;
  std::span<const int> positions_;
  const ops::RopeTable<T>* table_ = nullptr;
  Tensor qr_, dq_, y_;   // (N, H D) rotated queries, their gradient, attention output
  Tensor kr_, dk_, dv_;  // (N, Hkv D)
  Tensor att_, datt_;    // (B H T, T)
  Tensor dx_;            // (N, C)
};

// One pre-RMSNorm decoder layer (transformers' LlamaDecoderLayer).
template <class T>
class LlamaLayer {
 public:
  using Tensor = Matrix<T>;
  nn::RMSNorm<T> input_layernorm, post_attention_layernorm;
  RotaryAttention<T> self_attn;
  nn::SwiGLUMLP<T> mlp;

  LlamaLayer(const HfConfig& c, std::uint64_t seed)
      : input_layernorm(c.hidden_size, true, static_cast<T>(c.layer_norm_eps)),
        post_attention_layernorm(c.hidden_size, true, static_cast<T>(c.layer_norm_eps)),
        self_attn(c, 2 * seed + 1),
        mlp(c.hidden_size, c.intermediate_size, 2 * seed + 2) {
    SORA_CHECK(!c.mlp_bias, "LlamaLayer: mlp_bias = true is not supported");
  }

  void train(bool on) {
    self_attn.train(on);
    mlp.gate_proj.train(on);
    mlp.up_proj.train(on);
    mlp.down_proj.train(on);
  }

  const Tensor& forward(const Tensor& x, Index B, Index T_len, const Tensor& key_mask,
                        std::span<const int> positions, const ops::RopeTable<T>& table) {
    const Tensor& a =
        self_attn.forward(input_layernorm.forward(x), B, T_len, key_mask, positions, table);
    mid_ = x + a;  // (N, C)
    const Tensor& m = mlp.forward(post_attention_layernorm.forward(mid_));
    out_ = mid_ + m;
    return out_;
  }

  const Tensor& backward(const Tensor& dout, bool want_dx = true) {
    dmid_ = dout + post_attention_layernorm.backward(mlp.backward(dout, true), true);
    const bool norm_trains = input_layernorm.weight.trainable();
    const Tensor& dn = self_attn.backward(dmid_, want_dx || norm_trains);
    if (!want_dx && !norm_trains) return dx_;
    const Tensor& dnorm = input_layernorm.backward(dn, want_dx);
    if (want_dx) dx_ = dmid_ + dnorm;
    return dx_;
  }

  template <class Fn>
  void visit_linears(std::string_view prefix, Fn&& fn) {
    const std::string a = nn::join_name(prefix, "self_attn"), m = nn::join_name(prefix, "mlp");
    fn(nn::join_name(a, "q_proj"), self_attn.q_proj);
    fn(nn::join_name(a, "k_proj"), self_attn.k_proj);
    fn(nn::join_name(a, "v_proj"), self_attn.v_proj);
    fn(nn::join_name(a, "o_proj"), self_attn.o_proj);
    fn(nn::join_name(m, "gate_proj"), mlp.gate_proj);
    fn(nn::join_name(m, "up_proj"), mlp.up_proj);
    fn(nn::join_name(m, "down_proj"), mlp.down_proj);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    nn::release_buffers(mid_, out_, dmid_, dx_);
    input_layernorm.release_activations();
    post_attention_layernorm.release_activations();
    self_attn.release_activations();
    mlp.release_activations();
  }

 private:
  Tensor mid_, out_, dmid_, dx_;  // (N, C)
};

template <class T>
class LlamaModel : public DecoderModel<LlamaModel<T>, T> {
  using Base = DecoderModel<LlamaModel<T>, T>;
  using Base::B_;
  using Base::config_;
  using Base::hidden_;
  using Base::key_mask_;
  using Base::T_;

 public:
  using typename Base::Batch;
  using typename Base::Linear;
  using typename Base::Tensor;

  nn::Embedding<T> embed_tokens;
  std::vector<LlamaLayer<T>> layers;
  nn::RMSNorm<T> norm;

  LlamaModel(const HfConfig& config, Task task, std::uint64_t seed = 0, Init init = Init::random)
      : Base(config, task, seed, "model", Family::llama),
        rope_(rope_frequencies(config), config.max_position_embeddings) {
    const auto& c = config_;
    const std::uint64_t base = this->init_seed();
    embed_tokens = make_embedding<nn::Embedding<T>, T>(init, c.vocab_size, c.hidden_size, true,
                                                       base + 1, c.initializer_range);
    layers.reserve(static_cast<std::size_t>(c.num_layers));  // layers keep pointers: never move
    for (Index l = 0; l < c.num_layers; ++l)
      layers.emplace_back(c, base + 16 + static_cast<std::uint64_t>(l));
    norm = nn::RMSNorm<T>(c.hidden_size, true, static_cast<T>(c.layer_norm_eps));
    this->initialise(init);
  }

  // ---- the body (see DecoderModel) ----------------------------------------------------------

  const Tensor& forward_hidden(const Batch& batch) {
    SORA_CHECK(config_.sliding_window == 0 || batch.seq <= config_.sliding_window,
               "LlamaModel: sequences of ", batch.seq,
               " tokens are longer than the sliding window ", config_.sliding_window,
               ", which sora does not implement");
    this->begin_batch(batch);
    positions_ = ops::rope_positions(B_, T_);
    embed_tokens.forward_to(emb_, batch.tokens);  // (N, C)
    const Tensor* x = &emb_;
    x = &this->layer_runs_.forward(layers, *x, forward_layer(), this->dropout_rngs());
    hidden_ = &norm.forward(*x);
    return *hidden_;
  }

  void backward_hidden(const Tensor& dhidden) {
    const Tensor* dx = &norm.backward(dhidden);
    const bool embeddings_train = embed_tokens.weight.trainable();
    dx = &this->layer_runs_.backward(layers, *dx, embeddings_train, forward_layer(),
                                     this->dropout_rngs());
    if (embeddings_train) embed_tokens.backward(*dx);
  }

  template <class Fn>
  void visit_body_params(Fn&& fn) {
    embed_tokens.visit_params(nn::join_name(this->prefix(), "embed_tokens"), fn);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::string name = layer_name(l);
      layers[l].input_layernorm.visit_params(nn::join_name(name, "input_layernorm"), fn);
      layers[l].post_attention_layernorm.visit_params(
          nn::join_name(name, "post_attention_layernorm"), fn);
    }
    norm.visit_params(nn::join_name(this->prefix(), "norm"), fn);
    visit_body_linears([&](const std::string& name, Linear& lin) { lin.visit_params(name, fn); });
  }

  template <class Fn>
  void visit_body_linears(Fn&& fn) {
    for (std::size_t l = 0; l < layers.size(); ++l) layers[l].visit_linears(layer_name(l), fn);
  }

  void train_body(bool on) {
    for (auto& l : layers) l.train(on);
  }
  Param<T>& token_embedding() { return embed_tokens.weight; }
  std::string example_module() const { return layer_name(0) + ".self_attn.q_proj"; }

 private:
  // One layer's forward as the layer runs call it (no dropout: no generator).
  auto forward_layer() {
    return [this](LlamaLayer<T>& layer, const Tensor& x) -> const Tensor& {
      return layer.forward(x, B_, T_, key_mask_, positions_, rope_);
    };
  }
  std::string layer_name(std::size_t l) const {
    return nn::join_name(this->prefix(), "layers." + std::to_string(l));
  }
  static std::vector<T> rope_frequencies(const HfConfig& c) {
    std::vector<T> f = ops::rope_inv_freq<T>(c.dim_per_head(), c.rope_theta);
    return c.rope_llama3 ? ops::rope_llama3_inv_freq<T>(std::move(f), *c.rope_llama3) : f;
  }

  ops::RopeTable<T> rope_;      // cos / sin of every position, computed once
  std::vector<int> positions_;  // (N)
  Tensor emb_;                  // (N, C)
};

}  // namespace sora::model::hf
