#pragma once
// GPT-2 as `transformers` computes it, from library blocks: sora's own pre-LN block
// (model/block.hpp) with GPT-2's fused attention projection (nn::FusedAttention):
//
//   x = dropout(wte[ids] + wpe[0..T-1])                                        (N, C)
//   L x Block: mid = x + attn(ln_1(x)); out = mid + mlp(ln_2(mid))             (N, C)
//   h = ln_f(x)                                                                (N, C) hidden
//   causal LM:               logits = h wte^T (tied) or h lm_head^T             (N, V)
//   sequence classification: logits = score(h[last token before the first pad]) (B, K)
//
// Names are the checkpoint's (transformer.h.0.attn.c_attn.weight, score.weight), without the
// "transformer." prefix for the bare model. GPT-2 stores its Conv1D weights as (in, out); the
// loader transposes them into sora's (out, in) (is_conv1d below), and an adapter's A (r, in) and
// B (out, r) are PEFT's shapes as they are.
//
// The sequence head reads, in each row, the token before the first pad_token_id (the last one
// when the row has none), exactly as transformers' GPT2ForSequenceClassification does; a batch
// of more than one sequence needs a pad_token_id, as there.
//
// Not modelled: attention-probability dropout (attn_pdrop). CPU backend (the fused attention
// views column blocks of an Eigen matrix).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sora/model/block.hpp"
#include "sora/model/hf/common.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/peft.hpp"
#include "sora/nn/embedding.hpp"
#include "sora/nn/fused_attention.hpp"
#include "sora/ops/loss.hpp"

