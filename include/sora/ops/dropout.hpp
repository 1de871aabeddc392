#pragma once
// Inverted dropout and residual addition.
//
// Backward contract: dropout's input gradient overwrites (=). residual_backward accumulates
// into both input gradients (+=): a residual stream's gradient collects contributions from
// every branch that reads it.
//
// Sizes: N tokens, C channels.

#include "sora/core/rng.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// Training: each element is kept with probability 1 - p and scaled by 1 / (1 - p), so the
// expectation is unchanged and eval needs no rescaling. mask holds the per-element factor
// (0 or 1 / (1 - p)) for backward. Elements are drawn in row-major order from rng, so a run is
// reproducible from its seed. Eval (or p == 0): out = inp and the mask (if present) is all ones.
// out may alias inp.
template <class T>
void dropout_forward(MatrixRef<T> out,       // (N, C)
                     MatrixRef<T> mask,      // (N, C) saved; may be absent in eval
                     ConstMatrixRef<T> inp,  // (N, C)
                     T p, Rng& rng, bool training = true) {
  const Index N = inp.rows(), C = inp.cols();
  SORA_CHECK(p >= T(0) && p < T(1), "dropout_forward: probability ", p, " is not in [0, 1)");
  detail::check_shape("dropout_forward", "out", out, N, C);
  const bool identity = !training || p == T(0);
  if (identity) {
    detail::check_optional("dropout_forward", "mask", mask, N, C);
    if (present(mask)) mask.setOnes();
    if (out.data() != inp.data()) out = inp;
    return;
  }
  detail::check_shape("dropout_forward", "mask", mask, N, C);
  const T keep_scale = T(1) / (T(1) - p);
  const double drop = static_cast<double>(p);
  for (Index n = 0; n < N; ++n) {
    for (Index c = 0; c < C; ++c) {
      const T factor = rng.uniform() < drop ? T(0) : keep_scale;
      mask(n, c) = factor;
      out(n, c) = inp(n, c) * factor;
    }
  }
}

// dinp = dout ⊙ mask (absent mask: the identity of eval mode).
template <class T>
void dropout_backward(MatrixRef<T> dinp,         // (N, C)
                      ConstMatrixRef<T> dout,    // (N, C)
                      ConstMatrixRef<T> mask) {  // (N, C) or absent
  detail::check_shape("dropout_backward", "dinp", dinp, dout.rows(), dout.cols());
  detail::check_optional("dropout_backward", "mask", mask, dout.rows(), dout.cols());
  if (present(mask)) {
    dinp.array() = dout.array() * mask.array();
  } else if (dinp.data() != dout.data()) {
    dinp = dout;
  }
}

// out = inp1 + inp2 (out may alias either input).
template <class T>
void residual_forward(MatrixRef<T> out, ConstMatrixRef<T> inp1, ConstMatrixRef<T> inp2) {
  detail::check_shape("residual_forward", "inp2", inp2, inp1.rows(), inp1.cols());
  detail::check_shape("residual_forward", "out", out, inp1.rows(), inp1.cols());
  out = inp1 + inp2;
}

// dinp1 += dout, dinp2 += dout. Either may be absent.
template <class T>
void residual_backward(MatrixRef<T> dinp1, MatrixRef<T> dinp2, ConstMatrixRef<T> dout) {
  detail::check_optional("residual_backward", "dinp1", dinp1, dout.rows(), dout.cols());
  detail::check_optional("residual_backward", "dinp2", dinp2, dout.rows(), dout.cols());
  if (present(dinp1)) dinp1 += dout;
  if (present(dinp2)) dinp2 += dout;
}

}  // namespace sora::ops
