// nn/: every layer's input and parameter gradients against central differences, the adapter
// variants against each other, initialisation, names and the backward contract.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <sora/nn.hpp>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"

using namespace sora;
using namespace sora::testing;

namespace {

// Zeroes every gradient, runs forward and backward(G) with a random G, and checks the input
// gradient (if x is given) and every trainable parameter's gradient against central
// differences of sum(G ⊙ forward()). Frozen parameters must have no gradient at all.
template <class Layer>
void check_layer(Layer& layer, const std::function<const MatrixD&()>& forward,
                 const std::function<const MatrixD&(const MatrixD&)>& backward, MatrixD* x,
                 double tolerance = 1e-6, GradcheckOptions options = {}) {
  Rng rng(1234);
  layer.visit_params("", [](Param<double>& p) { p.zero_grad(); });
  const MatrixD y = forward();
  const MatrixD G = random_matrix(rng, y.rows(), y.cols());
  const MatrixD dx = backward(G);
  std::vector<GradTarget> targets;
  if (x) targets.push_back({"input", x, dx});
  Index frozen = 0;
  layer.visit_params("", [&](Param<double>& p) {
    if (p.trainable()) {
      targets.push_back({p.name, &p.value, p.gradient()});
    } else {
      ++frozen;
      CHECK(p.grad_bytes() == 0);
    }
  });
  auto loss = [&] { return linear_functional(forward(), G); };
  SORA_CHECK_GRADS(gradcheck(loss, targets, options), tolerance);
}

// A random non-zero B (the init's zero B would hide A's and the gate's gradients).
template <class Layer>
void randomize_adapter(Layer& layer, std::uint64_t seed) {
  Rng rng(seed);
  rng.fill_normal(layer.adapter->lora_B.value, 0.0, 0.5);
  if (layer.adapter->gated()) rng.fill_normal(layer.adapter->gate.value, 0.0, 1.0);
}

std::vector<std::string> names_of(auto& layer, const std::string& prefix) {
  std::vector<std::string> names;
  layer.visit_params(prefix, [&](auto& p) { names.push_back(p.name); });
  return names;
}

// Token + position embeddings as one module for check_layer.
struct EmbeddingPair {
  nn::Embedding<double>* e;
  nn::PositionEmbedding<double>* p;
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    e->visit_params(nn::join_name(prefix, "wte"), fn);
    p->visit_params(nn::join_name(prefix, "wpe"), fn);
  }
};

}  // namespace

TEST_CASE("Linear, trainable and frozen: gradients match central differences") {
  Rng rng(1);
  MatrixD x = random_matrix(rng, 6, 5);
  for (bool trainable : {true, false}) {
    nn::Linear<double> layer(5, 4, /*bias=*/true, trainable, 3);
    check_layer(
        layer, [&]() -> const MatrixD& { return layer.forward(x); },
        [&](const MatrixD& G) -> const MatrixD& { return layer.backward(G); }, &x);
    CHECK(layer.weight.has_grad() == trainable);
  }
}

