// model/, optim/ (SGD, parameter groups) and train/ (the loop): whole-model gradients against
// central differences for every method, adapter injection by name, frozen weights without
// gradient or optimizer state, buffer reuse, and training on a synthetic task (loss bound,
// gates zeroed by ξ, pruned model predicting exactly what the gated one did).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sora/model.hpp>
#include <sora/optim/param_groups.hpp>
#include <sora/optim/sgd.hpp>
#include <sora/prune/prune.hpp>
#include <sora/train/trainer.hpp>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"

using namespace sora;
using namespace sora::testing;
using model::Method;

namespace {

model::TransformerConfig tiny_config(bool causal, model::Head head, double dropout = 0.0) {
  model::TransformerConfig c;
  c.vocab_size = 11;
  c.width = 16;
  c.heads = 2;
  c.layers = 2;
  c.ffn_width = 24;
  c.max_len = 8;
  c.causal = causal;
  c.dropout = dropout;
  c.head = head;
  c.num_labels = head == model::Head::regression ? 2 : 3;
  c.seed = 5;
  return c;
}

// Two sequences of 5 tokens; the second is right-padded after 3 tokens.
model::Batch tiny_batch(const model::TransformerConfig& c) {
  model::Batch b;
  b.batch = 2;
  b.seq = 5;
  b.tokens = {1, 4, 7, 2, 9, 3, 3, 10, 0, 0};
  b.mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  if (c.head == model::Head::lm) {
    model::set_next_token_labels(b);
  } else if (c.head == model::Head::classification) {
    b.labels = {2, 0};
  } else {
    b.values = {0.5, -1.0, 1.5, 0.25};
  }
  return b;
}

model::PeftConfig peft_for(Method method, double adapter_dropout = 0.0) {
  model::PeftConfig p;
  p.method = method;
  p.rank = 3;
  p.alpha = 6.0;
  p.dropout = adapter_dropout;
  p.seed = 17;
  return p;
}

// B = 0 at initialisation hides the gradients of A and of the gate; AdaLoRA's E = 0 hides
// A's and B's. Random values make every adapter gradient non-trivial.
template <class T>
void randomize_adapters(model::Transformer<T>& m, std::uint64_t seed) {
  Rng rng(seed);
  m.visit_linears([&](const std::string&, nn::AdaptedLinear<T>& lin) {
    if (!lin.adapter) return;
    rng.fill_normal(lin.adapter->lora_B.value, 0.0, 0.3);
    if (lin.adapter->gated()) rng.fill_normal(lin.adapter->gate.value, 0.0, 1.0);
  });
}

// Every trainable parameter's gradient against central differences of the loss; frozen
// parameters must own no gradient buffer. With dropout, every forward redraws the same masks.
void check_model_gradients(const model::TransformerConfig& config, Method method,
                           double adapter_dropout = 0.0) {
  model::Transformer<double> m(config);
  m.apply_peft(peft_for(method, adapter_dropout));
  randomize_adapters(m, 99);
  const model::Batch batch = tiny_batch(config);
  auto loss = [&] {
    m.reseed_dropout(1234);
    return m.forward(batch);
  };
  m.zero_grad();
  loss();
  m.backward();
  std::vector<GradTarget> targets;
  Index frozen = 0;
  m.visit_params([&](Param<double>& p) {
    if (p.trainable()) {
      targets.push_back({p.name, &p.value, p.gradient()});
    } else {
      ++frozen;
      CHECK(p.grad_bytes() == 0);
    }
  });
  CHECK(!targets.empty());
  CHECK((method == Method::full) == (frozen == 0));
  GradcheckOptions options;
  options.step = 1e-5;
  options.max_entries = 24;
  // Double precision, smooth everywhere (no kinks: GELU, tanh, softmax, LayerNorm). With an
  // O(1) loss, h = 1e-5 balances rounding (about 1e-16 x the loss's many summed terms, / h)
  // against truncation (h^2): measured worst about 1e-10 absolute, i.e. ~1e-6 relative on the
  // smallest gradients above the 1e-4 floor. A wrong backward gives errors of order 1.
  SORA_CHECK_GRADS(gradcheck(loss, targets, options), 1e-5);
}

}  // namespace

TEST_CASE("transformer gradients, causal LM head (tied), every method") {
  const auto config = tiny_config(true, model::Head::lm);
  for (Method method : {Method::full, Method::lora, Method::sora, Method::adalora}) {
    CAPTURE(std::string(model::method_name(method)));
    check_model_gradients(config, method);
  }
}

TEST_CASE("transformer gradients, bidirectional classification head, every method") {
  const auto config = tiny_config(false, model::Head::classification);
  for (Method method : {Method::full, Method::lora, Method::sora, Method::adalora}) {
    CAPTURE(std::string(model::method_name(method)));
    check_model_gradients(config, method);
  }
}

TEST_CASE("transformer gradients, regression head, untied LM head, exact GELU, dropout") {
  auto reg = tiny_config(false, model::Head::regression, 0.2);
  reg.gelu = ops::Gelu::exact;
  for (Method method : {Method::full, Method::sora}) {
    CAPTURE(std::string(model::method_name(method)));
    check_model_gradients(reg, method, 0.3);
  }
  auto lm = tiny_config(true, model::Head::lm, 0.1);
  lm.tied_lm_head = false;
  for (Method method : {Method::full, Method::lora}) {
    CAPTURE(std::string(model::method_name(method)));
    check_model_gradients(lm, method, 0.1);
  }
}

