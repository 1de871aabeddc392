// A model of one's own (README, "Your own model"): a classifier assembled from nn:: layers,
// fine-tuned with a SoRA adapter through train::fit, checkpointed and restored, pruned, and
// exported as a PEFT adapter with its trained head. CTest runs it; it checks what it claims and
// exits non-zero when a claim fails.
//
// The model follows the protocol of sora/core/concepts.hpp: Scalar, Batch, forward(batch) ->
// loss, backward(), train(bool), visit_params(fn), Linear + visit_linears(fn) and dropout_rng().
// Each layer sets its parameters' roles (embedding, norm, weight, adapter, gate, head), so the
// optimizer finds the gates and the export finds the head whatever the parameters are called.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sora/io.hpp>
#include <sora/sora.hpp>
#include <string>
#include <vector>

using namespace sora;

namespace {

// Sizes: B sequences of T tokens, N = B T, V vocabulary, C channels, H hidden, K classes.
//   e      = embed[tokens]               (N, C)  a frozen table (the "pre-trained" part)
//   p      = mean_pool(e) per sequence   (B, C)
//   n      = ln(p)                       (B, C)
//   z      = hidden(n)                   (B, H)  a frozen linear layer carrying the adapter
//   a      = gelu(z)                     (B, H)
//   logits = head(a)                     (B, K)  trained whole (PEFT's modules_to_save)
class BagClassifier : public ParameterLists<BagClassifier> {
 public:
  using Scalar = float;
  using Batch = model::Batch;
  using Linear = nn::AdaptedLinear<float>;
  using Tensor = Matrix<float>;

  nn::Embedding<float> embed;
  nn::LayerNorm<float> ln;
  Linear hidden;
  Linear head;

  BagClassifier(Index V, Index C, Index H, Index K, std::uint64_t seed)
      : embed(V, C, /*trainable=*/false, seed, /*stddev=*/1.0),
        ln(C),
        hidden(C, H, true, seed + 1),
        head(H, K, true, seed + 2),
        dropout_rng_(seed, 2) {
    head.mark_as_head();  // its parameters take the role `head`
  }
  // The layers keep pointers to each other's buffers between forward and backward.
  BagClassifier(const BagClassifier&) = delete;
  BagClassifier& operator=(const BagClassifier&) = delete;

  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    embed.visit_params(nn::join_name(prefix, "embed"), fn);
    ln.visit_params(nn::join_name(prefix, "ln"), fn);
    hidden.visit_params(nn::join_name(prefix, "hidden"), fn);
    head.visit_params(nn::join_name(prefix, "head"), fn);
  }
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_linears(Fn&& fn) {
    fn(std::string("hidden"), hidden);
    fn(std::string("head"), head);
  }

  void train(bool on) {
    hidden.train(on);
    head.train(on);
  }
  // No dropout of its own; the stream exists so that a checkpoint restores a run exactly.
  Rng& dropout_rng() { return dropout_rng_; }

  const Tensor& forward_logits(const Batch& batch) {
    batch.validate(batch.seq);
    batch_ = &batch;
    const Tensor& e = embed.forward(batch.tokens);
    pooled_.resize(batch.batch, embed.channels());
    ops::mean_pool_forward<float>(pooled_, e, batch.seq, batch.mask);
    const Tensor& z = hidden.forward(ln.forward(pooled_));
    act_.resize(z.rows(), z.cols());
    ops::gelu_forward<float>(act_, z);
    z_ = &z;
    return head.forward(act_);
  }

  float forward(const Batch& batch) {
    const Tensor& logits = forward_logits(batch);
    probs_.resize(logits.rows(), logits.cols());
    return ops::cross_entropy_forward<float>(probs_, logits, batch.labels);
  }

