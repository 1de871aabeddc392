#pragma once
// What the Hugging Face families share beyond their blocks: applying a fine-tuning method by
// parameter name, the decoders' task heads (GPT-2 and the LLaMA family lay theirs out alike),
// and the argmax of a batch's logits.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sora/core/param.hpp"
#include "sora/model/config.hpp"
#include "sora/model/frozen_base.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/peft.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/ops/linear.hpp"
#include "sora/ops/loss.hpp"
#include "sora/ops/pool.hpp"

namespace sora::model::hf {

// model::Transformer::apply_peft for a Hugging Face model: adapters on the linear layers matching
// peft.target_modules (PEFT's rule; "all-linear" selects every linear layer but the task head,
// as PEFT does), the head trainable when peft.train_head (PEFT's modules_to_save), norms when
// peft.train_layernorms, embeddings when peft.train_embeddings; everything else frozen. Norms,
// embeddings and the head are found by their parameters' roles. Throws when the patterns match
// nothing, naming an example module. Returns the number of adapted modules.
template <class Model>
Index apply_peft_by_name(Model& model, const PeftConfig& peft, const std::string& example) {
  using T = typename Model::Scalar;
  using Linear = typename Model::Linear;
  using ParamT = Param<T, typename Model::BackendTag>;
  SORA_CHECK(peft.method != Method::full || frozen_base_precision(model) == Precision::fp32,
             "apply_peft: full fine-tuning trains the base weights, which are stored in bf16; "
             "store them in fp32 first (model::store_frozen_base(model, Precision::fp32))");
  model.visit_linears([](const std::string&, Linear& lin) { lin.detach(); });
  if (peft.method == Method::full) {
    model.visit_params([](ParamT& p) { p.set_trainable(true); });
    return 0;
  }
  const bool all_linear =
      peft.target_modules.size() == 1 && peft.target_modules.front() == "all-linear";
  model.visit_params([](ParamT& p) { p.set_trainable(false); });
  Index adapted = 0;
  model.visit_linears([&](const std::string& name, Linear& lin) {
    if (!(all_linear ? !lin.is_head() : matches_any(name, peft.target_modules))) return;
    nn::AdapterConfig ac;
    ac.kind = adapter_kind(peft.method);
    ac.rank = peft.rank;
    ac.alpha = peft.alpha;
    ac.dropout = peft.dropout;
    ac.gate_init = peft.gate_init;
    ac.seed = peft.seed + static_cast<std::uint64_t>(adapted);
    lin.attach(ac);
    lin.train(model.training());
    ++adapted;
  });
  if (adapted == 0) {
    std::string patterns;
    for (const std::string& p : peft.target_modules) patterns += (patterns.empty() ? "" : ", ") + p;
    detail::throw_error("apply_peft: no module matches the target patterns [", patterns,
                        "] (modules are named like ", example, ")");
  }
  model.visit_params([&](ParamT& p) {
    if (p.role == ParamRole::norm) p.set_trainable(peft.train_layernorms);
    if (p.role == ParamRole::embedding) p.set_trainable(peft.train_embeddings);
  });
  model.visit_linears([&](const std::string&, Linear& lin) {
    // A head with an adapter of its own keeps its base frozen; BERT's pooler belongs to the base
    // model (PEFT keeps it frozen too).
    if (!lin.adapter && lin.is_head()) lin.base.set_trainable(peft.train_head);
  });
  return adapted;
}

// The index of the largest entry of each row (a class per sequence, a token per position).
template <class Tensor>
std::vector<int> argmax_rows(const Tensor& z) {
  std::vector<int> ids(static_cast<std::size_t>(z.rows()));
  for (Index i = 0; i < z.rows(); ++i) {
    Index best = 0;
    z.row(i).maxCoeff(&best);
    ids[static_cast<std::size_t>(i)] = static_cast<int>(best);
  }
  return ids;
}

// The task heads of GPT-2 and the LLaMA family, on the final hidden states h (N, C):
//   causal LM:   logits = h W^T, W = lm_head or the token embedding (tied)          (N, V)
//   sequence:    logits = score(h[row of each sequence's last token])               (B, K)
// The sequence's last token is the one before the first pad_token_id in its ids (the last
// position when there is none), as transformers' *ForSequenceClassification finds it. Losses:
// cross-entropy on next-token labels or classes, mean squared error for one output.
// CPU backend. Buffers are reused across batches of a shape.
template <class T>
class DecoderHead {
 public:
  using Tensor = Matrix<T>;
  using Linear = nn::AdaptedLinear<T>;

