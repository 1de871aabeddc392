// prune/: SoRA -> LoRA pruning and AdaLoRA masking keep the outputs, merge / unmerge, counts.
#include <doctest/doctest.h>

#include <sora/nn.hpp>
#include <sora/prune.hpp>

#include "support/gradcheck.hpp"

using namespace sora;
using namespace sora::testing;

namespace {

double relative_difference(const MatrixD& a, const MatrixD& b) {
  return (a - b).norm() / std::max(a.norm(), 1e-300);
}

std::vector<std::string> names_of(nn::AdaptedLinear<double>& layer) {
  std::vector<std::string> names;
  layer.visit_params("m", [&](Param<double>& p) { names.push_back(p.name); });
  return names;
}

}  // namespace

TEST_CASE("pruned SoRA modules give the gated module's outputs (random sizes and zero patterns)") {
  Rng rng(1);
  for (int trial = 0; trial < 24; ++trial) {
    const Index in = 3 + Index(rng.below(12)), out = 2 + Index(rng.below(12));
    const Index R = 1 + Index(rng.below(8)), N = 1 + Index(rng.below(9));
    nn::AdapterConfig config;
    config.rank = R;
    config.alpha = 1.0 + rng.uniform() * 31.0;
    config.seed = trial;
    config.dropout = 0.1;  // eval: dropout is off, and the pruned module keeps the setting
    nn::AdaptedLinear<double> layer(in, out, true, 100 + trial);
    const bool adalora = trial % 3 == 2;
    config.kind = adalora ? nn::AdapterKind::adalora : nn::AdapterKind::sora;
    layer.attach(config);
    layer.train(false);
    auto& a = *layer.adapter;
    rng.fill_normal(a.lora_B.value);
    rng.fill_normal(a.gate.value);
    // Zero patterns: trial 0 all zero (module disappears), trial 1 none, otherwise random.
    Index zeros = 0;
    for (Index i = 0; i < R; ++i) {
      const bool zero = trial == 0 || (trial != 1 && rng.uniform() < 0.5);
      if (zero) a.gate.value(0, i) = 0.0;
      zeros += zero;
    }
    const double scale = a.scale();
    const MatrixD x = random_matrix(rng, N, in);
    const MatrixD y = layer.forward(x);

    INFO("trial ", trial, " in ", in, " out ", out, " R ", R, " zeros ", zeros);
    const Index kept = prune::prune(layer);  // SoRA gates or AdaLoRA E alike
    CHECK(kept == R - zeros);
    const MatrixD y_pruned = layer.forward(x);
    CHECK(relative_difference(y_pruned, y) <= 1e-6);
    CHECK(relative_difference(y_pruned, y) <= 1e-13);  // in fact exact to rounding
    if (kept == 0) {
      CHECK_FALSE(layer.adapter.has_value());
      CHECK(names_of(layer) == std::vector<std::string>{"m.weight", "m.bias"});
    } else {
      REQUIRE(layer.adapter.has_value());
      CHECK(layer.adapter->kind() == nn::AdapterKind::lora);
      CHECK(layer.adapter->lora_A.value.rows() == kept);
      CHECK(layer.adapter->lora_B.value.cols() == kept);
      CHECK(layer.adapter->scale() == scale);  // alpha / r_max, not alpha / kept
      CHECK(layer.adapter->r_max() == R);
      CHECK(layer.adapter->dropout() == doctest::Approx(0.1).epsilon(1e-12));
      CHECK(names_of(layer) ==
            std::vector<std::string>{"m.weight", "m.bias", "m.lora_A", "m.lora_B"});
    }
  }
}

TEST_CASE("AdaLoRA masking to LoRA form folds E into B and drops masked triplets") {
  Rng rng(2);
  nn::AdaLoraLinear<double> layer(6, 5, nn::AdapterConfig{nn::AdapterKind::adalora, 4});
  auto& a = *layer.adapter;
  a.gate.value << 0.3, 0.0, -1.2, 0.0;
  const MatrixD x = random_matrix(rng, 3, 6);
  const MatrixD y = layer.forward(x);
  auto lora = prune::adalora_to_lora(a);
  REQUIRE(lora.has_value());
  CHECK(lora->rank() == 2);
  CHECK(lora->lora_B.value.col(1).isApprox(a.lora_B.value.col(2) * -1.2));
  CHECK(lora->lora_A.value.row(1) == a.lora_A.value.row(2));
  layer.attach(std::move(*lora));
  CHECK(relative_difference(layer.forward(x), y) <= 1e-13);
  nn::SoraLinear<double> sora(6, 5);
  CHECK_THROWS_WITH_AS(prune::adalora_to_lora(*sora.adapter), doctest::Contains("not an AdaLoRA"),
                       Error);
}