TEST_CASE(
    "SoRA, LoRA and AdaLoRA linears: input, A, B and gate gradients match central differences") {
  Rng rng(2);
  MatrixD x = random_matrix(rng, 7, 6);
  nn::AdapterConfig config;
  config.rank = 3;
  config.alpha = 6;
  config.seed = 5;
  nn::SoraLinear<double> sora(6, 4, config);
  nn::LoraLinear<double> lora(6, 4, config);
  nn::AdaLoraLinear<double> adalora(6, 4, config);
  randomize_adapter(sora, 11);
  randomize_adapter(lora, 12);
  randomize_adapter(adalora, 13);
  auto check = [&](auto& layer) {
    check_layer(
        layer, [&]() -> const MatrixD& { return layer.forward(x); },
        [&](const MatrixD& G) -> const MatrixD& { return layer.backward(G); }, &x);
    CHECK_FALSE(layer.base.weight.has_grad());  // frozen base: no gradient buffer
    CHECK_FALSE(layer.base.bias.has_grad());
  };
  check(sora);
  check(lora);
  check(adalora);
  // A zero gate still receives its gradient (the proximal step may bring it back).
  sora.adapter->gate.value(0, 1) = 0.0;
  check(sora);

  SUBCASE("through adapter dropout (the same mask on every evaluation)") {
    nn::AdapterConfig dropped = config;
    dropped.dropout = 0.3;
    nn::SoraLinear<double> layer(6, 4, dropped);
    randomize_adapter(layer, 14);
    check_layer(
        layer,
        [&]() -> const MatrixD& {
          layer.adapter->dropout_rng().reseed(77, 1);
          return layer.forward(x);
        },
        [&](const MatrixD& G) -> const MatrixD& { return layer.backward(G); }, &x);
    // Eval switches the adapter's dropout off: the output is then deterministic and equals the
    // p = 0 layer's.
    nn::SoraLinear<double> plain(6, 4, config);
    plain.adapter->lora_A.value = layer.adapter->lora_A.value;
    plain.adapter->lora_B.value = layer.adapter->lora_B.value;
    plain.adapter->gate.value = layer.adapter->gate.value;
    layer.train(false);
    CHECK(layer.forward(x).isApprox(plain.forward(x), 1e-14));
  }
}

TEST_CASE("LoraLinear equals SoraLinear with the gate at one: outputs and A, B, input gradients") {
  Rng rng(3);
  const MatrixD x = random_matrix(rng, 9, 8);
  nn::AdapterConfig config;
  config.rank = 4;
  config.alpha = 16;
  config.gate_init = nn::GateInit::ones;
  nn::SoraLinear<double> sora(8, 5, config);
  nn::LoraLinear<double> lora(8, 5, config);
  CHECK(sora.adapter->gate.value.isOnes(0.0));
  CHECK(sora.base.weight.value == lora.base.weight.value);          // same base seed
  CHECK(sora.adapter->lora_A.value == lora.adapter->lora_A.value);  // same adapter seed
  randomize_adapter(lora, 21);
  sora.adapter->lora_B.value = lora.adapter->lora_B.value;
  CHECK(sora.adapter->scale() == lora.adapter->scale());
  const MatrixD ys = sora.forward(x), yl = lora.forward(x);
  CHECK((ys - yl).norm() <= 1e-14 * ys.norm());
  const MatrixD G = random_matrix(rng, 9, 5);
  const MatrixD dxs = sora.backward(G), dxl = lora.backward(G);
  CHECK((dxs - dxl).norm() <= 1e-14 * dxs.norm());
  CHECK(sora.adapter->lora_A.gradient().isApprox(lora.adapter->lora_A.gradient(), 1e-14));
  CHECK(sora.adapter->lora_B.gradient().isApprox(lora.adapter->lora_B.gradient(), 1e-14));
}