namespace sora::model::hf {

// GPT-2's Conv1D weights, stored (in, out) in its checkpoints.
inline bool is_conv1d(Family family, std::string_view name) {
  if (family != Family::gpt2) return false;
  for (std::string_view s :
       {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"})
    if (name.ends_with(s)) return true;
  return false;
}

template <class T>
class Gpt2Model {
 public:
  using Scalar = T;
  using BackendTag = Cpu;
  using Tensor = Matrix<T>;
  using ParamT = Param<T>;
  using Linear = nn::AdaptedLinear<T>;
  using Batch = model::Batch;
  using GptBlock = model::Block<T, Cpu, nn::FusedAttention<T>>;

  nn::Embedding<T> wte;
  nn::PositionEmbedding<T> wpe;
  std::vector<GptBlock> blocks;
  nn::LayerNorm<T> ln_f;
  std::optional<Linear> score;    // sequence head (K, C), no bias
  std::optional<Linear> lm_head;  // untied causal LM head (V, C), no bias

  Gpt2Model(const HfConfig& config, Task task, std::uint64_t seed = 0, Init init = Init::random)
      : config_(config), task_(task), seed_(seed), dropout_rng_(seed, 2) {
    const auto& c = config_;
    SORA_CHECK(c.family == Family::gpt2, "Gpt2Model: a ", family_name(c.family), " config");
    const std::uint64_t base = seed * 1000003ULL;
    wte = make_embedding<nn::Embedding<T>, T>(init, c.vocab_size, c.hidden_size, true, base + 1,
                                              c.initializer_range);
    wpe = make_embedding<nn::PositionEmbedding<T>, T>(
        init, c.max_position_embeddings, c.hidden_size, true, base + 2, c.initializer_range);
    TransformerConfig block;  // what the shared pre-LN block reads
    block.width = c.hidden_size;
    block.heads = c.num_heads;
    block.ffn_width = c.intermediate_size;
    block.causal = true;
    block.dropout = c.hidden_dropout;
    block.gelu = c.gelu;
    block.bias = true;
    block.ln_eps = c.layer_norm_eps;
    blocks.reserve(static_cast<std::size_t>(c.num_layers));  // layers keep pointers: never move
    for (Index l = 0; l < c.num_layers; ++l)
      blocks.emplace_back(block, base + 16 + static_cast<std::uint64_t>(l));
    ln_f = nn::LayerNorm<T>(c.hidden_size, true, static_cast<T>(c.layer_norm_eps));
    if (task_ == Task::sequence_classification)
      score.emplace(c.hidden_size, c.num_labels, false, base + 4);
    if (task_ == Task::causal_lm && !c.tie_word_embeddings)
      lm_head.emplace(c.hidden_size, c.vocab_size, false, base + 3);
    if (init == Init::random)
      visit_linears([&](const std::string& name, Linear& lin) { init_linear(lin, name); });
  }

  Gpt2Model(const Gpt2Model&) = delete;  // layers point into each other's buffers
  Gpt2Model& operator=(const Gpt2Model&) = delete;

  const HfConfig& config() const { return config_; }
  Task task() const { return task_; }
  bool regression() const {
    return task_ == Task::sequence_classification && config_.num_labels == 1;
  }
  std::string prefix() const { return task_ == Task::none ? "" : "transformer"; }
  bool is_head(std::string_view name) const {
    return name.starts_with("score") || name.starts_with("lm_head");
  }

  void train(bool on = true) {
    training_ = on;
    for (auto& b : blocks) b.train(on);
    visit_linears([&](const std::string&, Linear& lin) { lin.train(on); });
  }
  void eval() { train(false); }
  bool training() const { return training_; }
  Rng& dropout_rng() { return dropout_rng_; }

  template <class Fn>
  void visit_params(std::string_view, Fn&& fn) {
    visit_params(fn);
  }
  template <class Fn>
  void visit_params(Fn&& fn) {
    wte.visit_params(nn::join_name(prefix(), "wte"), fn);
    wpe.visit_params(nn::join_name(prefix(), "wpe"), fn);
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const std::string name = block_name(l);
      blocks[l].ln1.visit_params(nn::join_name(name, "ln_1"), fn);
      blocks[l].ln2.visit_params(nn::join_name(name, "ln_2"), fn);
    }
    ln_f.visit_params(nn::join_name(prefix(), "ln_f"), fn);
    visit_linears([&](const std::string& name, Linear& lin) { lin.visit_params(name, fn); });
  }

  // fn(name, AdaptedLinear&): c_attn, c_proj, mlp.c_fc, mlp.c_proj of each block, the heads.
  template <class Fn>
  void visit_linears(Fn&& fn) {
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const std::string name = block_name(l);
      fn(nn::join_name(name, "attn.c_attn"), blocks[l].attn.qkv);
      fn(nn::join_name(name, "attn.c_proj"), blocks[l].attn.o);
      fn(nn::join_name(name, "mlp.c_fc"), blocks[l].mlp.fc);
      fn(nn::join_name(name, "mlp.c_proj"), blocks[l].mlp.proj);
    }
    if (score) fn(std::string("score"), *score);
    if (lm_head) fn(std::string("lm_head"), *lm_head);
  }

  std::vector<ParamT*> trainable_parameters() {
    std::vector<ParamT*> all;
    visit_params([&](ParamT& p) {
      if (p.trainable()) all.push_back(&p);
    });
    return all;
  }
  void zero_grad() {
    visit_params([](ParamT& p) { p.zero_grad(); });
  }

  // Adapters by PEFT's rules (hf/common.hpp); ln_* are the norms, wte / wpe the embeddings.
  Index apply_peft(const PeftConfig& peft) {
    return apply_peft_by_name(*this, peft, block_name(0) + ".attn.c_attn");
  }
  ParamKind param_kind(std::string_view name) const {
    if (name.find("ln_") != std::string_view::npos) return ParamKind::norm;
    if (name.find("wte.") != std::string_view::npos || name.find("wpe.") != std::string_view::npos)
      return ParamKind::embedding;
    return ParamKind::other;
  }

  const Tensor& forward_hidden(const Batch& batch) {
    const auto& c = config_;
    batch.validate(c.max_position_embeddings);
    SORA_CHECK(batch.token_types.empty(), "Gpt2Model: GPT-2 has no token types");
    for (const int id : batch.tokens)
      SORA_CHECK(id >= 0 && id < c.vocab_size, "Gpt2Model: token id ", id, " is outside [0, ",
                 c.vocab_size, ")");
    B_ = batch.batch;
    T_ = batch.seq;
    const Index N = B_ * T_;
    if (batch.mask.empty()) {
      key_mask_.resize(0, 0);
    } else {
      key_mask_.resize(B_, T_);
      for (Index n = 0; n < N; ++n)
        key_mask_(n / T_, n % T_) = static_cast<T>(batch.mask[static_cast<std::size_t>(n)]);
    }
    const T p = static_cast<T>(c.embeddings_dropout());
    dropping_ = training_ && p > T(0);
    wte.forward_to(emb_, batch.tokens);  // (N, C)
    wpe.forward_add(emb_, T_);
    if (dropping_) {
      emb_mask_.resize(N, c.hidden_size);
      dropout_forward<T>(emb_, emb_mask_, emb_, p, dropout_rng_);
    }
    const Tensor* x = &emb_;
    for (auto& b : blocks) x = &b.forward(*x, B_, T_, key_mask_, dropout_rng_);
    hidden_ = &ln_f.forward(*x);
    return *hidden_;
  }

  const Tensor& forward_logits(const Batch& batch) {
    const Tensor& h = forward_hidden(batch);
    if (task_ == Task::none) return *(logits_ = &h);
    return *(logits_ =
                 &head_.forward(task_, h, batch, config_.pad_token_id, score ? &*score : nullptr,
                                lm_head ? &*lm_head : nullptr, wte.weight));
  }

  T forward(const Batch& batch) {
    SORA_CHECK(task_ != Task::none, "Gpt2Model::forward: the bare model has no loss");
    forward_logits(batch);
    return loss_ = head_.loss(task_, regression(), batch);
  }

  void backward(T dloss = T(1)) {
    SORA_CHECK(logits_ != nullptr && task_ != Task::none,
               "Gpt2Model::backward needs a forward with a loss first");
    head_.backward(task_, dhidden_, *hidden_, score ? &*score : nullptr,
                   lm_head ? &*lm_head : nullptr, wte.weight, dloss);
    const Tensor* dx = &ln_f.backward(dhidden_);
    const bool embeddings_train = wte.weight.trainable() || wpe.weight.trainable();
    for (std::size_t l = blocks.size(); l-- > 0;)
      dx = &blocks[l].backward(*dx, l > 0 || embeddings_train);
    if (!embeddings_train) return;
    if (dropping_) {
      demb_.resize(dx->rows(), dx->cols());
      dropout_backward<T>(demb_, *dx, emb_mask_);
      dx = &demb_;
    }
    wte.backward(*dx);
    wpe.backward(*dx);
  }

  const Tensor& hidden() const {
    SORA_CHECK(hidden_ != nullptr, "Gpt2Model::hidden called before forward");
    return *hidden_;
  }
  const Tensor& logits() const {
    SORA_CHECK(logits_ != nullptr, "Gpt2Model::logits called before forward");
    return *logits_;
  }
  T loss() const { return loss_; }

  std::vector<int> predictions() const { return argmax_rows(logits()); }

  // transformers' initialisation of a fresh layer: N(0, initializer_range), zero bias.
  void init_linear(Linear& lin, const std::string& name) {
    Rng rng(seed_ * 7919ULL + std::hash<std::string>{}(name));
    rng.fill_normal(lin.base.weight.value, 0.0, config_.initializer_range);
    if (lin.base.has_bias()) lin.base.bias.value.setZero();
  }

 private:
  std::string block_name(std::size_t l) const {
    return nn::join_name(prefix(), "h." + std::to_string(l));
  }

  HfConfig config_;
  Task task_;
  std::uint64_t seed_;
  Rng dropout_rng_;
  bool training_ = true;
  bool dropping_ = false;
  Index B_ = 0, T_ = 0;
  Tensor key_mask_;                 // (B, T) or empty
  Tensor emb_, emb_mask_, demb_;    // (N, C)
  const Tensor* hidden_ = nullptr;  // (N, C)
  Tensor dhidden_;                  // (N, C)
  const Tensor* logits_ = nullptr;  // the head's logits, or the hidden states
  DecoderHead<T> head_;
  T loss_ = T(0);
};

}  // namespace sora::model::hf
