// Adaptive rank: AdaLoRA's allocator (budget schedule, importance, masking of the lowest
// triplets, orthogonal regularizer, allocation inside step(), pruning of the masked model) and
// SoRA's sparsity scheduler (the paper's Algorithm 1) on fakes and on a small synthetic task;
// both again on the transformer, through train::fit and optim::FineTuneOptimizer.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sora/model.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/ops/loss.hpp"
#include "sora/optim/adalora.hpp"
#include "sora/optim/adamw.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/optim/sparse_adamw.hpp"
#include "sora/prune/prune.hpp"
#include "sora/train/sparsity_scheduler.hpp"
#include "sora/train/trainer.hpp"
#include "support/gradcheck.hpp"
#include "support/temp_dir.hpp"

using namespace sora;
using optim::AdaLoraOptions;
using optim::AdaLoraPhase;

namespace {

// Two adapted linear layers y = l2(l1(x)) on frozen random bases, trained on a fixed
// regression (AdaLoRA tests) or classification (scheduler tests) problem.
template <class T>
struct TwoLayer {
  using Scalar = T;
  nn::AdaptedLinear<T> l1, l2;
  Matrix<T> x;              // (N, C)
  Matrix<T> target;         // (N, K) regression targets
  std::vector<int> labels;  // (N) classes
  Matrix<T> probs, dout;    // (N, K)
  bool classify = false;

  TwoLayer(Index C, Index H, Index K, const nn::AdapterConfig& config, std::uint64_t seed)
      : l1(C, H, true, seed + 1), l2(H, K, true, seed + 2) {
    nn::AdapterConfig c1 = config, c2 = config;
    c1.seed = seed + 11;
    c2.seed = seed + 12;
    l1.attach(c1);
    l2.attach(c2);
  }

  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    l1.visit_params(nn::join_name(prefix, "l1"), fn);
    l2.visit_params(nn::join_name(prefix, "l2"), fn);
  }
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params("", fn);
  }
  void train(bool on) {
    l1.train(on);
    l2.train(on);
  }
  const Matrix<T>& predict(const Matrix<T>& in) { return l2.forward(l1.forward(in)); }

  // Loss of the stored data; the batch argument is the step (unused: full batch).
  T forward(long) {
    const Matrix<T>& y = predict(x);
    if (classify) {
      probs.resize(y.rows(), y.cols());
      return ops::cross_entropy_forward<T>(probs, y, labels);
    }
    return ops::mse_forward<T>(y, target);
  }
  void backward() {
    const Matrix<T>& y = l2.output();
    dout.resize(y.rows(), y.cols());
    if (classify) {
      ops::cross_entropy_backward<T>(dout, probs, labels);
    } else {
      ops::mse_backward<T>(dout, y, target);
    }
    const Matrix<T>& dh = l2.backward(dout);
    l1.backward(dh, false);
  }
  void zero_grad() {
    visit_params([](Param<T>& p) { p.zero_grad(); });
  }
};

nn::AdapterConfig adapter(nn::AdapterKind kind, Index rank) {
  nn::AdapterConfig c;
  c.kind = kind;
  c.rank = rank;
  c.alpha = 2.0 * static_cast<double>(rank);
  return c;
}

template <class T>
TwoLayer<T> regression_model(Index rank, std::uint64_t seed = 3) {
  TwoLayer<T> m(6, 5, 4, adapter(nn::AdapterKind::adalora, rank), seed);
  Rng rng(seed, 5);
  m.x.resize(32, 6);
  m.target.resize(32, 4);
  rng.fill_normal(m.x, 0.0, 1.0);
  rng.fill_normal(m.target, 0.0, 1.0);
  return m;
}

Index nonzero_E(const std::vector<optim::AdaLoraModule<double>>& modules) {
  Index n = 0;
  for (const auto& m : modules) n += (m.E->value.array() != 0.0).count();
  return n;
}

AdaLoraOptions adalora_options(long T, long t_init, long t_final, long delta_t, Index target) {
  AdaLoraOptions o;
  o.total_steps = T;
  o.t_init = t_init;
  o.t_final = t_final;
  o.delta_t = delta_t;
  o.target_rank = target;
  return o;
}

}  // namespace

// ---- AdaLoRA -------------------------------------------------------------------------------