TEST_CASE("parameter names are stable dotted paths") {
  model::Transformer<float> m(tiny_config(true, model::Head::classification));
  m.apply_peft(peft_for(Method::sora));
  std::set<std::string> names;
  m.visit_params([&](Param<float>& p) { names.insert(p.name); });
  for (const char* expected :
       {"wte.weight", "wpe.weight", "blocks.0.ln1.weight", "blocks.1.attn.q.weight",
        "blocks.1.attn.q.lora_A", "blocks.1.attn.o.lora_B", "blocks.0.mlp.fc.lora_gate",
        "blocks.1.mlp.proj.bias", "ln_f.bias", "head.dense.weight", "head.out.bias"}) {
    CAPTURE(expected);
    CHECK(names.count(expected) == 1);
  }
  CHECK(names.count("head.dense.lora_A") == 0);  // heads are not default targets
}

// The model protocol (core/concepts.hpp): what the entry points check.
static_assert(sora::Model<model::Transformer<float>>);
static_assert(sora::Checkpointable<model::Transformer<double>>);
static_assert(sora::Trainable<nn::SoraLinear<double>>);
static_assert(sora::Trainable<model::Block<float>>);
static_assert(!sora::Model<nn::SoraLinear<double>>);  // no Batch, forward(batch) -> loss
static_assert(!sora::HasAdapters<nn::LayerNorm<float>>);
static_assert(!sora::Trainable<std::vector<float>>);

TEST_CASE("the Transformer's layers give every parameter its role") {
  model::Transformer<float> m(tiny_config(true, model::Head::classification));
  m.apply_peft(peft_for(Method::sora));
  std::map<std::string, ParamRole> roles;
  m.visit_params([&](Param<float>& p) { roles[p.name] = p.role; });
  CHECK(roles.at("wte.weight") == ParamRole::embedding);
  CHECK(roles.at("wpe.weight") == ParamRole::embedding);
  CHECK(roles.at("blocks.0.ln1.weight") == ParamRole::norm);
  CHECK(roles.at("ln_f.bias") == ParamRole::norm);
  CHECK(roles.at("blocks.1.attn.q.weight") == ParamRole::weight);
  CHECK(roles.at("blocks.1.mlp.proj.bias") == ParamRole::bias);
  CHECK(roles.at("blocks.1.attn.q.lora_A") == ParamRole::adapter_A);
  CHECK(roles.at("blocks.1.attn.o.lora_B") == ParamRole::adapter_B);
  CHECK(roles.at("blocks.0.mlp.fc.lora_gate") == ParamRole::gate);
  CHECK(roles.at("head.dense.weight") == ParamRole::head);
  CHECK(roles.at("head.out.bias") == ParamRole::head);
  // Visited under a prefix, the names change and the roles do not.
  Index gates = 0;
  m.visit_params("model", [&](Param<float>& p) {
    CHECK(p.name.starts_with("model."));
    gates += p.role == ParamRole::gate;
  });
  CHECK(gates == 2 * 6);
  CHECK(optim::group_parameters<float>(m).gates.size() == 2 * 6);
}

TEST_CASE("parameters, trainable_parameters and zero_grad are one set of free functions") {
  model::Transformer<double> m(tiny_config(false, model::Head::classification));
  m.apply_peft(peft_for(Method::lora));
  const auto all = sora::parameters(m);
  const auto trained = sora::trainable_parameters(m);
  Index visited = 0, trainable = 0;
  m.visit_params([&](Param<double>& p) {
    CHECK(all[static_cast<std::size_t>(visited)] == &p);
    ++visited;
    trainable += p.trainable();
  });
  CHECK(static_cast<Index>(all.size()) == visited);
  CHECK(static_cast<Index>(trained.size()) == trainable);
  CHECK(trainable < visited);
  CHECK(m.trainable_parameters() == trained);  // the members are the same functions
  for (Param<double>* p : trained) p->gradient().setConstant(1.0);
  m.zero_grad();
  for (Param<double>* p : trained) CHECK(p->gradient().cwiseAbs().maxCoeff() == 0.0);
  // On a layer too: its one-argument visitor names parameters locally.
  nn::SoraLinear<double> layer(4, 3);
  std::vector<std::string> names;
  for (Param<double>* p : sora::parameters(layer)) names.push_back(p->name);
  CHECK(names == std::vector<std::string>{"weight", "bias", "lora_A", "lora_B", "lora_gate"});
  CHECK(sora::trainable_parameters(layer).size() == 3);
}