TEST_CASE("merge folds the adapter into W (base + adapter), unmerge restores W0") {
  Rng rng(3);
  for (auto kind : {nn::AdapterKind::lora, nn::AdapterKind::sora, nn::AdapterKind::adalora}) {
    nn::AdaptedLinear<double> layer(7, 4, true, 5);
    layer.attach(nn::AdapterConfig{kind, 3, 8.0});
    rng.fill_normal(layer.adapter->lora_B.value);
    if (layer.adapter->gated()) rng.fill_normal(layer.adapter->gate.value);
    const MatrixD W0 = layer.base.weight.value;
    const MatrixD x = random_matrix(rng, 5, 7);
    const MatrixD y = layer.forward(x);
    // base + adapter computed by hand.
    const auto& a = *layer.adapter;
    MatrixD expected = x * W0.transpose();
    expected.rowwise() += layer.base.bias.value.row(0);
    const MatrixD g = a.gated() ? a.gate.value : MatrixD::Ones(1, 3);
    expected += a.scale() *
                ((x * a.lora_A.value.transpose()).array().rowwise() * g.row(0).array()).matrix() *
                a.lora_B.value.transpose();
    CHECK(relative_difference(y, expected) <= 1e-13);

    CHECK(prune::merge(layer));
    CHECK(layer.merged());
    CHECK_FALSE(layer.base.weight.value.isApprox(W0));
    nn::Linear<double> merged(7, 4);
    merged.weight.value = layer.base.weight.value;
    merged.bias.value = layer.base.bias.value;
    CHECK(relative_difference(merged.forward(x), y) <= 1e-13);  // a merged linear = base + adapter
    CHECK(relative_difference(layer.forward(x), y) <= 1e-13);
    CHECK_THROWS_WITH_AS(prune::merge(layer), doctest::Contains("already merged"), Error);
    CHECK(prune::unmerge(layer));
    CHECK(relative_difference(layer.base.weight.value, W0) <= 1e-15);
    CHECK(relative_difference(layer.forward(x), y) <= 1e-14);
    CHECK_THROWS_WITH_AS(prune::unmerge(layer), doctest::Contains("not merged"), Error);
  }
  nn::AdaptedLinear<double> plain(3, 2);
  CHECK_FALSE(prune::merge(plain));
}

namespace {
// A tiny "model": two adapted projections and a LayerNorm.
struct TinyModel {
  nn::SoraLinear<double> q{4, 3, nn::AdapterConfig{nn::AdapterKind::sora, 2}};
  nn::LoraLinear<double> v{4, 3, nn::AdapterConfig{nn::AdapterKind::lora, 2}};
  nn::SoraLinear<double> o{3, 4, nn::AdapterConfig{nn::AdapterKind::sora, 2}};
  nn::LayerNorm<double> ln{3};
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    q.visit_params(nn::join_name(prefix, "q"), fn);
    v.visit_params(nn::join_name(prefix, "v"), fn);
    o.visit_params(nn::join_name(prefix, "o"), fn);
    ln.visit_params(nn::join_name(prefix, "ln"), fn);
  }
};
}  // namespace

TEST_CASE("parameter counts per module and in total match hand-computed values") {
  TinyModel model;
  model.q.adapter->gate.value << 0.5, 0.0;  // one rank kept
  model.o.adapter->gate.value << 0.0, 0.0;  // module pruned away
  const auto counts = prune::count_parameters(model, "blk");
  REQUIRE(counts.modules.size() == 4);
  const auto& q = counts.modules[0];
  CHECK(q.module == "blk.q");
  CHECK(q.rank == 2);
  CHECK(q.kept_rank == 1);
  CHECK(q.trainable == 2 * (4 + 3) + 2);  // A, B and the gates; the base is frozen
  CHECK(q.nonzero == 1 * (4 + 3 + 1));    // a kept rank costs in + out + its gate
  CHECK(q.after_pruning == 4 + 3);        // ... and in + out once the gate is folded
  const auto& v = counts.modules[1];
  CHECK(v.kept_rank == 2);
  CHECK(v.trainable == 14);
  CHECK(v.nonzero == 14);
  CHECK(v.after_pruning == 14);
  const auto& o = counts.modules[2];
  CHECK(o.trainable == 2 * (3 + 4) + 2);
  CHECK(o.nonzero == 0);
  CHECK(o.after_pruning == 0);
  const auto& ln = counts.modules[3];
  CHECK(ln.trainable == 6);
  CHECK(ln.nonzero == 3);  // weight ones, bias zeros
  CHECK(ln.after_pruning == 6);
  CHECK(counts.trainable == 16 + 14 + 16 + 6);
  CHECK(counts.nonzero == 8 + 14 + 0 + 3);
  CHECK(counts.after_pruning == 7 + 14 + 0 + 6);

  // After pruning, counting the pruned model gives the same after_pruning total, and the
  // vanished module is gone from the list.
  prune::prune(model.q);
  prune::prune(model.o);
  const auto pruned = prune::count_parameters(model, "blk");
  CHECK(pruned.modules.size() == 3);
  CHECK(pruned.trainable == 7 + 14 + 6);
  CHECK(pruned.after_pruning == counts.after_pruning);
}
