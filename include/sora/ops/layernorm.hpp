#pragma once
// LayerNorm over the channels of each token.
//
// Backward contract: parameter gradients accumulate (+=); the input gradient overwrites (=).
// (A pre-LN block adds it onto the residual stream's gradient itself.)
//
// Sizes: N tokens, C channels.

#include <cmath>

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// out = (inp - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps) (biased variance, as
// PyTorch). mean and rstd are saved for backward.
template <class T>
void layernorm_forward(MatrixRef<T> out,          // (N, C)
                       MatrixRef<T> mean,         // (N, 1)
                       MatrixRef<T> rstd,         // (N, 1)
                       ConstMatrixRef<T> inp,     // (N, C)
                       ConstMatrixRef<T> weight,  // (1, C)
                       ConstMatrixRef<T> bias,    // (1, C)
                       T eps = T(1e-5)) {
  const Index N = inp.rows(), C = inp.cols();
  detail::check_shape("layernorm_forward", "out", out, N, C);
  detail::check_shape("layernorm_forward", "mean", mean, N, 1);
  detail::check_shape("layernorm_forward", "rstd", rstd, N, 1);
  detail::check_shape("layernorm_forward", "weight", weight, 1, C);
  detail::check_shape("layernorm_forward", "bias", bias, 1, C);
  parallel_for(
      0, N,
      [&](Index n) {
        const auto x = inp.row(n).array();
        const T m = x.sum() / T(C);
        const T var = (x - m).square().sum() / T(C);
        const T rs = T(1) / std::sqrt(var + eps);
        out.row(n).array() = (x - m) * rs * weight.row(0).array() + bias.row(0).array();
        mean(n, 0) = m;
        rstd(n, 0) = rs;
      },
      static_cast<double>(C));
}

// With xhat = (x - mean) * rstd and dxhat = dout ⊙ weight:
//   dbias += dout,  dweight += dout ⊙ xhat,
//   dx = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat ⊙ xhat))
// (the mean and variance both depend on every x_c, which gives the two subtracted terms).
template <class T>
void layernorm_backward(MatrixRef<T> dinp,         // (N, C) or absent
                        MatrixRef<T> dweight,      // (1, C) or absent
                        MatrixRef<T> dbias,        // (1, C) or absent
                        ConstMatrixRef<T> dout,    // (N, C)
                        ConstMatrixRef<T> inp,     // (N, C)
                        ConstMatrixRef<T> weight,  // (1, C)
                        ConstMatrixRef<T> mean,    // (N, 1)
                        ConstMatrixRef<T> rstd) {  // (N, 1)
  const Index N = inp.rows(), C = inp.cols();
  detail::check_shape("layernorm_backward", "dout", dout, N, C);
  detail::check_shape("layernorm_backward", "weight", weight, 1, C);
  detail::check_shape("layernorm_backward", "mean", mean, N, 1);
  detail::check_shape("layernorm_backward", "rstd", rstd, N, 1);
  detail::check_optional("layernorm_backward", "dinp", dinp, N, C);
  detail::check_optional("layernorm_backward", "dweight", dweight, 1, C);
  detail::check_optional("layernorm_backward", "dbias", dbias, 1, C);
  // Parameter gradients: a sequential reduction over tokens (rows are contiguous, so this
  // streams through memory once).
  if (present(dweight) || present(dbias)) {
    for (Index n = 0; n < N; ++n) {
      if (present(dbias)) dbias.row(0) += dout.row(n);
      if (present(dweight))
        dweight.row(0).array() +=
            dout.row(n).array() * (inp.row(n).array() - mean(n, 0)) * rstd(n, 0);
    }
  }
  if (!present(dinp)) return;
  parallel_for(
      0, N,
      [&](Index n) {
        const T m = mean(n, 0), rs = rstd(n, 0);
        const auto xhat = (inp.row(n).array() - m) * rs;
        const auto dxhat = dout.row(n).array() * weight.row(0).array();
        const T mean_dxhat = dxhat.sum() / T(C);
        const T mean_dxhat_xhat = (dxhat * xhat).sum() / T(C);
        dinp.row(n).array() = rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
      },
      static_cast<double>(C));
}

}  // namespace sora::ops
