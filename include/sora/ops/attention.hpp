#pragma once
// Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1), causal or
// bidirectional, with per-sequence key padding masks.
//
// Backward contract: input gradients (dq, dk, dv) overwrite (=); no parameters (the q/k/v/o
// projections are linear layers around this op).
//
// Sizes: B sequences of length T, N = B * T tokens, C channels, H heads of D = C / H channels.
// q, k, v and out are (N, C) with head h in columns [h D, (h + 1) D); the attention
// probabilities are saved as (B * H * T, T): rows [(b H + h) T, (b H + h + 1) T) hold the
// (T, T) matrix of sequence b, head h. (The scalar type is `Scalar` here: T is the length.)

#include <algorithm>
#include <cmath>
#include <limits>

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

namespace detail {
inline void check_attention_sizes(const char* op, Index N, Index C, Index B, Index T, Index H) {
  SORA_CHECK(B > 0 && T > 0 && H > 0 && B * T == N && C % H == 0, op, ": inputs (", N, ", ", C,
             ") do not split into B=", B, " sequences of T=", T, " tokens and H=", H,
             " heads: expected (", B * T, ", a multiple of ", H, ")");
}
}  // namespace detail

// out = softmax(q k^T / sqrt(D) + mask) v per sequence and head. Key j is visible to query t
// when key_mask(b, j) != 0 (absent: all keys) and, if causal, j <= t. A query that sees no key
// at all (possible with left padding) gets zero probabilities and a zero output.
template <class Scalar>
void attention_forward(MatrixRef<Scalar> out,            // (N, C)
                       MatrixRef<Scalar> att,            // (B * H * T, T) saved
                       ConstMatrixRef<Scalar> q,         // (N, C)
                       ConstMatrixRef<Scalar> k,         // (N, C)
                       ConstMatrixRef<Scalar> v,         // (N, C)
                       ConstMatrixRef<Scalar> key_mask,  // (B, T) or absent
                       Index B, Index T, Index H, bool causal) {
  const Index N = q.rows(), C = q.cols();
  detail::check_attention_sizes("attention_forward", N, C, B, T, H);
  detail::check_shape("attention_forward", "k", k, N, C);
  detail::check_shape("attention_forward", "v", v, N, C);
  detail::check_shape("attention_forward", "out", out, N, C);
  detail::check_shape("attention_forward", "att", att, B * H * T, T);
  detail::check_optional("attention_forward", "key_mask", key_mask, B, T);
  const Index D = C / H;
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  const bool masked = present(key_mask);
  parallel_for(0, B * H, [&](Index bh) {
    const Index b = bh / H, h = bh % H;
    auto P = att.block(bh * T, 0, T, T);  // (T, T)
    P.noalias() = q.block(b * T, h * D, T, D) * k.block(b * T, h * D, T, D).transpose();
    for (Index t = 0; t < T; ++t) {
      const Index last = causal ? t + 1 : T;  // keys [0, last) pass the causal mask
      auto visible = [&](Index j) { return j < last && (!masked || key_mask(b, j) != Scalar(0)); };
      Scalar m = -std::numeric_limits<Scalar>::infinity();
      for (Index j = 0; j < last; ++j)
        if (visible(j)) m = std::max(m, P(t, j));
      Scalar sum = 0;
      for (Index j = 0; j < T; ++j) {
        const Scalar p = visible(j) ? std::exp((P(t, j) - m) * scale) : Scalar(0);
        P(t, j) = p;
        sum += p;
      }
      if (sum > Scalar(0)) P.row(t) /= sum;
    }
    out.block(b * T, h * D, T, D).noalias() = P * v.block(b * T, h * D, T, D);
  });
}

// Per sequence and head, with S = q k^T / sqrt(D), P = softmax(S), O = P v:
//   dv = P^T dO,  dP = dO v^T,  dS = P ⊙ (dP - rowsum(dP ⊙ P))  (softmax Jacobian),
//   dq = dS k / sqrt(D),  dk = dS^T q / sqrt(D).
// Masked entries have P = 0 and so dS = 0: the masks need not be passed again. datt is the
// workspace (written; it holds dS afterwards).
template <class Scalar>
void attention_backward(MatrixRef<Scalar> dq,         // (N, C)
                        MatrixRef<Scalar> dk,         // (N, C)
                        MatrixRef<Scalar> dv,         // (N, C)
                        MatrixRef<Scalar> datt,       // (B * H * T, T) written
                        ConstMatrixRef<Scalar> dout,  // (N, C)
                        ConstMatrixRef<Scalar> q,     // (N, C)
                        ConstMatrixRef<Scalar> k,     // (N, C)
                        ConstMatrixRef<Scalar> v,     // (N, C)
                        ConstMatrixRef<Scalar> att,   // (B * H * T, T)
                        Index B, Index T, Index H) {
  const Index N = q.rows(), C = q.cols();
  detail::check_attention_sizes("attention_backward", N, C, B, T, H);
  detail::check_shape("attention_backward", "k", k, N, C);
  detail::check_shape("attention_backward", "v", v, N, C);
  detail::check_shape("attention_backward", "dout", dout, N, C);
  detail::check_shape("attention_backward", "dq", dq, N, C);
  detail::check_shape("attention_backward", "dk", dk, N, C);
  detail::check_shape("attention_backward", "dv", dv, N, C);
  detail::check_shape("attention_backward", "att", att, B * H * T, T);
  detail::check_shape("attention_backward", "datt", datt, B * H * T, T);
  const Index D = C / H;
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  parallel_for(0, B * H, [&](Index bh) {
    const Index b = bh / H, h = bh % H;
    const auto P = att.block(bh * T, 0, T, T);       // (T, T)
    auto dS = datt.block(bh * T, 0, T, T);           // (T, T)
    const auto dO = dout.block(b * T, h * D, T, D);  // (T, D)
    dv.block(b * T, h * D, T, D).noalias() = P.transpose() * dO;
    dS.noalias() = dO * v.block(b * T, h * D, T, D).transpose();  // dP
    for (Index t = 0; t < T; ++t) {
      const Scalar dot = dS.row(t).dot(P.row(t));
      dS.row(t).array() = P.row(t).array() * (dS.row(t).array() - dot) * scale;
    }
    dq.block(b * T, h * D, T, D).noalias() = dS * k.block(b * T, h * D, T, D);
    dk.block(b * T, h * D, T, D).noalias() = dS.transpose() * q.block(b * T, h * D, T, D);
  });
}

}  // namespace sora::ops
