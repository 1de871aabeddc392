#pragma once
// The BERT family (BERT, RoBERTa, MiniLM) as `transformers` computes it, from library blocks:
//
//   x = dropout(LN_emb(word[ids] + position[pos] + token_type[types]))       (N, C)
//   L x PostLnLayer (model/hf/post_ln_layer.hpp)                               (N, C) hidden
//   sequence classification, BERT:     logits = classifier(dropout(tanh(pooler(h[CLS]))))
//                            RoBERTa:  logits = out_proj(dropout(tanh(dense(dropout(h[<s>])))))
//   loss: cross-entropy over num_labels classes, or mean squared error when num_labels == 1
//
// Positions: BERT numbers them 0..T-1; RoBERTa numbers the non-padding tokens (token id !=
// pad_token_id) from pad_token_id + 1 and gives padding pad_token_id, as transformers'
// create_position_ids_from_input_ids does.
//
// Names are the checkpoint's own, under transformers' base-model prefix when a task head sits
// on top (bert.encoder.layer.0.attention.self.query.weight, classifier.weight) and without it
// for the bare model (encoder.layer.0....), so that a PEFT adapter's keys are
// base_model.model.<name>.lora_A.weight with nothing to translate.
//
// Backward contract: parameter gradients accumulate (+=) until zero_grad().

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sora/core/parameters.hpp"
#include "sora/core/rng.hpp"
#include "sora/model/block_checkpoints.hpp"
#include "sora/model/config.hpp"
#include "sora/model/hf/common.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/hf/post_ln_layer.hpp"
#include "sora/model/peft.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/nn/embedding.hpp"
#include "sora/nn/layernorm.hpp"
#include "sora/ops/loss.hpp"

namespace sora::model::hf {

// PEFT's default targets for the family (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
inline std::vector<std::string> default_targets(Family family) {
  if (family == Family::gpt2) return {"c_attn"};
  if (family == Family::llama) return {"q_proj", "v_proj"};
  return {"query", "value"};
}

template <class T, class Backend = Cpu>
class BertModel : public ParameterLists<BertModel<T, Backend>> {
 public:
  using Scalar = T;
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;
  using ParamT = Param<T, Backend>;
  using Linear = nn::AdaptedLinear<T, Backend>;
  using Batch = model::Batch;

  nn::Embedding<T, Backend> word, position, token_type;
  nn::LayerNorm<T, Backend> emb_ln;
  std::vector<PostLnLayer<T, Backend>> layers;
  // Sequence classification. BERT: pooler = bert.pooler.dense, out = classifier.
  // RoBERTa: dense = classifier.dense, out = classifier.out_proj.
  std::optional<Linear> pooler, dense, out;

  // Builds the architecture with freshly initialised weights (N(0, initializer_range) for
  // matrices, zero biases, unit LayerNorms: transformers' _init_weights), seeded.
  BertModel(const HfConfig& config, Task task, std::uint64_t seed = 0, Init init = Init::random)
      : config_(config), task_(task), seed_(seed), dropout_rng_(seed, 2) {
    const auto& c = config_;
    SORA_CHECK(c.family == Family::bert || c.family == Family::roberta, "BertModel: a ",
               family_name(c.family), " config is not of the BERT family");
    const std::uint64_t base = seed * 1000003ULL;
    word = make_embedding<nn::Embedding<T, Backend>, T>(init, c.vocab_size, c.hidden_size, true,
                                                        base + 1, c.initializer_range);
    position = make_embedding<nn::Embedding<T, Backend>, T>(
        init, c.max_position_embeddings, c.hidden_size, true, base + 2, c.initializer_range);
    token_type = make_embedding<nn::Embedding<T, Backend>, T>(
        init, c.type_vocab_size, c.hidden_size, true, base + 3, c.initializer_range);
    emb_ln = nn::LayerNorm<T, Backend>(c.hidden_size, true, static_cast<T>(c.layer_norm_eps));
    layers.reserve(static_cast<std::size_t>(c.num_layers));  // layers keep pointers: never move
    for (Index l = 0; l < c.num_layers; ++l)
      layers.emplace_back(c.hidden_size, c.num_heads, c.intermediate_size, c.gelu, c.layer_norm_eps,
                          c.hidden_dropout, c.attention_dropout,
                          base + 16 + static_cast<std::uint64_t>(l));
    if (task_ == Task::sequence_classification) {
      if (c.family == Family::bert) {
        pooler.emplace(c.hidden_size, c.hidden_size, true, base + 4);
      } else {
        dense.emplace(c.hidden_size, c.hidden_size, true, base + 4);
      }
      out.emplace(c.hidden_size, c.num_labels, true, base + 5);
      // The classifier is the head (PEFT's modules_to_save); BERT's pooler belongs to the base
      // model (PEFT keeps it frozen too).
      if (dense) dense->mark_as_head();
      out->mark_as_head();
    }
    if (init == Init::random)
      visit_linears([&](const std::string& name, Linear& lin) { init_linear(lin, name); });
  }