TEST_CASE("AdaLoRA budget: b_init in warm-up, the cubic schedule, then exactly b_target") {
  const AdaLoraOptions o = adalora_options(50, 5, 10, 3, 0);
  const Index b_init = 24, b_target = 8;
  Index previous = b_init;
  for (long t = 1; t <= 60; ++t) {
    const optim::BudgetStep s = optim::adalora_budget(t, b_init, b_target, o);
    CAPTURE(t);
    if (t <= 5) {
      CHECK(s.budget == b_init);
      CHECK_FALSE(s.mask);
      CHECK(s.phase == AdaLoraPhase::warmup);
    } else if (t < 40) {
      // eq. 12 written out independently
      const double u = 1.0 - (t - 5.0) / 35.0;
      CHECK(s.budget == static_cast<Index>(std::floor(8.0 + 16.0 * u * u * u)));
      CHECK(s.mask == (t % 3 == 0));
      CHECK(s.phase == AdaLoraPhase::budgeting);
    } else {
      CHECK(s.budget == b_target);
      CHECK(s.mask);
      CHECK(s.phase == (t == 40 ? AdaLoraPhase::finalize : AdaLoraPhase::fixed));
    }
    CHECK(s.budget <= previous);
    previous = s.budget;
  }
  CHECK_THROWS_AS(optim::check_adalora_options(adalora_options(10, 5, 5, 1, 2)), Error);
  CHECK_THROWS_AS(optim::check_adalora_options(adalora_options(10, 0, 0, 0, 2)), Error);
}

TEST_CASE("AdaLoRA step() alone allocates: target rank exactly from T - t_final on") {
  auto model = regression_model<double>(4);
  const long T = 30, t_final = 8;
  optim::AdamWOptions a;
  a.lr = 1e-2;
  optim::AdaLoraOptimizer<double> opt(model, a, adalora_options(T, 3, t_final, 2, 2));
  const auto& alloc = opt.allocator();
  REQUIRE(alloc.modules().size() == 2);
  CHECK(alloc.initial_budget() == 8);
  CHECK(alloc.target_budget() == 4);
  std::vector<std::vector<bool>> final_pattern;
  for (long t = 1; t <= T + 5; ++t) {
    CAPTURE(t);
    model.zero_grad();
    model.forward(t);
    model.backward();
    opt.step();  // nothing else: the allocation must happen in here
    const optim::BudgetStep s = opt.last_budget();
    CHECK(s.budget == alloc.budget_at(t).budget);
    if (s.phase == AdaLoraPhase::budgeting && s.mask) {
      CHECK(nonzero_E(alloc.modules()) == s.budget);
    }
    if (t >= T - t_final) {
      CHECK(alloc.finalized());
      CHECK(nonzero_E(alloc.modules()) == 4);
      const auto ranks = alloc.ranks();
      CHECK(std::accumulate(ranks.begin(), ranks.end(), Index(0)) == 4);
      if (t == T - t_final) final_pattern = alloc.rank_pattern();
      CHECK(alloc.rank_pattern() == final_pattern);
    } else {
      CHECK_FALSE(alloc.finalized());
    }
  }
  // Importance was reset at the finalization and is not updated afterwards.
  CHECK(alloc.importance(0).E.sensitivity.isZero());
}

TEST_CASE("AdaLoRA importance follows the EMA recurrences of sensitivity and uncertainty") {
  auto model = regression_model<double>(3);
  // Different betas (the defaults are both 0.85): swapping them in the library must show.
  AdaLoraOptions o = adalora_options(20, 0, 0, 1, 1);
  const double beta1 = 0.7, beta2 = 0.9;
  o.beta1 = beta1;
  o.beta2 = beta2;
  optim::RankAllocator<double> alloc = optim::RankAllocator<double>::for_model(model, o);
  const auto& m = alloc.modules()[1];
  Rng rng(9, 1);
  MatrixD Ibar = MatrixD::Zero(m.A->value.rows(), m.A->value.cols()), Ubar = Ibar;
  for (int round = 0; round < 3; ++round) {
    rng.fill_normal(m.A->gradient(), 0.0, 1.0);
    rng.fill_normal(m.A->value, 0.0, 1.0);
    alloc.update_importance();
    for (Index i = 0; i < Ibar.rows(); ++i)
      for (Index j = 0; j < Ibar.cols(); ++j) {
        const double I = std::abs(m.A->value(i, j) * m.A->gradient()(i, j));
        Ibar(i, j) = beta1 * Ibar(i, j) + (1 - beta1) * I;
        Ubar(i, j) = beta2 * Ubar(i, j) + (1 - beta2) * std::abs(I - Ibar(i, j));
      }
    CHECK((alloc.importance(1).A.sensitivity - Ibar).cwiseAbs().maxCoeff() < 1e-14);
    CHECK((alloc.importance(1).A.uncertainty - Ubar).cwiseAbs().maxCoeff() < 1e-14);
  }
}

