#pragma once
// Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1), causal or
// bidirectional, with per-sequence key padding masks.
//
// Backward contract: input gradients (dq, dk, dv) overwrite (=); no parameters (the q/k/v/o
// projections are linear layers around this op).
//
// Sizes: B sequences of length T, N = B * T tokens, C channels, H heads of D = C / H channels.
// q and out are (N, C), k and v (N, Hkv D) with Hkv <= H key/value heads (Hkv = H, C columns,
// unless grouped-query attention), head h in columns [h D, (h + 1) D). The attention
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
inline void check_kv_heads(const char* op, Index H, Index Hkv) {
  SORA_CHECK(Hkv > 0 && H % Hkv == 0, op, ": H=", H, " query heads are not a multiple of Hkv=", Hkv,
             " key/value heads");
}
}  // namespace detail

// out = softmax(q k^T / sqrt(D) + mask) v per sequence and head. Key j is visible to query t
// when key_mask(b, j) != 0 (absent: all keys) and, if causal, j <= t. A query that sees no key
// at all (possible with left padding) gets zero probabilities and a zero output.
//
// Grouped-query attention (Ainslie et al. 2023): k and v have Hkv <= H heads of the same D, and
// query head h reads key/value head h / (H / Hkv), as transformers' repeat_kv lays them out
// (kv head g repeated H / Hkv times in a row). Hkv == H is multi-head attention, Hkv == 1
// multi-query attention.
//
// Attention-probability dropout (BERT's attention_probs_dropout_prob): with `drop` present, the
// factors (0 or 1 / (1 - p), drawn by the caller) of every probability, the output is
// (P ⊙ drop) v; att keeps P itself, which backward needs with the same drop.
template <class Scalar>
void attention_forward(MatrixRef<Scalar> out,            // (N, H * D)
                       MatrixRef<Scalar> att,            // (B * H * T, T) saved
                       ConstMatrixRef<Scalar> q,         // (N, H * D)
                       ConstMatrixRef<Scalar> k,         // (N, Hkv * D)
                       ConstMatrixRef<Scalar> v,         // (N, Hkv * D)
                       ConstMatrixRef<Scalar> key_mask,  // (B, T) or absent
                       Index B, Index T, Index H, Index Hkv, bool causal,
                       ConstMatrixRef<Scalar> drop) {  // (B * H * T, T) or absent
  const Index N = q.rows(), C = q.cols();
  detail::check_attention_sizes("attention_forward", N, C, B, T, H);
  detail::check_kv_heads("attention_forward", H, Hkv);
  const Index D = C / H, Ckv = Hkv * D, group = H / Hkv;
  detail::check_shape("attention_forward", "k", k, N, Ckv);
  detail::check_shape("attention_forward", "v", v, N, Ckv);
  detail::check_shape("attention_forward", "out", out, N, C);
  detail::check_shape("attention_forward", "att", att, B * H * T, T);
  detail::check_optional("attention_forward", "key_mask", key_mask, B, T);
  detail::check_optional("attention_forward", "drop", drop, B * H * T, T);
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  const bool masked = present(key_mask);
  const bool dropping = present(drop);
  const double head_work = 2.0 * static_cast<double>(T) * static_cast<double>(T) * D;  // 2 GEMMs
  parallel_for(
      0, B * H,
      [&](Index bh) {
        const Index b = bh / H, h = bh % H, g = h / group;
        auto P = att.block(bh * T, 0, T, T);  // (T, T)
        P.noalias() = q.block(b * T, h * D, T, D) * k.block(b * T, g * D, T, D).transpose();
        for (Index t = 0; t < T; ++t) {
          const Index last = causal ? t + 1 : T;  // keys [0, last) pass the causal mask
          auto visible = [&](Index j) {
            return j < last && (!masked || key_mask(b, j) != Scalar(0));
          };
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
        if (dropping) {
          out.block(b * T, h * D, T, D).noalias() =
              P.cwiseProduct(drop.block(bh * T, 0, T, T)) * v.block(b * T, g * D, T, D);
        } else {
          out.block(b * T, h * D, T, D).noalias() = P * v.block(b * T, g * D, T, D);
        }
      },
      head_work);
}

// Without attention-probability dropout.
template <class Scalar>
void attention_forward(MatrixRef<Scalar> out,            // (N, H * D)
                       MatrixRef<Scalar> att,            // (B * H * T, T) saved
                       ConstMatrixRef<Scalar> q,         // (N, H * D)
                       ConstMatrixRef<Scalar> k,         // (N, Hkv * D)
                       ConstMatrixRef<Scalar> v,         // (N, Hkv * D)
                       ConstMatrixRef<Scalar> key_mask,  // (B, T) or absent
                       Index B, Index T, Index H, Index Hkv, bool causal) {
  attention_forward<Scalar>(out, att, q, k, v, key_mask, B, T, H, Hkv, causal,
                            ConstMatrixMap<Scalar>(nullptr, 0, 0));
}

// Multi-head attention: k and v have the H heads of q.
template <class Scalar>
void attention_forward(MatrixRef<Scalar> out,            // (N, C)
                       MatrixRef<Scalar> att,            // (B * H * T, T) saved
                       ConstMatrixRef<Scalar> q,         // (N, C)
                       ConstMatrixRef<Scalar> k,         // (N, C)
                       ConstMatrixRef<Scalar> v,         // (N, C)
                       ConstMatrixRef<Scalar> key_mask,  // (B, T) or absent
                       Index B, Index T, Index H, bool causal) {
  attention_forward<Scalar>(out, att, q, k, v, key_mask, B, T, H, H, causal);
}

// Per sequence and head, with S = q k^T / sqrt(D), P = softmax(S), O = P v:
//   dv = P^T dO,  dP = dO v^T,  dS = P ⊙ (dP - rowsum(dP ⊙ P))  (softmax Jacobian),
//   dq = dS k / sqrt(D),  dk = dS^T q / sqrt(D).
// Masked entries have P = 0 and so dS = 0: the masks need not be passed again. datt is the
// workspace (written; it holds dS afterwards).
//
// With groups (Hkv < H) a key/value head is read by the H / Hkv query heads of its group, so its
// dk and dv are the sums of their contributions (repeat_kv's backward). One task per sequence and
// kv head walks its group's query heads in order: the first writes dk/dv (=), the others add
// (+=), so no zeroing pass is needed and no two tasks write the same block.
template <class Scalar>
void attention_backward(MatrixRef<Scalar> dq,         // (N, H * D)
                        MatrixRef<Scalar> dk,         // (N, Hkv * D)
                        MatrixRef<Scalar> dv,         // (N, Hkv * D)
                        MatrixRef<Scalar> datt,       // (B * H * T, T) written
                        ConstMatrixRef<Scalar> dout,  // (N, H * D)
                        ConstMatrixRef<Scalar> q,     // (N, H * D)
                        ConstMatrixRef<Scalar> k,     // (N, Hkv * D)
                        ConstMatrixRef<Scalar> v,     // (N, Hkv * D)
                        ConstMatrixRef<Scalar> att,   // (B * H * T, T)
                        Index B, Index T, Index H, Index Hkv,
                        ConstMatrixRef<Scalar> drop) {  // (B * H * T, T) or absent
  const Index N = q.rows(), C = q.cols();
  detail::check_attention_sizes("attention_backward", N, C, B, T, H);
  detail::check_kv_heads("attention_backward", H, Hkv);
  const Index D = C / H, Ckv = Hkv * D, group = H / Hkv;
  detail::check_shape("attention_backward", "k", k, N, Ckv);
  detail::check_shape("attention_backward", "v", v, N, Ckv);
  detail::check_shape("attention_backward", "dout", dout, N, C);
  detail::check_shape("attention_backward", "dq", dq, N, C);
  detail::check_shape("attention_backward", "dk", dk, N, Ckv);
  detail::check_shape("attention_backward", "dv", dv, N, Ckv);
  detail::check_shape("attention_backward", "att", att, B * H * T, T);
  detail::check_shape("attention_backward", "datt", datt, B * H * T, T);
  detail::check_optional("attention_backward", "drop", drop, B * H * T, T);
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  const bool dropping = present(drop);
  const double group_work = 4.0 * static_cast<double>(T) * static_cast<double>(T) * D * group;
  parallel_for(
      0, B * Hkv,
      [&](Index bg) {
        const Index b = bg / Hkv, g = bg % Hkv;
        auto dK = dk.block(b * T, g * D, T, D);      // (T, D)
        auto dV = dv.block(b * T, g * D, T, D);      // (T, D)
        const auto K = k.block(b * T, g * D, T, D);  // (T, D)
        const auto V = v.block(b * T, g * D, T, D);  // (T, D)
        for (Index h = g * group; h < (g + 1) * group; ++h) {
          const Index bh = b * H + h;
          const bool first = h == g * group;
          const auto P = att.block(bh * T, 0, T, T);       // (T, T)
          auto dS = datt.block(bh * T, 0, T, T);           // (T, T)
          const auto dO = dout.block(b * T, h * D, T, D);  // (T, D)
          if (dropping) {
            // O = (P ⊙ M) v: dv = (P ⊙ M)^T dO and dP = (dO v^T) ⊙ M.
            const auto M = drop.block(bh * T, 0, T, T);  // (T, T)
            if (first) {
              dV.noalias() = P.cwiseProduct(M).transpose() * dO;
            } else {
              dV.noalias() += P.cwiseProduct(M).transpose() * dO;
            }
            dS.noalias() = dO * V.transpose();
            dS.array() *= M.array();  // dP
          } else {
            if (first) {
              dV.noalias() = P.transpose() * dO;
            } else {
              dV.noalias() += P.transpose() * dO;
            }
            dS.noalias() = dO * V.transpose();  // dP
          }
          for (Index t = 0; t < T; ++t) {
            const Scalar dot = dS.row(t).dot(P.row(t));
            dS.row(t).array() = P.row(t).array() * (dS.row(t).array() - dot) * scale;
          }
          dq.block(b * T, h * D, T, D).noalias() = dS * K;
          if (first) {
            dK.noalias() = dS.transpose() * q.block(b * T, h * D, T, D);
          } else {
            dK.noalias() += dS.transpose() * q.block(b * T, h * D, T, D);
          }
        }
      },
      group_work);
}

// Without attention-probability dropout.
template <class Scalar>
void attention_backward(MatrixRef<Scalar> dq,         // (N, H * D)
                        MatrixRef<Scalar> dk,         // (N, Hkv * D)
                        MatrixRef<Scalar> dv,         // (N, Hkv * D)
                        MatrixRef<Scalar> datt,       // (B * H * T, T) written
                        ConstMatrixRef<Scalar> dout,  // (N, H * D)
                        ConstMatrixRef<Scalar> q,     // (N, H * D)
                        ConstMatrixRef<Scalar> k,     // (N, Hkv * D)
                        ConstMatrixRef<Scalar> v,     // (N, Hkv * D)
                        ConstMatrixRef<Scalar> att,   // (B * H * T, T)
                        Index B, Index T, Index H, Index Hkv) {
  attention_backward<Scalar>(dq, dk, dv, datt, dout, q, k, v, att, B, T, H, Hkv,
                             ConstMatrixMap<Scalar>(nullptr, 0, 0));
}

// Multi-head attention: k and v have the H heads of q.
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
  attention_backward<Scalar>(dq, dk, dv, datt, dout, q, k, v, att, B, T, H, H);
}

}  // namespace sora::ops