  BertModel(const BertModel&) = delete;  // layers point into each other's buffers
  BertModel& operator=(const BertModel&) = delete;

  const HfConfig& config() const { return config_; }
  Task task() const { return task_; }
  bool regression() const {
    return task_ == Task::sequence_classification && config_.num_labels == 1;
  }
  // transformers' base_model_prefix, under which the encoder's names sit when a head is on top.
  std::string prefix() const { return task_ == Task::none ? "" : family_name(config_.family); }
  // Names of the head's modules (what PEFT's modules_to_save keeps for a sequence task).
  bool is_head(std::string_view name) const { return name.starts_with("classifier"); }

  // ---- modes -------------------------------------------------------------------------------

  void train(bool on = true) {
    training_ = on;
    for (auto& l : layers) l.train(on);
    visit_linears([&](const std::string&, Linear& lin) { lin.train(on); });
  }
  void eval() { train(false); }
  bool training() const { return training_; }
  Rng& dropout_rng() { return dropout_rng_; }
  // Restarts every dropout stream (the model's and each adapter's) from `seed`
  // (model/dropout_streams.hpp).
  void reseed_dropout(std::uint64_t seed) { reseed_dropout_streams(*this, seed); }
  // Gradient checkpointing (model/block_checkpoints.hpp): each layer's activations recomputed
  // in backward instead of kept from forward. CPU backend.
  void set_grad_checkpoint(bool on) { layer_runs_.set_enabled(on); }
  bool grad_checkpoint() const { return layer_runs_.enabled(); }

  // ---- parameters --------------------------------------------------------------------------

  template <class Fn>
  void visit_params(std::string_view, Fn&& fn) {  // names are the checkpoint's, whatever prefix
    visit_params(fn);
  }
  template <class Fn>
  void visit_params(Fn&& fn) {
    const std::string emb = nn::join_name(prefix(), "embeddings");
    word.visit_params(nn::join_name(emb, "word_embeddings"), fn);
    position.visit_params(nn::join_name(emb, "position_embeddings"), fn);
    token_type.visit_params(nn::join_name(emb, "token_type_embeddings"), fn);
    emb_ln.visit_params(nn::join_name(emb, "LayerNorm"), fn);
    for (std::size_t l = 0; l < layers.size(); ++l) layers[l].visit_params(layer_name(l), fn);
    visit_heads([&](const std::string& name, Linear& lin) { lin.visit_params(name, fn); });
  }

  // fn(name, AdaptedLinear&) for every linear layer an adapter can go on.
  template <class Fn>
  void visit_linears(Fn&& fn) {
    for (std::size_t l = 0; l < layers.size(); ++l) layers[l].visit_linears(layer_name(l), fn);
    visit_heads(fn);
  }

  // parameters(), trainable_parameters(), zero_grad(): from ParameterLists.

  // ---- fine-tuning method --------------------------------------------------------------------

  // Adapters by PEFT's rules (hf/common.hpp); the LayerNorms are the norms, the embedding
  // tables (not their LayerNorm) the embeddings, as their layers' roles say.
  Index apply_peft(const PeftConfig& peft) {
    return apply_peft_by_name(*this, peft, layer_name(0) + ".attention.self.query");
  }

