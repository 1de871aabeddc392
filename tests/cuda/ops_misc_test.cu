// The non-GEMM op twins of cuda/ops/ against their CPU references in ops/: embedding,
// position embedding, layernorm, GELU (both forms), tanh, softmax, dropout, residual,
// cross-entropy, MSE, gather / scatter of rows, and the LLaMA family's RMSNorm, RoPE and SwiGLU.
// For every op: random inputs in float and double, every output and gradient, accumulation (+=) on
// pre-filled buffers, absent optional arguments, the in-place forms the model uses, strided views,
// odd sizes (N = 37 is not a multiple of the 8 rows of a block, C = 24 and C = 23 leave lanes and
// packs partly used), and bad ids / wrong shapes throwing sora::Error with the CPU's message.
//
// Tolerances (scaled_error, relative to the largest reference element): 1e-12 in double,
// 1e-5 in float. The two backends sum in different orders and their exp / tanh / erf differ
// by an ulp or two, nothing more.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sora/core/rng.hpp"
#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/activation.cuh"
#include "sora/cuda/ops/dropout.cuh"
#include "sora/cuda/ops/embedding.cuh"
#include "sora/cuda/ops/layernorm.cuh"
#include "sora/cuda/ops/loss.cuh"
#include "sora/cuda/ops/pool.cuh"
#include "sora/cuda/ops/rmsnorm.cuh"
#include "sora/cuda/ops/rope.cuh"
#include "sora/cuda/ops/swiglu.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/activation.hpp"
#include "sora/ops/dropout.hpp"
#include "sora/ops/embedding.hpp"
#include "sora/ops/layernorm.hpp"
#include "sora/ops/loss.hpp"
#include "sora/ops/pool.hpp"
#include "sora/ops/rmsnorm.hpp"
#include "sora/ops/rope.hpp"
#include "sora/ops/swiglu.hpp"
#include "support.cuh"

