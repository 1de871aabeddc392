// ops/: every op's backward against central differences, the backward contract, masks and
// bad shapes.
#include <doctest/doctest.h>

#include <sora/ops.hpp>
#include <vector>

#include "support/gradcheck.hpp"

using namespace sora;
using namespace sora::testing;
using ops::absent;

TEST_CASE("linear: input, weight and bias gradients match central differences") {
  Rng rng(1);
  const Index N = 5, C = 4, OC = 3;
  MatrixD x = random_matrix(rng, N, C), W = random_matrix(rng, OC, C),
          b = random_matrix(rng, 1, OC);
  const MatrixD G = random_matrix(rng, N, OC);
  MatrixD out(N, OC);
  for (bool with_bias : {true, false}) {
    auto loss = [&] {
      if (with_bias) {
        ops::linear_forward<double>(out, x, W, b);
      } else {
        ops::linear_forward<double>(out, x, W);
      }
      return linear_functional(out, G);
    };
    MatrixD dx(N, C), dW = MatrixD::Zero(OC, C), db = MatrixD::Zero(1, OC);
    loss();
    if (with_bias) {
      ops::linear_backward<double>(dx, dW, db, G, x, W);
    } else {
      ops::linear_backward<double>(dx, dW, absent<double>(), G, x, W);
    }
    std::vector<GradTarget> targets{{"x", &x, dx}, {"W", &W, dW}};
    if (with_bias) targets.push_back({"b", &b, db});
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  }
}

TEST_CASE("backward contract: parameter gradients accumulate, input gradients overwrite") {
  Rng rng(2);
  const Index N = 4, C = 3, OC = 2, R = 2;
  const MatrixD x = random_matrix(rng, N, C), W = random_matrix(rng, OC, C);
  const MatrixD A = random_matrix(rng, R, C), B = random_matrix(rng, OC, R),
                g = random_matrix(rng, 1, R), G = random_matrix(rng, N, OC);
  MatrixD dx = MatrixD::Constant(N, C, 123.0), dW = MatrixD::Zero(OC, C), db = MatrixD::Zero(1, OC);
  ops::linear_backward<double>(dx, dW, db, G, x, W);
  const MatrixD dx1 = dx, dW1 = dW, db1 = db;
  ops::linear_backward<double>(dx, dW, db, G, x, W);
  CHECK(dx.isApprox(dx1));  // overwritten, not doubled (and the 123s are gone)
  CHECK(dW.isApprox(2 * dW1));
  CHECK(db.isApprox(2 * db1));

  MatrixD out = MatrixD::Zero(N, OC), h(N, R), u(N, R), dh(N, R);
  ops::lowrank_forward<double>(out, h, u, x, A, B, g, 0.5);
  MatrixD dA = MatrixD::Zero(R, C), dB = MatrixD::Zero(OC, R), dg = MatrixD::Zero(1, R);
  MatrixD dxl = MatrixD::Zero(N, C);
  ops::lowrank_backward<double>(dxl, dA, dB, dg, dh, G, x, h, u, A, B, g, 0.5);
  const MatrixD dA1 = dA, dB1 = dB, dg1 = dg, dxl1 = dxl;
  ops::lowrank_backward<double>(dxl, dA, dB, dg, dh, G, x, h, u, A, B, g, 0.5);
  CHECK(dA.isApprox(2 * dA1));
  CHECK(dB.isApprox(2 * dB1));
  CHECK(dg.isApprox(2 * dg1));
  CHECK(dxl.isApprox(2 * dxl1));  // the documented exception: a branch adds onto dinp
}

TEST_CASE("gated low-rank product: gradients of x, A, B and the gate match central differences") {
  Rng rng(3);
  const Index N = 6, C = 5, OC = 4, R = 3;
  MatrixD x = random_matrix(rng, N, C), A = random_matrix(rng, R, C), B = random_matrix(rng, OC, R),
          g = random_matrix(rng, 1, R);
  g(0, 1) = 0.0;  // a pruned gate still gets a gradient (the prox step may revive it)
  const MatrixD base = random_matrix(rng, N, OC), G = random_matrix(rng, N, OC);
  const double s = 16.0 / 8.0;
  MatrixD out(N, OC), h(N, R), u(N, R), dh(N, R);
  for (bool gated : {true, false}) {
    auto loss = [&] {
      out = base;
      if (gated) {
        ops::lowrank_forward<double>(out, h, u, x, A, B, g, s);
      } else {
        ops::lowrank_forward<double>(out, h, u, x, A, B, absent<double>(), s);
      }
      return linear_functional(out, G);
    };
    loss();
    MatrixD dx = MatrixD::Zero(N, C), dA = MatrixD::Zero(R, C), dB = MatrixD::Zero(OC, R),
            dg = MatrixD::Zero(1, R);
    if (gated) {
      ops::lowrank_backward<double>(dx, dA, dB, dg, dh, G, x, h, u, A, B, g, s);
    } else {
      ops::lowrank_backward<double>(dx, dA, dB, absent<double>(), dh, G, x, h, u, A, B,
                                    absent<double>(), s);
    }
    std::vector<GradTarget> targets{{"x", &x, dx}, {"A", &A, dA}, {"B", &B, dB}};
    if (gated) targets.push_back({"g", &g, dg});
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  }
}

