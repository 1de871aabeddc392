#pragma once
// Blocked ("flash") attention on the CPU: the function of ops/attention.hpp (softmax(q k^T /
// sqrt(D) + mask) v, causal or bidirectional, key padding masks, grouped key/value heads)
// computed tile by tile with an online softmax, so that no (T, T) matrix exists: memory is
// linear in T (Dao et al. 2022, FlashAttention, Algorithm 1 in the forward; the backward as in
// FlashAttention-2, Dao 2023, Algorithm 2).
//
// Forward walks, per sequence and head, query tiles of `tile` rows against key tiles of `tile`
// columns, keeping per query row the running maximum m and sum l of exp(s - m); a new key tile
// rescales what was accumulated by exp(m_old - m_new). It saves the log-sum-exp L = m + log l of
// every query row (B H T numbers, +inf for a row that sees no key: its probabilities are 0).
// Backward recomputes each tile's probabilities P = exp(s - L) from q, k and L, with
//   dv += P^T dO,  dP = dO v^T,  dS = P ⊙ (dP - rowsum(dO ⊙ O)) / sqrt(D),
//   dq += dS k,    dk += dS^T q,
// rowsum(dO ⊙ O) being rowsum(dP ⊙ P) of ops/attention.hpp's softmax Jacobian, computed once
// per row from the saved output instead of from a whole row of P.
//
// Sizes as in ops/attention.hpp: B sequences of length T, N = B T, H heads of D channels, Hkv
// key/value heads. No attention-probability dropout (its factors would be a (T, T) matrix per
// head): a layer that drops probabilities uses ops/attention.hpp. Backward overwrites (=)
// dq, dk, dv.

#include <algorithm>
#include <cmath>
#include <limits>

#include "sora/core/threading.hpp"
#include "sora/ops/attention.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// The largest tile (the stack buffers' size); 64 x 64 tiles of float are 16 KiB, so a score
// tile, its gradient and the q/k/v rows they read stay in L1/L2.
inline constexpr Index kMaxAttentionTile = 64;

namespace detail {
template <class Scalar>
using AttentionTile = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor,
                                    kMaxAttentionTile, kMaxAttentionTile>;

inline void check_tile(const char* op, Index tile) {
  SORA_CHECK(tile >= 1 && tile <= kMaxAttentionTile, op, ": tile ", tile, " is not in [1, ",
             kMaxAttentionTile, "]");
}
}  // namespace detail

template <class Scalar>
void blocked_attention_forward(MatrixRef<Scalar> out,            // (N, H * D)
                               MatrixRef<Scalar> lse,            // (B * H, T) saved
                               ConstMatrixRef<Scalar> q,         // (N, H * D)
                               ConstMatrixRef<Scalar> k,         // (N, Hkv * D)
                               ConstMatrixRef<Scalar> v,         // (N, Hkv * D)
                               ConstMatrixRef<Scalar> key_mask,  // (B, T) or absent
                               Index B, Index T, Index H, Index Hkv, bool causal,
                               Index tile = kMaxAttentionTile) {
  const Index N = q.rows(), C = q.cols();
  detail::check_attention_sizes("blocked_attention_forward", N, C, B, T, H);
  detail::check_kv_heads("blocked_attention_forward", H, Hkv);
  detail::check_tile("blocked_attention_forward", tile);
  const Index D = C / H, Ckv = Hkv * D, group = H / Hkv;
  detail::check_shape("blocked_attention_forward", "k", k, N, Ckv);
  detail::check_shape("blocked_attention_forward", "v", v, N, Ckv);
  detail::check_shape("blocked_attention_forward", "out", out, N, C);
  detail::check_shape("blocked_attention_forward", "lse", lse, B * H, T);
  detail::check_optional("blocked_attention_forward", "key_mask", key_mask, B, T);
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const bool masked = present(key_mask);
  const double head_work = 2.0 * static_cast<double>(T) * static_cast<double>(T) * D;
  parallel_for(
      0, B * H,
      [&](Index bh) {
        const Index b = bh / H, h = bh % H, g = h / group;
        const auto Q = q.block(b * T, h * D, T, D);  // (T, D)
        const auto K = k.block(b * T, g * D, T, D);  // (T, D)
        const auto V = v.block(b * T, g * D, T, D);  // (T, D)
        auto O = out.block(b * T, h * D, T, D);      // (T, D)
        detail::AttentionTile<Scalar> S;             // (tq, tk) scores, then probabilities
        Eigen::Array<Scalar, kMaxAttentionTile, 1> m, l;
        for (Index i0 = 0; i0 < T; i0 += tile) {
          const Index tq = std::min(tile, T - i0);
          m.head(tq).setConstant(-inf);
          l.head(tq).setZero();
          O.middleRows(i0, tq).setZero();
          const Index kend = causal ? i0 + tq : T;  // later keys are masked for every row
          for (Index j0 = 0; j0 < kend; j0 += tile) {
            const Index tk = std::min(tile, kend - j0);
            S.resize(tq, tk);
            S.noalias() = Q.middleRows(i0, tq) * K.middleRows(j0, tk).transpose();
            for (Index t = 0; t < tq; ++t) {
              auto visible = [&](Index j) {
                return (!causal || j0 + j <= i0 + t) &&
                       (!masked || key_mask(b, j0 + j) != Scalar(0));
              };
              Scalar mt = m(t);
              for (Index j = 0; j < tk; ++j)
                if (visible(j)) mt = std::max(mt, S(t, j) * scale);
              if (mt == -inf) {  // no visible key yet: nothing to add
                S.row(t).setZero();
                continue;
              }
              Scalar sum = 0;
              for (Index j = 0; j < tk; ++j) {
                const Scalar p = visible(j) ? std::exp(S(t, j) * scale - mt) : Scalar(0);
                S(t, j) = p;
                sum += p;
              }
              const Scalar rescale = std::exp(m(t) - mt);  // 0 when m(t) was -inf
              l(t) = l(t) * rescale + sum;
              O.row(i0 + t) *= rescale;
              m(t) = mt;
            }
            O.middleRows(i0, tq).noalias() += S * V.middleRows(j0, tk);
          }
          for (Index t = 0; t < tq; ++t) {
            if (l(t) > Scalar(0)) {
              O.row(i0 + t) /= l(t);
              lse(bh, i0 + t) = m(t) + std::log(l(t));
            } else {
              O.row(i0 + t).setZero();
              lse(bh, i0 + t) = inf;
            }
          }
        }
      },
      head_work);
}