  // ---- forward / backward ------------------------------------------------------------------

  // The last hidden states (N, C) of a batch; the batch must stay alive until backward.
  const Tensor& forward_hidden(const Batch& batch) {
    const auto& c = config_;
    batch.validate(c.max_position_embeddings);
    B_ = batch.batch;
    T_ = batch.seq;
    const Index N = B_ * T_;
    dropping_ = training_ && c.hidden_dropout > 0.0;

    if (batch.mask.empty()) {
      key_mask_.resize(0, 0);
    } else {
      key_mask_host_.resize(B_, T_);
      for (Index n = 0; n < N; ++n)
        key_mask_host_(n / T_, n % T_) = static_cast<T>(batch.mask[static_cast<std::size_t>(n)]);
      Backend::upload(key_mask_, key_mask_host_);
    }
    set_positions(batch);
    types_host_.assign(static_cast<std::size_t>(N), 0);
    for (std::size_t i = 0; i < batch.token_types.size(); ++i) {
      const int t = batch.token_types[i];
      SORA_CHECK(t >= 0 && t < c.type_vocab_size, "BertModel: token type ", t, " at position ", i,
                 " is outside [0, ", c.type_vocab_size, ")");
      types_host_[i] = t;
    }
    for (const int id : batch.tokens)
      SORA_CHECK(id >= 0 && id < c.vocab_size, "BertModel: token id ", id, " is outside [0, ",
                 c.vocab_size, ")");

    word.forward_to(emb_, batch.tokens);             // (N, C)
    position.forward_to(pos_emb_, positions_host_);  // (N, C)
    token_type.forward_to(type_emb_, types_host_);   // (N, C)
    residual_forward<T>(emb_, emb_, pos_emb_);
    residual_forward<T>(emb_, emb_, type_emb_);
    const Tensor* x = &emb_ln.forward(emb_);
    if (dropping_) {
      emb_drop_.resize(N, c.hidden_size);
      emb_mask_.resize(N, c.hidden_size);
      dropout_forward<T>(emb_drop_, emb_mask_, *x, static_cast<T>(c.hidden_dropout), dropout_rng_);
      x = &emb_drop_;
    }
    hidden_ = &layer_runs_.forward(layers, *x, forward_layer(), dropout_rngs());
    return *hidden_;
  }

  // The logits (B, K) of a sequence task, or the hidden states (N, C) of the bare model.
  const Tensor& forward_logits(const Batch& batch) {
    const Tensor& h = forward_hidden(batch);
    if (task_ == Task::none) {
      logits_ = &h;
      return h;
    }
    const auto& c = config_;
    const T p = static_cast<T>(c.head_dropout());
    const bool drop_head = training_ && p > T(0);
    // Both families read the first token ([CLS] / <s>).
    pool_rows_host_.resize(static_cast<std::size_t>(B_));
    for (Index b = 0; b < B_; ++b)
      pool_rows_host_[static_cast<std::size_t>(b)] = static_cast<int>(b * T_);
    Backend::set_indices(pool_rows_, pool_rows_host_);
    pooled_.resize(B_, c.hidden_size);
    gather_rows<T>(pooled_, h, pool_rows_);
    const Tensor* x = &pooled_;
    Linear& first = pooler ? *pooler : *dense;
    if (dense && drop_head) {  // RoBERTa drops before its dense layer too
      pool_drop_.resize(B_, c.hidden_size);
      pool_mask_.resize(B_, c.hidden_size);
      dropout_forward<T>(pool_drop_, pool_mask_, pooled_, p, dropout_rng_);
      x = &pool_drop_;
    }
    const Tensor& z = first.forward(*x);  // (B, C)
    tanh_.resize(z.rows(), z.cols());
    tanh_forward<T>(tanh_, z);
    const Tensor* head_in = &tanh_;
    if (drop_head) {
      head_in_.resize(z.rows(), z.cols());
      head_mask_.resize(z.rows(), z.cols());
      dropout_forward<T>(head_in_, head_mask_, tanh_, p, dropout_rng_);
      head_in = &head_in_;
    }
    head_dropped_ = drop_head;
    logits_ = &out->forward(*head_in);
    return *logits_;
  }