TEST_CASE("LoRA is SoRA with the gate fixed at one: same output, same A and B gradients") {
  Rng rng(4);
  const Index N = 7, C = 6, OC = 5, R = 4;
  const MatrixD x = random_matrix(rng, N, C), A = random_matrix(rng, R, C),
                B = random_matrix(rng, OC, R), G = random_matrix(rng, N, OC);
  const MatrixD ones = MatrixD::Ones(1, R);
  MatrixD y1 = MatrixD::Zero(N, OC), y2 = MatrixD::Zero(N, OC), h1(N, R), u1(N, R), h2(N, R),
          u2(N, R), dh(N, R);
  ops::lowrank_forward<double>(y1, h1, u1, x, A, B, ones, 2.0);
  ops::lowrank_forward<double>(y2, h2, u2, x, A, B, absent<double>(), 2.0);
  CHECK((y1 - y2).norm() <= 1e-14 * y1.norm());
  MatrixD dA1 = MatrixD::Zero(R, C), dB1 = MatrixD::Zero(OC, R), dg = MatrixD::Zero(1, R);
  MatrixD dA2 = dA1, dB2 = dB1, dx1 = MatrixD::Zero(N, C), dx2 = dx1;
  ops::lowrank_backward<double>(dx1, dA1, dB1, dg, dh, G, x, h1, u1, A, B, ones, 2.0);
  ops::lowrank_backward<double>(dx2, dA2, dB2, absent<double>(), dh, G, x, h2, u2, A, B,
                                absent<double>(), 2.0);
  CHECK((dA1 - dA2).norm() <= 1e-14 * dA1.norm());
  CHECK((dB1 - dB2).norm() <= 1e-14 * dB1.norm());
  CHECK((dx1 - dx2).norm() <= 1e-14 * dx1.norm());
}

TEST_CASE("embedding and position embedding gradients match central differences") {
  Rng rng(5);
  const Index V = 7, P = 5, T = 3, Bn = 2, C = 4, N = Bn * T;
  const std::vector<int> tokens{1, 3, 1, 6, 0, 3};  // repeated ids accumulate
  MatrixD wte = random_matrix(rng, V, C), wpe = random_matrix(rng, P, C);
  const MatrixD G = random_matrix(rng, N, C);
  MatrixD out(N, C);
  auto loss = [&] {
    ops::embedding_forward<double>(out, tokens, wte);
    ops::position_embedding_forward<double>(out, wpe, T);
    return linear_functional(out, G);
  };
  loss();
  CHECK(out.row(4).isApprox(wte.row(0) + wpe.row(1)));
  MatrixD dwte = MatrixD::Zero(V, C), dwpe = MatrixD::Zero(P, C);
  ops::embedding_backward<double>(dwte, G, tokens);
  ops::position_embedding_backward<double>(dwpe, G, T);
  std::vector<GradTarget> targets{{"wte", &wte, dwte}, {"wpe", &wpe, dwpe}};
  SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  const std::vector<int> bad{1, 7};
  MatrixD out2(2, C);
  CHECK_THROWS_WITH_AS(ops::embedding_forward<double>(out2, bad, wte), doctest::Contains("token 7"),
                       Error);
}

