#pragma once
// A small pre-LayerNorm transformer assembled from nn/ (docs/design.md section 7):
//
//   x = dropout(wte[tokens] + wpe[positions])
//   L x Block (model/block.hpp)
//   h = ln_f(x)
//   lm:              logits = h W^T, W = wte (tied) or lm_head       (N, V)
//   classification:  p = h[pooled token of each sequence]           (B, C)
//                    logits = out(dropout(tanh(dense(dropout(p)))))  (B, K)
//   regression:      the same head, K outputs, mean squared error
//
// Parameter names (one visitor, stable dotted paths): wte.weight, wpe.weight,
// blocks.<l>.{ln1,ln2}.{weight,bias}, blocks.<l>.attn.{q,k,v,o}.{weight,bias,lora_A,lora_B,
// lora_gate|lora_E}, blocks.<l>.mlp.{fc,proj}.<same>, ln_f.{weight,bias}, lm_head.weight
// (untied LM head), head.{dense,out}.{weight,bias} (sequence heads).
//
// Memory: every activation buffer belongs to a layer or to the model and is resized on the
// first batch of a shape; later batches of that shape reuse it (Eigen's resize keeps the
// allocation when the size is unchanged). Forward and backward then allocate nothing of their
// own; what remains is Eigen's GEMM packing workspace, taken per product inside Eigen. (Checked
// by interposing malloc: the only other allocations in a step are the parameter-name strings
// of zero_grad()'s visitor; train::fit zeroes through a pointer list instead.)
//
// Backward contract: parameter gradients accumulate (+=) until zero_grad(), so that
// micro-batches can be summed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "sora/core/parameters.hpp"
#include "sora/core/rng.hpp"
#include "sora/model/block.hpp"
#include "sora/model/block_checkpoints.hpp"
#include "sora/model/config.hpp"
#include "sora/model/frozen_base.hpp"
#include "sora/model/peft.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/nn/embedding.hpp"
#include "sora/nn/layernorm.hpp"
#include "sora/ops/dropout.hpp"
#include "sora/ops/linear.hpp"
#include "sora/ops/loss.hpp"

namespace sora::model {

// Trainable / total scalars of one kind of module.
struct SummaryRow {
  std::string kind;  // embeddings, attention, mlp, layernorm, adapters, head
  Index trainable = 0;
  Index total = 0;
};

// The kind of module a parameter belongs to: its role says what it is; for base weights and
// biases, the module path says where (attention or MLP).
template <class P>
std::string module_kind(const P& p) {
  if (is_adapter_role(p.role)) return "adapters";
  if (p.role == ParamRole::embedding) return "embeddings";
  if (p.role == ParamRole::norm) return "layernorm";
  if (p.role == ParamRole::head) return "head";
  if (p.name.find(".attn.") != std::string::npos) return "attention";
  if (p.name.find(".mlp.") != std::string::npos) return "mlp";
  return "other";
}

using namespace nn::op_names;  // ops found by name and by the tensor type (nn/common.hpp)

template <class T, class Backend = Cpu>
class Transformer : public ParameterLists<Transformer<T, Backend>> {
 public:
  using Scalar = T;
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;
  using ParamT = Param<T, Backend>;
  using Linear = nn::AdaptedLinear<T, Backend>;
  using Batch = model::Batch;

  nn::Embedding<T, Backend> wte;
  nn::PositionEmbedding<T, Backend> wpe;
  std::vector<Block<T, Backend>> blocks;
  nn::LayerNorm<T, Backend> ln_f;
  std::optional<Linear> lm_head;     // untied LM head (V, C), no bias
  std::optional<Linear> dense, out;  // sequence head: dense (C, C), out (K, C)