TEST_CASE("AdaLoRA masks exactly the lowest-scoring triplets (hand-made scores)") {
  auto model = regression_model<double>(5);
  optim::RankAllocator<double> alloc =
      optim::RankAllocator<double>::for_model(model, adalora_options(20, 0, 0, 1, 2));
  Rng rng(4, 2);
  for (std::size_t k = 0; k < alloc.modules().size(); ++k) {
    auto& st = alloc.importance(k);
    for (auto* s : {&st.A, &st.B, &st.E}) {
      rng.fill_uniform(s->sensitivity, 0.0, 1.0);
      rng.fill_uniform(s->uncertainty, 0.0, 1.0);
    }
    alloc.modules()[k].E->value.setOnes();
  }
  // Direct triplet scores: s(E_i) + mean_j s(A_ij) + mean_j s(B_ji), by loops.
  struct Scored {
    double score;
    std::size_t module;
    Index rank;
  };
  std::vector<Scored> direct;
  for (std::size_t k = 0; k < alloc.modules().size(); ++k) {
    const auto& st = alloc.importance(k);
    const Index R = alloc.modules()[k].rank();
    for (Index i = 0; i < R; ++i) {
      double a = 0, b = 0;
      for (Index j = 0; j < st.A.sensitivity.cols(); ++j)
        a += st.A.sensitivity(i, j) * st.A.uncertainty(i, j);
      for (Index j = 0; j < st.B.sensitivity.rows(); ++j)
        b += st.B.sensitivity(j, i) * st.B.uncertainty(j, i);
      direct.push_back({st.E.sensitivity(0, i) * st.E.uncertainty(0, i) +
                            a / static_cast<double>(st.A.sensitivity.cols()) +
                            b / static_cast<double>(st.B.sensitivity.rows()),
                        k, i});
    }
  }
  const auto& scores = alloc.triplet_scores();
  for (const Scored& d : direct)
    CHECK(scores[d.module](d.rank) == doctest::Approx(d.score).epsilon(1e-12));

  for (Index budget : {Index(9), Index(6), Index(3), Index(0)}) {
    CAPTURE(budget);
    for (const auto& m : alloc.modules()) m.E->value.setOnes();
    alloc.mask_to_budget(budget);
    std::vector<Scored> sorted = direct;
    std::sort(sorted.begin(), sorted.end(),
              [](const Scored& x, const Scored& y) { return x.score < y.score; });
    const std::size_t masked = static_cast<std::size_t>(10 - budget);
    for (std::size_t e = 0; e < sorted.size(); ++e) {
      const bool kept = alloc.modules()[sorted[e].module].E->value(0, sorted[e].rank) != 0.0;
      CHECK(kept == (e >= masked));
      CHECK(alloc.rank_pattern()[sorted[e].module][static_cast<std::size_t>(sorted[e].rank)] ==
            kept);
    }
  }
  // Ties: all scores equal -> exactly the budget survives, the first ranks masked first.
  for (std::size_t k = 0; k < alloc.modules().size(); ++k) {
    auto& st = alloc.importance(k);
    for (auto* s : {&st.A, &st.B, &st.E}) {
      s->sensitivity.setOnes();
      s->uncertainty.setOnes();
    }
    alloc.modules()[k].E->value.setOnes();
  }
  alloc.mask_to_budget(7);
  CHECK(nonzero_E(alloc.modules()) == 7);
  CHECK(alloc.ranks() == std::vector<Index>{2, 5});
}

TEST_CASE("AdaLoRA selection: the same pattern whatever the order of the triplets") {
  // The selection the CPU allocator and its device twin share (select_rank_pattern): modules of
  // ranks 3 and 4, with a tie (0.5) across the two modules and one inside module 1.
  using S = optim::TripletScore<double>;
  const std::vector<S> triplets = {{0.9, 0, 0}, {0.5, 0, 1}, {0.1, 0, 2}, {0.5, 1, 0},
                                   {0.7, 1, 1}, {0.2, 1, 2}, {0.2, 1, 3}};
  std::vector<std::vector<bool>> want = {{true, true, true}, {true, true, true, true}};
  // Budget 3: masked are 0.1 (0, 2), 0.2 (1, 2), 0.2 (1, 3) and, of the two 0.5, (0, 1) first.
  want[0][2] = want[1][2] = want[1][3] = want[0][1] = false;
  std::vector<S> order = triplets;
  for (int shuffle = 0; shuffle < 6; ++shuffle) {
    CAPTURE(shuffle);
    std::vector<std::vector<bool>> pattern = {{false, false, false}, {true, true, true, true}};
    std::vector<S> work = order;
    optim::select_rank_pattern(work, 3, pattern);
    CHECK(pattern == want);
    std::rotate(order.begin(), order.begin() + 2, order.end());
    std::reverse(order.begin() + shuffle % 3, order.end());
  }
  std::vector<std::vector<bool>> pattern = {{true, true, true}, {true, true, true, true}};
  std::vector<S> work = triplets;
  optim::select_rank_pattern(work, 7, pattern);  // everything kept
  CHECK(pattern == std::vector<std::vector<bool>>{{true, true, true}, {true, true, true, true}});
  work = triplets;
  optim::select_rank_pattern(work, 0, pattern);  // nothing kept
  CHECK(pattern ==
        std::vector<std::vector<bool>>{{false, false, false}, {false, false, false, false}});
  work = triplets;
  CHECK_THROWS_AS(optim::select_rank_pattern(work, 8, pattern), Error);
  CHECK_THROWS_AS(optim::select_rank_pattern(work, -1, pattern), Error);
  std::vector<std::vector<bool>> small = {{true, true, true}, {true, true}};
  CHECK_THROWS_AS(optim::select_rank_pattern(work, 3, small), Error);  // (1, 2) is outside
}