  // Logits and loss of a sequence task (labels or, for regression, values in the batch).
  T forward(const Batch& batch) {
    SORA_CHECK(task_ != Task::none,
               "BertModel::forward: the bare model has no loss; use "
               "forward_hidden, or build it with a task");
    const Tensor& logits = forward_logits(batch);
    if (regression()) {
      SORA_CHECK(static_cast<Index>(batch.values.size()) == B_, "BertModel: ", batch.values.size(),
                 " regression targets for ", B_, " sequences");
      target_host_.resize(B_, 1);
      for (Index b = 0; b < B_; ++b)
        target_host_(b, 0) = static_cast<T>(batch.values[static_cast<std::size_t>(b)]);
      Backend::upload(target_, target_host_);
      loss_ = mse_forward<T>(logits, target_);
    } else {
      SORA_CHECK(static_cast<Index>(batch.labels.size()) == B_, "BertModel: ", batch.labels.size(),
                 " labels for ", B_, " sequences");
      for (const int label : batch.labels)
        SORA_CHECK(label >= 0 && label < config_.num_labels, "BertModel: label ", label,
                   " is outside [0, ", config_.num_labels, ")");
      Backend::set_indices(labels_, batch.labels);
      probs_.resize(logits.rows(), logits.cols());
      loss_ = cross_entropy_forward<T>(probs_, logits, labels_);
    }
    return loss_;
  }

  // Gradients of dloss * (the last forward's loss), accumulated into the trainable parameters.
  void backward(T dloss = T(1)) {
    SORA_CHECK(logits_ != nullptr && task_ != Task::none,
               "BertModel::backward needs a forward with a loss first");
    dlogits_.resize(logits_->rows(), logits_->cols());
    if (regression()) {
      mse_backward<T>(dlogits_, *logits_, target_, dloss);
    } else {
      cross_entropy_backward<T>(dlogits_, probs_, labels_, ops::kIgnoreIndex, dloss);
    }
    const Tensor& dhead_in = out->backward(dlogits_);
    dz_.resize(dhead_in.rows(), dhead_in.cols());
    if (head_dropped_) {
      dropout_backward<T>(dz_, dhead_in, head_mask_);
      tanh_backward<T>(dz_, dz_, tanh_);
    } else {
      tanh_backward<T>(dz_, dhead_in, tanh_);
    }
    Linear& first = pooler ? *pooler : *dense;
    const Tensor* dpooled = &first.backward(dz_);
    if (dense && head_dropped_) {
      dpool_.resize(dpooled->rows(), dpooled->cols());
      dropout_backward<T>(dpool_, *dpooled, pool_mask_);
      dpooled = &dpool_;
    }
    dhidden_.resize(hidden_->rows(), hidden_->cols());
    scatter_rows<T>(dhidden_, *dpooled, pool_rows_);
    backward_hidden(dhidden_);
  }

  // Backward from a gradient of the hidden states (N, C) (the bare model's entry point).
  void backward_hidden(const Tensor& dhidden) {
    const bool embeddings_train = word.weight.trainable() || position.weight.trainable() ||
                                  token_type.weight.trainable() || emb_ln.weight.trainable() ||
                                  emb_ln.bias.trainable();
    const Tensor* dx =
        &layer_runs_.backward(layers, dhidden, embeddings_train, forward_layer(), dropout_rngs());
    if (!embeddings_train) return;
    if (dropping_) {
      demb_drop_.resize(dx->rows(), dx->cols());
      dropout_backward<T>(demb_drop_, *dx, emb_mask_);
      dx = &demb_drop_;
    }
    const Tensor& demb = emb_ln.backward(*dx, true);
    word.backward(demb);
    position.backward(demb);
    token_type.backward(demb);
  }

