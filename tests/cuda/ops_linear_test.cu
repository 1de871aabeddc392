// The GEMM-based op twins (cuda/ops/linear.cuh, cuda/ops/attention.cuh) against their CPU
// references in ops/: linear_forward / linear_backward, lowrank_forward / lowrank_backward and
// attention_forward / attention_backward, in float and double, on odd sizes. Every output and
// gradient is compared; accumulated (+=) outputs start from the same random values on both
// sides and overwritten (=) ones start from noise on the device; absent arguments (no bias, no
// input gradient, frozen weights, LoRA's missing gate); strided views (blocks of wider tensors,
// whose margins must stay untouched); causal and bidirectional attention with key padding,
// including queries that see no key at all; grouped-query attention (fewer key/value heads);
// and shape errors.
//
// Compiled into sora_test_cuda (main() in cuda_test.cu skips the program without a GPU).

#include <doctest/doctest.h>

#include <climits>
#include <cmath>
#include <string>
#include <type_traits>

#include "sora/cuda/gemm.cuh"
#include "sora/cuda/ops/attention.cuh"
#include "sora/cuda/ops/linear.cuh"
#include "sora/ops/attention.hpp"
#include "sora/ops/linear.hpp"
#include "support.cuh"

namespace {

namespace cu = sora::cuda;
namespace ops = sora::ops;
using cu::testing::dev;
using cu::testing::host;
using cu::testing::random_matrix;
using cu::testing::tol;
using sora::Index;
using sora::Matrix;

// A device copy of a host matrix, either a whole tensor (strided = false) or a block of a
// wider tensor whose margin holds noise (strided = true): the view's row stride is then
// larger than its width, and margin_intact() tells whether an op wrote outside the view.
template <class T>
struct Dev {
  Matrix<T> big_host;
  cu::DeviceTensor<T> big;
  cu::DeviceView<T> view;
  Index r0 = 0, c0 = 0;

  Dev(const Matrix<T>& m, bool strided, unsigned seed) {
    if (strided) {
      r0 = 1;
      c0 = 3;
      big_host = random_matrix<T>(m.rows() + 3, m.cols() + 5, seed);
    } else {
      big_host = m;
    }
    big_host.block(r0, c0, m.rows(), m.cols()) = m;
    big = dev(big_host);
    view = big.view().block(r0, c0, m.rows(), m.cols());
  }
  Matrix<T> get() const { return host(view); }
  bool margin_intact() const {
    Matrix<T> now = host(big.view());
    now.block(r0, c0, view.rows, view.cols) = big_host.block(r0, c0, view.rows, view.cols);
    return now == big_host;
  }
};

// Where the CPU result is exactly zero (masked probabilities, queries that see no key), the
// device's must be exactly zero too, not merely small.
template <class T>
bool zeros_match(const Matrix<T>& got, const Matrix<T>& want) {
  for (Index i = 0; i < want.size(); ++i)
    if (want.data()[i] == T(0) && got.data()[i] != T(0)) return false;
  return true;
}

}  // namespace

TEST_CASE_TEMPLATE("cuda ops/linear_forward against CPU", T, float, double) {
  const Index N = 37, C = 24, OC = 19;
  const Matrix<T> x = random_matrix<T>(N, C, 1), W = random_matrix<T>(OC, C, 2),
                  b = random_matrix<T>(1, OC, 3);
  for (bool strided : {false, true}) {
    INFO("strided ", strided);
    Dev<T> x_d(x, strided, 10), W_d(W, strided, 11), b_d(b, strided, 12);
    Dev<T> out_d(random_matrix<T>(N, OC, 13), strided, 14);  // noise: out is overwritten

    Matrix<T> want(N, OC);
    ops::linear_forward<T>(want, x, W, b);
    cu::linear_forward<T>(out_d.view, x_d.view, W_d.view, b_d.view);
    CHECK_TWIN(out_d.get(), want, tol<T>());
    CHECK(out_d.margin_intact());

    // No bias: the 3-argument form and an explicit absent bias.
    ops::linear_forward<T>(want, x, W);
    cu::linear_forward<T>(out_d.view, x_d.view, W_d.view);
    CHECK_TWIN(out_d.get(), want, tol<T>());
    cu::upload(out_d.view, random_matrix<T>(N, OC, 15), cu::context().stream());
    cu::linear_forward<T>(out_d.view, x_d.view, W_d.view, cu::ConstView<T>());
    CHECK_TWIN(out_d.get(), want, tol<T>());
    CHECK(out_d.margin_intact());
  }
  // Device tensors pass where views are expected (as the layers call the ops).
  auto x_t = dev(x), W_t = dev(W), b_t = dev(b);
  cu::DeviceTensor<T> out_t(N, OC);
  Matrix<T> want(N, OC);
  ops::linear_forward<T>(want, x, W, b);
  cu::linear_forward<T>(out_t, x_t, W_t, b_t);
  CHECK_TWIN(out_t.to_host(cu::context().stream()), want, tol<T>());
}

