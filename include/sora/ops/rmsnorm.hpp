#pragma once
// RMSNorm over the channels of each token (Zhang & Sennrich 2019), as transformers'
// LlamaRMSNorm (also Mistral's and Qwen2's): no mean subtraction and no bias.
//
// Backward contract: parameter gradients accumulate (+=); the input gradient overwrites (=).
//
// Sizes: N tokens, C channels.

#include <cmath>

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// out = weight ⊙ (x * rstd), rstd = 1 / sqrt(mean_c(x^2) + eps); rstd is saved for backward.
// transformers upcasts a half-precision input to float32 for this; here everything is computed
// in T (float or double already).
template <class T>
void rmsnorm_forward(MatrixRef<T> out,          // (N, C)
                     MatrixRef<T> rstd,         // (N, 1)
                     ConstMatrixRef<T> inp,     // (N, C)
                     ConstMatrixRef<T> weight,  // (1, C)
                     T eps = T(1e-6)) {
  const Index N = inp.rows(), C = inp.cols();
  detail::check_shape("rmsnorm_forward", "out", out, N, C);
  detail::check_shape("rmsnorm_forward", "rstd", rstd, N, 1);
  detail::check_shape("rmsnorm_forward", "weight", weight, 1, C);
  SORA_CHECK(C > 0, "rmsnorm_forward: inputs (", N, ", ", C, ") have no channels");
  parallel_for(
      0, N,
      [&](Index n) {
        const auto x = inp.row(n).array();
        const T rs = T(1) / std::sqrt(x.square().sum() / T(C) + eps);
        out.row(n).array() = x * rs * weight.row(0).array();
        rstd(n, 0) = rs;
      },
      static_cast<double>(C));
}

// With r = rstd, xhat = x r and dxhat = dout ⊙ weight: dweight += dout ⊙ xhat, and since
// dr/dx_c = -r^3 x_c / C,
//   dx = r * (dxhat - xhat * mean_c(dxhat ⊙ xhat))
// (layernorm's formula without the mean term: no mean is subtracted).
template <class T>
void rmsnorm_backward(MatrixRef<T> dinp,         // (N, C) or absent
                      MatrixRef<T> dweight,      // (1, C) or absent
                      ConstMatrixRef<T> dout,    // (N, C)
                      ConstMatrixRef<T> inp,     // (N, C)
                      ConstMatrixRef<T> weight,  // (1, C)
                      ConstMatrixRef<T> rstd) {  // (N, 1)
  const Index N = inp.rows(), C = inp.cols();
  detail::check_shape("rmsnorm_backward", "dout", dout, N, C);
  detail::check_shape("rmsnorm_backward", "weight", weight, 1, C);
  detail::check_shape("rmsnorm_backward", "rstd", rstd, N, 1);
  detail::check_optional("rmsnorm_backward", "dinp", dinp, N, C);
  detail::check_optional("rmsnorm_backward", "dweight", dweight, 1, C);
  // The weight gradient is a reduction over tokens: sequential, streaming through rows once.
  if (present(dweight)) {
    for (Index n = 0; n < N; ++n)
      dweight.row(0).array() += dout.row(n).array() * inp.row(n).array() * rstd(n, 0);
  }
  if (!present(dinp)) return;
  parallel_for(
      0, N,
      [&](Index n) {
        const T rs = rstd(n, 0);
        const auto xhat = inp.row(n).array() * rs;
        const auto dxhat = dout.row(n).array() * weight.row(0).array();
        const T mean_dxhat_xhat = (dxhat * xhat).sum() / T(C);
        dinp.row(n).array() = rs * (dxhat - xhat * mean_dxhat_xhat);
      },
      static_cast<double>(C));
}

}  // namespace sora::ops