  // Gradients of the last loss, accumulated into the trainable parameters.
  void backward() {
    dlogits_.resize(probs_.rows(), probs_.cols());
    ops::cross_entropy_backward<float>(dlogits_, probs_, batch_->labels);
    const Tensor& da = head.backward(dlogits_);
    dz_.resize(da.rows(), da.cols());
    ops::gelu_backward<float>(dz_, da, *z_);
    // The pooled input's gradient only when the embedding trains (here it is frozen).
    const bool embedding_trains = embed.weight.trainable();
    const Tensor& dpooled = ln.backward(hidden.backward(dz_), embedding_trains);
    if (!embedding_trains) return;
    de_.resize(static_cast<Index>(batch_->tokens.size()), embed.channels());
    ops::mean_pool_backward<float>(de_, dpooled, batch_->seq, batch_->mask);
    embed.backward(de_);
  }

 private:
  Rng dropout_rng_;
  const Batch* batch_ = nullptr;
  const Tensor* z_ = nullptr;  // (B, H) hidden's output, which GELU's backward reads
  Tensor pooled_;              // (B, C)
  Tensor act_, dz_;            // (B, H)
  Tensor probs_, dlogits_;     // (B, K)
  Tensor de_;                  // (N, C)
};

static_assert(Model<BagClassifier> && Checkpointable<BagClassifier>);

// A toy task: does token 1 occur in the sequence? Sequences are padded to T with token 0.
model::Batch make_batch(Index B, Index T, Index V, std::uint64_t seed) {
  Rng rng(seed);
  model::Batch batch;
  batch.batch = B;
  batch.seq = T;
  for (Index b = 0; b < B; ++b) {
    const Index length = T / 2 + static_cast<Index>(rng.below(static_cast<std::uint64_t>(T / 2)));
    const bool positive = b % 2 == 0;
    for (Index t = 0; t < T; ++t) {
      const bool real = t < length;
      batch.tokens.push_back(
          real ? 2 + static_cast<int>(rng.below(static_cast<std::uint64_t>(V - 2))) : 0);
      batch.mask.push_back(real ? 1.0f : 0.0f);
    }
    if (positive)
      batch
          .tokens[static_cast<std::size_t>(b * T) + rng.below(static_cast<std::uint64_t>(length))] =
          1;
    batch.labels.push_back(positive ? 1 : 0);
  }
  return batch;
}

double accuracy(BagClassifier& net, const model::Batch& batch) {
  net.train(false);
  const Matrix<float>& logits = net.forward_logits(batch);
  Index right = 0;
  for (Index b = 0; b < batch.batch; ++b) {
    Index best = 0;
    logits.row(b).maxCoeff(&best);
    right += best == batch.labels[static_cast<std::size_t>(b)];
  }
  net.train(true);
  return static_cast<double>(right) / static_cast<double>(batch.batch);
}

bool check(bool ok, const char* claim) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", claim);
  return ok;
}

}  // namespace