  explicit Transformer(const TransformerConfig& config)
      : config_((config.validate(), config)), dropout_rng_(config.seed, 2) {
    const auto& c = config_;
    // Every module draws its initialisation from a seed of its own, derived from the model's,
    // so that adding a module (a head) never changes another module's weights.
    const std::uint64_t base = c.seed * 1000003ULL;
    wte = nn::Embedding<T, Backend>(c.vocab_size, c.width, true, base + 1);
    wpe = nn::PositionEmbedding<T, Backend>(c.max_len, c.width, true, base + 2);
    blocks.reserve(static_cast<std::size_t>(c.layers));  // layers keep pointers: never move
    for (Index l = 0; l < c.layers; ++l)
      blocks.emplace_back(c, base + 16 + static_cast<std::uint64_t>(l));
    ln_f = nn::LayerNorm<T, Backend>(c.width, true, static_cast<T>(c.ln_eps));
    if (c.head == Head::lm) {
      if (!c.tied_lm_head) lm_head.emplace(c.width, c.vocab_size, false, base + 3);
    } else {
      dense.emplace(c.width, c.width, c.bias, base + 4);
      out.emplace(c.width, c.num_labels, c.bias, base + 5);
    }
    for (auto* head : {&lm_head, &dense, &out})
      if (*head) (*head)->mark_as_head();
  }

  // The layers point into each other's buffers: a copy or move would leave them dangling.
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const TransformerConfig& config() const { return config_; }

  // ---- modes -------------------------------------------------------------------------------

  // Training mode turns dropout on (model dropout and every adapter's); eval turns it off.
  void train(bool on = true) {
    training_ = on;
    for (auto& b : blocks) b.train(on);
    visit_linears([&](const std::string&, Linear& lin) { lin.train(on); });
  }
  void eval() { train(false); }
  bool training() const { return training_; }

  // Restarts every dropout stream (the model's and each adapter's) from `seed`, so that two
  // forward passes draw identical masks (gradient checks through dropout need this).
  void reseed_dropout(std::uint64_t seed) { reseed_dropout_streams(*this, seed); }
  Rng& dropout_rng() { return dropout_rng_; }
  // Gradient checkpointing (model/block_checkpoints.hpp): each block's activations recomputed
  // in backward instead of kept from forward. CPU backend.
  void set_grad_checkpoint(bool on) { block_runs_.set_enabled(on); }
  bool grad_checkpoint() const { return block_runs_.enabled(); }

  // ---- parameters --------------------------------------------------------------------------