TEST_CASE("AdaLoRA orthogonal regularizer: PEFT's value and its gradient against differences") {
  auto model = regression_model<double>(3);
  auto modules = optim::collect_adalora_modules<double>(model);
  REQUIRE(modules.size() == 2);
  Rng rng(12, 3);
  for (auto& m : modules) {
    rng.fill_normal(m.A->value, 0.0, 0.5);
    rng.fill_normal(m.B->value, 0.0, 0.5);
  }
  const double w = 0.7;
  // Value: w * sum over the 4 matrices of ||C - I||_F / 4 (PEFT divides by the matrix count).
  double direct = 0;
  for (auto& m : modules) {
    const MatrixD& A = m.A->value;
    const MatrixD& B = m.B->value;
    const Index R = A.rows();
    direct += (A * A.transpose() - MatrixD::Identity(R, R)).norm();
    direct += (B.transpose() * B - MatrixD::Identity(R, R)).norm();
  }
  CHECK(optim::orthogonal_regularizer(modules, w, false) ==
        doctest::Approx(w * direct / 4.0).epsilon(1e-12));

  model.zero_grad();
  optim::orthogonal_regularizer(modules, w, true);
  std::vector<testing::GradTarget> targets;
  for (auto& m : modules) {
    targets.push_back({m.A->name, &m.A->value, m.A->gradient()});
    targets.push_back({m.B->name, &m.B->value, m.B->gradient()});
  }
  testing::GradcheckOptions go;
  go.tolerance = 1e-6;
  const auto result = testing::gradcheck(
      [&] { return optim::orthogonal_regularizer(modules, w, false); }, targets, go);
  SORA_CHECK_GRADS(result, 1e-6);
}

TEST_CASE("AdaLoRA step() adds the regularizer gradient once, or not again after add") {
  auto model = regression_model<double>(3);
  auto modules = optim::collect_adalora_modules<double>(model);
  optim::AdamWOptions a;
  a.lr = 0.0;  // values stay put, so the gradients can be compared after step()
  optim::AdaLoraOptimizer<double> opt(model, a, adalora_options(20, 0, 0, 1, 1));
  model.zero_grad();
  const double value = opt.add_orth_regularizer();
  CHECK(value > 0.0);
  const MatrixD gA = modules[0].A->gradient();
  CHECK_FALSE(gA.isZero());
  opt.step();
  CHECK(modules[0].A->gradient() == gA);  // not added a second time
  model.zero_grad();
  opt.step();  // adds it itself
  CHECK((modules[0].A->gradient() - gA).cwiseAbs().maxCoeff() < 1e-15);
  CHECK(opt.orth_loss() == doctest::Approx(value).epsilon(1e-12));
}