TEST_CASE("layernorm: input, weight and bias gradients match central differences") {
  Rng rng(6);
  const Index N = 4, C = 6;
  MatrixD x = random_matrix(rng, N, C), w = random_matrix(rng, 1, C), b = random_matrix(rng, 1, C);
  const MatrixD G = random_matrix(rng, N, C);
  MatrixD out(N, C), mean(N, 1), rstd(N, 1);
  auto loss = [&] {
    ops::layernorm_forward<double>(out, mean, rstd, x, w, b);
    return linear_functional(out, G);
  };
  loss();
  CHECK(std::abs(((out.row(0) - b).cwiseQuotient(w)).mean()) < 1e-12);
  MatrixD dx(N, C), dw = MatrixD::Zero(1, C), db = MatrixD::Zero(1, C);
  ops::layernorm_backward<double>(dx, dw, db, G, x, w, mean, rstd);
  std::vector<GradTarget> targets{{"x", &x, dx}, {"weight", &w, dw}, {"bias", &b, db}};
  SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
}

TEST_CASE("GELU (tanh and exact) and softmax gradients match central differences") {
  Rng rng(7);
  const Index N = 5, C = 7;
  MatrixD x = random_matrix(rng, N, C, 2.0);
  const MatrixD G = random_matrix(rng, N, C);
  MatrixD out(N, C), dx(N, C);
  for (auto kind : {ops::Gelu::tanh, ops::Gelu::exact}) {
    auto loss = [&] {
      ops::gelu_forward<double>(out, x, kind);
      return linear_functional(out, G);
    };
    loss();
    ops::gelu_backward<double>(dx, G, x, kind);
    std::vector<GradTarget> targets{{"x", &x, dx}};
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  }
  // The two forms agree to about 1e-3 (the tanh form's known approximation error).
  MatrixD a(N, C), b(N, C);
  ops::gelu_forward<double>(a, x, ops::Gelu::tanh);
  ops::gelu_forward<double>(b, x, ops::Gelu::exact);
  CHECK((a - b).cwiseAbs().maxCoeff() < 1e-3);

  // The fused epilogue: pre + bias kept in pre, gelu of it in act, as the two ops in sequence.
  const MatrixD bias = random_matrix(rng, 1, C);
  for (auto kind : {ops::Gelu::tanh, ops::Gelu::exact}) {
    MatrixD pre = x, act(N, C), want(N, C);
    const MatrixD biased = x.rowwise() + bias.row(0);
    ops::gelu_forward<double>(want, biased, kind);
    ops::bias_gelu_forward<double>(act, pre, bias, kind);
    CHECK(pre == biased);
    CHECK(act == want);
  }
  MatrixD pre = x, wrong_act(N, C + 1);
  const MatrixD wrong_bias(1, C + 1);
  CHECK_THROWS_WITH_AS(ops::bias_gelu_forward<double>(out, pre, wrong_bias),
                       doctest::Contains("bias_gelu_forward: bias"), Error);
  CHECK_THROWS_WITH_AS(ops::bias_gelu_forward<double>(wrong_act, pre, bias),
                       doctest::Contains("bias_gelu_forward: act"), Error);
  CHECK(pre == x);  // a rejected call changes nothing

  auto loss = [&] {
    ops::softmax_forward<double>(out, x);
    return linear_functional(out, G);
  };
  loss();
  CHECK(out.rowwise().sum().isApprox(MatrixD::Ones(N, 1)));
  ops::softmax_backward<double>(dx, G, out);
  std::vector<GradTarget> targets{{"x", &x, dx}};
  SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
}

TEST_CASE("tanh, and the pooled-row gather with its scatter: gradients match central differences") {
  Rng rng(41);
  const Index N = 7, C = 3;
  MatrixD x = random_matrix(rng, N, C), out(N, C), dx(N, C);
  const MatrixD G = random_matrix(rng, N, C);
  auto tanh_loss = [&] {
    ops::tanh_forward<double>(out, x);
    return linear_functional(out, G);
  };
  tanh_loss();
  ops::tanh_backward<double>(dx, G, out);
  std::vector<GradTarget> tanh_targets{{"x", &x, dx}};
  SORA_CHECK_GRADS(gradcheck(tanh_loss, tanh_targets), 1e-6);
  tanh_loss();           // out at x again (the check left it at a perturbed x)
  MatrixD in_place = G;  // the model's aliasing form: dinp = dout
  ops::tanh_backward<double>(in_place, in_place, out);
  CHECK(in_place.isApprox(dx));

  // Row 2 pooled twice: its gradient collects both; rows never pooled get exactly zero.
  const std::vector<int> rows{4, 2, 2};
  MatrixD pooled(3, C), dpooled_in(N, C);
  const MatrixD Gp = random_matrix(rng, 3, C);
  auto pool_loss = [&] {
    ops::gather_rows<double>(pooled, x, rows);
    return linear_functional(pooled, Gp);
  };
  pool_loss();
  CHECK(pooled.row(0) == x.row(4));
  dpooled_in.setConstant(9.0);  // overwritten, not accumulated
  ops::scatter_rows<double>(dpooled_in, Gp, rows);
  CHECK(dpooled_in.row(0).isZero(0.0));
  CHECK(dpooled_in.row(2).isApprox(Gp.row(1) + Gp.row(2)));
  std::vector<GradTarget> pool_targets{{"x", &x, dpooled_in}};
  SORA_CHECK_GRADS(gradcheck(pool_loss, pool_targets), 1e-6);
  CHECK_THROWS_AS(ops::gather_rows<double>(pooled, x, std::vector<int>{0, 1, 7}), Error);
  CHECK_THROWS_AS(ops::scatter_rows<double>(dpooled_in, Gp, std::vector<int>{0, -1, 2}), Error);
}