TEST_CASE("target patterns follow PEFT: exact or suffix on a dot boundary") {
  CHECK(model::matches_target("blocks.0.attn.q", "q"));
  CHECK(model::matches_target("blocks.0.attn.q", "attn.q"));
  CHECK(model::matches_target("blocks.0.attn.q", "blocks.0.attn.q"));
  CHECK_FALSE(model::matches_target("blocks.0.attn.q", "0.attn"));
  CHECK_FALSE(model::matches_target("blocks.0.mlp.o_proj", "proj"));
  CHECK_FALSE(model::matches_target("blocks.0.attn.qq", "q"));
  CHECK_FALSE(model::matches_target("q", ""));

  model::Transformer<float> m(tiny_config(true, model::Head::lm));
  auto peft = peft_for(Method::lora);
  peft.target_modules = {"q", "blocks.1.mlp.fc"};
  CHECK(m.apply_peft(peft) == 3);
  std::vector<std::string> adapted;
  m.visit_linears([&](const std::string& name, nn::AdaptedLinear<float>& lin) {
    if (lin.adapter) adapted.push_back(name);
  });
  CHECK(adapted ==
        std::vector<std::string>{"blocks.0.attn.q", "blocks.1.attn.q", "blocks.1.mlp.fc"});
  peft.target_modules = {"query"};
  CHECK_THROWS_AS(m.apply_peft(peft), Error);
}

TEST_CASE("frozen weights own no gradient buffer, trainable ones do") {
  model::Transformer<float> m(tiny_config(false, model::Head::classification));
  m.apply_peft(peft_for(Method::sora));
  m.visit_params([&](Param<float>& p) {
    CAPTURE(p.name);
    const std::string kind = model::module_kind(p);
    const bool expect = kind == "adapters" || kind == "layernorm" || kind == "head";
    CHECK(p.trainable() == expect);
    CHECK((p.grad_bytes() > 0) == expect);
  });
  // Switching method re-derives everything: full trains all, and no adapters remain.
  m.apply_peft(peft_for(Method::full));
  m.visit_params([&](Param<float>& p) {
    CAPTURE(p.name);
    CHECK(p.trainable());
    CHECK(model::module_kind(p) != "adapters");
  });
}

TEST_CASE("summary counts trainable and total parameters per module kind") {
  const auto config = tiny_config(true, model::Head::lm);
  model::Transformer<float> m(config);
  m.apply_peft(peft_for(Method::lora));
  const auto rows = m.summary();
  auto row = [&](const std::string& kind) {
    for (const auto& r : rows)
      if (r.kind == kind) return r;
    FAIL("no row ", kind);
    return model::SummaryRow{};
  };
  const Index C = 16, F = 24, R = 3, L = 2;
  CHECK(row("adapters").trainable == L * (4 * R * (C + C) + R * (C + F) + R * (F + C)));
  CHECK(row("adapters").total == row("adapters").trainable);
  CHECK(row("attention").trainable == 0);
  CHECK(row("attention").total == L * 4 * (C * C + C));
  CHECK(row("mlp").total == L * (C * F + F + F * C + C));
  CHECK(row("layernorm").trainable == (2 * L + 1) * 2 * C);
  CHECK(row("embeddings").trainable == 0);
  CHECK(row("embeddings").total == (11 + 8) * C);
  CHECK(rows.back().kind == "total");
  CHECK(m.summary_string().find("adapters") != std::string::npos);
}

TEST_CASE("gradient checkpointing: gradients equal the plain backward, one block held at a time") {
  // Three steps with model and adapter dropout and an SGD update between them: losses and
  // gradients equal (not close) to the plain model's, for every method; a forward keeps only the
  // last block's activations, a backward none.
  for (const Method method : {Method::full, Method::lora, Method::sora, Method::adalora}) {
    INFO(model::method_name(method));
    model::TransformerConfig config = tiny_config(false, model::Head::classification, 0.2);
    config.layers = 3;
    model::Transformer<double> plain(config), checkpointed(config);
    for (auto* m : {&plain, &checkpointed}) {
      if (method != Method::full) m->apply_peft(peft_for(method, 0.2));
      randomize_adapters(*m, 99);
    }
    checkpointed.set_grad_checkpoint(true);
    const model::Batch batch = tiny_batch(config);
    for (int step = 0; step < 3; ++step) {
      INFO("step " << step);
      plain.zero_grad();
      checkpointed.zero_grad();
      const double loss = plain.forward(batch);
      CHECK(checkpointed.forward(batch) == loss);
      CHECK(checkpointed.blocks[0].output().size() == 0);
      CHECK(checkpointed.blocks[1].output().size() == 0);
      CHECK(checkpointed.blocks[2].output().size() > 0);
      plain.backward();
      checkpointed.backward();
      for (const auto& block : checkpointed.blocks) CHECK(block.output().size() == 0);
      const auto a = plain.trainable_parameters(), b = checkpointed.trainable_parameters();
      REQUIRE(a.size() == b.size());
      const GradientGap gap = gradient_gap_then_step(a, b, 0.05);
      CHECK(gap.largest > 0.0);
      CHECK(gap.differs == 0.0);
    }
    // Evaluation through the checkpointed runs predicts what the plain model does.
    plain.eval();
    checkpointed.eval();
    CHECK(checkpointed.forward(batch) == plain.forward(batch));
  }
}

