// model/, optim/ (SGD, parameter groups) and train/ (the loop): whole-model gradients against
// central differences for every method, adapter injection by name, frozen weights without
// gradient or optimizer state, buffer reuse, and training on a synthetic task (loss bound,
// gates zeroed by ξ, pruned model predicting exactly what the gated one did).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sora/model.hpp>
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
    const std::string kind = model::module_kind(p.name);
    const bool expect = kind == "adapters" || kind == "layernorm" || kind == "head";
    CHECK(p.trainable() == expect);
    CHECK((p.grad_bytes() > 0) == expect);
  });
  // Switching method re-derives everything: full trains all, and no adapters remain.
  m.apply_peft(peft_for(Method::full));
  m.visit_params([&](Param<float>& p) {
    CAPTURE(p.name);
    CHECK(p.trainable());
    CHECK(model::module_kind(p.name) != "adapters");
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