namespace {
struct AttentionCase {
  Index B = 2, T = 5, H = 2, C = 6;
  bool causal = false;
  MatrixD mask;  // (B, T) or empty
};

MatrixD run_attention(const AttentionCase& ac, const MatrixD& q, const MatrixD& k, const MatrixD& v,
                      MatrixD* att_out = nullptr) {
  MatrixD out(ac.B * ac.T, ac.C), att(ac.B * ac.H * ac.T, ac.T);
  ops::attention_forward<double>(out, att, q, k, v, ac.mask, ac.B, ac.T, ac.H, ac.causal);
  if (att_out) *att_out = att;
  return out;
}
}  // namespace

TEST_CASE(
    "attention (causal, bidirectional, padded): q, k, v gradients match central differences") {
  Rng rng(8);
  for (int variant = 0; variant < 3; ++variant) {
    AttentionCase ac;
    ac.causal = variant == 0;
    if (variant == 2) {
      ac.mask = MatrixD::Ones(ac.B, ac.T);
      ac.mask(0, 4) = 0;  // right padding
      ac.mask(1, 0) = 0;  // left padding
      ac.mask(1, 1) = 0;
    }
    const Index N = ac.B * ac.T;
    MatrixD q = random_matrix(rng, N, ac.C), k = random_matrix(rng, N, ac.C),
            v = random_matrix(rng, N, ac.C);
    const MatrixD G = random_matrix(rng, N, ac.C);
    auto loss = [&] { return linear_functional(run_attention(ac, q, k, v), G); };
    MatrixD att;
    run_attention(ac, q, k, v, &att);
    MatrixD dq(N, ac.C), dk(N, ac.C), dv(N, ac.C), datt(att.rows(), att.cols());
    ops::attention_backward<double>(dq, dk, dv, datt, G, q, k, v, att, ac.B, ac.T, ac.H);
    std::vector<GradTarget> targets{{"q", &q, dq}, {"k", &k, dk}, {"v", &v, dv}};
    INFO("variant ", variant);
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  }
}

TEST_CASE("attention masks: future tokens and padded keys do not affect outputs") {
  Rng rng(9);
  AttentionCase ac;
  ac.causal = true;
  const Index N = ac.B * ac.T;
  const MatrixD q = random_matrix(rng, N, ac.C), k = random_matrix(rng, N, ac.C),
                v = random_matrix(rng, N, ac.C);
  const MatrixD y = run_attention(ac, q, k, v);
  // Perturb token t = 3 of sequence 1 (row 8) in q, k and v: rows 5..7 (its past) must not move.
  MatrixD q2 = q, k2 = k, v2 = v;
  q2.row(8).array() += 1.0;
  k2.row(8).array() += 1.0;
  v2.row(8).array() += 1.0;
  const MatrixD y2 = run_attention(ac, q2, k2, v2);
  CHECK(y2.topRows(8).isApprox(y.topRows(8), 0.0));
  CHECK_FALSE(y2.row(8).isApprox(y.row(8)));
  CHECK_FALSE(y2.row(9).isApprox(y.row(9)));

  // Padding: key 4 of sequence 0 masked; changing its k and v changes nothing.
  ac.causal = false;
  ac.mask = MatrixD::Ones(ac.B, ac.T);
  ac.mask(0, 4) = 0;
  const MatrixD z = run_attention(ac, q, k, v);
  MatrixD k3 = k, v3 = v;
  k3.row(4).array() += 3.0;
  v3.row(4).array() -= 2.0;
  CHECK(run_attention(ac, q, k3, v3).isApprox(z, 0.0));
  // ... but without the mask it does.
  ac.mask.resize(0, 0);
  CHECK_FALSE(
      run_attention(ac, q, k3, v3).topRows(5).isApprox(run_attention(ac, q, k, v).topRows(5)));

  // A query that sees no key (causal + left padding at position 0) outputs zeros, not NaN.
  ac.causal = true;
  ac.mask = MatrixD::Ones(ac.B, ac.T);
  ac.mask(1, 0) = 0;
  const MatrixD w = run_attention(ac, q, k, v);
  CHECK(w.allFinite());
  CHECK(w.row(5).isZero(0.0));
}