TEST_CASE("a training step reuses its buffers for a batch shape") {
  const auto config = tiny_config(true, model::Head::lm, 0.1);
  model::Transformer<float> m(config);
  m.apply_peft(peft_for(Method::sora, 0.1));
  const model::Batch batch = tiny_batch(config);
  m.forward(batch);
  m.backward();
  const float* logits = m.logits().data();
  const float* block_out = m.blocks[1].output().data();
  for (int step = 0; step < 3; ++step) {
    m.forward(batch);
    m.backward();
    CHECK(m.logits().data() == logits);
    CHECK(m.blocks[1].output().data() == block_out);
  }
}

// ---- optimizers and the training loop ------------------------------------------------------

namespace {

// A task that needs attention: position 0 holds a [CLS] token (0); label 1 when the needle
// token (1) occurs anywhere among the other positions, 0 otherwise. Four batches of 16.
std::vector<model::Batch> needle_task(Index T, Index V, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<model::Batch> batches(4);
  for (auto& b : batches) {
    b.batch = 16;
    b.seq = T;
    for (Index s = 0; s < b.batch; ++s) {
      const int label = static_cast<int>(s % 2);
      b.tokens.push_back(0);
      for (Index t = 1; t < T; ++t) b.tokens.push_back(2 + static_cast<int>(rng.below(V - 2)));
      if (label == 1) b.tokens[s * T + 1 + rng.below(T - 1)] = 1;
      b.labels.push_back(label);
    }
  }
  return batches;
}

model::TransformerConfig needle_config() {
  model::TransformerConfig c;
  c.vocab_size = 16;
  c.width = 32;
  c.heads = 4;
  c.layers = 2;
  c.ffn_width = 64;
  c.max_len = 8;
  c.causal = false;
  c.dropout = 0.0;
  c.head = model::Head::classification;
  c.num_labels = 2;
  c.seed = 3;
  return c;
}

struct NeedleRun {
  train::TrainResult result;
  double final_loss = 0;  // mean loss over the four batches after training, eval mode
};

NeedleRun train_needle(model::Transformer<float>& m, Method method, long steps, double lr,
                       double xi = 0.0) {
  const auto batches = needle_task(8, 16, 11);
  auto peft = peft_for(method);
  peft.rank = 4;
  peft.alpha = 8.0;
  m.apply_peft(peft);
  optim::FineTuneOptions o;
  o.lr = lr;
  o.weight_decay = 0.0;
  o.xi = xi;
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, o);
  train::TrainerOptions t;
  t.max_steps = steps;
  t.max_grad_norm = 1.0;
  NeedleRun run;
  run.result = train::fit<model::Transformer<float>>(
      m, opt, [&](long step) -> const model::Batch& { return batches[step % 4]; }, {}, t);
  m.eval();
  for (const auto& b : batches) run.final_loss += m.forward(b) / 4.0;
  return run;
}

}  // namespace

TEST_CASE("every method learns the needle task below a loss bound") {
  // From a loss of 0.76 at step 0, every method passes 0.05 within 25 steps on this seed
  // (measured: full 16, LoRA 14, SoRA 14, AdaLoRA 24); the bound leaves room for 60.
  struct Case {
    Method method;
    double lr;
  };
  for (Case c : {Case{Method::full, 3e-3}, Case{Method::lora, 1e-2}, Case{Method::sora, 1e-2},
                 Case{Method::adalora, 1e-2}}) {
    CAPTURE(std::string(model::method_name(c.method)));
    model::Transformer<float> m(needle_config());
    const NeedleRun run = train_needle(m, c.method, 60, c.lr);
    CHECK(run.result.losses.front() > 0.5);
    CHECK(run.final_loss < 0.05);
  }
}

TEST_CASE("SoRA with xi > 0 zeroes gates, and the pruned model predicts what the gated one did") {
  model::Transformer<float> m(needle_config());
  // ξ = 0.02 per step shrinks every gate by 1.2 over 60 steps; gates start N(0, 1), so most
  // die unless the loss holds them up.
  const NeedleRun run = train_needle(m, Method::sora, 60, 1e-2, 0.02);
  CHECK(run.final_loss < 0.1);
  Index gates = 0, zeros = 0;
  m.visit_params([&](Param<float>& p) {
    if (!optim::is_sora_gate(p)) return;
    gates += p.size();
    zeros += (p.value.array() == 0.0f).count();
  });
  MESSAGE("zero gates: ", zeros, " of ", gates, ", loss ", run.final_loss);
  CHECK(zeros > gates / 4);
  CHECK(zeros < gates);

  const auto batches = needle_task(8, 16, 11);
  m.eval();
  std::vector<std::vector<int>> before;
  std::vector<MatrixF> logits_before;
  for (const auto& b : batches) {
    m.forward_logits(b);
    before.push_back(m.predictions());
    logits_before.push_back(m.logits());
  }
  Index kept = 0, still_adapted = 0;
  m.visit_linears([&](const std::string&, nn::AdaptedLinear<float>& lin) {
    kept += prune::prune(lin);
    if (lin.adapter) {
      ++still_adapted;
      CHECK_FALSE(lin.adapter->gated());
    }
  });
  CHECK(kept == gates - zeros);
  CHECK(still_adapted > 0);  // the gated check above ran on some module
  for (std::size_t i = 0; i < batches.size(); ++i) {
    m.forward_logits(batches[i]);
    CHECK(m.predictions() == before[i]);
    // Folding g into B changes only the rounding of s B diag(g) A x.
    CHECK((m.logits() - logits_before[i]).cwiseAbs().maxCoeff() <=
          1e-5f * std::max(1.0f, logits_before[i].cwiseAbs().maxCoeff()));
  }
}