TEST_CASE("adapter initialisation follows docs/design.md 4 and 6") {
  nn::AdapterConfig config;
  config.rank = 8;
  config.alpha = 16;
  nn::SoraLinear<double> sora(64, 32, config);
  const auto& a = *sora.adapter;
  CHECK(a.lora_A.value.rows() == 8);
  CHECK(a.lora_A.value.cols() == 64);
  CHECK(a.lora_B.value.rows() == 32);
  CHECK(a.lora_A.value.cwiseAbs().maxCoeff() <= 1.0 / 8.0);  // U(-1/sqrt(64), 1/sqrt(64))
  CHECK(a.lora_A.value.cwiseAbs().maxCoeff() > 0.1);
  CHECK(a.lora_B.value.isZero(0.0));
  CHECK_FALSE(a.gate.value.isOnes(0.0));  // standard normal by default
  CHECK(a.scale() == doctest::Approx(2.0).epsilon(1e-12));
  CHECK(a.r_max() == 8);

  nn::AdaLoraLinear<double> ada(64, 32, config);
  const auto& b = *ada.adapter;
  CHECK(b.gate.value.isZero(0.0));  // lora_E starts at 0
  CHECK(b.scale() == doctest::Approx(16.0 / (8.0 + 1e-5)).epsilon(1e-12));
  const double stddev = std::sqrt(b.lora_A.value.squaredNorm() / double(b.lora_A.value.size()));
  CHECK(stddev == doctest::Approx(0.02).epsilon(0.1));

  // A fresh adapter leaves the base layer's output unchanged (B = 0, or E = 0).
  Rng rng(4);
  const MatrixD x = random_matrix(rng, 3, 64);
  nn::Linear<double> base(64, 32);
  CHECK(sora.forward(x).isApprox(base.forward(x), 1e-15));
  CHECK(ada.forward(x).isApprox(base.forward(x), 1e-15));
}

TEST_CASE("one visitor reaches every parameter by a stable dotted PEFT-style name") {
  nn::SoraLinear<float> sora(6, 4);
  CHECK(names_of(sora, "blocks.3.attn.q") ==
        std::vector<std::string>{"blocks.3.attn.q.weight", "blocks.3.attn.q.bias",
                                 "blocks.3.attn.q.lora_A", "blocks.3.attn.q.lora_B",
                                 "blocks.3.attn.q.lora_gate"});
  nn::AdaLoraLinear<float> ada(6, 4, {}, /*bias=*/false);
  CHECK(names_of(ada, "fc") ==
        std::vector<std::string>{"fc.weight", "fc.lora_A", "fc.lora_B", "fc.lora_E"});
  nn::Attention<float> attn(8, 2, true);
  attn.v.attach(nn::AdapterConfig{nn::AdapterKind::lora, 2});
  const auto names = names_of(attn, "attn");
  CHECK(names.size() == 10);
  CHECK(names[4] == "attn.v.weight");
  CHECK(names[6] == "attn.v.lora_A");
  CHECK(names[9] == "attn.o.bias");
  nn::MLP<float> mlp(8, 16);
  CHECK(names_of(mlp, "") ==
        std::vector<std::string>{"fc.weight", "fc.bias", "proj.weight", "proj.bias"});
  // Freezing saves the gradient memory of the base: only the adapter owns gradients.
  std::size_t grad_bytes = 0;
  sora.visit_params("", [&](Param<float>& p) { grad_bytes += p.grad_bytes(); });
  CHECK(grad_bytes == (8 * 6 + 4 * 8 + 8) * sizeof(float));
}

TEST_CASE("Embedding + PositionEmbedding and LayerNorm: gradients match central differences") {
  const std::vector<int> tokens{3, 1, 3, 0, 2, 2};
  nn::Embedding<double> wte(5, 4, true, 1, 1.0);
  nn::PositionEmbedding<double> wpe(4, 4, true, 2, 1.0);
  EmbeddingPair both{&wte, &wpe};
  MatrixD y;
  MatrixD none;
  check_layer(
      both,
      [&]() -> const MatrixD& {
        y = wte.forward(tokens);
        wpe.forward_add(y, 3);
        return y;
      },
      [&](const MatrixD& G) -> const MatrixD& {
        wte.backward(G);
        wpe.backward(G);
        return none;
      },
      nullptr);

  Rng rng(5);
  MatrixD x = random_matrix(rng, 5, 7);
  nn::LayerNorm<double> ln(7);
  Rng(6).fill_normal(ln.weight.value);
  Rng(7).fill_normal(ln.bias.value);
  check_layer(
      ln, [&]() -> const MatrixD& { return ln.forward(x); },
      [&](const MatrixD& G) -> const MatrixD& { return ln.backward(G); }, &x);
}