int main() {
  set_num_threads(1);  // tiny matrices: a parallel region would cost more than the work
  const Index V = 24, C = 16, H = 32, K = 2, T = 12;

  // 1. The model: frozen embedding and hidden layer, a SoRA adapter on hidden, the LayerNorm
  //    and the head trained whole.
  BagClassifier net(V, C, H, K, 11);
  nn::AdapterConfig adapter;
  adapter.kind = nn::AdapterKind::sora;
  adapter.rank = 8;
  adapter.alpha = 8.0;
  adapter.seed = 3;
  net.hidden.attach(adapter);

  std::vector<model::Batch> train_batches;
  for (std::uint64_t k = 0; k < 16; ++k) train_batches.push_back(make_batch(32, T, V, 100 + k));
  const model::Batch valid_batch = make_batch(128, T, V, 2);

  // 2. Fine-tune through train::fit: AdamW on A, B, the LayerNorm and the head, SparseAdamW
  //    (AdamW step, then soft threshold at xi) on the gate, found by its role.
  optim::FineTuneOptions options;
  options.lr = 2e-2;
  options.xi = 1e-2;
  auto optimizer = optim::FineTuneOptimizer<float>::for_model(net, options);
  train::TrainerOptions loop;
  loop.max_steps = 300;
  loop.max_grad_norm = 1.0;
  const train::TrainResult result = train::fit<BagClassifier>(
      net, optimizer,
      [&](long step) -> const model::Batch& {
        return train_batches[static_cast<std::size_t>(step) % train_batches.size()];
      },
      {}, loop);
  const double acc = accuracy(net, valid_batch);
  std::printf("loss %.3f -> %.3f over %ld steps, validation accuracy %.2f\n", result.losses.front(),
              result.losses.back(), result.steps, acc);
  bool ok = check(result.losses.back() < 0.5 * result.losses.front(), "the loss halved");
  ok &= check(acc >= 0.8, "validation accuracy >= 0.8 (chance: 0.5)");
  ok &= check(optimizer.gate_optimizer().params().size() == 1, "one gate found by its role");

  // 3. Checkpoint, and restore into a second model built the same way: same logits, bit for bit.
  const auto dir = std::filesystem::temp_directory_path() / "sora-custom-model";
  std::filesystem::create_directories(dir);
  io::TrainingState state;
  state.step = result.steps;
  io::save_checkpoint(dir / "run.safetensors", net, optimizer, state);
  BagClassifier restored(V, C, H, K, 11);
  restored.hidden.attach(adapter);
  auto restored_optimizer = optim::FineTuneOptimizer<float>::for_model(restored, options);
  const io::TrainingState back =
      io::load_checkpoint(dir / "run.safetensors", restored, restored_optimizer);
  net.train(false);
  restored.train(false);
  const Matrix<float> logits = net.forward_logits(valid_batch);
  ok &= check(
      back.step == result.steps && restored.forward_logits(valid_batch).cwiseEqual(logits).all(),
      "the restored model computes the same logits, bit for bit");

  // 4. Prune: ranks whose gate is exactly 0 go, the gate is folded into B.
  const prune::ParamCounts before = prune::count_parameters(net);
  Index kept = 0;
  net.visit_linears([&](const std::string&, BagClassifier::Linear& lin) {
    if (lin.adapter) kept += prune::prune(lin);
  });
  const float drift = (net.forward_logits(valid_batch) - logits).cwiseAbs().maxCoeff();
  std::printf("ranks kept %ld of %ld; trainable %ld, after pruning %ld; logit change %.1e\n",
              static_cast<long>(kept), static_cast<long>(adapter.rank),
              static_cast<long>(before.trainable), static_cast<long>(before.after_pruning),
              static_cast<double>(drift));
  ok &= check(kept > 0 && kept < adapter.rank, "xi zeroed some gates, not all");
  ok &= check(drift < 1e-5f, "pruning left the logits unchanged");

  // 5. Export for PEFT: the adapter, and the head and LayerNorm it was trained with.
  io::PeftExportOptions peft;
  peft.modules_to_save = io::trained_modules(net);
  const io::PeftExportReport report = io::export_peft_adapter(net, dir / "adapter", peft);
  const io::SafetensorsFile file =
      io::SafetensorsFile::open(dir / "adapter" / io::kPeftWeightsFile);
  std::vector<std::string> names;
  for (const io::TensorInfo& t : file.tensors()) names.push_back(t.name);
  auto has = [&](const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  ok &= check(peft.modules_to_save == std::vector<std::string>{"ln", "head"},
              "modules_to_save: the trained LayerNorm and head, found by role");
  ok &= check(report.max_rank == kept && has("base_model.model.hidden.lora_A.weight") &&
                  has("base_model.model.head.weight") && has("base_model.model.ln.bias"),
              "the PEFT adapter holds the pruned adapter, the head and the LayerNorm");
  std::printf("PEFT adapter written to %s\n", (dir / "adapter").c_str());
  return ok ? 0 : 1;
}