TEST_CASE("after pruning, a stale optimizer refuses by name, a rebound one carries over") {
  model::Transformer<float> m(needle_config());
  auto peft = peft_for(Method::sora);
  peft.rank = 4;
  peft.alpha = 8.0;
  m.apply_peft(peft);
  optim::FineTuneOptions o;
  o.lr = 1e-2;
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, o);
  const auto batches = needle_task(8, 16, 11);
  auto step = [&](std::size_t i) {
    m.zero_grad();
    m.forward(batches[i % batches.size()]);
    m.backward();
    opt.step();
  };
  for (std::size_t i = 0; i < 5; ++i) step(i);
  const MatrixF ln_m = opt.state_for("ln_f.weight")->m;
  const MatrixF k_m = opt.state_for("blocks.0.attn.k.lora_A")->m;
  const std::size_t gate_tensors = opt.gate_optimizer().params().size();
  // Two ranks of one module die; pruning replaces that module's A and B with (2, in), (out, 2).
  nn::AdaptedLinear<float>& q = m.blocks[0].attn.q;
  q.adapter->gate.value(0, 0) = 0.0f;
  q.adapter->gate.value(0, 2) = 0.0f;
  CHECK(prune::prune(q) == 2);

  m.zero_grad();
  m.forward(batches[0]);
  m.backward();
  // The first stale parameter checked is the module's old gate (gates are checked first).
  CHECK_THROWS_WITH_AS(
      opt.step(), doctest::Contains("'blocks.0.attn.q.lora_gate' was frozen or replaced"), Error);

  CHECK_THROWS_WITH_AS(
      opt.adamw().check_all_fit("AdamW"),
      doctest::Contains(
          "'blocks.0.attn.q.lora_A' has shape (2, 32) but its optimizer state has (4, 32)"),
      Error);

  opt.rebind(m);
  CHECK(opt.adamw().step_count() == 5);  // the refused step changed nothing
  CHECK(opt.gate_optimizer().params().size() == gate_tensors - 1);  // q is ungated LoRA now
  CHECK(opt.state_for("ln_f.weight")->m == ln_m);
  CHECK(opt.state_for("blocks.0.attn.k.lora_A")->m == k_m);
  const optim::AdamState<float>* qa = opt.state_for("blocks.0.attn.q.lora_A");
  REQUIRE(qa != nullptr);
  CHECK(qa->m.rows() == 2);
  CHECK(qa->m.isZero(0.0));
  CHECK(opt.state_for("blocks.0.attn.q.lora_gate") == nullptr);
  for (std::size_t i = 0; i < 3; ++i) step(i);  // steps again
  CHECK_FALSE(opt.state_for("blocks.0.attn.q.lora_A")->m.isZero(0.0));
}

TEST_CASE("the optimizer keeps state for trainable parameters only") {
  model::Transformer<float> m(needle_config());
  m.apply_peft(peft_for(Method::sora));
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, optim::FineTuneOptions{});
  std::size_t trainable_bytes = 0;
  m.visit_params([&](Param<float>& p) {
    CAPTURE(p.name);
    const auto* state = opt.state_for(p.name);
    CHECK((state != nullptr) == p.trainable());
    CHECK((p.grad_bytes() > 0) == p.trainable());
    if (p.trainable()) trainable_bytes += static_cast<std::size_t>(p.size()) * sizeof(float);
  });
  CHECK(opt.state_bytes() == 2 * trainable_bytes);  // two moments per trainable scalar
  // Gates go to SparseAdamW; matrices decay, vectors do not.
  const auto groups = optim::group_parameters<float>(m);
  CHECK(groups.gates.size() == 2 * 6);
  for (auto* p : groups.gates) CHECK(p->name.ends_with(".lora_gate"));
  for (auto* p : groups.no_decay) CHECK(p->is_vector);
  for (auto* p : groups.decay) CHECK_FALSE(p->is_vector);
  CHECK(opt.adamw().state_for("blocks.0.attn.q.lora_A")->weight_decay ==
        doctest::Approx(0.1).epsilon(1e-12));
  CHECK(opt.adamw().state_for("blocks.0.ln1.weight")->weight_decay == 0.0);
  CHECK(opt.adamw().state_for("head.out.bias")->weight_decay == 0.0);
}

TEST_CASE("SGD with momentum follows torch.optim.SGD") {
  // Three steps on one parameter with constant gradient 1 and p0 = 1, lr 0.1, momentum 0.9,
  // weight decay 0.01, done by hand in the torch formulas.
  for (bool nesterov : {false, true}) {
    CAPTURE(nesterov);
    Param<double> p("w", MatrixD::Constant(1, 2, 1.0), true);
    optim::SgdOptions o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.weight_decay = 0.01;
    o.nesterov = nesterov;
    optim::SGD<double> sgd({&p}, o);
    double w = 1.0, buf = 0.0;
    for (int step = 0; step < 3; ++step) {
      p.gradient().setConstant(1.0);
      sgd.step();
      const double d = 1.0 + 0.01 * w;
      buf = step == 0 ? d : 0.9 * buf + d;
      w -= 0.1 * (nesterov ? d + 0.9 * buf : buf);
      CHECK(p.value(0, 0) == doctest::Approx(w).epsilon(1e-14));
    }
    CHECK(sgd.momentum_buffer("w") != nullptr);
  }
  Param<float> frozen("f", MatrixF::Ones(2, 2), false);
  optim::SgdOptions o;
  o.momentum = 0.5;
  optim::SGD<float> sgd({&frozen}, o);
  CHECK(sgd.state_bytes() == 0);
  o.nesterov = true;
  o.dampening = 0.5;
  CHECK_THROWS_AS(optim::SGD<float>({&frozen}, o), Error);
}

