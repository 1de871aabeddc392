#pragma once
// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): the gated activation of LLaMA's
// MLP, down_proj(silu(gate_proj(x)) ⊙ up_proj(x)).
//
// Backward contract: input gradients overwrite (=); no parameters (the three projections are
// linear layers around this op).
//
// Sizes: N tokens, F hidden channels.

#include <cmath>

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// out = silu(gate) ⊙ up, silu(g) = g * sigmoid(g) = g / (1 + exp(-g)). For a very negative g
// (below about -88 in float), exp(-g) overflows to inf (std::exp) or saturates near FLT_MAX
// (Eigen's vectorized exp), and the quotient is -0 or a denormal-sized number: never NaN.
template <class T>
void swiglu_forward(MatrixRef<T> out,        // (N, F)
                    ConstMatrixRef<T> gate,  // (N, F)
                    ConstMatrixRef<T> up) {  // (N, F)
  const Index N = gate.rows(), F = gate.cols();
  detail::check_shape("swiglu_forward", "up", up, N, F);
  detail::check_shape("swiglu_forward", "out", out, N, F);
  parallel_for(
      0, N,
      [&](Index n) {
        const auto g = gate.row(n).array();
        out.row(n).array() = g / (T(1) + (-g).exp()) * up.row(n).array();
      },
      static_cast<double>(F));
}

// With s = sigmoid(g): silu'(g) = s + g s (1 - s) = s (1 + g (1 - s)), so
//   dgate = dout ⊙ up ⊙ s (1 + g (1 - s)),  dup = dout ⊙ silu(g).
// Either gradient may be absent. Each element's gate, up and dout are read before its dgate and
// dup are written, so either gradient may alias dout.
template <class T>
void swiglu_backward(MatrixRef<T> dgate,      // (N, F) or absent
                     MatrixRef<T> dup,        // (N, F) or absent
                     ConstMatrixRef<T> dout,  // (N, F)
                     ConstMatrixRef<T> gate,  // (N, F)
                     ConstMatrixRef<T> up) {  // (N, F)
  const Index N = gate.rows(), F = gate.cols();
  detail::check_shape("swiglu_backward", "up", up, N, F);
  detail::check_shape("swiglu_backward", "dout", dout, N, F);
  detail::check_optional("swiglu_backward", "dgate", dgate, N, F);
  detail::check_optional("swiglu_backward", "dup", dup, N, F);
  const bool want_dgate = present(dgate), want_dup = present(dup);
  if (!want_dgate && !want_dup) return;
  parallel_for(
      0, N,
      [&](Index n) {
        for (Index f = 0; f < F; ++f) {
          const T g = gate(n, f), u = up(n, f), d = dout(n, f);
          const T s = T(1) / (T(1) + std::exp(-g));
          if (want_dgate) dgate(n, f) = d * u * s * (T(1) + g * (T(1) - s));
          if (want_dup) dup(n, f) = d * g * s;
        }
      },
      static_cast<double>(F));
}

}  // namespace sora::ops
