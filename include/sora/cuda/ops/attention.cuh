#pragma once
// CUDA twin of ops/attention.hpp: multi-head scaled dot-product attention (Vaswani et al. 2017,
// eq. 1), causal or bidirectional, with per-sequence key padding masks; same names, argument
// order, shape checks and semantics as the CPU op.
//
// Backward contract: input gradients (dq, dk, dv) overwrite (=); no parameters.
//
// Sizes: B sequences of length T, N = B * T tokens, C channels, H heads of D = C / H channels.
// q and out are (N, C), k and v (N, Hkv D) with Hkv <= H key/value heads (Hkv = H unless
// grouped-query attention), head h in columns [h D, (h + 1) D); the attention probabilities are
// saved as (B * H * T, T): rows [(b H + h) T, (b H + h + 1) T) hold the (T, T) matrix of sequence
// b, head h. (The scalar type is `Scalar` here: T is the length.)
//
// The products are cuBLAS GEMMs, batched over the H heads of one sequence (the heads of a
// sequence are D columns apart in q, k, v and T rows apart in att: one stride each; the
// sequences are not a further constant stride away in both, hence a host loop over b). The
// softmax and its Jacobian are one kernel each over all B H T rows, one warp per row. All of it
// is queued on context().stream(); att and datt are the only workspace. Views may be strided.

#include <cmath>
#include <type_traits>

#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/gemm.cuh"
#include "sora/cuda/kernels.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/attention.hpp"

namespace sora::cuda {

namespace attention_detail {

using namespace ops_detail;  // kWarp, kRowsPerBlock, row_grid, warp_max, dev_exp

inline void check_channels(const char* op, Index C) {
  SORA_CHECK(C > 0, op, ": inputs have no channels (C = 0)");
}

template <class Scalar>
__global__ void __launch_bounds__(detail::kThreads)
    softmax_kernel(DeviceView<Scalar> att,      // (B H T, T)
                   ConstView<Scalar> key_mask,  // (B, T) or absent
                   Index T, Index H, bool causal, Scalar scale) {
  const Index r = Index(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (r >= att.rows) return;  // the whole warp: the shuffles below stay warp-uniform
  const Index t = r % T, b = (r / T) / H;
  const Index last = causal ? t + 1 : T;  // keys [0, last) pass the causal mask
  const bool masked = key_mask.data != nullptr;
  const Scalar* mask_row = masked ? key_mask.data + b * key_mask.stride : nullptr;
  Scalar* row = att.data + r * att.stride;
  auto visible = [&](Index j) { return j < last && (!masked || mask_row[j] != Scalar(0)); };

  Scalar m = -INFINITY;
  for (Index j = lane; j < last; j += kWarp)
    if (visible(j) && row[j] > m) m = row[j];
  m = warp_max(m);

  Scalar sum = 0;
  for (Index j = lane; j < T; j += kWarp) {
    const Scalar p = visible(j) ? dev_exp((row[j] - m) * scale) : Scalar(0);
    row[j] = p;
    sum += p;
  }
  sum = detail::warp_sum(sum);
  if (sum > Scalar(0))
    for (Index j = lane; j < T; j += kWarp) row[j] /= sum;
}

// In place on datt, which holds dP = dO v^T: dS = P ⊙ (dP - rowsum(dP ⊙ P)) * scale (the
// softmax Jacobian, with the 1 / sqrt(D) of S folded in), one warp per row.
template <class Scalar>
__global__ void __launch_bounds__(detail::kThreads)
    softmax_backward_kernel(DeviceView<Scalar> datt,  // (B H T, T)
                            ConstView<Scalar> att,    // (B H T, T)
                            Scalar scale) {
  const Index r = Index(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (r >= datt.rows) return;  // the whole warp
  const Index T = datt.cols;
  const Scalar* P = att.data + r * att.stride;
  Scalar* dS = datt.data + r * datt.stride;
  Scalar dot = 0;
  for (Index j = lane; j < T; j += kWarp) dot += dS[j] * P[j];
  dot = detail::warp_sum(dot);
  for (Index j = lane; j < T; j += kWarp) dS[j] = P[j] * (dS[j] - dot) * scale;
}

}  // namespace attention_detail

// out = softmax(q k^T / sqrt(D) + mask) v per sequence and head. Key j is visible to query t
// when key_mask(b, j) != 0 (absent: all keys) and, if causal, j <= t. A query that sees no key
// at all (possible with left padding) gets zero probabilities and a zero output.
//
// Grouped-query attention: k and v have Hkv heads, query head h reads kv head h / G with
// G = H / Hkv (transformers' repeat_kv). The GEMMs are then batched over the Hkv groups, one
// batch per member r < G of a group: query head g G + r starts at column (g G + r) D, so the
// members r are a base offset r D and the groups a stride G D apart in q (G T rows in att),
// while kv head g is D columns from g - 1. With Hkv == H (G = 1) this is one batch of all heads.
template <class Scalar>
void attention_forward(DeviceView<Scalar> out,      // (N, H * D)
                       DeviceView<Scalar> att,      // (B * H * T, T) saved
                       ConstView<Scalar> q,         // (N, H * D)
                       ConstView<Scalar> k,         // (N, Hkv * D)
                       ConstView<Scalar> v,         // (N, Hkv * D)
                       ConstView<Scalar> key_mask,  // (B, T) or absent
                       Index B, Index T, Index H, Index Hkv, bool causal) {
  const Index N = q.rows, C = q.cols;
  ops::detail::check_attention_sizes("attention_forward", N, C, B, T, H);
  ops::detail::check_kv_heads("attention_forward", H, Hkv);
  const Index D = C / H, Ckv = Hkv * D, G = H / Hkv;
  ops_detail::check_shape("attention_forward", "k", k, N, Ckv);
  ops_detail::check_shape("attention_forward", "v", v, N, Ckv);
  ops_detail::check_shape("attention_forward", "out", out, N, C);
  ops_detail::check_shape("attention_forward", "att", att, B * H * T, T);
  ops_detail::check_optional("attention_forward", "key_mask", key_mask, B, T);
  attention_detail::check_channels("attention_forward", C);
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));
  // The kernel tells an absent mask by its null data: an empty view with data is absent too.
  const ConstView<Scalar> mask = ops_detail::present(key_mask) ? key_mask : ConstView<Scalar>();