TEST_CASE_TEMPLATE("cuda ops/linear_backward against CPU", T, float, double) {
  const Index N = 37, C = 24, OC = 19;
  const Matrix<T> x = random_matrix<T>(N, C, 21), W = random_matrix<T>(OC, C, 22),
                  G = random_matrix<T>(N, OC, 23);
  const Matrix<T> dW0 = random_matrix<T>(OC, C, 24), db0 = random_matrix<T>(1, OC, 25);
  const Matrix<T> noise = random_matrix<T>(N, C, 26);
  // want_dx, want_dW, want_db: all present, frozen weight (no dW, no db), no input gradient.
  const bool variants[][3] = {
      {true, true, true}, {true, false, false}, {false, true, true}, {true, true, false}};
  for (bool strided : {false, true}) {
    for (const auto& wanted : variants) {
      const bool want_dx = wanted[0], want_dW = wanted[1], want_db = wanted[2];
      INFO("strided ", strided, " dinp ", want_dx, " dweight ", want_dW, " dbias ", want_db);
      Matrix<T> dx = noise, dW = dW0, db = db0;
      ops::linear_backward<T>(want_dx ? sora::MatrixRef<T>(dx) : ops::absent<T>(),
                              want_dW ? sora::MatrixRef<T>(dW) : ops::absent<T>(),
                              want_db ? sora::MatrixRef<T>(db) : ops::absent<T>(), G, x, W);

      Dev<T> x_d(x, strided, 30), W_d(W, strided, 31), G_d(G, strided, 32);
      Dev<T> dx_d(noise, strided, 33), dW_d(dW0, strided, 34), db_d(db0, strided, 35);
      cu::linear_backward<T>(
          want_dx ? dx_d.view : cu::DeviceView<T>(), want_dW ? dW_d.view : cu::DeviceView<T>(),
          want_db ? db_d.view : cu::DeviceView<T>(), G_d.view, x_d.view, W_d.view);
      // Absent gradients are untouched on both sides (dx == noise, dW == dW0, db == db0).
      CHECK_TWIN(dx_d.get(), dx, tol<T>());
      CHECK_TWIN(dW_d.get(), dW, tol<T>());
      CHECK_TWIN(db_d.get(), db, tol<T>());
      CHECK(dx_d.margin_intact());
      CHECK(dW_d.margin_intact());
      CHECK(db_d.margin_intact());
    }
  }
}

TEST_CASE_TEMPLATE("cuda ops/lowrank_forward against CPU", T, float, double) {
  const Index N = 37, C = 24, OC = 19, R = 5;
  const T s = T(1.7);
  const Matrix<T> x = random_matrix<T>(N, C, 41), A = random_matrix<T>(R, C, 42),
                  Bm = random_matrix<T>(OC, R, 43), g = random_matrix<T>(1, R, 44),
                  out0 = random_matrix<T>(N, OC, 45);
  for (bool strided : {false, true}) {
    for (bool gated : {true, false}) {  // SoRA / AdaLoRA, LoRA
      INFO("strided ", strided, " gated ", gated);
      Matrix<T> out = out0, h(N, R), u(N, R);
      if (gated) {
        ops::lowrank_forward<T>(out, h, u, x, A, Bm, g, s);
      } else {
        ops::lowrank_forward<T>(out, h, u, x, A, Bm, ops::absent<T>(), s);
      }

      Dev<T> x_d(x, strided, 50), A_d(A, strided, 51), B_d(Bm, strided, 52), g_d(g, strided, 53);
      Dev<T> out_d(out0, strided, 54);
      Dev<T> h_d(random_matrix<T>(N, R, 55), strided, 56),
          u_d(random_matrix<T>(N, R, 57), strided, 58);
      cu::lowrank_forward<T>(out_d.view, h_d.view, u_d.view, x_d.view, A_d.view, B_d.view,
                             gated ? cu::ConstView<T>(g_d.view) : cu::ConstView<T>(), s);
      CHECK_TWIN(out_d.get(), out, tol<T>());
      CHECK_TWIN(h_d.get(), h, tol<T>());
      CHECK_TWIN(u_d.get(), u, tol<T>());
      CHECK(out_d.margin_intact());
      CHECK(h_d.margin_intact());
      CHECK(u_d.margin_intact());
    }
  }
}

