// A tour of sora in one program (README, "A short tour"): build a small transformer, put SoRA
// adapters on it, fine-tune it with the gate's proximal step, prune the dead ranks, check that
// the pruned model predicts what the gated one did, and export the adapter in PEFT's format.
// CTest runs it, so the README's code keeps compiling and keeps telling the truth.

#include <cstdio>
#include <filesystem>
#include <sora/io.hpp>
#include <sora/sora.hpp>

using namespace sora;

int main(int, char** argv) {
  // Every core (SORA_NUM_THREADS overrides), idle threads sleeping rather than spinning. A model
  // this small does microseconds of work per matrix product: the threading policy keeps such
  // regions on one thread by itself (core/threading.hpp).
  use_passive_wait(argv);
  set_num_threads(0);

  // 1. A bidirectional classifier: 2 layers of width 32 over a byte vocabulary.
  model::TransformerConfig config;
  config.width = 32;
  config.heads = 4;
  config.layers = 2;
  config.max_len = 16;
  config.causal = false;
  config.dropout = 0.0;
  config.head = model::Head::classification;
  config.seed = 7;
  model::Transformer<float> net(config);

  // 2. SoRA on q, k, v, o and both MLP matrices (PEFT's suffix matching), rank 8.
  model::PeftConfig peft;
  peft.method = model::Method::sora;
  peft.rank = 8;
  peft.alpha = 16.0;
  net.apply_peft(peft);

  // 3. A toy task: is byte 'x' anywhere in the sequence?
  Rng rng(1);
  model::Batch batch;
  batch.batch = 32;
  batch.seq = 12;
  for (Index b = 0; b < batch.batch; ++b) {
    const bool has_x = b % 2 == 0;
    for (Index t = 0; t < batch.seq; ++t) batch.tokens.push_back('a' + int(rng.below(20)));
    if (has_x) batch.tokens[std::size_t(b * batch.seq + Index(rng.below(12)))] = 'x';
    batch.labels.push_back(has_x ? 1 : 0);
  }

  // 4. AdamW for the weights, SparseAdamW (AdamW step, then soft threshold at xi) for the
  //    gates; clipping, learning-rate schedule and the loop come from train::fit.
  optim::FineTuneOptions options;
  options.lr = 1e-2;
  options.xi = 2e-2;
  auto optimizer = optim::FineTuneOptimizer<float>::for_model(net, options);
  train::TrainerOptions loop;
  loop.max_steps = 150;
  loop.max_grad_norm = 1.0;
  const auto result = train::fit<model::Transformer<float>>(
      net, optimizer, [&](long) -> const model::Batch& { return batch; }, {}, loop);

  net.eval();
  net.forward(batch);
  const Matrix<float> gated_logits = net.logits();
  const auto before = prune::count_parameters(net);

  // 5. Prune: drop ranks whose gate is exactly 0, fold the gate into B.
  Index kept = 0;
  net.visit_linears(
      [&](const std::string&, nn::AdaptedLinear<float>& layer) { kept += prune::prune(layer); });
  net.forward(batch);
  const float drift = (net.logits() - gated_logits).cwiseAbs().maxCoeff();
  const auto after = prune::count_parameters(net);

  // 6. Export what is left as a PEFT LoRA adapter.
  const auto folder = std::filesystem::temp_directory_path() / "sora-tour-adapter";
  io::export_peft_adapter(net, folder);

  std::printf("loss %.3f -> %.3f over %ld steps\n", result.losses.front(), result.losses.back(),
              result.steps);
  std::printf("adapter ranks kept: %ld of %d; trainable %ld, after pruning %ld\n", long(kept),
              12 * 8, long(before.trainable), long(after.after_pruning));
  std::printf("largest logit change from pruning: %.2e\n", double(drift));
  std::printf("PEFT adapter written to %s\n", folder.c_str());
  // The program is also a test: training must have learnt, some ranks must have died, and
  // pruning must not have changed the predictions.
  const bool ok =
      result.losses.back() < 0.5 * result.losses.front() && kept < 12 * 8 && drift < 1e-4f;
  return ok ? 0 : 1;
}