TEST_CASE("fit stops early on the best validation metric and restores it") {
  model::Transformer<float> m(needle_config());
  m.apply_peft(peft_for(Method::lora));
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, optim::FineTuneOptions{});
  const auto batches = needle_task(8, 16, 11);
  // Scripted validation metrics: the best (0.9) comes at the second evaluation, then two
  // evaluations without improvement exhaust a patience of 2.
  const std::vector<double> metrics = {0.5, 0.9, 0.8, 0.85, 0.99};
  std::size_t calls = 0;
  MatrixF at_best;
  train::TrainerOptions t;
  t.max_steps = 100;
  t.eval_every = 2;
  t.patience = 2;
  const auto result = train::fit<model::Transformer<float>>(
      m, opt, [&](long step) -> const model::Batch& { return batches[step % 4]; },
      [&] {
        CHECK_FALSE(m.training());
        if (calls == 1) at_best = m.blocks[0].attn.q.adapter->lora_B.value;
        return metrics[calls++];
      },
      t);
  CHECK(result.stopped_early);
  CHECK(result.steps == 8);
  CHECK(result.best_step == 4);
  CHECK(result.best_metric == 0.9);
  CHECK(result.eval_steps == std::vector<long>{2, 4, 6, 8});
  CHECK(m.training());
  CHECK(m.blocks[0].attn.q.adapter->lora_B.value == at_best);
}

TEST_CASE("fit rejects bad options before taking a step") {
  model::Transformer<float> m(needle_config());
  m.apply_peft(peft_for(Method::lora));
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, optim::FineTuneOptions{});
  const auto batches = needle_task(8, 16, 11);
  long steps_taken = 0;
  const auto next = [&](long step) -> const model::Batch& {
    ++steps_taken;
    return batches[step % 4];
  };
  const auto try_fit = [&](train::TrainerOptions t, std::function<double()> evaluate) {
    return train::fit<model::Transformer<float>>(m, opt, next, std::move(evaluate), t);
  };
  train::TrainerOptions nan_clip;
  nan_clip.max_grad_norm = std::nan("");
  CHECK_THROWS_WITH_AS(try_fit(nan_clip, {}), doctest::Contains("max_grad_norm is NaN"), Error);
  train::TrainerOptions no_eval;
  no_eval.eval_every = 2;
  CHECK_THROWS_WITH_AS(try_fit(no_eval, {}), doctest::Contains("no evaluate()"), Error);
  train::TrainerOptions late_start;
  late_start.max_steps = 3;
  late_start.start_step = 4;
  CHECK_THROWS_WITH_AS(try_fit(late_start, {}), doctest::Contains("start_step"), Error);
  CHECK(steps_taken == 0);
}

TEST_CASE("fit stops at a non-finite loss, naming the step and the value, before stepping") {
  model::Transformer<float> m(needle_config());
  m.apply_peft(peft_for(Method::lora));
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, optim::FineTuneOptions{});
  const auto batches = needle_task(8, 16, 11);
  MatrixF poisoned;
  train::TrainerOptions t;
  t.max_steps = 10;
  t.max_grad_norm = 1.0;
  long steps_seen = 0;
  // Step 3's batch comes after a weight turned NaN, as a learning rate far too large does.
  const auto next = [&](long step) -> const model::Batch& {
    steps_seen = step + 1;
    if (step == 3) {
      m.blocks[0].attn.q.adapter->lora_A.value(0, 0) = std::nanf("");
      poisoned = m.blocks[0].attn.q.adapter->lora_B.value;
    }
    return batches[step % 4];
  };
  try {
    train::fit<model::Transformer<float>>(m, opt, next, {}, t);
    FAIL("fit did not throw");
  } catch (const train::NonFiniteError& e) {
    CHECK(e.step() == 3);
    CHECK(std::isnan(e.value()));
    CHECK(std::string(e.what()).find("step 3: the loss is nan") != std::string::npos);
    CHECK(std::string(e.what()).find("learning rate") != std::string::npos);
  }
  CHECK(steps_seen == 4);
  // The optimizer never took step 3: lora_B is as step 2 left it.
  CHECK(m.blocks[0].attn.q.adapter->lora_B.value == poisoned);
}