// The gradient check above cannot see eps (it only perturbs a well-scaled input), so a
// forward without eps passed. Rows whose variance is about eps (and one of variance 0) make
// eps change the output by up to a factor sqrt(2); a non-default eps checks it is passed on.
TEST_CASE("LayerNorm forward equals (x - mean) / sqrt(var + eps) * w + b, variance near eps") {
  for (const double eps : {1e-5, 1e-3}) {
    CAPTURE(eps);
    const Index C = 6;
    nn::LayerNorm<double> ln(C, true, eps);
    Rng(11).fill_normal(ln.weight.value);
    Rng(12).fill_normal(ln.bias.value);
    MatrixD x(3, C);
    const double a = std::sqrt(eps);  // +-a about a mean: biased variance exactly ~eps
    x.row(0) << 2 + a, 2 - a, 2 + a, 2 - a, 2 + a, 2 - a;
    x.row(1) << 0.3, -1.2, 0.7, 2.0, -0.4, 0.1;  // ordinary scale
    x.row(2).setConstant(-1.5);                  // variance 0: the output is the bias
    const MatrixD y = ln.forward(x);
    for (Index n = 0; n < x.rows(); ++n) {
      double mean = 0, var = 0;
      for (Index c = 0; c < C; ++c) mean += x(n, c);
      mean /= double(C);
      for (Index c = 0; c < C; ++c) var += (x(n, c) - mean) * (x(n, c) - mean);
      var /= double(C);
      for (Index c = 0; c < C; ++c) {
        CAPTURE(n);
        CAPTURE(c);
        const double want =
            (x(n, c) - mean) / std::sqrt(var + eps) * ln.weight.value(0, c) + ln.bias.value(0, c);
        CHECK(y(n, c) == doctest::Approx(want).epsilon(1e-9).scale(1.0));
      }
    }
    // Not vacuous: on row 0 eps matters (|xhat| = sqrt(1/2), not 1).
    CHECK(std::abs((y(0, 0) - ln.bias.value(0, 0)) / ln.weight.value(0, 0)) ==
          doctest::Approx(std::sqrt(0.5)).epsilon(1e-6));
  }
}

TEST_CASE("Attention with adapters (causal, padded) and MLP with SoRA: gradients match") {
  Rng rng(8);
  const Index B = 2, T = 4, C = 6;
  MatrixD x = random_matrix(rng, B * T, C);
  for (bool causal : {true, false}) {
    nn::Attention<double> attn(C, 3, causal, true, 9);
    nn::AdapterConfig config;
    config.rank = 2;
    attn.q.attach(config);
    config.kind = nn::AdapterKind::lora;
    attn.v.attach(config);
    randomize_adapter(attn.q, 31);
    randomize_adapter(attn.v, 32);
    MatrixD mask = MatrixD::Ones(B, T);
    mask(1, 3) = 0;
    INFO("causal ", causal);
    check_layer(
        attn, [&]() -> const MatrixD& { return attn.forward(x, B, T, mask); },
        [&](const MatrixD& G) -> const MatrixD& { return attn.backward(G); }, &x);
  }
  for (auto kind : {ops::Gelu::tanh, ops::Gelu::exact}) {
    nn::MLP<double> mlp(C, 10, kind, true, 3);
    nn::AdapterConfig config;
    config.rank = 3;
    mlp.fc.attach(config);
    randomize_adapter(mlp.fc, 33);
    check_layer(
        mlp, [&]() -> const MatrixD& { return mlp.forward(x); },
        [&](const MatrixD& G) -> const MatrixD& { return mlp.backward(G); }, &x);
  }
}