  const Tensor& hidden() const {
    SORA_CHECK(hidden_ != nullptr, "BertModel::hidden called before forward");
    return *hidden_;
  }
  const Tensor& logits() const {
    SORA_CHECK(logits_ != nullptr, "BertModel::logits called before forward");
    return *logits_;
  }
  T loss() const { return loss_; }

  std::vector<int> predictions() const { return argmax_rows(Backend::to_host(logits())); }

  // Re-draws a head layer as transformers initialises a fresh one (weights N(0, range), bias 0),
  // from the model's seed and the layer's name (a head missing from a checkpoint).
  void init_linear(Linear& lin, const std::string& name) {
    Rng rng(seed_ * 7919ULL + std::hash<std::string>{}(name));
    Matrix<T> w(lin.out_features(), lin.in_features());
    rng.fill_normal(w, 0.0, config_.initializer_range);
    lin.base.weight.value = Backend::template from_host<T>(std::move(w));
    if (lin.base.has_bias())
      lin.base.bias.value = Backend::template from_host<T>(Matrix<T>::Zero(1, lin.out_features()));
  }

 private:
  // One layer's forward as the layer runs call it, and the generators they save.
  auto forward_layer() {
    return [this](PostLnLayer<T, Backend>& layer, const Tensor& x) -> const Tensor& {
      return layer.forward(x, B_, T_, key_mask_, dropout_rng_);
    };
  }
  auto dropout_rngs() {
    return [this](auto&& fn) { visit_dropout_rngs(*this, fn); };
  }

  std::string layer_name(std::size_t l) const {
    return nn::join_name(prefix(), "encoder.layer." + std::to_string(l));
  }
  template <class Fn>
  void visit_heads(Fn&& fn) {
    if (pooler) fn(nn::join_name(prefix(), "pooler.dense"), *pooler);
    if (dense) fn(std::string("classifier.dense"), *dense);
    if (out) fn(std::string(dense ? "classifier.out_proj" : "classifier"), *out);
  }

  void set_positions(const Batch& batch) {
    const auto& c = config_;
    positions_host_.resize(static_cast<std::size_t>(B_ * T_));
    for (Index b = 0; b < B_; ++b) {
      int count = 0;
      for (Index t = 0; t < T_; ++t) {
        const auto i = static_cast<std::size_t>(b * T_ + t);
        int pos = static_cast<int>(t);
        if (c.family == Family::roberta)
          pos = batch.tokens[i] == c.pad_token_id ? c.pad_token_id : c.pad_token_id + ++count;
        SORA_CHECK(pos < c.max_position_embeddings, "BertModel: position ", pos, " of sequence ", b,
                   " is past max_position_embeddings ", c.max_position_embeddings);
        positions_host_[i] = pos;
      }
    }
  }

  HfConfig config_;
  Task task_;
  std::uint64_t seed_;
  Rng dropout_rng_;
  BlockCheckpoints<T, Backend> layer_runs_;  // the layers' forward and backward
  bool training_ = true;
  bool dropping_ = false;
  bool head_dropped_ = false;
  Index B_ = 0, T_ = 0;
  std::vector<int> positions_host_, types_host_;  // (N)
  Matrix<T> key_mask_host_;                       // (B, T)
  Tensor key_mask_;                               // (B, T) or empty
  Tensor emb_, pos_emb_, type_emb_;               // (N, C)
  Tensor emb_drop_, emb_mask_, demb_drop_;        // (N, C)
  const Tensor* hidden_ = nullptr;                // (N, C)
  Tensor dhidden_;                                // (N, C)
  const Tensor* logits_ = nullptr;                // (B, K), or the hidden states
  Tensor probs_, dlogits_, target_;               // (B, K)
  Matrix<T> target_host_;                         // (B, 1)
  typename Backend::Indices labels_;
  T loss_ = T(0);
  std::vector<int> pool_rows_host_;      // (B) row of the first token of each sequence
  typename Backend::Indices pool_rows_;  // (B)
  Tensor pooled_, pool_drop_, pool_mask_, tanh_, head_in_, head_mask_, dz_, dpool_;  // (B, C)
};

}  // namespace sora::model::hf