TEST_CASE("apply_peft refuses an alpha that is not a finite number > 0, model untouched") {
  model::Transformer<float> m(needle_config());
  m.apply_peft(peft_for(Method::lora));
  const MatrixF A = m.blocks[0].attn.q.adapter->lora_A.value;
  for (const double alpha : {std::nan(""), -1.0, 0.0, std::numeric_limits<double>::infinity()}) {
    model::PeftConfig bad = peft_for(Method::sora);
    bad.alpha = alpha;
    CHECK_THROWS_WITH_AS(m.apply_peft(bad), doctest::Contains("alpha must be a finite number > 0"),
                         Error);
    REQUIRE(m.blocks[0].attn.q.adapter);
    CHECK(m.blocks[0].attn.q.adapter->lora_A.value == A);
  }
  // An alpha whose scale overflows float is refused by the adapter itself.
  nn::AdapterConfig huge;
  huge.rank = 2;
  huge.alpha = 1e300;
  CHECK_THROWS_WITH_AS((nn::LowRankAdapter<float>(4, 4, huge)),
                       doctest::Contains("is not a finite number > 0"), Error);
}

TEST_CASE("the L1 gate term adds lambda sign(g) / N to the gradient") {
  Param<double> g1("a.lora_gate", MatrixD(1, 3), true, true);
  Param<double> g2("b.lora_gate", MatrixD(1, 1), true, true);
  g1.value << 0.5, -2.0, 0.0;
  g2.value << 1.0;
  const double term = train::add_gate_l1<double>({&g1, &g2}, 0.4);
  CHECK(term == doctest::Approx(0.4 * 3.5 / 4).epsilon(1e-12));
  CHECK(g1.gradient()(0, 0) == doctest::Approx(0.1).epsilon(1e-12));
  CHECK(g1.gradient()(0, 1) == doctest::Approx(-0.1).epsilon(1e-12));
  CHECK(g1.gradient()(0, 2) == 0.0);
  CHECK(g2.gradient()(0, 0) == doctest::Approx(0.1).epsilon(1e-12));
}

TEST_CASE("float tanh-GELU (vectorized) stays within a few ulp of the double formula") {
  // The MLP's GELU uses Eigen's vectorized float tanh; the parity test depends on its accuracy.
  const Index n = 4001;
  MatrixF x(3, n), y(3, n), dy = MatrixF::Ones(3, n), dx(3, n);
  for (Index j = 0; j < n; ++j)
    x.col(j).setConstant(-12.0f + 24.0f * static_cast<float>(j) / (n - 1));
  ops::gelu_forward<float>(y, x, ops::Gelu::tanh);
  ops::gelu_backward<float>(dx, dy, x, ops::Gelu::tanh);
  MatrixD xd = x.cast<double>(), yd(3, n), dxd(3, n);
  ops::gelu_forward<double>(yd, xd, ops::Gelu::tanh);
  ops::gelu_backward<double>(dxd, MatrixD::Ones(3, n), xd, ops::Gelu::tanh);
  // Absolute error against max(1, |reference|): GELU's output is ~x for large x and its
  // derivative is O(1); float's own rounding of the formula is ~1e-7.
  const double ey = ((y.cast<double>() - yd).array().abs() / yd.array().abs().max(1.0)).maxCoeff();
  const double ed =
      ((dx.cast<double>() - dxd).array().abs() / dxd.array().abs().max(1.0)).maxCoeff();
  CHECK(ey < 1e-6);
  CHECK(ed < 1e-6);
}

// ---- a frozen base stored in bf16 (model/frozen_base.hpp) -------------------------------------