TEST_CASE_TEMPLATE("cuda ops/lowrank_backward against CPU", T, float, double) {
  const Index N = 37, C = 24, OC = 19, R = 5;
  const T s = T(0.6);
  const Matrix<T> x = random_matrix<T>(N, C, 61), A = random_matrix<T>(R, C, 62),
                  Bm = random_matrix<T>(OC, R, 63), g = random_matrix<T>(1, R, 64),
                  G = random_matrix<T>(N, OC, 65);
  const Matrix<T> dx0 = random_matrix<T>(N, C, 66), dA0 = random_matrix<T>(R, C, 67),
                  dB0 = random_matrix<T>(OC, R, 68), dg0 = random_matrix<T>(1, R, 69),
                  dh0 = random_matrix<T>(N, R, 70);
  // gated, want dinp, want dA / dB, want dg (only when gated)
  const bool variants[][4] = {
      {true, true, true, true},    // SoRA, everything trained
      {true, true, true, false},   // gate frozen
      {true, false, false, true},  // A and B frozen, no input gradient (first layer)
      {false, true, true, false},  // LoRA
      {false, false, true, false}  // LoRA, no input gradient
  };
  for (bool strided : {false, true}) {
    for (const auto& v : variants) {
      const bool gated = v[0], want_dx = v[1], want_AB = v[2], want_dg = v[3];
      INFO("strided ", strided, " gated ", gated, " dinp ", want_dx, " dA/dB ", want_AB, " dg ",
           want_dg);
      // Saved values from the CPU forward, so that both backwards start from the same h, u.
      Matrix<T> out = Matrix<T>::Zero(N, OC), h(N, R), u(N, R);
      if (gated) {
        ops::lowrank_forward<T>(out, h, u, x, A, Bm, g, s);
      } else {
        ops::lowrank_forward<T>(out, h, u, x, A, Bm, ops::absent<T>(), s);
      }

      Matrix<T> dx = dx0, dA = dA0, dB = dB0, dg = dg0, dh = dh0;
      ops::lowrank_backward<T>(
          want_dx ? sora::MatrixRef<T>(dx) : ops::absent<T>(),
          want_AB ? sora::MatrixRef<T>(dA) : ops::absent<T>(),
          want_AB ? sora::MatrixRef<T>(dB) : ops::absent<T>(),
          want_dg ? sora::MatrixRef<T>(dg) : ops::absent<T>(), dh, G, x, h, u, A, Bm,
          gated ? sora::ConstMatrixRef<T>(g) : sora::ConstMatrixRef<T>(ops::absent<T>()), s);

      Dev<T> x_d(x, strided, 80), A_d(A, strided, 81), B_d(Bm, strided, 82), g_d(g, strided, 83),
          G_d(G, strided, 84), h_d(h, strided, 85), u_d(u, strided, 86);
      Dev<T> dx_d(dx0, strided, 87), dA_d(dA0, strided, 88), dB_d(dB0, strided, 89),
          dg_d(dg0, strided, 90), dh_d(dh0, strided, 91);
      cu::lowrank_backward<T>(
          want_dx ? dx_d.view : cu::DeviceView<T>(), want_AB ? dA_d.view : cu::DeviceView<T>(),
          want_AB ? dB_d.view : cu::DeviceView<T>(), want_dg ? dg_d.view : cu::DeviceView<T>(),
          dh_d.view, G_d.view, x_d.view, h_d.view, u_d.view, A_d.view, B_d.view,
          gated ? cu::ConstView<T>(g_d.view) : cu::ConstView<T>(), s);
      CHECK_TWIN(dx_d.get(), dx, tol<T>());
      CHECK_TWIN(dA_d.get(), dA, tol<T>());
      CHECK_TWIN(dB_d.get(), dB, tol<T>());
      CHECK_TWIN(dg_d.get(), dg, tol<T>());
      CHECK_TWIN(dh_d.get(), dh, tol<T>());
      for (const Dev<T>* d : {&dx_d, &dA_d, &dB_d, &dg_d, &dh_d}) CHECK(d->margin_intact());
    }
  }
}