  // S_bh (T, T) = q_bh (T, D) k_bg^T, h = g G + r; head h of sequence b starts at row b T,
  // column h D of q, kv head g at column g D of k, and S_bh at row (b H + h) T of att.
  for (Index b = 0; b < B; ++b) {
    for (Index r = 0; r < G; ++r) {
      gemm_strided_batched<Scalar>(false, true, T, T, D, Scalar(1),                      //
                                   q.data + b * T * q.stride + r * D, q.stride, G * D,   // A_g
                                   k.data + b * T * k.stride, k.stride, D,               // B_g
                                   Scalar(0),                                            //
                                   att.data + (b * H + r) * T * att.stride, att.stride,  // C_g
                                   G * T * att.stride, Hkv);
    }
  }

  attention_detail::softmax_kernel<Scalar>
      <<<attention_detail::row_grid(att.rows), detail::kThreads, 0, context().stream()>>>(
          att, mask, T, H, causal, scale);
  SORA_CUDA_CHECK_LAUNCH("softmax_kernel");

  // out_bh (T, D) = P_bh (T, T) v_bg (T, D).
  for (Index b = 0; b < B; ++b) {
    for (Index r = 0; r < G; ++r) {
      gemm_strided_batched<Scalar>(false, false, T, D, T, Scalar(1),                     //
                                   att.data + (b * H + r) * T * att.stride, att.stride,  // A_g
                                   G * T * att.stride,                                   //
                                   v.data + b * T * v.stride, v.stride, D,               // B_g
                                   Scalar(0),                                            //
                                   out.data + b * T * out.stride + r * D, out.stride,    // C_g
                                   G * D, Hkv);
    }
  }
}

// Multi-head attention: k and v have the H heads of q.
template <class Scalar>
void attention_forward(DeviceView<Scalar> out,      // (N, C)
                       DeviceView<Scalar> att,      // (B * H * T, T) saved
                       ConstView<Scalar> q,         // (N, C)
                       ConstView<Scalar> k,         // (N, C)
                       ConstView<Scalar> v,         // (N, C)
                       ConstView<Scalar> key_mask,  // (B, T) or absent
                       Index B, Index T, Index H, bool causal) {
  attention_forward<Scalar>(out, att, q, k, v, key_mask, B, T, H, H, causal);
}

// Per sequence and head, with S = q k^T / sqrt(D), P = softmax(S), O = P v:
//   dv = P^T dO,  dP = dO v^T,  dS = P ⊙ (dP - rowsum(dP ⊙ P)) / sqrt(D)  (softmax Jacobian),
//   dq = dS k,  dk = dS^T q.
// Masked entries have P = 0 and so dS = 0: the masks need not be passed again. datt is the
// workspace (written; it holds dS afterwards).
//
// With groups (G = H / Hkv > 1), dk and dv of kv head g sum the G query heads of its group: the
// member r = 0 writes them (beta 0), the members r > 0 add (beta 1), in order on one stream
// (deterministic; no zeroing pass). Batching as in the forward.
template <class Scalar>
void attention_backward(DeviceView<Scalar> dq,    // (N, H * D)
                        DeviceView<Scalar> dk,    // (N, Hkv * D)
                        DeviceView<Scalar> dv,    // (N, Hkv * D)
                        DeviceView<Scalar> datt,  // (B * H * T, T) written
                        ConstView<Scalar> dout,   // (N, H * D)
                        ConstView<Scalar> q,      // (N, H * D)
                        ConstView<Scalar> k,      // (N, Hkv * D)
                        ConstView<Scalar> v,      // (N, Hkv * D)
                        ConstView<Scalar> att,    // (B * H * T, T)
                        Index B, Index T, Index H, Index Hkv) {
  const Index N = q.rows, C = q.cols;
  ops::detail::check_attention_sizes("attention_backward", N, C, B, T, H);
  ops::detail::check_kv_heads("attention_backward", H, Hkv);
  const Index D = C / H, Ckv = Hkv * D, G = H / Hkv;
  ops_detail::check_shape("attention_backward", "k", k, N, Ckv);
  ops_detail::check_shape("attention_backward", "v", v, N, Ckv);
  ops_detail::check_shape("attention_backward", "dout", dout, N, C);
  ops_detail::check_shape("attention_backward", "dq", dq, N, C);
  ops_detail::check_shape("attention_backward", "dk", dk, N, Ckv);
  ops_detail::check_shape("attention_backward", "dv", dv, N, Ckv);
  ops_detail::check_shape("attention_backward", "att", att, B * H * T, T);
  ops_detail::check_shape("attention_backward", "datt", datt, B * H * T, T);
  attention_detail::check_channels("attention_backward", C);
  const Scalar scale = Scalar(1) / std::sqrt(Scalar(D));

  // Member r of the groups of sequence b: P / dS from row (b H + r) T of att / datt (batch
  // stride G T rows), dO / q / dq from column r D (batch stride G D), k / v / dk / dv from
  // column 0 (batch stride D).
  for (Index b = 0; b < B; ++b) {
    for (Index r = 0; r < G; ++r) {
      const Scalar* P = att.data + (b * H + r) * T * att.stride;
      Scalar* dS = datt.data + (b * H + r) * T * datt.stride;
      const Scalar* dO = dout.data + b * T * dout.stride + r * D;
      const Scalar beta = r == 0 ? Scalar(0) : Scalar(1);
      // dv_bg (T, D) (+)= P_bh^T (T, T) dO_bh (T, D)
      gemm_strided_batched<Scalar>(true, false, T, D, T, Scalar(1),                  //
                                   P, att.stride, G * T * att.stride,                // A_g
                                   dO, dout.stride, G * D,                           // B_g
                                   beta,                                             //
                                   dv.data + b * T * dv.stride, dv.stride, D, Hkv);  // C_g
      // dP_bh (T, T) = dO_bh (T, D) v_bg^T
      gemm_strided_batched<Scalar>(false, true, T, T, D, Scalar(1),             //
                                   dO, dout.stride, G * D,                      // A_g
                                   v.data + b * T * v.stride, v.stride, D,      // B_g
                                   Scalar(0),                                   //
                                   dS, datt.stride, G * T * datt.stride, Hkv);  // C_g
    }
  }

  attention_detail::softmax_backward_kernel<Scalar>
      <<<attention_detail::row_grid(datt.rows), detail::kThreads, 0, context().stream()>>>(
          datt, att, scale);
  SORA_CUDA_CHECK_LAUNCH("softmax_backward_kernel");

  for (Index b = 0; b < B; ++b) {
    for (Index r = 0; r < G; ++r) {
      const Scalar* dS = datt.data + (b * H + r) * T * datt.stride;
      const Scalar beta = r == 0 ? Scalar(0) : Scalar(1);
      // dq_bh (T, D) = dS_bh (T, T) k_bg (T, D)
      gemm_strided_batched<Scalar>(false, false, T, D, T, Scalar(1),                       //
                                   dS, datt.stride, G * T * datt.stride,                   // A_g
                                   k.data + b * T * k.stride, k.stride, D,                 // B_g
                                   Scalar(0),                                              //
                                   dq.data + b * T * dq.stride + r * D, dq.stride, G * D,  // C_g
                                   Hkv);
      // dk_bg (T, D) (+)= dS_bh^T (T, T) q_bh (T, D)
      gemm_strided_batched<Scalar>(true, false, T, D, T, Scalar(1),                     //
                                   dS, datt.stride, G * T * datt.stride,                // A_g
                                   q.data + b * T * q.stride + r * D, q.stride, G * D,  // B_g
                                   beta,                                                //
                                   dk.data + b * T * dk.stride, dk.stride, D, Hkv);     // C_g
    }
  }
}

// Multi-head attention: k and v have the H heads of q.
template <class Scalar>
void attention_backward(DeviceView<Scalar> dq,    // (N, C)
                        DeviceView<Scalar> dk,    // (N, C)
                        DeviceView<Scalar> dv,    // (N, C)
                        DeviceView<Scalar> datt,  // (B * H * T, T) written
                        ConstView<Scalar> dout,   // (N, C)
                        ConstView<Scalar> q,      // (N, C)
                        ConstView<Scalar> k,      // (N, C)
                        ConstView<Scalar> v,      // (N, C)
                        ConstView<Scalar> att,    // (B * H * T, T)
                        Index B, Index T, Index H) {
  attention_backward<Scalar>(dq, dk, dv, datt, dout, q, k, v, att, B, T, H, H);
}

}  // namespace sora::cuda