TEST_CASE("dropout: seeded mask, gradient through the mask, identity in eval") {
  Rng init(10);
  const Index N = 40, C = 50;
  MatrixD x = random_matrix(init, N, C);
  const MatrixD G = random_matrix(init, N, C);
  MatrixD out(N, C), mask(N, C);
  auto loss = [&] {
    Rng rng(42);  // the same mask on every evaluation
    ops::dropout_forward<double>(out, mask, x, 0.25, rng);
    return linear_functional(out, G);
  };
  loss();
  const double kept = (mask.array() != 0.0).cast<double>().mean();
  CHECK(kept == doctest::Approx(0.75).epsilon(0.05));
  CHECK((mask.array() == 0.0 || (mask.array() - 1.0 / 0.75).abs() < 1e-15).all());
  MatrixD dx(N, C);
  ops::dropout_backward<double>(dx, G, mask);
  std::vector<GradTarget> targets{{"x", &x, dx}};
  SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);

  // Same seed, same mask; eval is the identity and leaves the stream untouched.
  MatrixD out2(N, C), mask2(N, C);
  Rng a(42), b(42);
  ops::dropout_forward<double>(out2, mask2, x, 0.25, a);
  CHECK(mask2 == mask);
  ops::dropout_forward<double>(out2, absent<double>(), x, 0.25, b, /*training=*/false);
  CHECK(out2 == x);
  CHECK(b.state() == Rng(42).state());
  CHECK_THROWS_WITH_AS(ops::dropout_forward<double>(out2, mask2, x, 1.0, b),
                       doctest::Contains("not in [0, 1)"), Error);
}

TEST_CASE("residual add: forward sums, backward accumulates into both inputs") {
  const MatrixD a = MatrixD::Constant(2, 3, 1.0), b = MatrixD::Constant(2, 3, 2.0),
                dout = MatrixD::Constant(2, 3, 0.5);
  MatrixD out(2, 3);
  ops::residual_forward<double>(out, a, b);
  CHECK(out.isApprox(MatrixD::Constant(2, 3, 3.0)));
  MatrixD da = MatrixD::Constant(2, 3, 1.0), db = MatrixD::Zero(2, 3);
  ops::residual_backward<double>(da, db, dout);
  CHECK(da.isApprox(MatrixD::Constant(2, 3, 1.5)));
  CHECK(db.isApprox(dout));
}

TEST_CASE("cross-entropy with ignore index and MSE: values and gradients") {
  Rng rng(11);
  const Index N = 6, V = 5;
  MatrixD logits = random_matrix(rng, N, V, 2.0);
  const std::vector<int> targets{0, 4, ops::kIgnoreIndex, 2, ops::kIgnoreIndex, 1};
  MatrixD probs(N, V);
  auto loss = [&] { return ops::cross_entropy_forward<double>(probs, logits, targets); };
  const double L = loss();
  double expected = 0;
  for (Index n = 0; n < N; ++n) {
    if (targets[n] == ops::kIgnoreIndex) continue;
    expected -= std::log(std::exp(logits(n, targets[n])) / logits.row(n).array().exp().sum());
  }
  CHECK(L == doctest::Approx(expected / 4).epsilon(1e-12));  // mean over the 4 kept rows
  MatrixD dlogits(N, V);
  ops::cross_entropy_backward<double>(dlogits, probs, targets);
  CHECK(dlogits.row(2).isZero(0.0));
  CHECK(dlogits.row(4).isZero(0.0));
  std::vector<GradTarget> t1{{"logits", &logits, dlogits}};
  SORA_CHECK_GRADS(gradcheck(loss, t1), 1e-6);

  // Changing an ignored row's logits changes nothing.
  MatrixD logits2 = logits;
  logits2.row(2).array() += 5.0;
  CHECK(ops::cross_entropy_forward<double>(probs, logits2, targets) == doctest::Approx(L));
  const std::vector<int> all_ignored(N, ops::kIgnoreIndex);
  CHECK(ops::cross_entropy_forward<double>(probs, logits, all_ignored) == 0.0);
  const std::vector<int> bad{0, 5, 0, 0, 0, 0};
  CHECK_THROWS_WITH_AS(ops::cross_entropy_forward<double>(probs, logits, bad),
                       doctest::Contains("target 5"), Error);

  MatrixD pred = random_matrix(rng, 4, 2);
  const MatrixD target = random_matrix(rng, 4, 2);
  auto mse = [&] { return ops::mse_forward<double>(pred, target); };
  CHECK(mse() == doctest::Approx((pred - target).squaredNorm() / 8));
  MatrixD dpred(4, 2);
  ops::mse_backward<double>(dpred, pred, target);
  std::vector<GradTarget> t2{{"pred", &pred, dpred}};
  SORA_CHECK_GRADS(gradcheck(mse, t2), 1e-6);
}