namespace {

struct AttentionCase {
  Index B, T, H, C;
  bool causal;
  int padding;    // 0: no mask; 1: right and left padding; 2: also a sequence with no key at all
  Index Hkv = 0;  // key/value heads (grouped-query attention); 0: H
};

// A (B, T) key mask, or empty. Sequence 0 is right-padded (its last two keys); sequence 1 is
// left-padded by three keys, so that under the causal mask its first three queries see no key;
// with padding 2 the last sequence is entirely padding (every query of it sees no key).
template <class T>
Matrix<T> make_mask(const AttentionCase& ac) {
  if (ac.padding == 0) return Matrix<T>();
  Matrix<T> m = Matrix<T>::Ones(ac.B, ac.T);
  m(0, ac.T - 1) = 0;
  m(0, ac.T - 2) = 0;
  for (Index j = 0; j < 3; ++j) m(1, j) = 0;
  if (ac.padding == 2) m.row(ac.B - 1).setZero();
  return m;
}

template <class T>
void check_attention(const AttentionCase& ac, bool strided) {
  const Index N = ac.B * ac.T, C = ac.C, BHT = ac.B * ac.H * ac.T;
  const Index Hkv = ac.Hkv > 0 ? ac.Hkv : ac.H, Ckv = C / ac.H * Hkv;
  INFO("B ", ac.B, " T ", ac.T, " H ", ac.H, " Hkv ", Hkv, " C ", C, " causal ", ac.causal,
       " padding ", ac.padding, " strided ", strided);
  const Matrix<T> q = random_matrix<T>(N, C, 101, 1.5), k = random_matrix<T>(N, Ckv, 102, 1.5),
                  v = random_matrix<T>(N, Ckv, 103), G = random_matrix<T>(N, C, 104);
  const Matrix<T> mask = make_mask<T>(ac);

  Matrix<T> out(N, C), att(BHT, ac.T);
  ops::attention_forward<T>(out, att, q, k, v, mask, ac.B, ac.T, ac.H, Hkv, ac.causal);
  Matrix<T> dq(N, C), dk(N, Ckv), dv(N, Ckv), datt(BHT, ac.T);
  ops::attention_backward<T>(dq, dk, dv, datt, G, q, k, v, att, ac.B, ac.T, ac.H, Hkv);

  Dev<T> q_d(q, strided, 110), k_d(k, strided, 111), v_d(v, strided, 112), G_d(G, strided, 113);
  Dev<T> out_d(random_matrix<T>(N, C, 114), strided, 115);
  Dev<T> att_d(random_matrix<T>(BHT, ac.T, 116), strided, 117);
  cu::DeviceTensor<T> mask_t;
  cu::ConstView<T> mask_v;  // absent unless padded
  if (mask.size() > 0) {
    mask_t = dev(mask);
    mask_v = mask_t.view();
  }
  cu::attention_forward<T>(out_d.view, att_d.view, q_d.view, k_d.view, v_d.view, mask_v, ac.B, ac.T,
                           ac.H, Hkv, ac.causal);
  const Matrix<T> out_got = out_d.get(), att_got = att_d.get();
  CHECK_TWIN(out_got, out, tol<T>());
  CHECK_TWIN(att_got, att, tol<T>());
  CHECK(zeros_match(out_got, out));
  CHECK(zeros_match(att_got, att));
  CHECK(out_d.margin_intact());
  CHECK(att_d.margin_intact());

  // The backward from the CPU's probabilities, so that it is compared on the same inputs.
  Dev<T> attin_d(att, strided, 120);
  Dev<T> dq_d(random_matrix<T>(N, C, 121), strided, 122),
      dk_d(random_matrix<T>(N, Ckv, 123), strided, 124);
  Dev<T> dv_d(random_matrix<T>(N, Ckv, 125), strided, 126);
  Dev<T> datt_d(random_matrix<T>(BHT, ac.T, 127), strided, 128);
  cu::attention_backward<T>(dq_d.view, dk_d.view, dv_d.view, datt_d.view, G_d.view, q_d.view,
                            k_d.view, v_d.view, attin_d.view, ac.B, ac.T, ac.H, Hkv);
  const Matrix<T> dq_got = dq_d.get(), dk_got = dk_d.get(), dv_got = dv_d.get(),
                  datt_got = datt_d.get();
  CHECK_TWIN(dq_got, dq, tol<T>());
  CHECK_TWIN(dk_got, dk, tol<T>());
  CHECK_TWIN(dv_got, dv, tol<T>());
  CHECK_TWIN(datt_got, datt, tol<T>());
  CHECK(zeros_match(dq_got, dq));
  CHECK(zeros_match(datt_got, datt));
  for (const Dev<T>* d : {&dq_d, &dk_d, &dv_d, &datt_d}) CHECK(d->margin_intact());
}

}  // namespace