// A rejected rate must change nothing: neither the current rate nor the base rate that
// set_lr_multiplier (the schedule) multiplies afterwards.
TEST_CASE("AdaLoRA set_lr: a rejected value leaves the rate and the base rate as they were") {
  auto model = regression_model<double>(3);
  optim::AdamWOptions a;
  a.lr = 1e-3;
  optim::AdaLoraOptimizer<double> opt(model, a, adalora_options(20, 0, 0, 1, 1));
  opt.set_lr(2e-3);
  opt.set_lr_multiplier(0.5);
  for (const double bad :
       {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(opt.set_lr(bad), doctest::Contains("lr must be finite and >= 0"),
                         sora::Error);
    CHECK(opt.lr() == 1e-3);
    CHECK(opt.base_lr() == 2e-3);
    opt.set_lr_multiplier(0.25);  // still multiplies the last accepted base rate
    CHECK(opt.lr() == 5e-4);
    opt.set_lr_multiplier(0.5);
  }
}

TEST_CASE("a masked AdaLoRA model prunes to LoRA form with equal outputs") {
  auto model = regression_model<double>(4, 21);
  optim::AdamWOptions a;
  a.lr = 2e-2;
  const long T = 24;
  optim::AdaLoraOptimizer<double> opt(model, a, adalora_options(T, 2, 6, 2, 2));
  for (long t = 1; t <= T; ++t) {
    model.zero_grad();
    model.forward(t);
    model.backward();
    opt.step();
  }
  REQUIRE(opt.allocator().finalized());
  const std::vector<Index> ranks = opt.allocator().ranks();
  model.train(false);
  const MatrixD before = model.predict(model.x);
  const Index kept1 = prune::prune(model.l1);
  const Index kept2 = prune::prune(model.l2);
  CHECK(kept1 == ranks[0]);
  CHECK(kept2 == ranks[1]);
  CHECK(kept1 + kept2 == 4);
  REQUIRE(kept1 > 0);  // this seed keeps ranks in both layers, so the check below always runs
  CHECK(model.l1.adapter->kind() == nn::AdapterKind::lora);
  const MatrixD after = model.predict(model.x);
  CHECK((before - after).cwiseAbs().maxCoeff() < 1e-12);
}

// ---- sparsity scheduler --------------------------------------------------------------------

namespace {

// Scripted hooks: records every train_stage call; metrics come from lists.
struct FakeRun {
  struct Call {
    double xi;
    optim::LrSchedule schedule;
    long begin, end;
  };
  std::vector<Call> calls;
  std::vector<double> train_metrics, val_metrics;
  std::size_t evals = 0;
  Index nonzero = 1000;

  train::SparsityHooks hooks() {
    train::SparsityHooks h;
    h.train_stage = [this](double xi, const optim::LrSchedule& s, long begin, long end) {
      calls.push_back({xi, s, begin, end});
      if (xi > 0) nonzero -= 10 * (end - begin);
    };
    h.evaluate_train_subset = [this] {
      return train_metrics[std::min(evals, train_metrics.size() - 1)];
    };
    h.evaluate_validation = [this] {
      return val_metrics[std::min(evals++, val_metrics.size() - 1)];
    };
    h.count_nonzero = [this] { return nonzero; };
    return h;
  }
};

std::vector<std::vector<double>> read_csv(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  std::vector<std::vector<double>> rows;
  while (std::getline(in, line)) {
    std::vector<double> row;
    std::stringstream cells(line);
    std::string cell;
    while (std::getline(cells, cell, ',')) row.push_back(std::stod(cell));
    rows.push_back(row);
  }
  return rows;
}

std::filesystem::path temp_dir(const std::string& name) {
  return sora::testing::unique_temp_dir("sora-adaptive-" + name);
}

}  // namespace

TEST_CASE("sparsity scheduler steps xi through xi_schedule with a fresh LR schedule per stage") {
  for (auto kind : {optim::XiScheduleKind::linear, optim::XiScheduleKind::log_linear,
                    optim::XiScheduleKind::exp_linear}) {
    FakeRun run;
    run.train_metrics = {0.9};
    run.val_metrics = {0.8};
    train::SparsitySchedulerOptions o;
    o.xi_kind = kind;
    o.xi0 = 1e-4;
    o.xi_max = 2e-3;
    o.stages = 4;
    o.dense_steps = 20;
    o.stage_steps = 10;
    o.eval_every = 4;
    o.lr = 5e-3;
    o.warmup_ratio = 0.2;
    const train::SparsityResult r = train::run_sparsity_scheduler(run.hooks(), o);
    const std::vector<double> expected = optim::xi_schedule(kind, 1e-4, 2e-3, 4);
    CHECK(r.xis == expected);
    CHECK(r.stages_completed == 4);
    CHECK_FALSE(r.stopped_early);
    // Dense: 20 steps in chunks of 4; each stage 10 steps in chunks 4, 4, 2.
    REQUIRE(run.calls.size() == 5 + 4 * 3);
    std::vector<double> stage_xis;
    for (std::size_t c = 0; c < run.calls.size(); ++c) {
      const auto& call = run.calls[c];
      const long total = c < 5 ? 20 : 10;
      CHECK(call.schedule.total() == total);
      CHECK(call.schedule.base_lr() == 5e-3);
      CHECK(call.schedule.kind() == optim::LrScheduleKind::warmup_linear);
      if (call.begin == 0) {
        // A new phase restarts its schedule: warm-up again from its first step.
        CHECK(call.schedule.lr(0) ==
              doctest::Approx(5e-3 / double(call.schedule.warmup())).epsilon(1e-12));
        if (c >= 5) stage_xis.push_back(call.xi);
      }
      if (c < 5) CHECK(call.xi == 0.0);
    }
    CHECK(stage_xis == expected);
    // Rows: 5 dense evaluations + 3 per stage, each at the end of a chunk.
    REQUIRE(r.rows.size() == 5 + 12);
    CHECK(r.rows.back().step == 10);
    CHECK(r.rows.back().total_step == 20 + 40);
    CHECK(r.rows.back().stage == 4);
    CHECK(r.rows.back().xi == expected.back());
  }
}

TEST_CASE("sparsity scheduler stops early when generalization falls below the share") {
  FakeRun run;
  // Evaluations: dense 0.75, 0.8 (best 0.8); stage 1 0.78, 0.76 (97.5%, 95%); stage 2 0.7
  // (87.5%): the walk stops there.
  run.train_metrics = {0.9, 1.0, 0.95, 0.9, 0.9, 0.8};
  run.val_metrics = {0.75, 0.8, 0.78, 0.76, 0.70, 0.6};
  const auto dir = temp_dir("early");
  train::SparsitySchedulerOptions o;
  o.xi0 = 1e-3;
  o.xi_max = 1e-2;
  o.stages = 5;
  o.dense_steps = 10;
  o.stage_steps = 10;
  o.eval_every = 5;  // dense: 2 evaluations; stages: 2 each
  o.min_generalization = 90.0;
  o.csv_path = dir / "sparsity.csv";
  o.svg_path = dir / "sparsity.svg";
  std::vector<int> snapshots;
  auto hooks = run.hooks();
  hooks.snapshot = [&](int stage) { snapshots.push_back(stage); };
  const train::SparsityResult r = train::run_sparsity_scheduler(hooks, o);
  CHECK(r.train_reference == 1.0);
  CHECK(r.val_reference == 0.8);
  CHECK(r.stopped_early);
  CHECK(r.stages_completed == 1);
  // The stop happens at the first evaluation below 90%: stage 2's first one.
  REQUIRE(r.rows.size() == 5);
  CHECK(r.rows[4].stage == 2);
  CHECK(r.rows[4].step == 5);
  CHECK(r.rows[4].generalization == doctest::Approx(87.5).epsilon(1e-12));
  CHECK(r.rows[3].generalization == doctest::Approx(95.0).epsilon(1e-12));
  CHECK(r.rows[3].memorization == doctest::Approx(90.0).epsilon(1e-12));
  CHECK(r.rows[0].generalization == doctest::Approx(75.0 / 0.8).epsilon(1e-12));
  CHECK(snapshots == std::vector<int>{0, 1, 2});
  const auto csv = read_csv(o.csv_path);
  REQUIRE(csv.size() == r.rows.size());
  CHECK(csv[4][0] == 2.0);
  CHECK(csv[4][8] == doctest::Approx(87.5).epsilon(1e-12));
  std::ifstream svg(o.svg_path);
  std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
  CHECK(text.find("generalization") != std::string::npos);
  CHECK(text.find("<polyline") != std::string::npos);
  std::filesystem::remove_all(dir);
}

namespace {

// The SoRA gate optimizer pair the scheduler drives: AdamW on A, B, SparseAdamW on the gates.
struct SoraPair {
  optim::AdamW<double> dense;
  optim::SparseAdamW<double> gates;
  double lr = 0.0;
  template <class Model>
  SoraPair(Model& model, double base_lr) : lr(base_lr) {
    std::vector<Param<double>*> ab, g;
    model.visit_params([&](Param<double>& p) {
      if (!p.trainable()) return;
      (p.name.ends_with("lora_gate") ? g : ab).push_back(&p);
    });
    optim::AdamWOptions a;
    a.lr = base_lr;
    dense = optim::AdamW<double>(ab, a);
    optim::SparseAdamWOptions s;
    s.lr = base_lr;
    s.xi = 0.0;
    gates = optim::SparseAdamW<double>(g, s);
  }
  void set_xi(double xi) { gates.set_xi(xi); }
  void set_lr_multiplier(double m) {
    dense.set_lr(lr * m);
    gates.set_lr(lr * m);
  }
  void step() {
    dense.step();
    gates.step();
  }
};

// Classification by a teacher: the same frozen bases plus a rank-2 change of the first layer.
TwoLayer<double> sora_task(std::uint64_t seed, Index n) {
  TwoLayer<double> m(12, 10, 4, adapter(nn::AdapterKind::sora, 6), 7);
  m.classify = true;
  Rng rng(seed, 0);
  m.x.resize(n, 12);
  rng.fill_normal(m.x, 0.0, 1.0);
  TwoLayer<double> teacher(12, 10, 4, adapter(nn::AdapterKind::sora, 6), 7);
  teacher.l1.detach();
  teacher.l2.detach();
  Rng trng(99, 0);
  MatrixD u(10, 2), v(2, 12);
  trng.fill_normal(u, 0.0, 1.0);
  trng.fill_normal(v, 0.0, 0.5);
  teacher.l1.base.weight.value += u * v;
  teacher.train(false);
  const MatrixD& y = teacher.predict(m.x);
  m.labels.resize(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    Index arg = 0;
    y.row(i).maxCoeff(&arg);
    m.labels[static_cast<std::size_t>(i)] = static_cast<int>(arg);
  }
  return m;
}

double accuracy(TwoLayer<double>& model, const MatrixD& x, const std::vector<int>& labels) {
  model.train(false);
  const MatrixD& y = model.predict(x);
  Index right = 0;
  for (Index i = 0; i < x.rows(); ++i) {
    Index arg = 0;
    y.row(i).maxCoeff(&arg);
    right += arg == labels[static_cast<std::size_t>(i)];
  }
  model.train(true);
  return static_cast<double>(right) / static_cast<double>(x.rows());
}

}  // namespace

TEST_CASE("sparsity scheduler on SoRA layers: counts fall stage by stage, CSV matches stages") {
  TwoLayer<double> model = sora_task(1, 192);
  const TwoLayer<double> val = sora_task(2, 256);  // same teacher, other inputs
  const MatrixD train_subset = model.x.topRows(64);
  const std::vector<int> train_labels(model.labels.begin(), model.labels.begin() + 64);
  SoraPair opt(model, 5e-3);
  std::vector<train::AdapterSnapshot<double>> snapshots;
  auto hooks = train::make_sparsity_hooks(
      model, opt, [](long step) { return step; },
      [&] { return accuracy(model, train_subset, train_labels); },
      [&] { return accuracy(model, val.x, val.labels); }, 1.0, &snapshots);
  const auto dir = temp_dir("sora");
  train::SparsitySchedulerOptions o;
  o.xi_kind = optim::XiScheduleKind::linear;
  // Thresholds per step (not lr-scaled, as the official code): ~60 ξ of shrinkage per stage
  // against AdamW steps of about lr, so gates die over the later stages, not all at once.
  o.xi0 = 3e-3;
  o.xi_max = 1.5e-2;
  o.stages = 4;
  o.dense_steps = 150;
  o.stage_steps = 60;
  o.eval_every = 30;
  o.lr = 5e-3;
  o.csv_path = dir / "sparsity.csv";
  o.svg_path = dir / "sparsity.svg";
  const train::SparsityResult r = train::run_sparsity_scheduler(hooks, o);
  CHECK(r.stages_completed == 4);
  REQUIRE(snapshots.size() == 5);
  // Dense: every rank of both modules alive: 6 (12 + 10 + 1) + 6 (10 + 4 + 1).
  CHECK(r.rows.front().nonzero == 6 * 23 + 6 * 15);
  for (std::size_t i = 1; i < r.rows.size(); ++i) CHECK(r.rows[i].nonzero <= r.rows[i - 1].nonzero);
  CHECK(r.rows.back().nonzero < r.rows.front().nonzero);
  MESSAGE("dense val ", r.val_reference, ", final nonzero ", r.rows.back().nonzero,
          ", generalization ", r.rows.back().generalization, "%");

  // Each stage's last CSV row against a direct evaluation of that stage's saved adapters.
  const auto csv = read_csv(o.csv_path);
  REQUIRE(csv.size() == r.rows.size());
  for (int stage = 0; stage <= 4; ++stage) {
    CAPTURE(stage);
    std::size_t last = 0;
    for (std::size_t i = 0; i < csv.size(); ++i)
      if (csv[i][0] == stage) last = i;
    train::restore_adapters(model, snapshots[static_cast<std::size_t>(stage)]);
    const double tr = accuracy(model, train_subset, train_labels);
    const double va = accuracy(model, val.x, val.labels);
    CHECK(csv[last][1] == doctest::Approx(stage == 0 ? 0.0 : r.xis[stage - 1]).epsilon(1e-12));
    CHECK(csv[last][4] == static_cast<double>(train::adapter_nonzero(model)));
    CHECK(csv[last][5] == doctest::Approx(tr).epsilon(1e-9));
    CHECK(csv[last][6] == doctest::Approx(va).epsilon(1e-9));
    CHECK(csv[last][7] == doctest::Approx(tr / r.train_reference * 100.0).epsilon(1e-9));
    CHECK(csv[last][8] == doctest::Approx(va / r.val_reference * 100.0).epsilon(1e-9));
  }
  std::filesystem::remove_all(dir);
}

// ---- with the transformer and the trainer ----------------------------------------------------

namespace {

model::TransformerConfig tiny_transformer() {
  model::TransformerConfig c;
  c.vocab_size = 16;
  c.width = 16;
  c.heads = 2;
  c.layers = 2;
  c.ffn_width = 32;
  c.max_len = 8;
  c.causal = false;
  c.dropout = 0.0;
  c.head = model::Head::classification;
  c.num_labels = 2;
  c.seed = 5;
  return c;
}

std::vector<model::Batch> random_batches(int count, std::uint64_t seed) {
  Rng rng(seed, 0);
  std::vector<model::Batch> batches(static_cast<std::size_t>(count));
  for (auto& b : batches) {
    b.batch = 4;
    b.seq = 8;
    for (int i = 0; i < 32; ++i) b.tokens.push_back(static_cast<int>(rng.below(16)));
    for (int i = 0; i < 4; ++i) b.labels.push_back(static_cast<int>(rng.below(2)));
  }
  return batches;
}

}  // namespace

TEST_CASE("AdaLoRA on the transformer through train::fit: final pattern, pruned logits equal") {
  model::Transformer<float> m(tiny_transformer());
  model::PeftConfig peft;
  peft.method = model::Method::adalora;
  peft.rank = 4;
  peft.alpha = 8.0;
  const Index modules = m.apply_peft(peft);
  REQUIRE(modules == 12);  // q, k, v, o, fc, proj in 2 blocks
  const auto batches = random_batches(4, 3);
  optim::AdamWOptions a;
  a.lr = 1e-2;
  const long T = 40;
  optim::AdaLoraOptimizer<float> opt(m, a, adalora_options(T, 5, 10, 5, 2));
  train::TrainerOptions t;
  t.max_steps = T;
  t.max_grad_norm = 1.0;
  const auto result = train::fit<model::Transformer<float>>(
      m, opt, [&](long s) -> const model::Batch& { return batches[s % 4]; }, {}, t);
  CHECK(result.steps == T);
  REQUIRE(opt.allocator().finalized());
  Index alive = 0;
  m.visit_params([&](Param<float>& p) {
    if (p.name.ends_with(".lora_E")) alive += (p.value.array() != 0.0f).count();
  });
  CHECK(alive == 2 * modules);
  m.eval();
  m.forward(batches[0]);
  const MatrixF before = m.logits();
  // Pruning one module that kept a rank replaces its parameters: the optimizer, built before,
  // refuses to step, naming that module's parameter, before its regularizer reads a module.
  std::string pruned_first;
  m.visit_linears([&](const std::string& name, nn::AdaptedLinear<float>& lin) {
    if (pruned_first.empty() && lin.adapter && (lin.adapter->gate.value.array() != 0.0f).any()) {
      pruned_first = name;
      prune::prune(lin);
    }
  });
  REQUIRE_FALSE(pruned_first.empty());
  const std::string refusal = "AdaLoraOptimizer: parameter '" + pruned_first + ".lora_";
  CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains(refusal.c_str()), Error);
  Index kept = 0;
  m.visit_linears(
      [&](const std::string&, nn::AdaptedLinear<float>& lin) { kept += prune::prune(lin); });
  CHECK(kept == 2 * modules);
  m.forward(batches[0]);
  CHECK((m.logits() - before).cwiseAbs().maxCoeff() < 1e-5f);
}

