#pragma once
// What a decoder model (GPT-2, the LLaMA family) does that does not depend on its blocks: the
// config and task, the heads (score for sequence tasks, lm_head for an untied causal LM), modes,
// parameter lists, the forward from the final hidden states to logits and loss and the backward
// back to them (hf/common.hpp's DecoderHead), and initialisation of fresh layers.
//
// A family derives from it (CRTP) and supplies its body:
//   const Tensor& forward_hidden(const Batch&)   the final hidden states (N, C); sets hidden_
//   void backward_hidden(const Tensor& dhidden)  from the final hidden states down
//   visit_body_params(fn), visit_body_linears(fn), train_body(bool)
//   Param<T>& token_embedding()                  what a tied LM head reuses
//   std::string example_module()                 for apply_peft's error message
// and calls initialise(init) at the end of its constructor, once its layers exist.

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
#include "sora/model/peft.hpp"
#include "sora/nn/adapter.hpp"

namespace sora::model::hf {

template <class Derived, class T>
class DecoderModel : public ParameterLists<Derived> {
 public:
  using Scalar = T;
  using BackendTag = Cpu;
  using Tensor = Matrix<T>;
  using ParamT = Param<T>;
  using Linear = nn::AdaptedLinear<T>;
  using Batch = model::Batch;

  std::optional<Linear> score;    // sequence head (K, C), no bias
  std::optional<Linear> lm_head;  // causal LM head (V, C), no bias, unless tied

  DecoderModel(const DecoderModel&) = delete;  // layers point into each other's buffers
  DecoderModel& operator=(const DecoderModel&) = delete;

  const HfConfig& config() const { return config_; }
  Task task() const { return task_; }
  bool regression() const {
    return task_ == Task::sequence_classification && config_.num_labels == 1;
  }
  // transformers' base_model_prefix, under which the body's names sit when a head is on top.
  std::string prefix() const { return task_ == Task::none ? "" : base_prefix_; }
  bool is_head(std::string_view name) const {
    return name.starts_with("score") || name.starts_with("lm_head");
  }

  void train(bool on = true) {
    training_ = on;
    self().train_body(on);
    visit_linears([&](const std::string&, Linear& lin) { lin.train(on); });
  }
  void eval() { train(false); }
  bool training() const { return training_; }
  Rng& dropout_rng() { return dropout_rng_; }
  // Restarts every dropout stream (the model's and each adapter's) from `seed`
  // (model/dropout_streams.hpp).
  void reseed_dropout(std::uint64_t seed) { reseed_dropout_streams(*this, seed); }
  // Gradient checkpointing (model/block_checkpoints.hpp): each layer's activations recomputed
  // in backward instead of kept from forward.
  void set_grad_checkpoint(bool on) { layer_runs_.set_enabled(on); }
  bool grad_checkpoint() const { return layer_runs_.enabled(); }

  template <class Fn>
  void visit_params(std::string_view, Fn&& fn) {  // names are the checkpoint's, whatever prefix
    visit_params(fn);
  }
  template <class Fn>
  void visit_params(Fn&& fn) {
    self().visit_body_params(fn);
    visit_heads([&](const std::string& name, Linear& lin) { lin.visit_params(name, fn); });
  }
  template <class Fn>
  void visit_linears(Fn&& fn) {
    self().visit_body_linears(fn);
    visit_heads(fn);
  }
  // parameters(), trainable_parameters(), zero_grad(): from ParameterLists.

  // Adapters by PEFT's rules (hf/common.hpp).
  Index apply_peft(const PeftConfig& peft) {
    return apply_peft_by_name(self(), peft, self().example_module());
  }

  // The logits of the task (or the hidden states of the bare model).
  const Tensor& forward_logits(const Batch& batch) {
    const Tensor& h = self().forward_hidden(batch);
    if (task_ == Task::none) return *(logits_ = &h);
    return *(logits_ = &head_.forward(task_, h, batch, config_.pad_token_id, head_ptr(score),
                                      head_ptr(lm_head), self().token_embedding()));
  }
  T forward(const Batch& batch) {
    SORA_CHECK(task_ != Task::none, family_name(config_.family),
               " model: the bare model has no loss; use forward_hidden, or build it with a task");
    forward_logits(batch);
    return loss_ = head_.loss(task_, regression(), batch);
  }
  // Gradients of dloss * (the last forward's loss), accumulated into the trainable parameters.
  void backward(T dloss = T(1)) {
    SORA_CHECK(logits_ != nullptr && task_ != Task::none, family_name(config_.family),
               " model: backward needs a forward with a loss first");
    head_.backward(task_, dhidden_, *hidden_, head_ptr(score), head_ptr(lm_head),
                   self().token_embedding(), dloss);
    self().backward_hidden(dhidden_);
  }