TEST_CASE_TEMPLATE("cuda ops/attention against CPU", T, float, double) {
  // T = 7 (less than a warp), T = 45 (each lane takes two keys); D = 8 and D = 6.
  const AttentionCase sizes[] = {{2, 7, 3, 24, false, 0}, {3, 45, 2, 12, false, 0}};
  for (const AttentionCase& size : sizes) {
    for (bool causal : {true, false}) {
      for (int padding : {0, 1, 2}) {
        AttentionCase ac = size;
        ac.causal = causal;
        ac.padding = padding;
        check_attention<T>(ac, /*strided=*/false);
        check_attention<T>(ac, /*strided=*/true);
      }
    }
  }
}

TEST_CASE_TEMPLATE("cuda ops/grouped-query attention against CPU", T, float, double) {
  // H = 4 query heads over Hkv = 2 and Hkv = 1 key/value heads (D = 6); T = 7 and T = 45.
  const AttentionCase sizes[] = {{2, 7, 4, 24, false, 0, 2}, {3, 45, 4, 24, false, 0, 1}};
  for (const AttentionCase& size : sizes) {
    for (bool causal : {true, false}) {
      for (int padding : {0, 1}) {
        AttentionCase ac = size;
        ac.causal = causal;
        ac.padding = padding;
        check_attention<T>(ac, /*strided=*/false);
        check_attention<T>(ac, /*strided=*/true);
      }
    }
  }
  using D = T;
  cu::DeviceTensor<D> q(8, 24), kv3(8, 18), out(8, 24), att(2 * 4 * 4, 4);
  CHECK_THROWS_WITH_AS(
      cu::attention_forward<D>(out, att, q, kv3, kv3, cu::ConstView<D>(), 2, 4, 4, 3, false),
      doctest::Contains("H=4 query heads are not a multiple of Hkv=3 key/value heads"),
      sora::Error);
  CHECK_THROWS_WITH_AS(
      cu::attention_forward<D>(out, att, q, kv3, kv3, cu::ConstView<D>(), 2, 4, 4, 2, false),
      doctest::Contains("attention_forward: k has shape (8, 18), expected (8, 12)"), sora::Error);
}

TEST_CASE("cuda ops/attention: queries that see no key get zero probabilities and output") {
  // Causal with left padding: queries 0..2 of sequence 1 see no key at all.
  const AttentionCase ac{2, 7, 3, 24, true, 1};
  const Index N = ac.B * ac.T, BHT = ac.B * ac.H * ac.T;
  auto q = dev(random_matrix<double>(N, ac.C, 131)), k = dev(random_matrix<double>(N, ac.C, 132)),
       v = dev(random_matrix<double>(N, ac.C, 133));
  auto mask = dev(make_mask<double>(ac));
  cu::DeviceTensor<double> out(N, ac.C), att(BHT, ac.T);
  cu::attention_forward<double>(out, att, q, k, v, mask, ac.B, ac.T, ac.H, ac.causal);
  const Matrix<double> P = att.to_host(cu::context().stream()),
                       O = out.to_host(cu::context().stream());
  for (Index h = 0; h < ac.H; ++h)
    for (Index t = 0; t < 3; ++t) CHECK(P.row((1 * ac.H + h) * ac.T + t).isZero(0.0));
  for (Index t = 0; t < 3; ++t) CHECK(O.row(1 * ac.T + t).isZero(0.0));
  // Every other row is a distribution over its visible keys.
  for (Index t = 3; t < ac.T; ++t)
    CHECK(std::abs(P.row((1 * ac.H) * ac.T + t).sum() - 1.0) < 1e-12);
}