  // fn(Param<T, Backend>&) for every parameter, named by its dotted path (prefix + "." + path).
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    wte.visit_params(nn::join_name(prefix, "wte"), fn);
    wpe.visit_params(nn::join_name(prefix, "wpe"), fn);
    for (std::size_t l = 0; l < blocks.size(); ++l)
      blocks[l].visit_params(nn::join_name(prefix, "blocks." + std::to_string(l)), fn);
    ln_f.visit_params(nn::join_name(prefix, "ln_f"), fn);
    if (lm_head) lm_head->visit_params(nn::join_name(prefix, "lm_head"), fn);
    if (dense) dense->visit_params(nn::join_name(prefix, "head.dense"), fn);
    if (out) out->visit_params(nn::join_name(prefix, "head.out"), fn);
  }
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params("", fn);
  }

  // fn(const std::string& name, AdaptedLinear&) for every linear slot an adapter can be
  // injected into: blocks.<l>.attn.{q,k,v,o}, blocks.<l>.mlp.{fc,proj}, lm_head, head.dense,
  // head.out.
  template <class Fn>
  void visit_linears(Fn&& fn) {
    for (std::size_t l = 0; l < blocks.size(); ++l)
      blocks[l].visit_linears("blocks." + std::to_string(l), fn);
    if (lm_head) fn(std::string("lm_head"), *lm_head);
    if (dense) fn(std::string("head.dense"), *dense);
    if (out) fn(std::string("head.out"), *out);
  }

  // parameters(), trainable_parameters(), zero_grad(): from ParameterLists.

  // ---- fine-tuning method --------------------------------------------------------------------

  // Sets the model up for `peft.method`, replacing any adapters attached before:
  //   full        every parameter trainable, no adapters;
  //   lora, sora, adalora
  //               every base weight frozen (no gradient, no optimizer state); an adapter
  //               attached to each linear slot matching peft.target_modules; LayerNorms, the
  //               head and the embeddings trainable as peft says.
  // Returns the number of adapted modules. Throws when the patterns match no module (PEFT's
  // "target modules not found"), rather than silently training nothing.
  Index apply_peft(const PeftConfig& peft) {
    // Checked before the model is touched (the adapters check again, too late to keep it).
    SORA_CHECK(peft.method == Method::full || (std::isfinite(peft.alpha) && peft.alpha > 0.0),
               "apply_peft: alpha must be a finite number > 0, got ", peft.alpha);
    SORA_CHECK(peft.method != Method::full || frozen_base_precision(*this) == Precision::fp32,
               "apply_peft: full fine-tuning trains the base weights, which are stored in bf16; "
               "store them in fp32 first (model::store_frozen_base(model, Precision::fp32))");
    visit_linears([](const std::string&, Linear& lin) { lin.detach(); });
    if (peft.method == Method::full) {
      visit_params([](ParamT& p) { p.set_trainable(true); });
      return 0;
    }
    visit_params([](ParamT& p) { p.set_trainable(false); });
    Index adapted = 0;
    visit_linears([&](const std::string& name, Linear& lin) {
      if (!matches_any(name, peft.target_modules)) return;
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
    SORA_CHECK(adapted > 0, "apply_peft: no module matches the target patterns ",
               join_patterns(peft.target_modules),
               " (modules are named like blocks.0.attn.q, blocks.0.mlp.fc, head.dense)");
    for (auto& b : blocks) {
      set_layernorm_trainable(b.ln1, peft.train_layernorms);
      set_layernorm_trainable(b.ln2, peft.train_layernorms);
    }
    set_layernorm_trainable(ln_f, peft.train_layernorms);
    for (auto* head : {&lm_head, &dense, &out}) {
      // A head with an adapter of its own keeps its base frozen.
      if (*head && !(*head)->adapter) (*head)->base.set_trainable(peft.train_head);
    }
    wte.weight.set_trainable(peft.train_embeddings);
    wpe.weight.set_trainable(peft.train_embeddings);
    return adapted;
  }

  // Trainable / total scalars per module kind, in a fixed order, plus a "total" row.
  std::vector<SummaryRow> summary() {
    std::vector<SummaryRow> rows;
    for (const char* kind : {"embeddings", "attention", "mlp", "layernorm", "adapters", "head"})
      rows.push_back(SummaryRow{kind, 0, 0});
    SummaryRow total{"total", 0, 0};
    visit_params([&](ParamT& p) {
      const std::string kind = module_kind(p);
      for (auto& row : rows) {
        if (row.kind != kind) continue;
        row.total += p.size();
        if (p.trainable()) row.trainable += p.size();
      }
      total.total += p.size();
      if (p.trainable()) total.trainable += p.size();
    });
    std::erase_if(rows, [](const SummaryRow& r) { return r.total == 0; });
    rows.push_back(total);
    return rows;
  }

  std::string summary_string() {
    std::ostringstream s;
    s << std::left << std::setw(12) << "module" << std::right << std::setw(14) << "trainable"
      << std::setw(14) << "total" << std::setw(10) << "share" << '\n';
    for (const SummaryRow& row : summary()) {
      const double share =
          row.total == 0 ? 0.0 : 100.0 * static_cast<double>(row.trainable) / row.total;
      s << std::left << std::setw(12) << row.kind << std::right << std::setw(14) << row.trainable
        << std::setw(14) << row.total << std::setw(9) << std::fixed << std::setprecision(2) << share
        << "%\n";
    }
    return s.str();
  }

  // ---- forward / backward ------------------------------------------------------------------

  // The logits of a batch: (B T, V) for the LM head, (B, K) for a sequence head. Valid until
  // the next forward. The batch must stay alive and unchanged until backward.
  const Tensor& forward_logits(const Batch& batch) {
    const auto& c = config_;
    batch.validate(c.max_len);
    B_ = batch.batch;
    T_ = batch.seq;
    const Index N = B_ * T_;
    dropping_ = training_ && c.dropout > 0.0;
    const T p = static_cast<T>(c.dropout);

    if (batch.mask.empty()) {
      key_mask_.resize(0, 0);
    } else {
      key_mask_host_.resize(B_, T_);
      for (Index n = 0; n < N; ++n)
        key_mask_host_(n / T_, n % T_) = static_cast<T>(batch.mask[static_cast<std::size_t>(n)]);
      Backend::upload(key_mask_, key_mask_host_);
    }

    wte.forward_to(emb_, batch.tokens);  // (N, C); same size every step: no reallocation
    wpe.forward_add(emb_, T_);
    if (dropping_) {
      emb_mask_.resize(N, c.width);
      dropout_forward<T>(emb_, emb_mask_, emb_, p, dropout_rng_);
    }
    const Tensor* x = &emb_;
    x = &block_runs_.forward(blocks, *x, forward_block(), dropout_rngs());
    hf_ = &ln_f.forward(*x);  // (N, C)

    if (c.head == Head::lm) {
      if (lm_head) {
        logits_ = &lm_head->forward(*hf_);
      } else {
        logits_buf_.resize(N, c.vocab_size);
        linear_forward<T>(logits_buf_, *hf_, nn::detail::dense_value(wte.weight));
        logits_ = &logits_buf_;
      }
      return *logits_;
    }

    // Sequence head on one token per sequence.
    pool_rows_host_.resize(static_cast<std::size_t>(B_));
    for (Index b = 0; b < B_; ++b) {
      Index t = 0;
      if (c.pooled_token() == Pooling::last) {
        t = T_ - 1;
        if (!batch.mask.empty()) {
          while (t >= 0 && batch.mask[static_cast<std::size_t>(b * T_ + t)] == 0.0f) --t;
          SORA_CHECK(t >= 0, "Transformer: sequence ", b, " of the batch is all padding");
        }
      }
      pool_rows_host_[static_cast<std::size_t>(b)] = static_cast<int>(b * T_ + t);
    }
    Backend::set_indices(pool_rows_, pool_rows_host_);
    pooled_.resize(B_, c.width);
    gather_rows<T>(pooled_, *hf_, pool_rows_);
    if (dropping_) {
      pool_mask_.resize(B_, c.width);
      dropout_forward<T>(pooled_, pool_mask_, pooled_, p, dropout_rng_);
    }
    const Tensor& z = dense->forward(pooled_);  // (B, C)
    tanh_.resize(z.rows(), z.cols());
    tanh_forward<T>(tanh_, z);
    const Tensor* head_in = &tanh_;
    if (dropping_) {
      head_in_.resize(z.rows(), z.cols());
      head_mask_.resize(z.rows(), z.cols());
      dropout_forward<T>(head_in_, head_mask_, tanh_, p, dropout_rng_);
      head_in = &head_in_;
    }
    logits_ = &out->forward(*head_in);
    return *logits_;
  }

  // Logits and loss: mean cross-entropy over the labelled tokens (lm) or sequences
  // (classification), or the mean squared error over B x K values (regression).
  T forward(const Batch& batch) {
    const Tensor& logits = forward_logits(batch);
    const auto& c = config_;
    Backend::set_indices(labels_, batch.labels);
    if (c.head == Head::regression) {
      SORA_CHECK(static_cast<Index>(batch.values.size()) == B_ * c.num_labels,
                 "Transformer: ", batch.values.size(), " regression targets for ", B_,
                 " sequences x ", c.num_labels, " outputs");
      target_host_.resize(B_, c.num_labels);
      for (Index i = 0; i < target_host_.size(); ++i)
        target_host_(i / c.num_labels, i % c.num_labels) =
            static_cast<T>(batch.values[static_cast<std::size_t>(i)]);
      Backend::upload(target_, target_host_);
      loss_ = mse_forward<T>(logits, target_);
    } else {
      probs_.resize(logits.rows(), logits.cols());
      loss_ = cross_entropy_forward<T>(probs_, logits, labels_);
    }
    return loss_;
  }

  // Gradients of dloss * (the last forward's loss), accumulated into every trainable
  // parameter's gradient.
  void backward(T dloss = T(1)) {
    SORA_CHECK(logits_ != nullptr, "Transformer::backward called before forward");
    const auto& c = config_;
    dlogits_.resize(logits_->rows(), logits_->cols());
    if (c.head == Head::regression) {
      mse_backward<T>(dlogits_, *logits_, target_, dloss);
    } else {
      cross_entropy_backward<T>(dlogits_, probs_, labels_, ops::kIgnoreIndex, dloss);
    }

    const Tensor* dhf = nullptr;  // (N, C)
    if (c.head == Head::lm) {
      if (lm_head) {
        dhf = &lm_head->backward(dlogits_);
      } else {
        // Tied: logits = h wte^T, so wte collects dlogits^T h here and the embedding's own
        // gradient in the backward below.
        dhf_.resize(hf_->rows(), hf_->cols());
        linear_backward<T>(dhf_, nn::detail::grad_or_absent(wte.weight),
                           Backend::template absent<T>(), dlogits_, *hf_,
                           nn::detail::dense_value(wte.weight));
        dhf = &dhf_;
      }
    } else {
      const Tensor& dhead_in = out->backward(dlogits_);
      dz_.resize(dhead_in.rows(), dhead_in.cols());
      if (dropping_) {
        dropout_backward<T>(dz_, dhead_in, head_mask_);
        tanh_backward<T>(dz_, dz_, tanh_);
      } else {
        tanh_backward<T>(dz_, dhead_in, tanh_);
      }
      const Tensor* dpooled = &dense->backward(dz_);
      if (dropping_) {
        dpooled_.resize(dpooled->rows(), dpooled->cols());
        dropout_backward<T>(dpooled_, *dpooled, pool_mask_);
        dpooled = &dpooled_;
      }
      // Only the pooled token of each sequence reaches the head.
      dhf_.resize(hf_->rows(), hf_->cols());
      scatter_rows<T>(dhf_, *dpooled, pool_rows_);
      dhf = &dhf_;
    }

    const Tensor* dx = &ln_f.backward(*dhf);
    const bool embeddings_train = wte.weight.trainable() || wpe.weight.trainable();
    dx = &block_runs_.backward(blocks, *dx, embeddings_train, forward_block(), dropout_rngs());
    if (!embeddings_train) return;
    const Tensor* demb = dx;
    if (dropping_) {
      demb_.resize(dx->rows(), dx->cols());
      dropout_backward<T>(demb_, *dx, emb_mask_);
      demb = &demb_;
    }
    wte.backward(*demb);
    wpe.backward(*demb);
  }

  const Tensor& logits() const {
    SORA_CHECK(logits_ != nullptr, "Transformer::logits called before forward");
    return *logits_;
  }
  T loss() const { return loss_; }

  // Argmax over each row of the last logits (class per sequence, or next token per token).
  std::vector<int> predictions() const {
    const auto& z = Backend::to_host(logits());  // a copy only on a device backend
    std::vector<int> out_ids(static_cast<std::size_t>(z.rows()));
    for (Index i = 0; i < z.rows(); ++i) {
      Index best = 0;
      z.row(i).maxCoeff(&best);
      out_ids[static_cast<std::size_t>(i)] = static_cast<int>(best);
    }
    return out_ids;
  }

 private:
  // One block's forward as the block runs call it, and the generators they save.
  auto forward_block() {
    return [this](Block<T, Backend>& block, const Tensor& x) -> const Tensor& {
      return block.forward(x, B_, T_, key_mask_, dropout_rng_);
    };
  }
  auto dropout_rngs() {
    return [this](auto&& fn) { visit_dropout_rngs(*this, fn); };
  }

  static void set_layernorm_trainable(nn::LayerNorm<T, Backend>& ln, bool on) {
    ln.weight.set_trainable(on);
    ln.bias.set_trainable(on);
  }
  static std::string join_patterns(const std::vector<std::string>& patterns) {
    std::string s = "[";
    for (std::size_t i = 0; i < patterns.size(); ++i) s += (i ? ", " : "") + patterns[i];
    return s + "]";
  }

  TransformerConfig config_;
  Rng dropout_rng_;
  BlockCheckpoints<T, Backend> block_runs_;  // the blocks' forward and backward
  bool training_ = true;
  bool dropping_ = false;
  Index B_ = 0, T_ = 0;
  Matrix<T> key_mask_host_;          // (B, T) the batch's mask, staged on the host
  Tensor key_mask_;                  // (B, T) or empty
  Tensor emb_, emb_mask_, demb_;     // (N, C)
  const Tensor* hf_ = nullptr;       // (N, C) final LayerNorm output
  Tensor dhf_;                       // (N, C)
  Tensor logits_buf_;                // (N, V) tied LM head
  const Tensor* logits_ = nullptr;   // (N, V) or (B, K)
  Tensor probs_, dlogits_, target_;  // like the logits
  Matrix<T> target_host_;            // (B, K) regression targets, staged on the host
  typename Backend::Indices labels_;
  T loss_ = T(0);
  std::vector<int> pool_rows_host_;      // (B) row of h each sequence pools
  typename Backend::Indices pool_rows_;  // (B) the same, where the ops read it
  Tensor pooled_, pool_mask_, tanh_, head_in_, head_mask_, dz_, dpooled_;  // (B, C)
};

}  // namespace sora::model
