// CPU optimizers: AdamW and SparseAdamW against a hand-written scalar reference, the gate
// proximal step's (ξ, 2ξ) band (default vs official_compat), frozen parameters without state.

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "sora/core/param.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/nn/embedding.hpp"
#include "sora/nn/layernorm.hpp"
#include "sora/optim/adamw.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/optim/sparse_adamw.hpp"

using sora::Matrix;
using sora::Param;
using namespace sora::optim;

namespace {

// Torch's AdamW written out per scalar in double, independent of the library's expression.
struct RefAdam {
  double m = 0, v = 0;
  double step(double p, double g, long t, double lr, double b1, double b2, double eps, double wd) {
    p = p * (1.0 - lr * wd);
    m = b1 * m + (1.0 - b1) * g;
    v = b2 * v + (1.0 - b2) * g * g;
    const double mhat = m / (1.0 - std::pow(b1, double(t)));
    const double vhat = v / (1.0 - std::pow(b2, double(t)));
    return p - lr * mhat / (std::sqrt(vhat) + eps);
  }
};

Matrix<double> random_matrix(long r, long c, unsigned seed) {
  Matrix<double> m(r, c);
  unsigned s = seed * 2654435761u + 12345u;
  for (long i = 0; i < m.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    m.data()[i] = (double(s >> 8) / double(1u << 24)) * 2.0 - 1.0;
  }
  return m;
}

}  // namespace

