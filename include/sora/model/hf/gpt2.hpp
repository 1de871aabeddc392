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
// Not modelled: GPT-2's attention-probability dropout (attn_pdrop). CPU backend (the fused
// attention views column blocks of an Eigen matrix).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sora/model/block.hpp"
#include "sora/model/hf/common.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/hf/decoder.hpp"
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
class Gpt2Model : public DecoderModel<Gpt2Model<T>, T> {
  using Base = DecoderModel<Gpt2Model<T>, T>;
  using Base::B_;
  using Base::config_;
  using Base::dropout_rng_;
  using Base::hidden_;
  using Base::key_mask_;
  using Base::layer_runs_;
  using Base::T_;
  using Base::training_;

 public:
  using typename Base::Batch;
  using typename Base::Linear;
  using typename Base::Tensor;
  using GptBlock = model::Block<T, Cpu, nn::FusedAttention<T>>;

  nn::Embedding<T> wte;
  nn::PositionEmbedding<T> wpe;
  std::vector<GptBlock> blocks;
  nn::LayerNorm<T> ln_f;

  Gpt2Model(const HfConfig& config, Task task, std::uint64_t seed = 0, Init init = Init::random)
      : Base(config, task, seed, "transformer", Family::gpt2) {
    const auto& c = config_;
    const std::uint64_t base = this->init_seed();
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
    this->initialise(init);
  }

  // ---- the body (see DecoderModel) ----------------------------------------------------------

  const Tensor& forward_hidden(const Batch& batch) {
    this->begin_batch(batch);
    const Index N = B_ * T_;
    const T p = static_cast<T>(config_.embeddings_dropout());
    dropping_ = training_ && p > T(0);
    wte.forward_to(emb_, batch.tokens);  // (N, C)
    wpe.forward_add(emb_, T_);
    if (dropping_) {
      emb_mask_.resize(N, config_.hidden_size);
      dropout_forward<T>(emb_, emb_mask_, emb_, p, dropout_rng_);
    }
    const Tensor* x = &emb_;
    x = &layer_runs_.forward(blocks, *x, forward_block(), this->dropout_rngs());
    hidden_ = &ln_f.forward(*x);
    return *hidden_;
  }

  void backward_hidden(const Tensor& dhidden) {
    const Tensor* dx = &ln_f.backward(dhidden);
    const bool embeddings_train = wte.weight.trainable() || wpe.weight.trainable();
    dx =
        &layer_runs_.backward(blocks, *dx, embeddings_train, forward_block(), this->dropout_rngs());
    if (!embeddings_train) return;
    if (dropping_) {
      demb_.resize(dx->rows(), dx->cols());
      dropout_backward<T>(demb_, *dx, emb_mask_);
      dx = &demb_;
    }
    wte.backward(*dx);
    wpe.backward(*dx);
  }

  template <class Fn>
  void visit_body_params(Fn&& fn) {
    wte.visit_params(nn::join_name(this->prefix(), "wte"), fn);
    wpe.visit_params(nn::join_name(this->prefix(), "wpe"), fn);
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      blocks[l].ln1.visit_params(nn::join_name(block_name(l), "ln_1"), fn);
      blocks[l].ln2.visit_params(nn::join_name(block_name(l), "ln_2"), fn);
    }
    ln_f.visit_params(nn::join_name(this->prefix(), "ln_f"), fn);
    visit_body_linears([&](const std::string& name, Linear& lin) { lin.visit_params(name, fn); });
  }

  // c_attn, c_proj, mlp.c_fc and mlp.c_proj of each block.
  template <class Fn>
  void visit_body_linears(Fn&& fn) {
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const std::string name = block_name(l);
      fn(nn::join_name(name, "attn.c_attn"), blocks[l].attn.qkv);
      fn(nn::join_name(name, "attn.c_proj"), blocks[l].attn.o);
      fn(nn::join_name(name, "mlp.c_fc"), blocks[l].mlp.fc);
      fn(nn::join_name(name, "mlp.c_proj"), blocks[l].mlp.proj);
    }
  }

  void train_body(bool on) {
    for (auto& b : blocks) b.train(on);
  }
  Param<T>& token_embedding() { return wte.weight; }
  std::string example_module() const { return block_name(0) + ".attn.c_attn"; }

 private:
  // One block's forward as the layer runs call it.
  auto forward_block() {
    return [this](GptBlock& block, const Tensor& x) -> const Tensor& {
      return block.forward(x, B_, T_, key_mask_, dropout_rng_);
    };
  }
  std::string block_name(std::size_t l) const {
    return nn::join_name(this->prefix(), "h." + std::to_string(l));
  }

  bool dropping_ = false;
  Tensor emb_, emb_mask_, demb_;  // (N, C)
};

}  // namespace sora::model::hf