namespace {

namespace cu = sora::cuda;
namespace ops = sora::ops;
using cu::testing::dev;
using cu::testing::error_of;
using cu::testing::host;
using cu::testing::random_matrix;
using cu::testing::tol;
using sora::Index;
using sora::Matrix;

cu::DeviceIndices indices(const std::vector<int>& ids) {
  cu::DeviceIndices d;
  d.assign(ids);
  return d;
}

std::vector<int> random_ids(Index n, int hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(0, hi - 1);
  std::vector<int> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = dist(gen);
  return ids;
}

// A matrix stored at columns [2, 2 + c) of a wider device tensor: a view with stride c + 5
// (the strided kernel paths). The other columns hold random values that must not change.
template <class T>
struct Strided {
  cu::DeviceTensor<T> big;  // (r, c + 5)
  cu::DeviceView<T> view;   // (r, c)
};

template <class T>
Strided<T> strided(const Matrix<T>& m, unsigned seed) {
  Matrix<T> b = random_matrix<T>(m.rows(), m.cols() + 5, seed);
  b.block(0, 2, m.rows(), m.cols()) = m;
  Strided<T> s{dev(b), {}};
  s.view = s.big.view().block(0, 2, m.rows(), m.cols());
  return s;
}

// Both backends reject the call, with the same message.
#define CHECK_SAME_ERROR(cpu_call, gpu_call)                  \
  do {                                                        \
    const std::string cpu_msg_ = error_of([&] { cpu_call; }); \
    const std::string gpu_msg_ = error_of([&] { gpu_call; }); \
    INFO("cpu: ", cpu_msg_);                                  \
    INFO("gpu: ", gpu_msg_);                                  \
    CHECK(!gpu_msg_.empty());                                 \
    CHECK(gpu_msg_ == cpu_msg_);                              \
  } while (false)

template <class T>
void check_scalar(T got, T want, double tolerance) {
  const double err = std::abs(static_cast<double>(got) - static_cast<double>(want)) /
                     std::max(1.0, std::abs(static_cast<double>(want)));
  INFO("got ", got, ", want ", want, ", relative error ", err, " (tolerance ", tolerance, ")");
  CHECK(err <= tolerance);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Embedding

TEST_CASE_TEMPLATE("cuda ops/embedding against CPU", T, float, double) {
  const Index V = 50, C = 24, N = 37;
  std::vector<int> tokens = random_ids(N, static_cast<int>(V), 11);
  tokens[5] = tokens[0];  // repeated tokens add into one row
  tokens[36] = tokens[0];
  tokens[20] = tokens[19];
  const Matrix<T> wte = random_matrix<T>(V, C, 1);
  const auto d_wte = dev(wte);
  const cu::DeviceIndices d_tok = indices(tokens);

  Matrix<T> out(N, C);
  ops::embedding_forward<T>(out, tokens, wte);
  cu::DeviceTensor<T> d_out(N, C);
  cu::embedding_forward<T>(d_out, d_tok, d_wte);
  CHECK(host(d_out) == out);

  // Into a strided view: the columns around it are untouched.
  const Matrix<T> zeros = Matrix<T>::Zero(N, C);
  auto s = strided<T>(zeros, 3);
  const Matrix<T> around = host(s.big);
  cu::embedding_forward<T>(s.view, d_tok, d_wte);
  CHECK(host(s.view) == out);
  const Matrix<T> after = host(s.big);
  CHECK(after.leftCols(2) == around.leftCols(2));
  CHECK(after.rightCols(3) == around.rightCols(3));

  // Backward accumulates into a pre-filled gradient.
  const Matrix<T> dout = random_matrix<T>(N, C, 2);
  const auto d_dout = dev(dout);
  const Matrix<T> dwte0 = random_matrix<T>(V, C, 4);
  Matrix<T> dwte = dwte0;
  ops::embedding_backward<T>(dwte, dout, tokens);
  auto d_dwte = dev(dwte0);
  cu::embedding_backward<T>(d_dwte, d_dout, d_tok);
  CHECK_TWIN(host(d_dwte), dwte, tol<T>());
  // Deterministic: the same sums in the same order, run after run.
  auto d_again = dev(dwte0);
  cu::embedding_backward<T>(d_again, d_dout, d_tok);
  CHECK(host(d_again) == host(d_dwte));
  // A strided dout.
  auto s_dout = strided<T>(dout, 5);
  auto d_dwte_s = dev(dwte0);
  cu::embedding_backward<T>(d_dwte_s, s_dout.view, d_tok);
  CHECK_TWIN(host(d_dwte_s), dwte, tol<T>());

  // Bad ids and wrong shapes: the CPU's errors.
  std::vector<int> bad = tokens;
  bad[7] = static_cast<int>(V);
  const cu::DeviceIndices d_bad = indices(bad);
  Matrix<T> scratch_out(N, C), scratch_dwte = dwte0;
  CHECK_SAME_ERROR(ops::embedding_forward<T>(scratch_out, bad, wte),
                   cu::embedding_forward<T>(d_out, d_bad, d_wte));
  CHECK_SAME_ERROR(ops::embedding_backward<T>(scratch_dwte, dout, bad),
                   cu::embedding_backward<T>(d_dwte, d_dout, d_bad));
  bad[7] = -1;
  const cu::DeviceIndices d_neg = indices(bad);
  CHECK_SAME_ERROR(ops::embedding_forward<T>(scratch_out, bad, wte),
                   cu::embedding_forward<T>(d_out, d_neg, d_wte));
  Matrix<T> short_out(N - 1, C);
  cu::DeviceTensor<T> d_short(N - 1, C);
  CHECK_SAME_ERROR(ops::embedding_forward<T>(short_out, tokens, wte),
                   cu::embedding_forward<T>(d_short, d_tok, d_wte));
  const Matrix<T> wide_dout = Matrix<T>::Zero(N, C + 1);
  cu::DeviceTensor<T> d_wide(N, C + 1);
  CHECK_SAME_ERROR(ops::embedding_backward<T>(scratch_dwte, wide_dout, tokens),
                   cu::embedding_backward<T>(d_dwte, d_wide, d_tok));
}

TEST_CASE_TEMPLATE("cuda ops/position embedding against CPU", T, float, double) {
  const Index B = 3, L = 7, P = 10, C = 24, N = B * L;
  const Matrix<T> wpe = random_matrix<T>(P, C, 5);
  const auto d_wpe = dev(wpe);

  // Forward adds onto its output.
  Matrix<T> out = random_matrix<T>(N, C, 6);
  auto d_out = dev(out);
  ops::position_embedding_forward<T>(out, wpe, L);
  cu::position_embedding_forward<T>(d_out, d_wpe, L);
  CHECK_TWIN(host(d_out), out, tol<T>());

  // Backward accumulates; a strided dout.
  const Matrix<T> dout = random_matrix<T>(N, C, 7);
  const Matrix<T> dwpe0 = random_matrix<T>(P, C, 8);
  Matrix<T> dwpe = dwpe0;
  ops::position_embedding_backward<T>(dwpe, dout, L);
  auto d_dwpe = dev(dwpe0);
  cu::position_embedding_backward<T>(d_dwpe, dev(dout), L);
  CHECK_TWIN(host(d_dwpe), dwpe, tol<T>());
  auto s_dout = strided<T>(dout, 9);
  auto d_dwpe_s = dev(dwpe0);
  cu::position_embedding_backward<T>(d_dwpe_s, s_dout.view, L);
  CHECK_TWIN(host(d_dwpe_s), dwpe, tol<T>());

  // Not a whole number of sequences, a sequence longer than the table, T = 0, wrong widths.
  Matrix<T> h_out = out, h_dwpe = dwpe;
  const auto d_dout = dev(dout);
  for (const Index bad_len : {Index(8), Index(21), Index(0)}) {
    CAPTURE(bad_len);
    CHECK_SAME_ERROR(ops::position_embedding_forward<T>(h_out, wpe, bad_len),
                     cu::position_embedding_forward<T>(d_out, d_wpe, bad_len));
    CHECK_SAME_ERROR(ops::position_embedding_backward<T>(h_dwpe, dout, bad_len),
                     cu::position_embedding_backward<T>(d_dwpe, d_dout, bad_len));
  }
  Matrix<T> narrow(N, C - 1);
  cu::DeviceTensor<T> d_narrow(N, C - 1);
  CHECK_SAME_ERROR(ops::position_embedding_forward<T>(narrow, wpe, L),
                   cu::position_embedding_forward<T>(d_narrow, d_wpe, L));
  CHECK_SAME_ERROR(ops::position_embedding_backward<T>(h_dwpe, narrow, L),
                   cu::position_embedding_backward<T>(d_dwpe, d_narrow, L));
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

TEST_CASE_TEMPLATE("cuda ops/layernorm against CPU", T, float, double) {
  const Index N = 37;
  for (const Index C :
       {Index(24), Index(100)}) {  // fewer channels than lanes, and several per lane
    CAPTURE(C);
    const Matrix<T> x =
        (random_matrix<T>(N, C, 30, 2.0).array() + T(0.5)).matrix();  // a mean to subtract
    const Matrix<T> weight = (random_matrix<T>(1, C, 31, 0.3).array() + T(1)).matrix();
    const Matrix<T> bias = random_matrix<T>(1, C, 32, 0.1);
    const auto d_x = dev(x);
    const auto d_w = dev(weight);
    const auto d_b = dev(bias);

    Matrix<T> out(N, C), mean(N, 1), rstd(N, 1);
    ops::layernorm_forward<T>(out, mean, rstd, x, weight, bias);
    cu::DeviceTensor<T> d_out(N, C), d_mean(N, 1), d_rstd(N, 1);
    cu::layernorm_forward<T>(d_out, d_mean, d_rstd, d_x, d_w, d_b);
    CHECK_TWIN(host(d_out), out, tol<T>());
    CHECK_TWIN(host(d_mean), mean, tol<T>());
    CHECK_TWIN(host(d_rstd), rstd, tol<T>());

    // Strided input and output.
    auto s_x = strided<T>(x, 33);
    auto s_out = strided<T>(Matrix<T>::Zero(N, C).eval(), 34);
    cu::DeviceTensor<T> d_mean2(N, 1), d_rstd2(N, 1);
    cu::layernorm_forward<T>(s_out.view, d_mean2, d_rstd2, s_x.view, d_w, d_b);
    CHECK_TWIN(host(s_out.view), out, tol<T>());
    CHECK_TWIN(host(d_rstd2), rstd, tol<T>());

    // Backward: dinp overwritten, dweight / dbias accumulated into pre-filled buffers.
    const Matrix<T> dout = random_matrix<T>(N, C, 35);
    const auto d_dout = dev(dout);
    const Matrix<T> dw0 = random_matrix<T>(1, C, 36), db0 = random_matrix<T>(1, C, 37);
    Matrix<T> dinp = random_matrix<T>(N, C, 38), dw = dw0, db = db0;
    ops::layernorm_backward<T>(dinp, dw, db, dout, x, weight, mean, rstd);
    cu::DeviceTensor<T> d_dinp = dev(random_matrix<T>(N, C, 39));
    auto d_dw = dev(dw0);
    auto d_db = dev(db0);
    cu::layernorm_backward<T>(d_dinp, d_dw, d_db, d_dout, d_x, d_w, d_mean, d_rstd);
    CHECK_TWIN(host(d_dinp), dinp, tol<T>());
    CHECK_TWIN(host(d_dw), dw, tol<T>());
    CHECK_TWIN(host(d_db), db, tol<T>());

    // Absent arguments: each of the three alone.
    const cu::DeviceView<T> none;
    {
      auto a_dw = dev(dw0);
      auto a_db = dev(db0);
      cu::layernorm_backward<T>(none, a_dw, a_db, d_dout, d_x, d_w, d_mean, d_rstd);
      CHECK_TWIN(host(a_dw), dw, tol<T>());
      CHECK_TWIN(host(a_db), db, tol<T>());
    }
    {
      cu::DeviceTensor<T> a_dinp(N, C);
      cu::layernorm_backward<T>(a_dinp, none, none, d_dout, d_x, d_w, d_mean, d_rstd);
      CHECK_TWIN(host(a_dinp), dinp, tol<T>());
    }
    {
      auto a_dw = dev(dw0);
      cu::layernorm_backward<T>(none, a_dw, none, d_dout, d_x, d_w, d_mean, d_rstd);
      CHECK_TWIN(host(a_dw), dw, tol<T>());
      auto a_db = dev(db0);
      cu::layernorm_backward<T>(none, none, a_db, d_dout, d_x, d_w, d_mean, d_rstd);
      CHECK_TWIN(host(a_db), db, tol<T>());
    }
    // Strided dout, inp and dinp.
    {
      auto s_dout = strided<T>(dout, 40);
      auto s_dinp = strided<T>(Matrix<T>::Zero(N, C).eval(), 41);
      auto a_dw = dev(dw0);
      auto a_db = dev(db0);
      cu::layernorm_backward<T>(s_dinp.view, a_dw, a_db, s_dout.view, s_x.view, d_w, d_mean,
                                d_rstd);
      CHECK_TWIN(host(s_dinp.view), dinp, tol<T>());
      CHECK_TWIN(host(a_dw), dw, tol<T>());
      CHECK_TWIN(host(a_db), db, tol<T>());
    }

    // Wrong shapes.
    Matrix<T> h_out(N, C), h_mean(N, 1), h_rstd(N, 1), short_w(1, C - 1);
    cu::DeviceTensor<T> d_short_w(1, C - 1), d_short_mean(N - 1, 1), d_bad_dinp(N, C + 1);
    Matrix<T> short_mean(N - 1, 1), bad_dinp(N, C + 1), h_dw = dw0, h_db = db0;
    CHECK_SAME_ERROR(ops::layernorm_forward<T>(h_out, h_mean, h_rstd, x, short_w, bias),
                     cu::layernorm_forward<T>(d_out, d_mean, d_rstd, d_x, d_short_w, d_b));
    CHECK_SAME_ERROR(ops::layernorm_forward<T>(h_out, short_mean, h_rstd, x, weight, bias),
                     cu::layernorm_forward<T>(d_out, d_short_mean, d_rstd, d_x, d_w, d_b));
    CHECK_SAME_ERROR(
        ops::layernorm_backward<T>(bad_dinp, h_dw, h_db, dout, x, weight, mean, rstd),
        cu::layernorm_backward<T>(d_bad_dinp, d_dw, d_db, d_dout, d_x, d_w, d_mean, d_rstd));
  }
}

// ---------------------------------------------------------------------------------------------
// Activations

TEST_CASE_TEMPLATE("cuda ops/gelu against CPU", T, float, double) {
  // 37 x 23 = 851 elements: packed loads plus a scalar tail. Scale 3 reaches |u| > 2, where the
  // tanh form's derivative needs the exp form of sech^2.
  const Index N = 37, C = 23;
  const Matrix<T> x = random_matrix<T>(N, C, 50, 3.0);
  const Matrix<T> dout = random_matrix<T>(N, C, 51);
  const auto d_x = dev(x);
  const auto d_dout = dev(dout);
  for (const ops::Gelu kind : {ops::Gelu::tanh, ops::Gelu::exact}) {
    CAPTURE(static_cast<int>(kind));
    Matrix<T> out(N, C), dinp(N, C);
    ops::gelu_forward<T>(out, x, kind);
    ops::gelu_backward<T>(dinp, dout, x, kind);

    cu::DeviceTensor<T> d_out(N, C), d_dinp(N, C);
    cu::gelu_forward<T>(d_out, d_x, kind);
    cu::gelu_backward<T>(d_dinp, d_dout, d_x, kind);
    CHECK_TWIN(host(d_out), out, tol<T>());
    CHECK_TWIN(host(d_dinp), dinp, tol<T>());

    // Strided views (the scalar path).
    auto s_x = strided<T>(x, 52);
    auto s_out = strided<T>(Matrix<T>::Zero(N, C).eval(), 53);
    cu::gelu_forward<T>(s_out.view, s_x.view, kind);
    CHECK_TWIN(host(s_out.view), out, tol<T>());
    auto s_dout = strided<T>(dout, 54);
    cu::gelu_backward<T>(s_dout.view, s_dout.view, s_x.view, kind);  // in place on dout
    CHECK_TWIN(host(s_dout.view), dinp, tol<T>());

    // In place: out = gelu(out), dinp = gelu'(x) dinp.
    auto d_inplace = dev(x);
    cu::gelu_forward<T>(d_inplace, d_inplace, kind);
    CHECK_TWIN(host(d_inplace), out, tol<T>());
    auto d_dinplace = dev(dout);
    cu::gelu_backward<T>(d_dinplace, d_dinplace, d_x, kind);
    CHECK_TWIN(host(d_dinplace), dinp, tol<T>());
  }
  Matrix<T> h_bad(N, C + 1);
  cu::DeviceTensor<T> d_bad(N, C + 1);
  CHECK_SAME_ERROR(ops::gelu_forward<T>(h_bad, x), cu::gelu_forward<T>(d_bad, d_x));
  CHECK_SAME_ERROR(ops::gelu_backward<T>(h_bad, dout, x), cu::gelu_backward<T>(d_bad, d_dout, d_x));
  CHECK_SAME_ERROR(ops::gelu_backward<T>(h_bad, h_bad, x), cu::gelu_backward<T>(d_bad, d_bad, d_x));
}

TEST_CASE_TEMPLATE("cuda ops/bias_gelu_forward (the MLP's fused epilogue) against CPU", T, float,
                   double) {
  const Index N = 37, C = 23;
  const Matrix<T> x = random_matrix<T>(N, C, 55, 3.0);
  const Matrix<T> bias = random_matrix<T>(1, C, 56);
  const auto d_bias = dev(bias);
  for (const ops::Gelu kind : {ops::Gelu::tanh, ops::Gelu::exact}) {
    CAPTURE(static_cast<int>(kind));
    Matrix<T> pre = x, act(N, C);
    ops::bias_gelu_forward<T>(act, pre, bias, kind);
    auto d_pre = dev(x);
    cu::DeviceTensor<T> d_act(N, C);
    cu::bias_gelu_forward<T>(d_act, d_pre, d_bias, kind);
    CHECK_TWIN(host(d_pre), pre, tol<T>());
    CHECK_TWIN(host(d_act), act, tol<T>());
    // Strided views; the columns around them are untouched.
    auto s_pre = strided<T>(x, 57);
    auto s_act = strided<T>(Matrix<T>::Zero(N, C).eval(), 58);
    const Matrix<T> pre_around = host(s_pre.big), act_around = host(s_act.big);
    cu::bias_gelu_forward<T>(s_act.view, s_pre.view, d_bias, kind);
    CHECK_TWIN(host(s_pre.view), pre, tol<T>());
    CHECK_TWIN(host(s_act.view), act, tol<T>());
    const Matrix<T> pre_after = host(s_pre.big), act_after = host(s_act.big);
    CHECK(pre_after.leftCols(2) == pre_around.leftCols(2));
    CHECK(pre_after.rightCols(3) == pre_around.rightCols(3));
    CHECK(act_after.leftCols(2) == act_around.leftCols(2));
    CHECK(act_after.rightCols(3) == act_around.rightCols(3));
  }
  Matrix<T> h_pre = x, h_act(N, C), h_bad_bias(1, C + 1), h_bad_act(N + 1, C);
  auto d_pre = dev(x);
  cu::DeviceTensor<T> d_act(N, C), d_bad_bias(1, C + 1), d_bad_act(N + 1, C);
  CHECK_SAME_ERROR(ops::bias_gelu_forward<T>(h_act, h_pre, h_bad_bias),
                   cu::bias_gelu_forward<T>(d_act, d_pre, d_bad_bias));
  CHECK_SAME_ERROR(ops::bias_gelu_forward<T>(h_bad_act, h_pre, bias),
                   cu::bias_gelu_forward<T>(d_bad_act, d_pre, d_bias));
}

TEST_CASE_TEMPLATE("cuda ops/tanh against CPU", T, float, double) {
  const Index N = 37, C = 23;
  const Matrix<T> x = random_matrix<T>(N, C, 60, 2.0);
  const Matrix<T> dout = random_matrix<T>(N, C, 61);
  Matrix<T> out(N, C), dinp(N, C);
  ops::tanh_forward<T>(out, x);
  ops::tanh_backward<T>(dinp, dout, out);

  const auto d_x = dev(x);
  cu::DeviceTensor<T> d_out(N, C), d_dinp(N, C);
  cu::tanh_forward<T>(d_out, d_x);
  CHECK_TWIN(host(d_out), out, tol<T>());
  // Backward from the CPU's saved output, so that only the backward is compared.
  const auto d_saved = dev(out);
  cu::tanh_backward<T>(d_dinp, dev(dout), d_saved);
  CHECK_TWIN(host(d_dinp), dinp, tol<T>());
  // The model's in-place form: tanh_backward(dz, dz, tanh).
  auto d_dz = dev(dout);
  cu::tanh_backward<T>(d_dz, d_dz, d_saved);
  CHECK_TWIN(host(d_dz), dinp, tol<T>());
  // Strided.
  auto s_x = strided<T>(x, 62);
  cu::tanh_forward<T>(s_x.view, s_x.view);
  CHECK_TWIN(host(s_x.view), out, tol<T>());

  Matrix<T> h_bad(N + 1, C);
  cu::DeviceTensor<T> d_bad(N + 1, C);
  CHECK_SAME_ERROR(ops::tanh_forward<T>(h_bad, x), cu::tanh_forward<T>(d_bad, d_x));
  CHECK_SAME_ERROR(ops::tanh_backward<T>(h_bad, dout, out),
                   cu::tanh_backward<T>(d_bad, dev(dout), d_saved));
}

TEST_CASE_TEMPLATE("cuda ops/softmax against CPU", T, float, double) {
  const Index N = 37, C = 50;
  Matrix<T> logits = random_matrix<T>(N, C, 70, 4.0);
  logits.row(3).array() += T(80);  // exp would overflow in float without the max shift
  logits.row(4).array() -= T(80);
  const Matrix<T> dprobs = random_matrix<T>(N, C, 71);
  Matrix<T> probs(N, C), dlogits(N, C);
  ops::softmax_forward<T>(probs, logits);
  ops::softmax_backward<T>(dlogits, dprobs, probs);

  const auto d_logits = dev(logits);
  cu::DeviceTensor<T> d_probs(N, C), d_dlogits(N, C);
  cu::softmax_forward<T>(d_probs, d_logits);
  CHECK_TWIN(host(d_probs), probs, tol<T>());
  const auto d_saved = dev(probs);
  const auto d_dprobs = dev(dprobs);
  cu::softmax_backward<T>(d_dlogits, d_dprobs, d_saved);
  CHECK_TWIN(host(d_dlogits), dlogits, tol<T>());

  // In place and strided.
  auto s = strided<T>(logits, 72);
  cu::softmax_forward<T>(s.view, s.view);
  CHECK_TWIN(host(s.view), probs, tol<T>());
  auto d_inplace = dev(dprobs);
  cu::softmax_backward<T>(d_inplace, d_inplace, d_saved);
  CHECK_TWIN(host(d_inplace), dlogits, tol<T>());

  Matrix<T> h_bad(N, C - 1);
  cu::DeviceTensor<T> d_bad(N, C - 1);
  CHECK_SAME_ERROR(ops::softmax_forward<T>(h_bad, logits), cu::softmax_forward<T>(d_bad, d_logits));
  CHECK_SAME_ERROR(ops::softmax_backward<T>(h_bad, dprobs, probs),
                   cu::softmax_backward<T>(d_bad, d_dprobs, d_saved));
}

// ---------------------------------------------------------------------------------------------
// Dropout and residual

TEST_CASE_TEMPLATE("cuda ops/dropout masks are reproducible and unbiased", T, float, double) {
  const Index N = 37, C = 24;
  const T p = T(0.3);
  const T keep = T(1) / (T(1) - p);  // the kernel's factor, computed the same way
  const Matrix<T> x = random_matrix<T>(N, C, 80);
  const auto d_x = dev(x);

  sora::Rng rng_a(42, 1), rng_b(42, 1);
  const auto before = rng_a.state();
  cu::DeviceTensor<T> out_a(N, C), mask_a(N, C), out_b(N, C), mask_b(N, C);
  cu::dropout_forward<T>(out_a, mask_a, d_x, p, rng_a);
  cu::dropout_forward<T>(out_b, mask_b, d_x, p, rng_b);
  const Matrix<T> mask = host(mask_a);
  CHECK(host(mask_b) == mask);  // same seed, same mask
  CHECK(host(out_b) == host(out_a));
  CHECK(rng_a.state() == rng_b.state());
  CHECK(!(rng_a.state() == before));  // the host stream advanced
  Index dropped = 0;
  for (Index i = 0; i < mask.size(); ++i) {
    const T m = mask.data()[i];
    CHECK((m == T(0) || m == keep));
    dropped += m == T(0) ? 1 : 0;
  }
  CHECK(dropped > 0);
  CHECK(dropped < mask.size());
  CHECK(host(out_a) == (x.array() * mask.array()).matrix());

  // The next call draws another seed: another mask.
  cu::DeviceTensor<T> out_c(N, C), mask_c(N, C);
  cu::dropout_forward<T>(out_c, mask_c, d_x, p, rng_a);
  CHECK(host(mask_c) != mask);

  // In place (out = inp), as the embeddings and the pooled rows use it: the same mask.
  sora::Rng rng_i(42, 1);
  auto d_inplace = dev(x);
  cu::DeviceTensor<T> mask_i(N, C);
  cu::dropout_forward<T>(d_inplace, mask_i, d_inplace, p, rng_i);
  CHECK(host(mask_i) == mask);
  CHECK(host(d_inplace) == host(out_a));

  // Strided output and input: the mask depends on (seed, row-major index) only.
  sora::Rng rng_s(42, 1);
  auto s_x = strided<T>(x, 81);
  auto s_out = strided<T>(Matrix<T>::Zero(N, C).eval(), 82);
  cu::DeviceTensor<T> mask_s(N, C);
  cu::dropout_forward<T>(s_out.view, mask_s, s_x.view, p, rng_s);
  CHECK(host(mask_s) == mask);
  CHECK(host(s_out.view) == host(out_a));

  // Fraction dropped within 4 sigma of p on a large odd-sized tensor.
  {
    const Index R = 201, K = 499;
    const double n = static_cast<double>(R * K);
    cu::DeviceTensor<T> big_out(R, K), big_mask(R, K);
    const auto ones = dev(Matrix<T>::Ones(R, K).eval());
    sora::Rng rng(7);
    cu::dropout_forward<T>(big_out, big_mask, ones, p, rng);
    const Matrix<T> m = host(big_mask);
    const double frac = static_cast<double>((m.array() == T(0)).count()) / n;
    const double pd = static_cast<double>(p);
    const double sigma = std::sqrt(pd * (1.0 - pd) / n);
    INFO("fraction dropped ", frac, ", p ", pd, ", sigma ", sigma);
    CHECK(std::abs(frac - pd) <= 4.0 * sigma);
  }

  // Backward: dinp = dout ⊙ mask, also in place.
  const Matrix<T> dout = random_matrix<T>(N, C, 83);
  const Matrix<T> want = (dout.array() * mask.array()).matrix();
  cu::DeviceTensor<T> d_dinp(N, C);
  const auto d_dout = dev(dout);
  cu::dropout_backward<T>(d_dinp, d_dout, mask_a);
  CHECK(host(d_dinp) == want);
  auto d_dd = dev(dout);
  cu::dropout_backward<T>(d_dd, d_dd, mask_a);
  CHECK(host(d_dd) == want);
  // Absent mask: the identity (copy, or nothing in place).
  const cu::DeviceView<T> none;
  cu::DeviceTensor<T> d_copy(N, C);
  cu::dropout_backward<T>(d_copy, d_dout, none);
  CHECK(host(d_copy) == dout);
  auto d_self = dev(dout);
  cu::dropout_backward<T>(d_self, d_self, none);
  CHECK(host(d_self) == dout);
}

TEST_CASE_TEMPLATE("cuda ops/dropout eval and p = 0 are the identity, bad arguments throw", T,
                   float, double) {
  const Index N = 37, C = 24;
  const Matrix<T> x = random_matrix<T>(N, C, 90);
  const auto d_x = dev(x);
  const cu::DeviceView<T> none;
  sora::Rng rng(3);
  const auto before = rng.state();

  cu::DeviceTensor<T> out(N, C), mask(N, C);
  cu::dropout_forward<T>(out, mask, d_x, T(0.5), rng, /*training=*/false);
  CHECK(host(out) == x);
  CHECK(host(mask) == Matrix<T>::Ones(N, C));
  cu::DeviceTensor<T> out0(N, C), mask0(N, C);
  cu::dropout_forward<T>(out0, mask0, d_x, T(0), rng);
  CHECK(host(out0) == x);
  CHECK(host(mask0) == Matrix<T>::Ones(N, C));
  cu::DeviceTensor<T> out_n(N, C);
  cu::dropout_forward<T>(out_n, none, d_x, T(0.5), rng, false);  // no mask in eval
  CHECK(host(out_n) == x);
  auto d_self = dev(x);
  cu::dropout_forward<T>(d_self, none, d_self, T(0.5), rng, false);
  CHECK(host(d_self) == x);
  CHECK(rng.state() == before);  // the identity draws nothing

  Matrix<T> h_out(N, C), h_mask(N, C), h_short(N - 1, C);
  cu::DeviceTensor<T> d_short(N - 1, C);
  sora::Rng h_rng(3);
  for (const T bad_p : {T(1), T(-0.1), T(1.5)}) {
    CAPTURE(bad_p);
    CHECK_SAME_ERROR(ops::dropout_forward<T>(h_out, h_mask, x, bad_p, h_rng),
                     cu::dropout_forward<T>(out, mask, d_x, bad_p, rng));
  }
  // Training needs a mask of the right shape; out must match inp.
  CHECK_SAME_ERROR(ops::dropout_forward<T>(h_out, ops::absent<T>(), x, T(0.5), h_rng),
                   cu::dropout_forward<T>(out, none, d_x, T(0.5), rng));
  CHECK_SAME_ERROR(ops::dropout_forward<T>(h_out, h_short, x, T(0.5), h_rng),
                   cu::dropout_forward<T>(out, d_short, d_x, T(0.5), rng));
  CHECK_SAME_ERROR(ops::dropout_forward<T>(h_short, h_mask, x, T(0.5), h_rng),
                   cu::dropout_forward<T>(d_short, mask, d_x, T(0.5), rng));
  CHECK_SAME_ERROR(ops::dropout_backward<T>(h_short, x, h_mask),
                   cu::dropout_backward<T>(d_short, d_x, mask));
  CHECK_SAME_ERROR(ops::dropout_backward<T>(h_out, x, h_short),
                   cu::dropout_backward<T>(out, d_x, d_short));
}

TEST_CASE_TEMPLATE("cuda ops/residual against CPU", T, float, double) {
  const Index N = 37, C = 23;
  const Matrix<T> a = random_matrix<T>(N, C, 100), b = random_matrix<T>(N, C, 101);
  const auto d_a = dev(a);
  const auto d_b = dev(b);
  Matrix<T> sum(N, C);
  ops::residual_forward<T>(sum, a, b);

  cu::DeviceTensor<T> d_sum(N, C);
  cu::residual_forward<T>(d_sum, d_a, d_b);
  CHECK_TWIN(host(d_sum), sum, tol<T>());
  // The model's in-place forms: out = inp1 (mid = mid + x) and out = inp2.
  auto d_mid = dev(a);
  cu::residual_forward<T>(d_mid, d_mid, d_b);
  CHECK_TWIN(host(d_mid), sum, tol<T>());
  auto d_mid2 = dev(b);
  cu::residual_forward<T>(d_mid2, d_a, d_mid2);
  CHECK_TWIN(host(d_mid2), sum, tol<T>());
  // inp1 and inp2 the same tensor, out too.
  auto d_twice = dev(a);
  cu::residual_forward<T>(d_twice, d_twice, d_twice);
  CHECK_TWIN(host(d_twice), (a + a).eval(), tol<T>());
  // Strided.
  auto s_a = strided<T>(a, 102);
  auto s_b = strided<T>(b, 103);
  cu::residual_forward<T>(s_a.view, s_a.view, s_b.view);
  CHECK_TWIN(host(s_a.view), sum, tol<T>());

  // Backward accumulates into both; either may be absent.
  const Matrix<T> dout = random_matrix<T>(N, C, 104);
  const auto d_dout = dev(dout);
  const Matrix<T> g1_0 = random_matrix<T>(N, C, 105), g2_0 = random_matrix<T>(N, C, 106);
  Matrix<T> g1 = g1_0, g2 = g2_0;
  ops::residual_backward<T>(g1, g2, dout);
  auto d_g1 = dev(g1_0);
  auto d_g2 = dev(g2_0);
  cu::residual_backward<T>(d_g1, d_g2, d_dout);
  CHECK_TWIN(host(d_g1), g1, tol<T>());
  CHECK_TWIN(host(d_g2), g2, tol<T>());
  const cu::DeviceView<T> none;
  auto d_only1 = dev(g1_0);
  cu::residual_backward<T>(d_only1, none, d_dout);
  CHECK_TWIN(host(d_only1), g1, tol<T>());
  auto d_only2 = dev(g2_0);
  cu::residual_backward<T>(none, d_only2, d_dout);
  CHECK_TWIN(host(d_only2), g2, tol<T>());
  cu::residual_backward<T>(none, none, d_dout);  // nothing to do

  Matrix<T> h_bad(N, C + 1);
  cu::DeviceTensor<T> d_bad(N, C + 1);
  CHECK_SAME_ERROR(ops::residual_forward<T>(h_bad, a, b), cu::residual_forward<T>(d_bad, d_a, d_b));
  CHECK_SAME_ERROR(ops::residual_forward<T>(sum, a, h_bad),
                   cu::residual_forward<T>(d_sum, d_a, d_bad));
  CHECK_SAME_ERROR(ops::residual_backward<T>(h_bad, ops::absent<T>(), dout),
                   cu::residual_backward<T>(d_bad, none, d_dout));
}

// ---------------------------------------------------------------------------------------------
// Losses

TEST_CASE_TEMPLATE("cuda ops/cross-entropy against CPU", T, float, double) {
  const Index N = 37, V = 50;
  Matrix<T> logits = random_matrix<T>(N, V, 110, 3.0);
  logits.row(2).array() += T(60);  // large logits: log-sum-exp keeps -log p finite
  std::vector<int> targets = random_ids(N, static_cast<int>(V), 111);
  targets[0] = ops::kIgnoreIndex;  // ignored rows: no loss, zero gradient
  targets[17] = ops::kIgnoreIndex;
  targets[36] = ops::kIgnoreIndex;
  const auto d_logits = dev(logits);
  const cu::DeviceIndices d_targets = indices(targets);

  Matrix<T> probs(N, V);
  const T loss = ops::cross_entropy_forward<T>(probs, logits, targets);
  cu::DeviceTensor<T> d_probs(N, V);
  const T d_loss = cu::cross_entropy_forward<T>(d_probs, d_logits, d_targets);
  check_scalar(d_loss, loss, tol<T>());
  CHECK_TWIN(host(d_probs), probs, tol<T>());
  // Deterministic.
  CHECK(cu::cross_entropy_forward<T>(d_probs, d_logits, d_targets) == d_loss);

  // Backward overwrites (pre-filled with garbage), with an upstream gradient.
  const T dloss = T(0.7);
  Matrix<T> dlogits = random_matrix<T>(N, V, 112);
  ops::cross_entropy_backward<T>(dlogits, probs, targets, ops::kIgnoreIndex, dloss);
  auto d_dlogits = dev(random_matrix<T>(N, V, 113));
  const auto d_saved = dev(probs);
  cu::cross_entropy_backward<T>(d_dlogits, d_saved, d_targets, ops::kIgnoreIndex, dloss);
  CHECK_TWIN(host(d_dlogits), dlogits, tol<T>());
  CHECK(host(d_dlogits).row(17).isZero(0));
  // Default arguments (dloss = 1).
  Matrix<T> dlogits1(N, V);
  ops::cross_entropy_backward<T>(dlogits1, probs, targets);
  cu::DeviceTensor<T> d_dlogits1(N, V);
  cu::cross_entropy_backward<T>(d_dlogits1, d_saved, d_targets);
  CHECK_TWIN(host(d_dlogits1), dlogits1, tol<T>());
  // Strided logits, probs and dlogits.
  auto s_logits = strided<T>(logits, 114);
  auto s_probs = strided<T>(Matrix<T>::Zero(N, V).eval(), 115);
  check_scalar(cu::cross_entropy_forward<T>(s_probs.view, s_logits.view, d_targets), loss,
               tol<T>());
  CHECK_TWIN(host(s_probs.view), probs, tol<T>());
  auto s_dlogits = strided<T>(Matrix<T>::Zero(N, V).eval(), 116);
  cu::cross_entropy_backward<T>(s_dlogits.view, s_probs.view, d_targets, ops::kIgnoreIndex, dloss);
  CHECK_TWIN(host(s_dlogits.view), dlogits, tol<T>());

  // Another ignore index: a class id that is then skipped.
  {
    const int ignore = targets[5];
    Matrix<T> p2(N, V), g2(N, V);
    std::vector<int> t2 = targets;
    for (auto& t : t2)
      if (t == ops::kIgnoreIndex) t = ignore;
    const cu::DeviceIndices d_t2 = indices(t2);
    const T l2 = ops::cross_entropy_forward<T>(p2, logits, t2, ignore);
    ops::cross_entropy_backward<T>(g2, p2, t2, ignore, dloss);
    cu::DeviceTensor<T> dp2(N, V), dg2(N, V);
    check_scalar(cu::cross_entropy_forward<T>(dp2, d_logits, d_t2, ignore), l2, tol<T>());
    cu::cross_entropy_backward<T>(dg2, dp2, d_t2, ignore, dloss);
    CHECK_TWIN(host(dg2), g2, tol<T>());
  }

  // Every row ignored: loss 0, gradient 0.
  {
    const std::vector<int> all_ignored(static_cast<std::size_t>(N), ops::kIgnoreIndex);
    const cu::DeviceIndices d_ign = indices(all_ignored);
    cu::DeviceTensor<T> dp(N, V);
    CHECK(cu::cross_entropy_forward<T>(dp, d_logits, d_ign) == T(0));
    CHECK_TWIN(host(dp), probs, tol<T>());
    auto dg = dev(random_matrix<T>(N, V, 117));
    cu::cross_entropy_backward<T>(dg, dp, d_ign);
    CHECK(host(dg).isZero(0));
  }

  // Bad targets, a wrong number of targets, wrong shapes: the CPU's errors.
  Matrix<T> h_probs(N, V), h_short(N - 1, V);
  cu::DeviceTensor<T> d_short(N - 1, V);
  for (const int bad_target : {static_cast<int>(V), -1}) {
    CAPTURE(bad_target);
    std::vector<int> bad = targets;
    bad[9] = bad_target;
    const cu::DeviceIndices d_bad = indices(bad);
    CHECK_SAME_ERROR(ops::cross_entropy_forward<T>(h_probs, logits, bad),
                     (void)cu::cross_entropy_forward<T>(d_probs, d_logits, d_bad));
    CHECK_SAME_ERROR(ops::cross_entropy_backward<T>(h_probs, probs, bad),
                     cu::cross_entropy_backward<T>(d_dlogits, d_saved, d_bad));
  }
  const std::vector<int> too_few(targets.begin(), targets.end() - 1);
  const cu::DeviceIndices d_few = indices(too_few);
  CHECK_SAME_ERROR(ops::cross_entropy_forward<T>(h_probs, logits, too_few),
                   (void)cu::cross_entropy_forward<T>(d_probs, d_logits, d_few));
  CHECK_SAME_ERROR(ops::cross_entropy_backward<T>(h_probs, probs, too_few),
                   cu::cross_entropy_backward<T>(d_dlogits, d_saved, d_few));
  CHECK_SAME_ERROR(ops::cross_entropy_forward<T>(h_short, logits, targets),
                   (void)cu::cross_entropy_forward<T>(d_short, d_logits, d_targets));
  CHECK_SAME_ERROR(ops::cross_entropy_backward<T>(h_short, probs, targets),
                   cu::cross_entropy_backward<T>(d_short, d_saved, d_targets));
}

TEST_CASE_TEMPLATE("cuda ops/mse against CPU", T, float, double) {
  // (37, 3): one partial block; (300, 250): more blocks than kMaxPartials, several elements per
  // thread.
  for (const auto& shape : {std::pair<Index, Index>{37, 3}, std::pair<Index, Index>{300, 250}}) {
    const Index N = shape.first, K = shape.second;
    CAPTURE(N);
    const Matrix<T> pred = random_matrix<T>(N, K, 120), target = random_matrix<T>(N, K, 121);
    const auto d_pred = dev(pred);
    const auto d_target = dev(target);
    const T loss = ops::mse_forward<T>(pred, target);
    const T d_loss = cu::mse_forward<T>(d_pred, d_target);
    // The CPU sums 75000 float squares in a few long running sums (relative rounding up to
    // ~1e-5 by itself); the GPU's tree of partial sums is the more accurate of the two.
    const double loss_tol = std::is_same_v<T, float> && N * K > 10000 ? 1e-4 : tol<T>();
    check_scalar(d_loss, loss, loss_tol);
    CHECK(cu::mse_forward<T>(d_pred, d_target) == d_loss);  // deterministic

    const T dloss = T(1.3);
    Matrix<T> dpred = random_matrix<T>(N, K, 122);
    ops::mse_backward<T>(dpred, pred, target, dloss);
    auto d_dpred = dev(random_matrix<T>(N, K, 123));
    cu::mse_backward<T>(d_dpred, d_pred, d_target, dloss);
    CHECK_TWIN(host(d_dpred), dpred, tol<T>());
    Matrix<T> dpred1(N, K);
    ops::mse_backward<T>(dpred1, pred, target);
    cu::DeviceTensor<T> d_dpred1(N, K);
    cu::mse_backward<T>(d_dpred1, d_pred, d_target);
    CHECK_TWIN(host(d_dpred1), dpred1, tol<T>());
    // Strided.
    auto s_pred = strided<T>(pred, 124);
    check_scalar(cu::mse_forward<T>(s_pred.view, d_target), loss, loss_tol);
  }
  const Index N = 37, K = 3;
  const Matrix<T> pred = random_matrix<T>(N, K, 125), bad = Matrix<T>::Zero(N, K + 1);
  const auto d_pred = dev(pred);
  const auto d_bad = dev(bad);
  cu::DeviceTensor<T> d_dpred(N, K);
  Matrix<T> dpred(N, K);
  CHECK_SAME_ERROR((void)ops::mse_forward<T>(pred, bad), (void)cu::mse_forward<T>(d_pred, d_bad));
  CHECK_SAME_ERROR(ops::mse_backward<T>(dpred, pred, bad),
                   cu::mse_backward<T>(d_dpred, d_pred, d_bad));
  Matrix<T> h_bad_dpred(N + 1, K);
  cu::DeviceTensor<T> d_bad_dpred(N + 1, K);
  CHECK_SAME_ERROR(ops::mse_backward<T>(h_bad_dpred, pred, pred),
                   cu::mse_backward<T>(d_bad_dpred, d_pred, d_pred));
  // Empty: 0, no kernel.
  cu::DeviceTensor<T> empty(0, K);
  CHECK(cu::mse_forward<T>(empty, empty) == T(0));
}

TEST_CASE("cuda ops/context scratch grows and is kept") {
  auto& ctx = cu::context();
  void* a = ctx.scratch(64);
  CHECK(a != nullptr);
  CHECK(ctx.scratch(16) == a);  // a smaller request reuses the buffer
  void* b = ctx.scratch(std::size_t(1) << 20);
  CHECK(b != nullptr);
  CHECK(ctx.scratch(64) == b);
}

// ---------------------------------------------------------------------------------------------
// Gather / scatter rows

TEST_CASE_TEMPLATE("cuda ops/gather and scatter rows against CPU", T, float, double) {
  const Index N = 37, C = 24;
  std::vector<int> rows = {0, 9, 36, 9, 20};  // row 9 gathered twice: both gradients collect
  const Index B = static_cast<Index>(rows.size());
  const Matrix<T> inp = random_matrix<T>(N, C, 130);
  const auto d_inp = dev(inp);
  const cu::DeviceIndices d_rows = indices(rows);

  Matrix<T> out(B, C);
  ops::gather_rows<T>(out, inp, rows);
  cu::DeviceTensor<T> d_out(B, C);
  cu::gather_rows<T>(d_out, d_inp, d_rows);
  CHECK(host(d_out) == out);
  auto s_inp = strided<T>(inp, 131);
  auto s_out = strided<T>(Matrix<T>::Zero(B, C).eval(), 132);
  cu::gather_rows<T>(s_out.view, s_inp.view, d_rows);
  CHECK(host(s_out.view) == out);

  // Scatter overwrites all of dinp (pre-filled with garbage).
  const Matrix<T> dout = random_matrix<T>(B, C, 133);
  const auto d_dout = dev(dout);
  Matrix<T> dinp = random_matrix<T>(N, C, 134);
  ops::scatter_rows<T>(dinp, dout, rows);
  auto d_dinp = dev(random_matrix<T>(N, C, 135));
  cu::scatter_rows<T>(d_dinp, d_dout, d_rows);
  CHECK_TWIN(host(d_dinp), dinp, tol<T>());
  CHECK(host(d_dinp).row(9) == (dout.row(1) + dout.row(3)));  // in b order, as the CPU adds
  auto s_dinp = strided<T>(random_matrix<T>(N, C, 136), 137);
  const Matrix<T> around = host(s_dinp.big);
  cu::scatter_rows<T>(s_dinp.view, d_dout, d_rows);
  CHECK_TWIN(host(s_dinp.view), dinp, tol<T>());
  const Matrix<T> after = host(s_dinp.big);
  CHECK(after.leftCols(2) == around.leftCols(2));
  CHECK(after.rightCols(3) == around.rightCols(3));

  // Bad row indices and wrong shapes: the CPU's errors.
  Matrix<T> h_out(B, C), h_dinp(N, C);
  for (const int bad_row : {static_cast<int>(N), -1}) {
    CAPTURE(bad_row);
    std::vector<int> bad = rows;
    bad[2] = bad_row;
    const cu::DeviceIndices d_bad = indices(bad);
    CHECK_SAME_ERROR(ops::gather_rows<T>(h_out, inp, bad), cu::gather_rows<T>(d_out, d_inp, d_bad));
    CHECK_SAME_ERROR(ops::scatter_rows<T>(h_dinp, dout, bad),
                     cu::scatter_rows<T>(d_dinp, d_dout, d_bad));
  }
  Matrix<T> h_wide(B, C + 1);
  cu::DeviceTensor<T> d_wide(B, C + 1);
  CHECK_SAME_ERROR(ops::gather_rows<T>(h_wide, inp, rows),
                   cu::gather_rows<T>(d_wide, d_inp, d_rows));
  CHECK_SAME_ERROR(ops::scatter_rows<T>(h_dinp, h_wide, rows),
                   cu::scatter_rows<T>(d_dinp, d_wide, d_rows));
}

// ---------------------------------------------------------------------------------------------
// LLaMA family: RMSNorm, RoPE, SwiGLU

TEST_CASE_TEMPLATE("cuda ops/rmsnorm against CPU", T, float, double) {
  const Index N = 37;
  for (const Index C : {Index(24), Index(100)}) {  // fewer channels than lanes, and several
    CAPTURE(C);
    const Matrix<T> x = random_matrix<T>(N, C, 130, 2.0);
    const Matrix<T> weight = (random_matrix<T>(1, C, 131, 0.3).array() + T(1)).matrix();
    const auto d_x = dev(x);
    const auto d_w = dev(weight);
    const T eps = T(1e-6);

    Matrix<T> out(N, C), rstd(N, 1);
    ops::rmsnorm_forward<T>(out, rstd, x, weight, eps);
    cu::DeviceTensor<T> d_out(N, C), d_rstd(N, 1);
    cu::rmsnorm_forward<T>(d_out, d_rstd, d_x, d_w, eps);
    CHECK_TWIN(host(d_out), out, tol<T>());
    CHECK_TWIN(host(d_rstd), rstd, tol<T>());

    // Strided input and output; in place.
    auto s_x = strided<T>(x, 132);
    auto s_out = strided<T>(Matrix<T>::Zero(N, C).eval(), 133);
    cu::DeviceTensor<T> d_rstd2(N, 1);
    cu::rmsnorm_forward<T>(s_out.view, d_rstd2, s_x.view, d_w, eps);
    CHECK_TWIN(host(s_out.view), out, tol<T>());
    auto d_inplace = dev(x);
    cu::rmsnorm_forward<T>(d_inplace, d_rstd2, d_inplace, d_w, eps);
    CHECK_TWIN(host(d_inplace), out, tol<T>());

    // Backward: dinp overwritten, dweight accumulated into a pre-filled buffer; each alone.
    const Matrix<T> dout = random_matrix<T>(N, C, 134);
    const auto d_dout = dev(dout);
    const Matrix<T> dw0 = random_matrix<T>(1, C, 135);
    Matrix<T> dinp(N, C), dw = dw0;
    ops::rmsnorm_backward<T>(dinp, dw, dout, x, weight, rstd);
    cu::DeviceTensor<T> d_dinp = dev(random_matrix<T>(N, C, 136));
    auto d_dw = dev(dw0);
    cu::rmsnorm_backward<T>(d_dinp, d_dw, d_dout, d_x, d_w, d_rstd);
    CHECK_TWIN(host(d_dinp), dinp, tol<T>());
    CHECK_TWIN(host(d_dw), dw, tol<T>());
    const cu::DeviceView<T> none;
    {
      auto a_dw = dev(dw0);
      cu::rmsnorm_backward<T>(none, a_dw, d_dout, d_x, d_w, d_rstd);
      CHECK_TWIN(host(a_dw), dw, tol<T>());
      cu::DeviceTensor<T> a_dinp(N, C);
      cu::rmsnorm_backward<T>(a_dinp, none, d_dout, d_x, d_w, d_rstd);
      CHECK_TWIN(host(a_dinp), dinp, tol<T>());
    }
    {
      auto s_dout = strided<T>(dout, 137);
      auto a_dw = dev(dw0);
      cu::rmsnorm_backward<T>(s_dout.view, a_dw, s_dout.view, s_x.view, d_w, d_rstd);  // in place
      CHECK_TWIN(host(s_dout.view), dinp, tol<T>());
      CHECK_TWIN(host(a_dw), dw, tol<T>());
    }

    Matrix<T> h_out(N, C), h_rstd(N, 1), short_w(1, C - 1), bad_dinp(N, C + 1), h_dw = dw0;
    cu::DeviceTensor<T> d_short_w(1, C - 1), d_bad_dinp(N, C + 1);
    CHECK_SAME_ERROR(ops::rmsnorm_forward<T>(h_out, h_rstd, x, short_w, eps),
                     cu::rmsnorm_forward<T>(d_out, d_rstd, d_x, d_short_w, eps));
    CHECK_SAME_ERROR(ops::rmsnorm_backward<T>(bad_dinp, h_dw, dout, x, weight, rstd),
                     cu::rmsnorm_backward<T>(d_bad_dinp, d_dw, d_dout, d_x, d_w, d_rstd));
  }
}

TEST_CASE_TEMPLATE("cuda ops/rope against CPU", T, float, double) {
  // 37 tokens, 3 heads of 10 channels (5 pairs: lanes partly used); positions out of order.
  const Index N = 37, H = 3, D = 10, C = H * D;
  const ops::RopeTable<T> table(D, 64, 500000.0);
  const cu::DeviceRopeTable<T> d_table(table);
  const std::vector<int> positions = random_ids(N, 64, 140);
  const cu::DeviceIndices d_positions = indices(positions);
  const Matrix<T> x = random_matrix<T>(N, C, 141);
  const auto d_x = dev(x);

  Matrix<T> out(N, C), back(N, C);
  ops::rope_forward<T>(out, x, positions, table, H);
  ops::rope_backward<T>(back, x, positions, table, H);
  cu::DeviceTensor<T> d_out(N, C), d_back(N, C);
  cu::rope_forward<T>(d_out, d_x, d_positions, d_table, H);
  cu::rope_backward<T>(d_back, d_x, d_positions, d_table, H);
  CHECK_TWIN(host(d_out), out, tol<T>());
  CHECK_TWIN(host(d_back), back, tol<T>());

  // In place and strided (q and k are column blocks of one fused projection in a model).
  auto d_inplace = dev(x);
  cu::rope_forward<T>(d_inplace, d_inplace, d_positions, d_table, H);
  CHECK_TWIN(host(d_inplace), out, tol<T>());
  auto s_x = strided<T>(x, 142);
  cu::rope_backward<T>(s_x.view, s_x.view, d_positions, d_table, H);
  CHECK_TWIN(host(s_x.view), back, tol<T>());

  // Key/value heads: the same table on fewer heads.
  const Matrix<T> k = random_matrix<T>(N, D, 143);
  Matrix<T> k_out(N, D);
  ops::rope_forward<T>(k_out, k, positions, table, 1);
  const auto d_k = dev(k);
  cu::DeviceTensor<T> d_k_out(N, D);
  cu::rope_forward<T>(d_k_out, d_k, d_positions, d_table, 1);
  CHECK_TWIN(host(d_k_out), k_out, tol<T>());

  Matrix<T> h_out(N, C), h_bad(N, C + 2);
  cu::DeviceTensor<T> d_bad(N, C + 2);
  std::vector<int> far = positions;
  far[5] = 64;
  const cu::DeviceIndices d_far = indices(far), d_short = indices({0, 1});
  CHECK_SAME_ERROR(ops::rope_forward<T>(h_bad, h_bad, positions, table, H),
                   cu::rope_forward<T>(d_bad, d_bad, d_positions, d_table, H));
  CHECK_SAME_ERROR(ops::rope_forward<T>(h_bad, x, positions, table, H),
                   cu::rope_forward<T>(d_bad, d_x, d_positions, d_table, H));
  CHECK_SAME_ERROR(ops::rope_forward<T>(h_out, x, far, table, H),
                   cu::rope_forward<T>(d_out, d_x, d_far, d_table, H));
  CHECK_SAME_ERROR(ops::rope_backward<T>(h_out, x, std::vector<int>{0, 1}, table, H),
                   cu::rope_backward<T>(d_out, d_x, d_short, d_table, H));
}

TEST_CASE_TEMPLATE("cuda ops/swiglu against CPU", T, float, double) {
  const Index N = 37, F = 23;
  Matrix<T> gate = random_matrix<T>(N, F, 150, 3.0);
  gate(0, 0) = T(-200);  // exp(200) overflows in float: silu is -0, not NaN
  gate(0, 1) = T(200);
  const Matrix<T> up = random_matrix<T>(N, F, 151), dout = random_matrix<T>(N, F, 152);
  const auto d_gate = dev(gate);
  const auto d_up = dev(up);
  const auto d_dout = dev(dout);

  Matrix<T> out(N, F), dgate(N, F), dup(N, F);
  ops::swiglu_forward<T>(out, gate, up);
  ops::swiglu_backward<T>(dgate, dup, dout, gate, up);
  cu::DeviceTensor<T> d_out(N, F), d_dgate(N, F), d_dup(N, F);
  cu::swiglu_forward<T>(d_out, d_gate, d_up);
  cu::swiglu_backward<T>(d_dgate, d_dup, d_dout, d_gate, d_up);
  CHECK(host(d_out).allFinite());
  CHECK_TWIN(host(d_out), out, tol<T>());
  CHECK_TWIN(host(d_dgate), dgate, tol<T>());
  CHECK_TWIN(host(d_dup), dup, tol<T>());

  // Either gradient alone, written over dout (in place), on strided views.
  const cu::DeviceView<T> none;
  auto s_dout = strided<T>(dout, 153);
  auto s_gate = strided<T>(gate, 154);
  cu::swiglu_backward<T>(s_dout.view, none, s_dout.view, s_gate.view, d_up);
  CHECK_TWIN(host(s_dout.view), dgate, tol<T>());
  auto a_dout = dev(dout);
  cu::swiglu_backward<T>(none, a_dout, a_dout, d_gate, d_up);
  CHECK_TWIN(host(a_dout), dup, tol<T>());

  Matrix<T> h_bad(N, F + 1);
  cu::DeviceTensor<T> d_bad(N, F + 1);
  CHECK_SAME_ERROR(ops::swiglu_forward<T>(out, gate, h_bad),
                   cu::swiglu_forward<T>(d_out, d_gate, d_bad));
  CHECK_SAME_ERROR(ops::swiglu_backward<T>(h_bad, dup, dout, gate, up),
                   cu::swiglu_backward<T>(d_bad, d_dup, d_dout, d_gate, d_up));
}