namespace {

// The logits, loss and every trainable gradient of one training step, dropout masks redrawn
// identically on every call.
struct StepResult {
  float loss = 0.0f;
  MatrixF logits;
  std::map<std::string, MatrixF> grads;
};

StepResult bf16_step(model::Transformer<float>& m, const model::Batch& batch) {
  m.zero_grad();
  m.reseed_dropout(77);
  StepResult r;
  r.loss = m.forward(batch);
  r.logits = m.logits();
  m.backward();
  m.visit_params([&](Param<float>& p) {
    if (p.trainable()) r.grads[p.name] = p.gradient();
  });
  return r;
}

// max |a - b| / max |b|: a difference relative to the size of the reference.
double relative_difference(const MatrixF& a, const MatrixF& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double scale = std::max<double>(b.cwiseAbs().maxCoeff(), 1e-30);
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

// Bytes held by the frozen linear weights (what store_frozen_base stores).
std::size_t frozen_linear_bytes(model::Transformer<float>& m) {
  std::size_t bytes = 0;
  m.visit_linears([&](const std::string&, nn::AdaptedLinear<float>& lin) {
    if (!lin.base.weight.trainable()) bytes += lin.base.weight.value_bytes();
  });
  return bytes;
}

}  // namespace

TEST_CASE("a bf16 frozen base computes what the fp32 model with bf16-rounded weights computes") {
  // A classification head, and a causal LM whose tied head reads the bf16 token table.
  for (const bool lm : {false, true}) {
    for (const Method method : {Method::lora, Method::sora, Method::adalora}) {
      // Adapter dropout 0: q, k and v run stacked; 0.1 in training: one by one.
      for (const double adapter_dropout : {0.0, 0.1}) {
        CAPTURE(lm);
        CAPTURE(model::method_name(method));
        CAPTURE(adapter_dropout);
        const auto config = lm ? tiny_config(true, model::Head::lm, 0.1)
                               : tiny_config(false, model::Head::classification, 0.1);
        model::Transformer<float> packed(config), rounded(config), original(config);
        for (auto* m : {&packed, &rounded, &original}) {
          m->apply_peft(peft_for(method, adapter_dropout));
          randomize_adapters(*m, 99);
        }
        // What a bf16 base stores: the frozen linear weights and embedding tables.
        Index frozen_linears = 0, stored = 0;
        std::size_t storable_bytes = 0;
        rounded.visit_linears([&](const std::string&, nn::AdaptedLinear<float>& lin) {
          if (!lin.base.weight.trainable()) ++frozen_linears;
        });
        rounded.visit_params([&](Param<float>& p) {
          if (p.trainable() || (p.role != ParamRole::weight && p.role != ParamRole::embedding))
            return;
          ++stored;
          storable_bytes += p.value_bytes();
          p.value = p.value.unaryExpr(&round_to_bf16);
        });
        REQUIRE(frozen_linears > 0);
        CHECK(stored == frozen_linears + 2);  // and the token and position tables
        CHECK(model::store_frozen_base(packed, Precision::bf16) == stored);
        CHECK(model::frozen_base_precision(packed) == Precision::bf16);
        CHECK(model::frozen_base_precision(original) == Precision::fp32);

        // Half the bytes for those; the rest of the frozen model (biases) unchanged.
        CHECK(frozen_linear_bytes(packed) * 2 == frozen_linear_bytes(original));
        CHECK(model::frozen_bytes(packed) + storable_bytes / 2 == model::frozen_bytes(original));

        const model::Batch batch = tiny_batch(config);
        const StepResult got = bf16_step(packed, batch);
        const StepResult want = bf16_step(rounded, batch);
        const StepResult fp32 = bf16_step(original, batch);
        // Widening is exact: the same values through the same products.
        CHECK(relative_difference(got.logits, want.logits) <= 1e-6);
        CHECK(std::abs(got.loss - want.loss) <= 1e-6f * std::abs(want.loss));
        REQUIRE(got.grads.size() == want.grads.size());
        for (const auto& [name, grad] : want.grads) {
          CAPTURE(name);
          REQUIRE(got.grads.count(name) == 1);
          CHECK(relative_difference(got.grads.at(name), grad) <= 1e-6);
        }
        // Against the unrounded model: different (the weights were rounded), within bf16 rounding
        // (2^-9 relative per weight, through two layers).
        const double off = relative_difference(got.logits, fp32.logits);
        CHECK(off > 0.0);
        CHECK(off <= 1e-2);
        // The shared scratch holds whatever layer ran last: a second step computes the same.
        const StepResult again = bf16_step(packed, batch);
        CHECK(again.logits == got.logits);
        for (const auto& [name, grad] : got.grads) CHECK(again.grads.at(name) == grad);
      }
    }
  }
}

TEST_CASE("a bf16 base refuses what needs fp32 weights, and widens back on request") {
  const auto config = tiny_config(true, model::Head::lm);
  model::Transformer<float> m(config);
  m.apply_peft(peft_for(Method::full));
  CHECK_THROWS_WITH_AS(model::store_frozen_base(m, Precision::bf16),
                       doctest::Contains("no frozen linear weight"), Error);
  CHECK(model::frozen_base_precision(m) == Precision::fp32);

  m.apply_peft(peft_for(Method::sora));
  const Index stored = model::store_frozen_base(m, Precision::bf16);
  CHECK(stored > 0);
  CHECK(model::store_frozen_base(m, Precision::bf16) == 0);  // already so
  CHECK_THROWS_WITH_AS(m.apply_peft(peft_for(Method::full)), doctest::Contains("stored in bf16"),
                       Error);
  CHECK(m.blocks[0].attn.q.adapter.has_value());  // refused before anything changed
  CHECK_THROWS_WITH_AS(prune::merge(m.blocks[0].attn.q),
                       doctest::Contains("merge: parameter 'blocks.0.attn.q.weight'"), Error);
  CHECK_FALSE(m.blocks[0].attn.q.merged());
  CHECK_THROWS_WITH_AS(m.blocks[0].attn.q.base.set_trainable(true),
                       doctest::Contains("blocks.0.attn.q.weight"), Error);

  // Another adapter method keeps the base frozen and in bf16.
  m.apply_peft(peft_for(Method::lora));
  CHECK(model::frozen_base_precision(m) == Precision::bf16);
  const model::Batch batch = tiny_batch(config);
  const float loss = m.forward(batch);
  CHECK(std::isfinite(loss));

  // Widened back: the same model (the values stay rounded), fp32 again, merging and full
  // fine-tuning allowed.
  CHECK(model::store_frozen_base(m, Precision::fp32) == stored);
  CHECK(model::frozen_base_precision(m) == Precision::fp32);
  CHECK(m.forward(batch) == loss);
  CHECK(prune::merge(m.blocks[0].attn.q));
  CHECK_NOTHROW(m.apply_peft(peft_for(Method::full)));

  model::Transformer<double> d(config);
  d.apply_peft(peft_for(Method::lora));
  CHECK_THROWS_WITH_AS(model::store_frozen_base(d, Precision::bf16),
                       doctest::Contains("float models"), Error);
}