TEST_CASE("AdamW matches a scalar reference over several steps, with per-parameter decay") {
  Param<double> w("blocks.0.fc.weight", random_matrix(3, 4, 1), true);
  Param<double> b("blocks.0.fc.bias", random_matrix(1, 4, 2), true, true);
  AdamWOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  AdamW<double> opt({&w, &b}, o);
  opt.set_weight_decay_if(no_decay_by_name, 0.0);

  std::vector<RefAdam> rw(12), rb(4);
  Matrix<double> pw = w.value, pb = b.value;
  for (long t = 1; t <= 5; ++t) {
    w.gradient() = random_matrix(3, 4, 10 + unsigned(t));
    b.gradient() = random_matrix(1, 4, 20 + unsigned(t));
    for (long i = 0; i < 12; ++i)
      pw.data()[i] =
          rw[i].step(pw.data()[i], w.gradient().data()[i], t, o.lr, o.beta1, o.beta2, o.eps, 0.1);
    for (long i = 0; i < 4; ++i)
      pb.data()[i] =
          rb[i].step(pb.data()[i], b.gradient().data()[i], t, o.lr, o.beta1, o.beta2, o.eps, 0.0);
    opt.step();
    CHECK((w.value - pw).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((b.value - pb).cwiseAbs().maxCoeff() < 1e-12);
  }
  CHECK(opt.step_count() == 5);
  REQUIRE(opt.state_for("blocks.0.fc.bias") != nullptr);
  CHECK(opt.state_for("blocks.0.fc.bias")->weight_decay == 0.0);
  CHECK(opt.state_for("blocks.0.fc.weight")->weight_decay == doctest::Approx(0.1).epsilon(1e-12));
  CHECK(std::abs(opt.state_for("blocks.0.fc.weight")->m(0, 0) - rw[0].m) < 1e-15);
}

TEST_CASE("AdamW keeps no state for frozen parameters and rejects a frozen-later one") {
  Param<float> frozen("base.weight", Matrix<float>::Ones(64, 64), false);
  Param<float> a("q.lora_A", Matrix<float>::Ones(2, 64), true);
  AdamW<float> opt({&frozen, &a, nullptr}, AdamWOptions{});
  CHECK(opt.params().size() == 1);
  CHECK(opt.state_for("base.weight") == nullptr);
  CHECK(opt.state_bytes() == 2 * 2 * 64 * sizeof(float));
  a.gradient().setConstant(1.0f);
  opt.step();
  CHECK(frozen.value(0, 0) == 1.0f);  // untouched
  CHECK(a.value(0, 0) < 1.0f);
  a.set_trainable(false);
  CHECK_THROWS_AS(opt.step(), sora::Error);
}

TEST_CASE("AdamW state round-trips through load_state and rejects mismatches") {
  Param<double> p("x", random_matrix(2, 3, 5), true);
  AdamW<double> a({&p}, AdamWOptions{});
  p.gradient() = random_matrix(2, 3, 6);
  a.step();
  a.step();
  Param<double> q("x", p.value, true);
  AdamW<double> b({&q}, AdamWOptions{});
  b.load_state(a.step_count(), a.state());
  p.gradient() = random_matrix(2, 3, 7);
  q.gradient() = p.gradient();
  a.step();
  b.step();
  CHECK(p.value == q.value);
  auto bad = a.state();
  bad[0].name = "y";
  CHECK_THROWS_AS(b.load_state(1, bad), sora::Error);
  bad = a.state();
  bad[0].m.resize(3, 3);
  CHECK_THROWS_AS(b.load_state(1, bad), sora::Error);
  AdamWOptions o;
  o.beta1 = 1.0;
  CHECK_THROWS_AS(AdamW<double>({&p}, o), sora::Error);
}

TEST_CASE("SparseAdamW = AdamW without decay, then a true soft threshold") {
  Param<double> g("q.gate", random_matrix(1, 16, 3), true, true);
  SparseAdamWOptions o;
  o.lr = 1e-2;
  o.xi = 2e-2;
  SparseAdamW<double> opt({&g}, o);
  opt.set_weight_decay_if([](auto) { return true; }, 0.5);  // must be ignored for gates
  std::vector<RefAdam> ref(16);
  Matrix<double> pg = g.value;
  for (long t = 1; t <= 6; ++t) {
    g.gradient() = random_matrix(1, 16, 30 + unsigned(t));
    for (long i = 0; i < 16; ++i) {
      double y =
          ref[i].step(pg.data()[i], g.gradient().data()[i], t, o.lr, o.beta1, o.beta2, o.eps, 0.0);
      y = std::abs(y) <= o.xi ? 0.0 : (y > 0 ? y - o.xi : y + o.xi);
      pg.data()[i] = y;
    }
    opt.step();
    CHECK((g.value - pg).cwiseAbs().maxCoeff() < 1e-12);
  }
  CHECK(opt.threshold() == doctest::Approx(o.xi).epsilon(1e-12));
}

TEST_CASE("SparseAdamW threshold scaled by lr when asked") {
  SparseAdamWOptions o;
  o.lr = 0.5;
  o.xi = 0.1;
  o.scale_xi_by_lr = true;
  Param<double> g("g", Matrix<double>::Zero(1, 1), true, true);
  SparseAdamW<double> opt({&g}, o);
  CHECK(opt.threshold() == doctest::Approx(0.05).epsilon(1e-12));
  opt.set_lr(0.1);
  CHECK(opt.threshold() == doctest::Approx(0.01).epsilon(1e-12));
  CHECK_THROWS_AS(opt.set_xi(-1.0), sora::Error);
}

// The accessor above could be right while step() still thresholds at ξ: check the values.
// ξ lr and ξ differ by 10x here, and values in [-1, 1] land on both sides of each cut-off.
TEST_CASE("SparseAdamW with scale_xi_by_lr soft-thresholds at xi * lr in step()") {
  SparseAdamWOptions o;
  o.lr = 0.1;
  o.xi = 0.5;
  o.scale_xi_by_lr = true;
  Param<double> g("q.gate", random_matrix(1, 32, 5), true, true);
  SparseAdamW<double> opt({&g}, o);
  std::vector<RefAdam> ref(32);
  Matrix<double> pg = g.value;
  for (long t = 1; t <= 4; ++t) {
    if (t == 3) opt.set_lr(0.2);  // the threshold follows the current rate: 0.05, then 0.1
    const double lr = opt.lr();
    const double thr = o.xi * lr;
    g.gradient() = random_matrix(1, 32, 60 + unsigned(t));
    for (long i = 0; i < 32; ++i) {
      double y =
          ref[i].step(pg.data()[i], g.gradient().data()[i], t, lr, o.beta1, o.beta2, o.eps, 0.0);
      y = std::abs(y) <= thr ? 0.0 : (y > 0 ? y - thr : y + thr);
      pg.data()[i] = y;
    }
    opt.step();
    CAPTURE(t);
    CHECK((g.value - pg).cwiseAbs().maxCoeff() < 1e-12);
  }
  // Not vacuous: some gates survived and some were zeroed.
  CHECK((g.value.array() != 0.0).any());
  CHECK((g.value.array() == 0.0).any());
}

// Regression for the official code's defect: with lr = 0 (no Adam move: m/v update but the
// step is lr * ... = 0) only the proximal step acts, so the band is visible directly.
TEST_CASE("gate prox: default kills |g| <= xi only; official_compat kills the (xi, 2xi) band") {
  const double xi = 0.1;
  Matrix<double> start(1, 8);
  start << 0.05, 0.1, 0.15, 0.19, 0.25, -0.15, -0.1, -0.3;
  for (bool compat : {false, true}) {
    Param<double> g("g", start, true, true);
    SparseAdamWOptions o;
    o.lr = 0.0;
    o.xi = xi;
    o.official_compat = compat;
    SparseAdamW<double> opt({&g}, o);
    g.gradient().setConstant(1.0);
    opt.step();
    const auto& v = g.value;
    CHECK(v(0, 0) == 0.0);
    if (!compat) {
      CHECK(v(0, 1) == 0.0);                                   // |g| == xi: true soft gives 0
      CHECK(v(0, 2) == doctest::Approx(0.05).epsilon(1e-12));  // in the band: shrunk, alive
      CHECK(v(0, 3) == doctest::Approx(0.09).epsilon(1e-12));
      CHECK(v(0, 5) == doctest::Approx(-0.05).epsilon(1e-12));
      CHECK(v(0, 6) == 0.0);
    } else {
      CHECK(v(0, 1) ==
            doctest::Approx(0.1).epsilon(1e-12));  // |g| == xi: no mask fires, kept as is
      CHECK(v(0, 2) == 0.0);                       // the band dies
      CHECK(v(0, 3) == 0.0);
      CHECK(v(0, 5) == 0.0);
      CHECK(v(0, 6) == doctest::Approx(-0.1).epsilon(1e-12));
    }
    CHECK(v(0, 4) == doctest::Approx(0.15).epsilon(1e-12));  // beyond 2 xi: both shrink by xi
    CHECK(v(0, 7) == doctest::Approx(-0.2).epsilon(1e-12));
  }
}

TEST_CASE("SparseAdamW: NaN gradient propagates, never silently zeroed") {
  Param<float> g("g", Matrix<float>::Constant(1, 2, 1.0f), true, true);
  SparseAdamW<float> opt({&g}, SparseAdamWOptions{});
  g.gradient()(0, 0) = std::numeric_limits<float>::quiet_NaN();
  opt.step();
  CHECK(std::isnan(g.value(0, 0)));
  CHECK(std::isfinite(g.value(0, 1)));
}

namespace {
// The model a new user writes first: one SoraLinear, visited with an empty prefix.
struct OneSoraLayer {
  sora::nn::SoraLinear<double> layer{6, 4};
  template <class Fn>
  void visit_params(Fn&& fn) {
    layer.visit_params("", fn);
  }
};
}  // namespace

TEST_CASE("a standalone SoraLinear visited with an empty prefix still has its gate grouped") {
  // Its gate must get the proximal step, not plain AdamW.
  OneSoraLayer model;
  const auto groups = sora::optim::group_parameters<double>(model);
  REQUIRE(groups.gates.size() == 1);
  CHECK(groups.gates[0]->name == "lora_gate");
  CHECK(groups.gates[0]->role == sora::ParamRole::gate);
  CHECK(groups.no_decay.empty());  // the base weight and bias are frozen
}

namespace {
// A model of one's own whose visitor renames every parameter "p<k>": a gate is still a gate.
struct RenamingModel {
  sora::nn::SoraLinear<double> layer{6, 4};
  sora::Param<double> lookalike{"lora_gate", Matrix<double>::Ones(1, 3), true, true};
  template <class Fn>
  void visit_params(Fn&& fn) {
    int k = 0;
    layer.visit_params("", [&](sora::Param<double>& p) {
      p.name = "p" + std::to_string(k++);
      fn(p);
    });
    fn(lookalike);  // named like a gate, but a plain vector parameter (role weight)
  }
};
}  // namespace

TEST_CASE("group_parameters reads the role, not the name") {
  RenamingModel model;
  const auto groups = sora::optim::group_parameters<double>(model);
  REQUIRE(groups.gates.size() == 1);
  CHECK(groups.gates[0] == &model.layer.adapter->gate);
  CHECK(groups.gates[0]->name != "lora_gate");
  REQUIRE(groups.no_decay.size() == 1);
  CHECK(groups.no_decay[0] == &model.lookalike);
  REQUIRE(groups.decay.size() == 2);  // lora_A and lora_B
  CHECK(groups.decay[0]->role == sora::ParamRole::adapter_A);
  CHECK(groups.decay[1]->role == sora::ParamRole::adapter_B);
}

TEST_CASE("layers set the roles of their parameters") {
  using sora::ParamRole;
  sora::nn::Linear<double> lin(3, 2);
  CHECK(lin.weight.role == ParamRole::weight);
  CHECK(lin.bias.role == ParamRole::bias);
  lin.mark_as_head();
  CHECK(lin.weight.role == ParamRole::head);
  CHECK(lin.bias.role == ParamRole::head);
  sora::nn::LayerNorm<double> ln(3);
  CHECK(ln.weight.role == ParamRole::norm);
  CHECK(ln.bias.role == ParamRole::norm);
  sora::nn::Embedding<double> emb(5, 3);
  CHECK(emb.weight.role == ParamRole::embedding);
  sora::nn::AdaLoraLinear<double> ada(3, 2);
  CHECK(ada.adapter->lora_A.role == ParamRole::adapter_A);
  CHECK(ada.adapter->lora_B.role == ParamRole::adapter_B);
  CHECK(ada.adapter->gate.role == ParamRole::singular_value);
  CHECK(sora::is_adapter_role(ParamRole::singular_value));
  CHECK_FALSE(sora::is_adapter_role(ParamRole::head));
}