TEST_CASE("sparsity scheduler drives a SoRA transformer with FineTuneOptimizer") {
  model::Transformer<float> m(tiny_transformer());
  model::PeftConfig peft;
  peft.method = model::Method::sora;
  peft.rank = 4;
  peft.alpha = 8.0;
  m.apply_peft(peft);
  const auto batches = random_batches(4, 4);
  optim::FineTuneOptions fo;
  fo.lr = 5e-3;
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, fo);
  auto loss_metric = [&] {  // higher is better: 1 / (1 + mean loss)
    double loss = 0;
    for (const auto& b : batches) loss += m.forward(b) / 4.0;
    return 1.0 / (1.0 + loss);
  };
  std::vector<train::AdapterSnapshot<float>> snapshots;
  auto hooks = train::make_sparsity_hooks(
      m, opt, [&](long s) -> const model::Batch& { return batches[s % 4]; }, loss_metric,
      loss_metric, 1.0, &snapshots);
  train::SparsitySchedulerOptions o;
  o.xi_kind = optim::XiScheduleKind::log_linear;
  o.xi0 = 5e-3;
  o.xi_max = 5e-2;
  o.stages = 3;
  o.dense_steps = 10;
  o.stage_steps = 20;
  o.lr = 5e-3;
  const train::SparsityResult r = train::run_sparsity_scheduler(hooks, o);
  CHECK(r.stages_completed == 3);
  REQUIRE(r.rows.size() == 4);
  CHECK(snapshots.size() == 4);
  CHECK(opt.xi() == doctest::Approx(5e-2).epsilon(1e-12));
  for (std::size_t i = 1; i < r.rows.size(); ++i) CHECK(r.rows[i].nonzero <= r.rows[i - 1].nonzero);
  CHECK(r.rows.back().nonzero < r.rows.front().nonzero);
  // Dense: 4 ranks x (4 (16 + 16 + 1) + 2 (16 + 32 + 1)) per block, 2 blocks.
  CHECK(r.rows.front().nonzero == 2 * 4 * (4 * 33 + 2 * 49));
}
