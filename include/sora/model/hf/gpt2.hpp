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

  // As BertModel::apply_peft; "all-linear" selects every linear layer but the heads.
  Index apply_peft(const PeftConfig& peft) {
    visit_linears([](const std::string&, Linear& lin) { lin.detach(); });
    if (peft.method == Method::full) {
      visit_params([](ParamT& p) { p.set_trainable(true); });
      return 0;
    }
    const bool all_linear =
        peft.target_modules.size() == 1 && peft.target_modules.front() == "all-linear";
    visit_params([](ParamT& p) { p.set_trainable(false); });
    Index adapted = 0;
    visit_linears([&](const std::string& name, Linear& lin) {
      if (!(all_linear ? !is_head(name) : matches_any(name, peft.target_modules))) return;
      nn::AdapterConfig ac;
      ac.kind = adapter_kind(peft.method);
      ac.rank = peft.rank;
      ac.alpha = peft.alpha;
      ac.dropout = peft.dropout;
      ac.gate_init = peft.gate_init;
      ac.seed = peft.seed + static_cast<std::uint64_t>(adapted);
      lin.attach(ac);
      lin.train(training_);
      ++adapted;
    });
    SORA_CHECK(adapted > 0,
               "apply_peft: no module of the GPT-2 model matches the target patterns"
               " (modules are named like ",
               block_name(0), ".attn.c_attn)");
    visit_params([&](ParamT& p) {
      if (p.name.find(".lora_") != std::string::npos) return;
      if (p.name.find("ln_") != std::string::npos) p.set_trainable(peft.train_layernorms);
      if (p.name.find("wte.") != std::string::npos || p.name.find("wpe.") != std::string::npos)
        p.set_trainable(peft.train_embeddings);
    });
    visit_linears([&](const std::string& name, Linear& lin) {
      if (!lin.adapter && is_head(name)) lin.base.set_trainable(peft.train_head);
    });
    return adapted;
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
    if (task_ == Task::causal_lm) {
      if (lm_head) return *(logits_ = &lm_head->forward(h));
      logits_buf_.resize(h.rows(), config_.vocab_size);
      linear_forward<T>(logits_buf_, h, wte.weight.value);
      return *(logits_ = &logits_buf_);
    }
    SORA_CHECK(config_.pad_token_id >= 0 || B_ == 1,
               "Gpt2Model: a batch of several sequences needs a pad_token_id in config.json to "
               "find each sequence's last token");
    pool_rows_.resize(static_cast<std::size_t>(B_));
    for (Index b = 0; b < B_; ++b) {
      Index first_pad = 0;  // transformers: argmax(ids == pad) - 1, modulo T
      if (config_.pad_token_id >= 0) {
        for (Index t = 0; t < T_; ++t)
          if (batch.tokens[static_cast<std::size_t>(b * T_ + t)] == config_.pad_token_id) {
            first_pad = t;
            break;
          }
      }
      pool_rows_[static_cast<std::size_t>(b)] =
          static_cast<int>(b * T_ + (first_pad + T_ - 1) % T_);
    }
    pooled_.resize(B_, h.cols());
    gather_rows<T>(pooled_, h, pool_rows_);
    return *(logits_ = &score->forward(pooled_));
  }

  T forward(const Batch& batch) {
    SORA_CHECK(task_ != Task::none, "Gpt2Model::forward: the bare model has no loss");
    const Tensor& logits = forward_logits(batch);
    if (regression()) {
      SORA_CHECK(static_cast<Index>(batch.values.size()) == B_, "Gpt2Model: ", batch.values.size(),
                 " regression targets for ", B_, " sequences");
      target_.resize(B_, 1);
      for (Index b = 0; b < B_; ++b)
        target_(b, 0) = static_cast<T>(batch.values[static_cast<std::size_t>(b)]);
      return loss_ = mse_forward<T>(logits, target_);
    }
    const Index expected = task_ == Task::causal_lm ? B_ * T_ : B_;
    SORA_CHECK(static_cast<Index>(batch.labels.size()) == expected,
               "Gpt2Model: ", batch.labels.size(), " labels for ", expected,
               task_ == Task::causal_lm ? " tokens" : " sequences");
    const Index classes = logits.cols();
    for (const int label : batch.labels)
      SORA_CHECK(label == ops::kIgnoreIndex || (label >= 0 && label < classes), "Gpt2Model: label ",
                 label, " is outside [0, ", classes, ")");
    labels_.assign(batch.labels.begin(), batch.labels.end());
    probs_.resize(logits.rows(), logits.cols());
    return loss_ = cross_entropy_forward<T>(probs_, logits, labels_);
  }

  void backward(T dloss = T(1)) {
    SORA_CHECK(logits_ != nullptr && task_ != Task::none,
               "Gpt2Model::backward needs a forward with a loss first");
    dlogits_.resize(logits_->rows(), logits_->cols());
    if (regression()) {
      mse_backward<T>(dlogits_, *logits_, target_, dloss);
    } else {
      cross_entropy_backward<T>(dlogits_, probs_, labels_, ops::kIgnoreIndex, dloss);
    }
    dhidden_.resize(hidden_->rows(), hidden_->cols());
    if (task_ == Task::sequence_classification) {
      scatter_rows<T>(dhidden_, score->backward(dlogits_), pool_rows_);
    } else if (lm_head) {
      dhidden_ = lm_head->backward(dlogits_);
    } else {
      // Tied: logits = h wte^T; wte collects dlogits^T h here and its embedding gradient below.
      linear_backward<T>(dhidden_, nn::detail::grad_or_absent(wte.weight), Cpu::absent<T>(),
                         dlogits_, *hidden_, wte.weight.value);
    }
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

  std::vector<int> predictions() const {
    const Tensor& z = logits();
    std::vector<int> ids(static_cast<std::size_t>(z.rows()));
    for (Index i = 0; i < z.rows(); ++i) {
      Index best = 0;
      z.row(i).maxCoeff(&best);
      ids[static_cast<std::size_t>(i)] = static_cast<int>(best);
    }
    return ids;
  }

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
  Tensor logits_buf_;               // (N, V) tied LM head
  const Tensor* logits_ = nullptr;  // (N, V), (B, K) or the hidden states
  Tensor probs_, dlogits_, target_;
  std::vector<int> labels_;
  T loss_ = T(0);
  std::vector<int> pool_rows_;  // (B)
  Tensor pooled_;               // (B, C)
};

}  // namespace sora::model::hf