TEST_CASE(
    "Attention: q, k, v stacked and blocked give the one-by-one dense outputs and gradients") {
  Rng rng(81);
  const Index B = 2, T = 3, C = 6, H = 2, N = B * T;
  MatrixD x = random_matrix(rng, N, C);
  MatrixD mask = MatrixD::Ones(B, T);
  mask(0, 2) = 0;
  for (int run = 0; run < 6; ++run) {
    const int variant = run % 3;
    const bool blocked = run >= 3;
    INFO("variant ", variant, " blocked ", blocked);  // variant 0: full fine-tuning, 1: q, k, v
                                                      // adapted, 2: q and v adapted
    // attn runs the stacked path (and blocked attention); twin the same layers driven one by
    // one through the dense op, as before stacking.
    nn::Attention<double> attn(C, H, true, true, 5), twin(C, H, true, true, 5);
    attn.set_blocked(blocked);
    if (variant > 0) {
      nn::AdapterConfig config;
      config.rank = 2;
      int i = 0;
      for (auto kind : {nn::AdapterKind::sora, nn::AdapterKind::adalora, nn::AdapterKind::lora}) {
        config.kind = kind;
        config.rank = 2 + i;  // different ranks: the stacked A has uneven blocks
        nn::AdaptedLinear<double>* slots[2][3] = {{&attn.q, &attn.k, &attn.v},
                                                  {&twin.q, &twin.k, &twin.v}};
        if (variant == 2 && i == 1) {
          ++i;
          continue;
        }
        for (auto& s : slots) {
          s[i]->attach(config);
          randomize_adapter(*s[i], 40 + static_cast<std::uint64_t>(i));
        }
        ++i;
      }
    }
    attn.visit_params("", [](Param<double>& p) { p.zero_grad(); });
    twin.visit_params("", [](Param<double>& p) { p.zero_grad(); });
    const MatrixD y = attn.forward(x, B, T, mask);
    const MatrixD G = random_matrix(rng, N, C);
    const MatrixD dx = attn.backward(G);

    MatrixD att(B * H * T, T), datt(B * H * T, T), a(N, C), dq(N, C), dk(N, C), dv(N, C);
    const MatrixD& q = twin.q.forward(x);
    const MatrixD& k = twin.k.forward(x);
    const MatrixD& v = twin.v.forward(x);
    ops::attention_forward<double>(a, att, q, k, v, mask, B, T, H, true);
    const MatrixD y_ref = twin.o.forward(a);
    const MatrixD& da = twin.o.backward(G);
    ops::attention_backward<double>(dq, dk, dv, datt, da, q, k, v, att, B, T, H);
    MatrixD dx_ref = twin.q.backward(dq);
    dx_ref += twin.k.backward(dk);
    dx_ref += twin.v.backward(dv);

    CHECK((y - y_ref).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((dx - dx_ref).cwiseAbs().maxCoeff() < 1e-12);
    std::vector<MatrixD> grads, grads_ref;
    attn.visit_params("", [&](Param<double>& p) {
      if (p.trainable()) grads.push_back(p.gradient());
    });
    twin.visit_params("", [&](Param<double>& p) {
      if (p.trainable()) grads_ref.push_back(p.gradient());
    });
    REQUIRE(grads.size() == grads_ref.size());
    REQUIRE(grads.size() >= 4);
    for (std::size_t i = 0; i < grads.size(); ++i) {
      REQUIRE(grads[i].size() == grads_ref[i].size());
      CHECK(grads[i].cwiseAbs().maxCoeff() > 0.0);  // a gradient that reached the parameter
      CHECK((grads[i] - grads_ref[i]).cwiseAbs().maxCoeff() < 1e-12);
    }
    // And against central differences, through the stacked path.
    check_layer(
        attn, [&]() -> const MatrixD& { return attn.forward(x, B, T, mask); },
        [&](const MatrixD& G2) -> const MatrixD& { return attn.backward(G2); }, &x);
  }
}

TEST_CASE("RMSNorm and SwiGLUMLP (LLaMA's blocks, with LoRA and SoRA): gradients match") {
  Rng rng(12);
  const Index N = 6, C = 5, F = 8;
  MatrixD x = random_matrix(rng, N, C);
  nn::RMSNorm<double> norm(C);
  CHECK(names_of(norm, "input_layernorm") == std::vector<std::string>{"input_layernorm.weight"});
  Rng(13).fill_normal(norm.weight.value);
  check_layer(
      norm, [&]() -> const MatrixD& { return norm.forward(x); },
      [&](const MatrixD& G) -> const MatrixD& { return norm.backward(G); }, &x);
  nn::RMSNorm<double> frozen(C, /*trainable=*/false);
  check_layer(
      frozen, [&]() -> const MatrixD& { return frozen.forward(x); },
      [&](const MatrixD& G) -> const MatrixD& { return frozen.backward(G); }, &x);

  nn::SwiGLUMLP<double> mlp(C, F, 4);
  CHECK(names_of(mlp, "mlp") == std::vector<std::string>{"mlp.gate_proj.weight",
                                                         "mlp.up_proj.weight",
                                                         "mlp.down_proj.weight"});
  check_layer(
      mlp, [&]() -> const MatrixD& { return mlp.forward(x); },
      [&](const MatrixD& G) -> const MatrixD& { return mlp.backward(G); }, &x);
  nn::AdapterConfig config;
  config.rank = 2;
  mlp.gate_proj.attach(config);
  config.kind = nn::AdapterKind::lora;
  mlp.up_proj.attach(config);
  mlp.down_proj.attach(config);
  randomize_adapter(mlp.gate_proj, 34);
  randomize_adapter(mlp.up_proj, 35);
  randomize_adapter(mlp.down_proj, 36);
  check_layer(
      mlp, [&]() -> const MatrixD& { return mlp.forward(x); },
      [&](const MatrixD& G) -> const MatrixD& { return mlp.backward(G); }, &x);
}

TEST_CASE("layer backward contract: parameter gradients accumulate, input gradients overwrite") {
  Rng rng(10);
  const MatrixD x = random_matrix(rng, 5, 6), G = random_matrix(rng, 5, 4);
  nn::SoraLinear<double> layer(6, 4, nn::AdapterConfig{nn::AdapterKind::sora, 3});
  randomize_adapter(layer, 41);
  layer.forward(x);
  const MatrixD dx1 = layer.backward(G);
  const MatrixD dA1 = layer.adapter->lora_A.gradient(), dg1 = layer.adapter->gate.gradient();
  layer.forward(x);
  const MatrixD dx2 = layer.backward(G);
  CHECK(dx2.isApprox(dx1, 1e-14));
  CHECK(layer.adapter->lora_A.gradient().isApprox(2 * dA1, 1e-14));
  CHECK(layer.adapter->gate.gradient().isApprox(2 * dg1, 1e-14));
}

TEST_CASE("layers allocate their activations once per batch shape") {
  Rng rng(11);
  const MatrixF x = random_matrix(rng, 16, 8).cast<float>();
  const MatrixF G = MatrixF::Ones(16, 8);
  nn::SoraLinear<float> layer(8, 8);
  const float* y_data = layer.forward(x).data();
  const float* dx_data = layer.backward(G).data();
  for (int step = 0; step < 3; ++step) {
    CHECK(layer.forward(x).data() == y_data);
    CHECK(layer.backward(G).data() == dx_data);
  }
}

TEST_CASE("layers reject bad input shapes with the shapes in the message") {
  nn::SoraLinear<double> layer(6, 4);
  const MatrixD x(3, 5);
  CHECK_THROWS_WITH_AS(layer.forward(x), doctest::Contains("(4, 6), expected (4, 5)"), Error);
  CHECK_THROWS_WITH_AS(nn::Attention<double>(6, 4, true), doctest::Contains("4 heads"), Error);
  nn::Attention<double> ok(6, 3, true);
  const MatrixD y(7, 6);
  CHECK_THROWS_WITH_AS(ok.forward(y, 2, 4), doctest::Contains("inputs (7, 6)"), Error);
}