TEST_CASE("cuda ops/GEMM-based ops reject bad shapes with the CPU's messages") {
  using D = double;
  cu::DeviceTensor<D> out(4, 3), x(4, 5), W(3, 6), W2(3, 5), b2(1, 4);
  CHECK_THROWS_WITH_AS(
      cu::linear_forward<D>(out, x, W, cu::ConstView<D>()),
      doctest::Contains("linear_forward: weight has shape (3, 6), expected (3, 5)"), sora::Error);
  CHECK_THROWS_WITH_AS(cu::linear_forward<D>(out, x, W2, b2),
                       doctest::Contains("bias has shape (1, 4), expected (1, 3)"), sora::Error);
  cu::DeviceTensor<D> dx(4, 4);
  CHECK_THROWS_AS(cu::linear_backward<D>(dx, cu::DeviceView<D>(), cu::DeviceView<D>(), out, x, W2),
                  sora::Error);

  cu::DeviceTensor<D> A(2, 5), B(3, 3), h(4, 2), u(4, 2), dg(1, 2);
  CHECK_THROWS_WITH_AS(cu::lowrank_forward<D>(out, h, u, x, A, B, cu::ConstView<D>(), 1.0),
                       doctest::Contains("lowrank_forward: B has shape (3, 3), expected (3, 2)"),
                       sora::Error);
  cu::DeviceTensor<D> B2(3, 2), g3(1, 3);
  CHECK_THROWS_AS(cu::lowrank_forward<D>(out, h, u, x, A, B2, g3, 1.0), sora::Error);
  CHECK_THROWS_WITH_AS(
      cu::lowrank_backward<D>(cu::DeviceView<D>(), cu::DeviceView<D>(), cu::DeviceView<D>(), dg, h,
                              out, x, h, u, A, B2, cu::ConstView<D>(), 1.0),
      doctest::Contains("an ungated product has no gate gradient"), sora::Error);

  cu::DeviceTensor<D> q(6, 4), att(2 * 2 * 3, 3);
  CHECK_THROWS_WITH_AS(
      cu::attention_forward<D>(q, att, q, q, q, cu::ConstView<D>(), 2, 4, 2, false),
      doctest::Contains("inputs (6, 4)"), sora::Error);
  cu::DeviceTensor<D> bad_mask(2, 4);
  CHECK_THROWS_WITH_AS(cu::attention_forward<D>(q, att, q, q, q, bad_mask, 2, 3, 2, false),
                       doctest::Contains("key_mask has shape (2, 4), expected (2, 3)"),
                       sora::Error);
  cu::DeviceTensor<D> datt(2 * 2 * 3, 4);
  CHECK_THROWS_WITH_AS(cu::attention_backward<D>(q, q, q, datt, q, q, q, q, att, 2, 3, 2),
                       doctest::Contains("datt has shape (12, 4), expected (12, 3)"), sora::Error);
}

// cuBLAS takes int sizes: a 64-bit size over INT_MAX must be an error naming the sizes, not a
// wrapped cast. The check comes before any device work, so null operands never get used.
TEST_CASE("cuda ops/GEMM sizes over INT_MAX are rejected with the sizes named") {
  const Index big = Index(INT_MAX) + 1;
  const std::string e = cu::testing::error_of([&] {
    cu::gemm_strided_batched<float>(false, false, 2, 3, big, 1.0f, nullptr, big, 0, nullptr, 3, 0,
                                    0.0f, nullptr, 3, 0, 1);
  });
  CHECK(e.find("cuda::gemm_strided_batched") != std::string::npos);
  CHECK(e.find("K = 2147483648") != std::string::npos);
  CHECK(e.find("lda = 2147483648") != std::string::npos);
  CHECK(e.find("M = 2, N = 3") != std::string::npos);
  CHECK(cu::testing::error_of([] {
          cu::detail::check_int_sizes("op", "x", {{"a", Index(INT_MAX)}, {"b", 0}});
        }).empty());
  CHECK(cu::testing::error_of([] {
          cu::detail::check_int_sizes("op", "x", {{"a", -1}});
        }).find("a = -1") != std::string::npos);
}
