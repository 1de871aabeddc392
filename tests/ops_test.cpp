// ops/: every op's backward against central differences, the backward contract, masks and
// bad shapes.
#include <doctest/doctest.h>

#include <complex>
#include <numbers>
#include <sora/ops.hpp>
#include <span>
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

TEST_CASE("mean pool: the mean of each sequence's real tokens, gradient by central differences") {
  Rng rng(23);
  const Index B = 3, T_len = 4, C = 5;
  MatrixD x = random_matrix(rng, B * T_len, C);
  // Sequence 0 unpadded, 1 with two pads at the end, 2 with one real token.
  const std::vector<float> mask{1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0};
  MatrixD pooled(B, C), dx(B * T_len, C);
  const MatrixD G = random_matrix(rng, B, C);
  for (const bool masked : {false, true}) {
    CAPTURE(masked);
    const std::span<const float> m =
        masked ? std::span<const float>(mask) : std::span<const float>();
    auto loss = [&] {
      ops::mean_pool_forward<double>(pooled, x, T_len, m);
      return linear_functional(pooled, G);
    };
    loss();
    // Against the mean written out.
    const MatrixD first = x.topRows(T_len).colwise().mean();
    CHECK(pooled.row(0).isApprox(first));
    if (masked) {
      CHECK(pooled.row(1).isApprox(0.5 * (x.row(4) + x.row(5))));
      CHECK(pooled.row(2).isApprox(x.row(10)));
    } else {
      CHECK(pooled.row(2).isApprox(x.middleRows(8, T_len).colwise().mean()));
    }
    dx.setConstant(9.0);  // overwritten, not accumulated
    ops::mean_pool_backward<double>(dx, G, T_len, m);
    if (masked) CHECK(dx.row(6).isZero(0.0));
    std::vector<GradTarget> targets{{"x", &x, dx}};
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  }
  const std::vector<float> all_padding{1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1};
  CHECK_THROWS_WITH_AS(ops::mean_pool_forward<double>(pooled, x, T_len, all_padding),
                       doctest::Contains("sequence 1 has no unmasked token"), Error);
  CHECK_THROWS_AS(ops::mean_pool_forward<double>(pooled, x, 5, {}), Error);  // 12 % 5 != 0
  CHECK_THROWS_AS(ops::mean_pool_backward<double>(dx, G, T_len, std::vector<float>(3, 1.0f)),
                  Error);
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

TEST_CASE("blocked attention equals attention to rounding, forward and backward, gradients match") {
  Rng rng(17);
  const Index B = 2, T = 11, H = 4, D = 3;
  for (int variant = 0; variant < 4; ++variant) {
    // 0 causal MHA, 1 bidirectional MHA, 2 causal GQA (2 kv heads) with left and right padding
    // (query 0 of sequence 1 sees no key at all), 3 bidirectional MQA with padding.
    const bool causal = variant % 2 == 0;
    const Index Hkv = variant < 2 ? H : (variant == 2 ? 2 : 1);
    MatrixD mask;
    if (variant >= 2) {
      mask = MatrixD::Ones(B, T);
      mask(0, T - 1) = 0;
      mask(1, 0) = 0;
      mask(1, 1) = 0;
    }
    const Index N = B * T, C = H * D, Ckv = Hkv * D;
    MatrixD q = random_matrix(rng, N, C), k = random_matrix(rng, N, Ckv),
            v = random_matrix(rng, N, Ckv);
    q *= 2.0;  // sharper softmaxes: the online rescaling matters
    const MatrixD G = random_matrix(rng, N, C);
    MatrixD out_ref(N, C), att(B * H * T, T), datt(B * H * T, T);
    MatrixD dq_ref(N, C), dk_ref(N, Ckv), dv_ref(N, Ckv);
    ops::attention_forward<double>(out_ref, att, q, k, v, mask, B, T, H, Hkv, causal);
    ops::attention_backward<double>(dq_ref, dk_ref, dv_ref, datt, G, q, k, v, att, B, T, H, Hkv);
    for (Index tile : {Index(4), Index(5), ops::kMaxAttentionTile}) {
      INFO("variant ", variant, " tile ", tile);
      MatrixD out(N, C), lse(B * H, T), dq(N, C), dk(N, Ckv), dv(N, Ckv);
      ops::blocked_attention_forward<double>(out, lse, q, k, v, mask, B, T, H, Hkv, causal, tile);
      ops::blocked_attention_backward<double>(dq, dk, dv, G, out, lse, q, k, v, mask, B, T, H, Hkv,
                                              causal, tile);
      CHECK((out - out_ref).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((dq - dq_ref).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((dk - dk_ref).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((dv - dv_ref).cwiseAbs().maxCoeff() < 1e-12);
      if (variant == 2) {
        CHECK(std::isinf(lse(1 * H, 0)));  // the query that sees no key
        CHECK(out.row(T).isZero(0.0));
      }
    }
    // Central differences through the blocked op itself.
    MatrixD out(N, C), lse(B * H, T), dq(N, C), dk(N, Ckv), dv(N, Ckv);
    auto loss = [&] {
      ops::blocked_attention_forward<double>(out, lse, q, k, v, mask, B, T, H, Hkv, causal, 4);
      return linear_functional(out, G);
    };
    loss();
    ops::blocked_attention_backward<double>(dq, dk, dv, G, out, lse, q, k, v, mask, B, T, H, Hkv,
                                            causal, 4);
    std::vector<GradTarget> targets{{"q", &q, dq}, {"k", &k, dk}, {"v", &v, dv}};
    INFO("variant ", variant);
    // 1e-5, not the dense test's 1e-6: the doubled q curves the softmax more, and the central
    // difference's own error (about 2e-10 here) is 2e-6 of the 1e-4 floor on small gradients.
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-5);
  }
  MatrixD q = random_matrix(rng, 4, 4), out(4, 4), lse(2, 2);
  CHECK_THROWS_WITH_AS(ops::blocked_attention_forward<double>(out, lse, q, q, q, absent<double>(),
                                                              2, 2, 2, 2, true, 0),
                       doctest::Contains("tile 0"), Error);
  CHECK_THROWS_WITH_AS(ops::blocked_attention_forward<double>(out, lse, q, q, q, absent<double>(),
                                                              2, 2, 2, 2, true, 65),
                       doctest::Contains("tile 65"), Error);
  MatrixD bad_lse(3, 2);
  CHECK_THROWS_WITH_AS(ops::blocked_attention_forward<double>(out, bad_lse, q, q, q,
                                                              absent<double>(), 2, 2, 2, 2, true),
                       doctest::Contains("lse"), Error);
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
  CHECK(ops::cross_entropy_forward<double>(probs, logits2, targets) ==
        doctest::Approx(L).epsilon(1e-12));
  const std::vector<int> all_ignored(N, ops::kIgnoreIndex);
  CHECK(ops::cross_entropy_forward<double>(probs, logits, all_ignored) == 0.0);
  const std::vector<int> bad{0, 5, 0, 0, 0, 0};
  CHECK_THROWS_WITH_AS(ops::cross_entropy_forward<double>(probs, logits, bad),
                       doctest::Contains("target 5"), Error);

  MatrixD pred = random_matrix(rng, 4, 2);
  const MatrixD target = random_matrix(rng, 4, 2);
  auto mse = [&] { return ops::mse_forward<double>(pred, target); };
  CHECK(mse() == doctest::Approx((pred - target).squaredNorm() / 8).epsilon(1e-12));
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

// ---- LLaMA family: RMSNorm, RoPE, SwiGLU, grouped-query attention ----

TEST_CASE("rmsnorm: forward matches a direct loop, input and weight gradients match") {
  Rng rng(21);
  const Index N = 4, C = 6;
  const double eps = 1e-6;
  MatrixD x = random_matrix(rng, N, C), w = random_matrix(rng, 1, C);
  const MatrixD G = random_matrix(rng, N, C);
  MatrixD out(N, C), rstd(N, 1);
  auto loss = [&] {
    ops::rmsnorm_forward<double>(out, rstd, x, w, eps);
    return linear_functional(out, G);
  };
  loss();
  // transformers' LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), written out.
  for (Index n = 0; n < N; ++n) {
    double sumsq = 0;
    for (Index c = 0; c < C; ++c) sumsq += x(n, c) * x(n, c);
    const double r = 1.0 / std::sqrt(sumsq / double(C) + eps);
    CHECK(rstd(n, 0) == doctest::Approx(r).epsilon(1e-14));
    for (Index c = 0; c < C; ++c)
      CHECK(out(n, c) == doctest::Approx(w(0, c) * x(n, c) * r).epsilon(1e-14));
  }
  MatrixD dx(N, C), dw = MatrixD::Zero(1, C);
  ops::rmsnorm_backward<double>(dx, dw, G, x, w, rstd);
  std::vector<GradTarget> targets{{"x", &x, dx}, {"weight", &w, dw}};
  SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);

  // Absent gradients: each alone gives the same values; the weight gradient accumulates.
  MatrixD dx_only(N, C), dw_only = MatrixD::Constant(1, C, 1.0);
  ops::rmsnorm_backward<double>(dx_only, absent<double>(), G, x, w, rstd);
  ops::rmsnorm_backward<double>(absent<double>(), dw_only, G, x, w, rstd);
  CHECK(dx_only.isApprox(dx, 1e-15));
  CHECK(dw_only.isApprox((dw.array() + 1.0).matrix(), 1e-15));
  ops::rmsnorm_backward<double>(absent<double>(), absent<double>(), G, x, w, rstd);

  MatrixD bad_rstd(3, 1), bad_w(1, 5);
  CHECK_THROWS_WITH_AS(ops::rmsnorm_forward<double>(out, bad_rstd, x, w, eps),
                       doctest::Contains("rmsnorm_forward: rstd has shape (3, 1), expected (4, 1)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::rmsnorm_forward<double>(out, rstd, x, bad_w, eps),
                       doctest::Contains("weight has shape (1, 5), expected (1, 6)"), Error);
  MatrixD bad_dx(4, 5);
  CHECK_THROWS_WITH_AS(
      ops::rmsnorm_backward<double>(bad_dx, dw, G, x, w, rstd),
      doctest::Contains("rmsnorm_backward: dinp has shape (4, 5), expected (4, 6)"), Error);
}

TEST_CASE("rope: HF half-rotation layout against a complex rotation; backward inverts forward") {
  Rng rng(22);
  const Index N = 6, H = 3, D = 8;
  const std::vector<int> positions{0, 5, 2, 9, 1, 30};  // not sorted, not 0..N-1
  for (double theta : {10000.0, 500000.0}) {
    INFO("theta ", theta);
    const ops::RopeTable<double> table(D, 32, theta);
    MatrixD x = random_matrix(rng, N, H * D);
    MatrixD y(N, H * D);
    ops::rope_forward<double>(y, x, positions, table, H);
    // Independent formula: the pair (x_i, x_{i+D/2}) as the complex number x_i + i x_{i+D/2},
    // multiplied by exp(i pos theta^(-2i/D)).
    for (Index n = 0; n < N; ++n) {
      for (Index h = 0; h < H; ++h) {
        for (Index i = 0; i < D / 2; ++i) {
          const double angle = positions[n] * std::pow(theta, -2.0 * double(i) / double(D));
          const std::complex<double> z(x(n, h * D + i), x(n, h * D + i + D / 2));
          const std::complex<double> r = z * std::polar(1.0, angle);
          CHECK(y(n, h * D + i) == doctest::Approx(r.real()).epsilon(1e-13));
          CHECK(y(n, h * D + i + D / 2) == doctest::Approx(r.imag()).epsilon(1e-13));
        }
      }
    }
    // In place gives the same; backward of the forward's output is the input (a rotation).
    MatrixD z = x;
    ops::rope_forward<double>(z, z, positions, table, H);
    CHECK(z.isApprox(y, 0.0));
    MatrixD back(N, H * D);
    ops::rope_backward<double>(back, y, positions, table, H);
    CHECK(back.isApprox(x, 1e-14));
    ops::rope_backward<double>(z, z, positions, table, H);
    CHECK(z.isApprox(back, 0.0));

    const MatrixD G = random_matrix(rng, N, H * D);
    auto loss = [&] {
      ops::rope_forward<double>(y, x, positions, table, H);
      return linear_functional(y, G);
    };
    MatrixD dx(N, H * D);
    ops::rope_backward<double>(dx, G, positions, table, H);
    std::vector<GradTarget> targets{{"x", &x, dx}};
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-7);
  }

  // The point of RoPE: the score of q at position m and k at position n depends on m - n only.
  const ops::RopeTable<double> table(D, 64);
  const MatrixD q = random_matrix(rng, 1, D), k = random_matrix(rng, 1, D);
  auto score = [&](int m, int n) {
    MatrixD qr(1, D), kr(1, D);
    ops::rope_forward<double>(qr, q, std::vector<int>{m}, table, 1);
    ops::rope_forward<double>(kr, k, std::vector<int>{n}, table, 1);
    return qr.row(0).dot(kr.row(0));
  };
  CHECK(score(7, 3) == doctest::Approx(score(40, 36)).epsilon(1e-12));
  CHECK(score(3, 7) == doctest::Approx(score(20, 24)).epsilon(1e-12));
  CHECK(score(5, 5) == doctest::Approx(q.row(0).dot(k.row(0))).epsilon(1e-12));

  // A float table rounds the angle as transformers does in float32; cos and sin stay close.
  const ops::RopeTable<float> table_f(D, 32);
  CHECK((table_f.cos.cast<double>() - table.cos.topRows(32)).cwiseAbs().maxCoeff() < 1e-5);
  CHECK((table_f.sin.cast<double>() - table.sin.topRows(32)).cwiseAbs().maxCoeff() < 1e-5);
  CHECK(ops::rope_positions(2, 3) == std::vector<int>{0, 1, 2, 0, 1, 2});

  // Shapes and position ids.
  const ops::RopeTable<double> small(D, 16);
  MatrixD x(N, H * D), out(N, H * D), wrong(N, H * D + 2);
  x.setZero();
  CHECK_THROWS_WITH_AS(ops::rope_forward<double>(wrong, wrong, positions, small, H),
                       doctest::Contains("rope_forward: inp has 26 columns, expected heads * "
                                         "head_dim = 3 * 8 = 24"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::rope_forward<double>(wrong, x, ops::rope_positions(2, 3), small, H),
                       doctest::Contains("out has shape (6, 26), expected (6, 24)"), Error);
  CHECK_THROWS_WITH_AS(ops::rope_forward<double>(out, x, std::vector<int>{0, 1}, small, H),
                       doctest::Contains("2 position ids for 6 tokens"), Error);
  CHECK_THROWS_WITH_AS(
      ops::rope_forward<double>(out, x, positions, small, H),
      doctest::Contains("position id 30 of token 5 is outside the table's [0, 16)"), Error);
  CHECK_THROWS_WITH_AS(
      ops::rope_backward<double>(out, x, std::vector<int>{0, 1, 2, 3, 4, -1}, small, H),
      doctest::Contains("rope_backward: position id -1"), Error);
  CHECK_THROWS_WITH_AS(ops::RopeTable<double>(7, 16), doctest::Contains("positive and even, got 7"),
                       Error);

  // LLaMA 3.1's rope_scaling (factor 8, low 1, high 4, 8192 original positions, D = 128,
  // theta 500000) against the formula written out: short wavelengths kept, long ones divided
  // by 8, the band in between interpolated.
  const std::vector<double> base = ops::rope_inv_freq<double>(128, 500000.0);
  const std::vector<double> scaled = ops::rope_llama3_inv_freq(base, ops::RopeLlama3Scaling{});
  int kept = 0, divided = 0, smoothed = 0;
  for (std::size_t i = 0; i < base.size(); ++i) {
    const double f = std::pow(500000.0, -2.0 * double(i) / 128.0);
    CHECK(base[i] == doctest::Approx(f).epsilon(1e-14));
    const double wavelen = 2 * std::numbers::pi / f;
    double want = f;  // wavelength below 8192 / 4: kept
    if (wavelen > 8192.0) {
      want = f / 8;
      ++divided;
    } else if (wavelen >= 2048.0) {
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      want = (1 - smooth) * f / 8 + smooth * f;
      ++smoothed;
    } else {
      ++kept;
    }
    CHECK(scaled[i] == doctest::Approx(want).epsilon(1e-14));
  }
  CHECK(kept > 0);
  CHECK(divided > 0);
  CHECK(smoothed > 0);
  const ops::RopeTable<double> llama3(scaled, 100);
  CHECK(llama3.head_dim == 128);
  CHECK(llama3.cos(99, 40) == doctest::Approx(std::cos(99 * scaled[40])).epsilon(1e-14));
  CHECK(llama3.sin(99, 63) == doctest::Approx(std::sin(99 * scaled[63])).epsilon(1e-14));
  CHECK_THROWS_AS(ops::rope_llama3_inv_freq(base, ops::RopeLlama3Scaling{8, 4, 1, 8192}), Error);
}

TEST_CASE("swiglu: forward matches silu(gate) * up; gate and up gradients match") {
  Rng rng(23);
  const Index N = 5, F = 7;
  MatrixD gate = random_matrix(rng, N, F, 2.0), up = random_matrix(rng, N, F);
  const MatrixD G = random_matrix(rng, N, F);
  MatrixD out(N, F);
  auto loss = [&] {
    ops::swiglu_forward<double>(out, gate, up);
    return linear_functional(out, G);
  };
  loss();
  for (Index n = 0; n < N; ++n)
    for (Index f = 0; f < F; ++f)
      CHECK(out(n, f) ==
            doctest::Approx(gate(n, f) / (1.0 + std::exp(-gate(n, f))) * up(n, f)).epsilon(1e-14));
  MatrixD dgate(N, F), dup(N, F);
  ops::swiglu_backward<double>(dgate, dup, G, gate, up);
  std::vector<GradTarget> targets{{"gate", &gate, dgate}, {"up", &up, dup}};
  SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
  // Either gradient alone; a gradient written over dout (aliasing) gives the same values.
  MatrixD dgate_only(N, F), dup_alias = G;
  ops::swiglu_backward<double>(dgate_only, absent<double>(), G, gate, up);
  ops::swiglu_backward<double>(absent<double>(), dup_alias, dup_alias, gate, up);
  CHECK(dgate_only.isApprox(dgate, 0.0));
  CHECK(dup_alias.isApprox(dup, 0.0));

  // Saturated gates in float, through Eigen's packet exp (a row of 16) and the scalar one (a row
  // of 3, less than a packet): silu(-200) is (close to) -0, its gradient 0, never NaN.
  for (Index cols : {Index(16), Index(3)}) {
    MatrixF gf = MatrixF::Zero(1, cols), uf = MatrixF::Ones(1, cols), of(1, cols), dgf(1, cols),
            duf(1, cols);
    gf(0, 0) = -200.0f;
    gf(0, 1) = 200.0f;
    ops::swiglu_forward<float>(of, gf, uf);
    ops::swiglu_backward<float>(dgf, duf, uf, gf, uf);
    CHECK(of.allFinite());
    CHECK(dgf.allFinite());
    CHECK(std::abs(of(0, 0)) < 1e-30f);
    CHECK(of(0, 1) == 200.0f);
    CHECK(dgf(0, 1) == 1.0f);
    CHECK(dgf(0, 2) == 0.5f);
  }

  MatrixD bad(N, F + 1);
  CHECK_THROWS_WITH_AS(ops::swiglu_forward<double>(out, gate, bad),
                       doctest::Contains("swiglu_forward: up has shape (5, 8), expected (5, 7)"),
                       Error);
  CHECK_THROWS_WITH_AS(
      ops::swiglu_backward<double>(bad, dup, G, gate, up),
      doctest::Contains("swiglu_backward: dgate has shape (5, 8), expected (5, 7)"), Error);
}

namespace {
// transformers' repeat_kv: kv head g repeated H / Hkv times in a row, (N, Hkv D) -> (N, H D).
MatrixD repeat_kv(const MatrixD& kv, Index H, Index Hkv, Index D) {
  MatrixD out(kv.rows(), H * D);
  for (Index h = 0; h < H; ++h) out.middleCols(h * D, D) = kv.middleCols(h / (H / Hkv) * D, D);
  return out;
}
// The inverse: each kv head's gradient is the sum over its group's query heads.
MatrixD sum_kv(const MatrixD& d, Index H, Index Hkv, Index D) {
  MatrixD out = MatrixD::Zero(d.rows(), Hkv * D);
  for (Index h = 0; h < H; ++h) out.middleCols(h / (H / Hkv) * D, D) += d.middleCols(h * D, D);
  return out;
}
}  // namespace

TEST_CASE("grouped-query attention: equals attention on repeated k/v; gradients match") {
  Rng rng(24);
  const Index B = 2, T = 4, H = 4, D = 3, N = B * T, C = H * D;
  MatrixD mask = MatrixD::Ones(B, T);
  mask(1, 0) = 0;  // left padding
  for (Index Hkv : {Index(4), Index(2), Index(1)}) {
    for (bool causal : {true, false}) {
      INFO("Hkv ", Hkv, ", causal ", causal);
      const Index Ckv = Hkv * D;
      MatrixD q = random_matrix(rng, N, C), k = random_matrix(rng, N, Ckv),
              v = random_matrix(rng, N, Ckv);
      const MatrixD G = random_matrix(rng, N, C);
      MatrixD out(N, C), att(B * H * T, T);
      auto loss = [&] {
        ops::attention_forward<double>(out, att, q, k, v, mask, B, T, H, Hkv, causal);
        return linear_functional(out, G);
      };
      loss();
      // Reference: multi-head attention on repeat_kv(k), repeat_kv(v).
      const MatrixD k_rep = repeat_kv(k, H, Hkv, D), v_rep = repeat_kv(v, H, Hkv, D);
      MatrixD out_ref(N, C), att_ref(B * H * T, T);
      ops::attention_forward<double>(out_ref, att_ref, q, k_rep, v_rep, mask, B, T, H, causal);
      CHECK(out.isApprox(out_ref, 1e-14));
      CHECK(att.isApprox(att_ref, 1e-14));

      // Garbage in dk/dv must not leak into the result (the first head of a group writes).
      MatrixD dq(N, C), dk = MatrixD::Constant(N, Ckv, 7.0), dv = MatrixD::Constant(N, Ckv, 7.0),
                        datt(B * H * T, T);
      ops::attention_backward<double>(dq, dk, dv, datt, G, q, k, v, att, B, T, H, Hkv);
      MatrixD dq_ref(N, C), dk_ref(N, C), dv_ref(N, C), datt_ref(B * H * T, T);
      ops::attention_backward<double>(dq_ref, dk_ref, dv_ref, datt_ref, G, q, k_rep, v_rep, att_ref,
                                      B, T, H);
      CHECK(dq.isApprox(dq_ref, 1e-13));
      CHECK(dk.isApprox(sum_kv(dk_ref, H, Hkv, D), 1e-13));
      CHECK(dv.isApprox(sum_kv(dv_ref, H, Hkv, D), 1e-13));

      std::vector<GradTarget> targets{{"q", &q, dq}, {"k", &k, dk}, {"v", &v, dv}};
      SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);
    }
  }

  MatrixD q(N, C), kv3(N, 3 * D), kv2(N, 2 * D), out(N, C), att(B * H * T, T);
  q.setZero();
  CHECK_THROWS_WITH_AS(
      ops::attention_forward<double>(out, att, q, kv3, kv3, absent<double>(), B, T, H, 3, false),
      doctest::Contains("H=4 query heads are not a multiple of Hkv=3 key/value heads"), Error);
  CHECK_THROWS_WITH_AS(
      ops::attention_forward<double>(out, att, q, kv3, kv3, absent<double>(), B, T, H, 2, false),
      doctest::Contains("attention_forward: k has shape (8, 9), expected (8, 6)"), Error);
  MatrixD dq(N, C), datt(B * H * T, T);
  CHECK_THROWS_WITH_AS(
      ops::attention_backward<double>(dq, kv3, kv2, datt, q, q, kv2, kv2, att, B, T, H, 2),
      doctest::Contains("attention_backward: dk has shape (8, 9), expected (8, 6)"), Error);
}

TEST_CASE("attention-probability dropout: (P * M) v, gradients match, all-ones M is no dropout") {
  Rng rng(31);
  const Index B = 2, T = 5, H = 2, D = 3, N = B * T, C = H * D;
  MatrixD mask = MatrixD::Ones(B, T);
  mask(1, 4) = 0;  // right padding
  for (Index Hkv : {Index(2), Index(1)}) {
    INFO("Hkv ", Hkv);
    const Index Ckv = Hkv * D;
    MatrixD q = random_matrix(rng, N, C), k = random_matrix(rng, N, Ckv),
            v = random_matrix(rng, N, Ckv);
    const MatrixD G = random_matrix(rng, N, C);
    // Dropout factors as a layer draws them: 0 or 1 / (1 - p), p = 0.2.
    MatrixD drop(B * H * T, T);
    for (Index i = 0; i < drop.size(); ++i) drop.data()[i] = rng.uniform() < 0.2 ? 0.0 : 1.25;
    MatrixD out(N, C), att(B * H * T, T);
    auto loss = [&] {
      ops::attention_forward<double>(out, att, q, k, v, mask, B, T, H, Hkv, false, drop);
      return linear_functional(out, G);
    };
    loss();
    // The output is the dropped probabilities times v, head by head; att keeps P undropped.
    MatrixD plain(N, C), att_plain(B * H * T, T);
    ops::attention_forward<double>(plain, att_plain, q, k, v, mask, B, T, H, Hkv, false);
    CHECK(att == att_plain);
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        const Index bh = b * H + h, g = h / (H / Hkv);
        const MatrixD expect =
            att.block(bh * T, 0, T, T).cwiseProduct(drop.block(bh * T, 0, T, T)) *
            v.block(b * T, g * D, T, D);
        CHECK(out.block(b * T, h * D, T, D).isApprox(expect, 1e-14));
      }
    MatrixD dq(N, C), dk(N, Ckv), dv(N, Ckv), datt(B * H * T, T);
    ops::attention_backward<double>(dq, dk, dv, datt, G, q, k, v, att, B, T, H, Hkv, drop);
    std::vector<GradTarget> targets{{"q", &q, dq}, {"k", &k, dk}, {"v", &v, dv}};
    SORA_CHECK_GRADS(gradcheck(loss, targets), 1e-6);

    // M = 1 everywhere is no dropout at all, forward and backward.
    const MatrixD ones = MatrixD::Ones(B * H * T, T);
    MatrixD out1(N, C), dq1(N, C), dk1(N, Ckv), dv1(N, Ckv), dq0(N, C), dk0(N, Ckv), dv0(N, Ckv);
    ops::attention_forward<double>(out1, att, q, k, v, mask, B, T, H, Hkv, false, ones);
    ops::attention_forward<double>(plain, att_plain, q, k, v, mask, B, T, H, Hkv, false);
    CHECK(out1.isApprox(plain, 1e-14));
    ops::attention_backward<double>(dq1, dk1, dv1, datt, G, q, k, v, att, B, T, H, Hkv, ones);
    ops::attention_backward<double>(dq0, dk0, dv0, datt, G, q, k, v, att, B, T, H, Hkv);
    CHECK(dq1.isApprox(dq0, 1e-14));
    CHECK(dk1.isApprox(dk0, 1e-14));
    CHECK(dv1.isApprox(dv0, 1e-14));
  }
  MatrixD q(N, C), out(N, C), att(B * H * T, T), bad(3, T);
  q.setZero();
  CHECK_THROWS_WITH_AS(
      ops::attention_forward<double>(out, att, q, q, q, absent<double>(), B, T, H, H, false, bad),
      doctest::Contains("drop has shape (3, 5), expected (20, 5)"), Error);
}

TEST_CASE("ops whose outputs must not alias an input check it") {
  // out = inp W^T in place would read rows of inp already overwritten: a silent wrong answer.
  Rng rng(31);
  MatrixD x = random_matrix(rng, 4, 4), W = random_matrix(rng, 4, 4);
  const MatrixD x_before = x;
  CHECK_THROWS_WITH_AS(ops::linear_forward<double>(x, x, W),
                       doctest::Contains("linear_forward: out must not alias inp"), Error);
  CHECK_THROWS_WITH_AS(ops::linear_forward<double>(W, x, W),
                       doctest::Contains("out must not alias weight"), Error);
  // A block that overlaps part of the input counts too; disjoint blocks of one buffer do not.
  MatrixD buffer = random_matrix(rng, 8, 4);
  CHECK_THROWS_AS(
      ops::linear_forward<double>(buffer.middleRows(2, 4), buffer.topRows(4), W, absent<double>()),
      Error);
  ops::linear_forward<double>(buffer.bottomRows(4), buffer.topRows(4), W, absent<double>());
  CHECK(x == x_before);  // a rejected call changes nothing
  MatrixD dout = random_matrix(rng, 4, 4), dW = MatrixD::Zero(4, 4);
  CHECK_THROWS_WITH_AS(ops::linear_backward<double>(dout, dW, absent<double>(), dout, x, W),
                       doctest::Contains("linear_backward: dinp must not alias dout"), Error);
  MatrixD A = random_matrix(rng, 2, 4), B = random_matrix(rng, 4, 2), h(4, 2), u(4, 2);
  CHECK_THROWS_WITH_AS(ops::lowrank_forward<double>(x, h, u, x, A, B, absent<double>(), 1.0),
                       doctest::Contains("lowrank_forward: out must not alias inp"), Error);
}