  const Tensor& hidden() const {
    SORA_CHECK(hidden_ != nullptr, "hidden() called before forward");
    return *hidden_;
  }
  const Tensor& logits() const {
    SORA_CHECK(logits_ != nullptr, "logits() called before forward");
    return *logits_;
  }
  T loss() const { return loss_; }
  std::vector<int> predictions() const { return argmax_rows(logits()); }

  // transformers' initialisation of a fresh layer: N(0, initializer_range), zero bias, from the
  // model's seed and the layer's name.
  void init_linear(Linear& lin, const std::string& name) {
    Rng rng(seed_ * 7919ULL + std::hash<std::string>{}(name));
    rng.fill_normal(lin.base.weight.value, 0.0, config_.initializer_range);
    if (lin.base.has_bias()) lin.base.bias.value.setZero();
  }

 protected:
  DecoderModel(const HfConfig& config, Task task, std::uint64_t seed, std::string base_prefix,
               Family family)
      : config_(config),
        task_(task),
        seed_(seed),
        dropout_rng_(seed, 2),
        base_prefix_(std::move(base_prefix)) {
    SORA_CHECK(config.family == family, "a ", family_name(config.family), " config cannot build a ",
               family_name(family), " model");
    const std::uint64_t base = seed * 1000003ULL;
    if (task_ == Task::sequence_classification) {
      score.emplace(config.hidden_size, config.num_labels, false, base + 4);
      score->mark_as_head();
    }
    if (task_ == Task::causal_lm && !config.tie_word_embeddings) {
      lm_head.emplace(config.hidden_size, config.vocab_size, false, base + 3);
      lm_head->mark_as_head();
    }
  }
  // Draws every linear layer as transformers would for a fresh model (not when loading).
  void initialise(Init init) {
    if (init == Init::random)
      visit_linears([&](const std::string& name, Linear& lin) { init_linear(lin, name); });
  }
  std::uint64_t init_seed() const { return seed_ * 1000003ULL; }
  // The generators the layer runs save and restore (every dropout stream of the model).
  auto dropout_rngs() {
    return [this](auto&& fn) { visit_dropout_rngs(*this, fn); };
  }
  // The checks every decoder makes of a batch, then B_, T_ and the key mask (B, T) (empty when
  // nothing is padded).
  void begin_batch(const Batch& batch) {
    const auto& c = config_;
    batch.validate(c.max_position_embeddings);
    SORA_CHECK(batch.token_types.empty(), family_name(c.family), " model: no token types");
    for (const int id : batch.tokens)
      SORA_CHECK(id >= 0 && id < c.vocab_size, family_name(c.family), " model: token id ", id,
                 " is outside [0, ", c.vocab_size, ")");
    B_ = batch.batch;
    T_ = batch.seq;
    if (batch.mask.empty()) {
      key_mask_.resize(0, 0);
      return;
    }
    key_mask_.resize(B_, T_);
    for (Index n = 0; n < B_ * T_; ++n)
      key_mask_(n / T_, n % T_) = static_cast<T>(batch.mask[static_cast<std::size_t>(n)]);
  }

  HfConfig config_;
  Task task_;
  std::uint64_t seed_;
  Rng dropout_rng_;
  BlockCheckpoints<T> layer_runs_;  // the layers' forward and backward (the family's loop)
  bool training_ = true;
  const Tensor* hidden_ = nullptr;  // (N, C) the final hidden states, set by forward_hidden
  Index B_ = 0, T_ = 0;             // the batch's sequences and length (begin_batch)
  Tensor key_mask_;                 // (B, T) or empty

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  static Linear* head_ptr(std::optional<Linear>& head) { return head ? &*head : nullptr; }
  template <class Fn>
  void visit_heads(Fn&& fn) {
    if (score) fn(std::string("score"), *score);
    if (lm_head) fn(std::string("lm_head"), *lm_head);
  }

  std::string base_prefix_;
  DecoderHead<T> head_;
  const Tensor* logits_ = nullptr;  // the head's logits, or the hidden states
  Tensor dhidden_;                  // (N, C)
  T loss_ = T(0);
};

}  // namespace sora::model::hf