TEST_CASE("ops reject bad shapes with both shapes in the message") {
  MatrixD out(4, 3), x(4, 5), W(3, 6), b(1, 3);
  CHECK_THROWS_WITH_AS(
      ops::linear_forward<double>(out, x, W, b),
      doctest::Contains("linear_forward: weight has shape (3, 6), expected (3, 5)"), Error);
  MatrixD W2(3, 5), b2(1, 4);
  CHECK_THROWS_WITH_AS(ops::linear_forward<double>(out, x, W2, b2),
                       doctest::Contains("bias has shape (1, 4), expected (1, 3)"), Error);
  MatrixD A(2, 5), B(3, 3), h(4, 2), u(4, 2);
  CHECK_THROWS_WITH_AS(ops::lowrank_forward<double>(out, h, u, x, A, B, absent<double>(), 1.0),
                       doctest::Contains("lowrank_forward: B has shape (3, 3), expected (3, 2)"),
                       Error);
  MatrixD q(6, 4), att(2 * 2 * 3, 3);
  CHECK_THROWS_WITH_AS(
      ops::attention_forward<double>(q, att, q, q, q, absent<double>(), 2, 4, 2, false),
      doctest::Contains("inputs (6, 4)"), Error);
  MatrixD mean(4, 1), rstd(3, 1), w(1, 5);
  CHECK_THROWS_WITH_AS(ops::layernorm_forward<double>(x, mean, rstd, x, w, w),
                       doctest::Contains("rstd has shape (3, 1), expected (4, 1)"), Error);
  // Blocks and maps pass without copies.
  MatrixD big = MatrixD::Zero(6, 8);
  ops::linear_forward<double>(big.block(1, 2, 4, 3), x, W2, b);
  MatrixD ref(4, 3);
  ops::linear_forward<double>(ref, x, W2, b);
  CHECK(big.block(1, 2, 4, 3) == ref);
}

TEST_CASE("ops whose outputs must not alias an input check it") {
  // out = inp W^T in place would read rows of inp already overwritten: a silent wrong answer.
  MatrixD x = MatrixD::Random(4, 4), W = MatrixD::Random(4, 4);
  const MatrixD x_before = x;
  CHECK_THROWS_WITH_AS(ops::linear_forward<double>(x, x, W),
                       doctest::Contains("linear_forward: out must not alias inp"), Error);
  CHECK_THROWS_WITH_AS(ops::linear_forward<double>(W, x, W),
                       doctest::Contains("out must not alias weight"), Error);
  // A block that overlaps part of the input counts too; disjoint blocks of one buffer do not.
  MatrixD buffer = MatrixD::Random(8, 4);
  CHECK_THROWS_AS(
      ops::linear_forward<double>(buffer.middleRows(2, 4), buffer.topRows(4), W, absent<double>()),
      Error);
  ops::linear_forward<double>(buffer.bottomRows(4), buffer.topRows(4), W, absent<double>());
  CHECK(x == x_before);  // a rejected call changes nothing
  MatrixD dout = MatrixD::Random(4, 4), dW = MatrixD::Zero(4, 4);
  CHECK_THROWS_WITH_AS(ops::linear_backward<double>(dout, dW, absent<double>(), dout, x, W),
                       doctest::Contains("linear_backward: dinp must not alias dout"), Error);
  MatrixD A = MatrixD::Random(2, 4), B = MatrixD::Random(4, 2), h(4, 2), u(4, 2);
  CHECK_THROWS_WITH_AS(ops::lowrank_forward<double>(x, h, u, x, A, B, absent<double>(), 1.0),
                       doctest::Contains("lowrank_forward: out must not alias inp"), Error);
}