template <class Scalar>
void blocked_attention_backward(MatrixRef<Scalar> dq,             // (N, H * D)
                                MatrixRef<Scalar> dk,             // (N, Hkv * D)
                                MatrixRef<Scalar> dv,             // (N, Hkv * D)
                                ConstMatrixRef<Scalar> dout,      // (N, H * D)
                                ConstMatrixRef<Scalar> out,       // (N, H * D) forward's
                                ConstMatrixRef<Scalar> lse,       // (B * H, T) forward's
                                ConstMatrixRef<Scalar> q,         // (N, H * D)
                                ConstMatrixRef<Scalar> k,         // (N, Hkv * D)
                                ConstMatrixRef<Scalar> v,         // (N, Hkv * D)
                                ConstMatrixRef<Scalar> key_mask,  // (B, T) or absent
                                Index B, Index T, Index H, Index Hkv, bool causal,
                                Index tile = kMaxAttentionTile) {
  const Index N = q.rows(), C = q.cols();
  detail::check_attention_sizes("blocked_attention_backward", N, C, B, T, H);
  detail::check_kv_heads("blocked_attention_backward", H, Hkv);
  detail::check_tile("blocked_attention_backward", tile);
  const Index D = C / H, Ckv = Hkv * D, group = H / Hkv;
  detail::check_shape("blocked_attention_backward", "k", k, N, Ckv);
  detail::check_shape("blocked_attention_backward", "v", v, N, Ckv);
  detail::check_shape("blocked_attention_backward", "dout", dout, N, C);
  detail::check_shape("blocked_attention_backward", "out", out, N, C);
  detail::check_shape("blocked_attention_backward", "dq", dq, N, C);
  detail::check_shape("blocked_attention_backward", "dk", dk, N, Ckv);
  detail::check_shape("blocked_attention_backward", "dv", dv, N, Ckv);
  detail::check_shape("blocked_attention_backward", "lse", lse, B * H, T);
  detail::check_optional("blocked_attention_backward", "key_mask", key_mask, B, T);
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  const bool masked = present(key_mask);
  const double group_work = 4.0 * static_cast<double>(T) * static_cast<double>(T) * D * group;
  // One task per sequence and kv head (its dk, dv are the sums over the group's query heads).
  parallel_for(
      0, B * Hkv,
      [&](Index bg) {
        const Index b = bg / Hkv, g = bg % Hkv;
        const auto K = k.block(b * T, g * D, T, D);  // (T, D)
        const auto V = v.block(b * T, g * D, T, D);  // (T, D)
        auto dK = dk.block(b * T, g * D, T, D);      // (T, D)
        auto dV = dv.block(b * T, g * D, T, D);      // (T, D)
        dK.setZero();
        dV.setZero();
        detail::AttentionTile<Scalar> P, dS;  // (tq, tk)
        Eigen::Array<Scalar, kMaxAttentionTile, 1> Di;
        for (Index h = g * group; h < (g + 1) * group; ++h) {
          const Index bh = b * H + h;
          const auto Q = q.block(b * T, h * D, T, D);      // (T, D)
          const auto O = out.block(b * T, h * D, T, D);    // (T, D)
          const auto dO = dout.block(b * T, h * D, T, D);  // (T, D)
          auto dQ = dq.block(b * T, h * D, T, D);          // (T, D)
          dQ.setZero();
          for (Index i0 = 0; i0 < T; i0 += tile) {
            const Index tq = std::min(tile, T - i0);
            for (Index t = 0; t < tq; ++t) Di(t) = dO.row(i0 + t).dot(O.row(i0 + t));
            const Index kend = causal ? i0 + tq : T;
            for (Index j0 = 0; j0 < kend; j0 += tile) {
              const Index tk = std::min(tile, kend - j0);
              P.resize(tq, tk);
              dS.resize(tq, tk);
              P.noalias() = Q.middleRows(i0, tq) * K.middleRows(j0, tk).transpose();
              for (Index t = 0; t < tq; ++t) {
                const Scalar L = lse(bh, i0 + t);
                for (Index j = 0; j < tk; ++j) {
                  const bool visible = (!causal || j0 + j <= i0 + t) &&
                                       (!masked || key_mask(b, j0 + j) != Scalar(0));
                  P(t, j) = visible ? std::exp(P(t, j) * scale - L) : Scalar(0);
                }
              }
              dV.middleRows(j0, tk).noalias() += P.transpose() * dO.middleRows(i0, tq);
              dS.noalias() = dO.middleRows(i0, tq) * V.middleRows(j0, tk).transpose();  // dP
              dS.array() = P.array() * (dS.array().colwise() - Di.head(tq)) * scale;
              dQ.middleRows(i0, tq).noalias() += dS * K.middleRows(j0, tk);
              dK.middleRows(j0, tk).noalias() += dS.transpose() * Q.middleRows(i0, tq);
            }
          }
        }
      },
      group_work);
}

}  // namespace sora::ops