  // score / lm_head: the model's optional head layers; tied: the token embedding.
  const Tensor& forward(Task task, const Tensor& h, const Batch& batch, int pad_token_id,
                        Linear* score, Linear* lm_head, const Param<T>& tied) {
    const Index B = batch.batch, T_len = batch.seq;
    if (task == Task::causal_lm) {
      if (lm_head != nullptr) return *(logits_ = &lm_head->forward(h));
      logits_buf_.resize(h.rows(), tied.rows());
      ops::linear_forward<T>(logits_buf_, h, nn::detail::dense_value(tied));
      return *(logits_ = &logits_buf_);
    }
    SORA_CHECK(pad_token_id >= 0 || B == 1,
               "a batch of several sequences needs a pad_token_id in config.json to find each "
               "sequence's last token");
    pool_rows_.resize(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) {
      Index first_pad = 0;  // transformers: argmax(ids == pad) - 1, modulo T
      if (pad_token_id >= 0) {
        for (Index t = 0; t < T_len; ++t)
          if (batch.tokens[static_cast<std::size_t>(b * T_len + t)] == pad_token_id) {
            first_pad = t;
            break;
          }
      }
      pool_rows_[static_cast<std::size_t>(b)] =
          static_cast<int>(b * T_len + (first_pad + T_len - 1) % T_len);
    }
    pooled_.resize(B, h.cols());
    ops::gather_rows<T>(pooled_, h, pool_rows_);
    return *(logits_ = &score->forward(pooled_));
  }

  // The loss of the last forward's logits against the batch's labels (or values).
  T loss(Task task, bool regression, const Batch& batch) {
    const Tensor& logits = *logits_;
    const Index B = batch.batch;
    if (regression) {
      SORA_CHECK(static_cast<Index>(batch.values.size()) == B, batch.values.size(),
                 " regression targets for ", B, " sequences");
      target_.resize(B, 1);
      for (Index b = 0; b < B; ++b)
        target_(b, 0) = static_cast<T>(batch.values[static_cast<std::size_t>(b)]);
      regression_ = true;
      return ops::mse_forward<T>(logits, target_);
    }
    regression_ = false;
    const Index expected = task == Task::causal_lm ? B * batch.seq : B;
    SORA_CHECK(static_cast<Index>(batch.labels.size()) == expected, batch.labels.size(),
               " labels for ", expected, task == Task::causal_lm ? " tokens" : " sequences");
    for (const int label : batch.labels)
      SORA_CHECK(label == ops::kIgnoreIndex || (label >= 0 && label < logits.cols()), "label ",
                 label, " is outside [0, ", logits.cols(), ")");
    labels_.assign(batch.labels.begin(), batch.labels.end());
    probs_.resize(logits.rows(), logits.cols());
    return ops::cross_entropy_forward<T>(probs_, logits, labels_);
  }

  // dhidden (N, C) = the gradient of dloss * loss with respect to h; the heads' parameter
  // gradients (and the tied embedding's) accumulate.
  void backward(Task task, Tensor& dhidden, const Tensor& h, Linear* score, Linear* lm_head,
                Param<T>& tied, T dloss) {
    dlogits_.resize(logits_->rows(), logits_->cols());
    if (regression_) {
      ops::mse_backward<T>(dlogits_, *logits_, target_, dloss);
    } else {
      ops::cross_entropy_backward<T>(dlogits_, probs_, labels_, ops::kIgnoreIndex, dloss);
    }
    dhidden.resize(h.rows(), h.cols());
    if (task == Task::sequence_classification) {
      ops::scatter_rows<T>(dhidden, score->backward(dlogits_), pool_rows_);
    } else if (lm_head != nullptr) {
      dhidden = lm_head->backward(dlogits_);
    } else {
      // Tied: logits = h W^T; W collects dlogits^T h here and its embedding gradient later.
      ops::linear_backward<T>(dhidden, nn::detail::grad_or_absent(tied), Cpu::absent<T>(), dlogits_,
                              h, nn::detail::dense_value(tied));
    }
  }

  const Tensor* logits() const { return logits_; }

 private:
  const Tensor* logits_ = nullptr;  // (N, V) or (B, K)
  Tensor logits_buf_;               // (N, V) tied LM head
  Tensor probs_, dlogits_, target_;
  std::vector<int> labels_;
  std::vector<int> pool_rows_;  // (B)
  Tensor pooled_;               // (B, C)
  bool regression_ = false;
};

}  // namespace sora::model::hf
