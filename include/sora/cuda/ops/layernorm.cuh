#pragma once
// CUDA twin of ops/layernorm.hpp: LayerNorm over the channels of each token, on device views,
// with the same names, arguments, formulas and shape checks.
//
// Backward contract: parameter gradients accumulate (+=); the input gradient overwrites (=).
//
// Sizes: N tokens, C channels.
//
// The row statistics and the input gradient put one warp on each row (shuffle reductions in a
// fixed order). The weight and bias gradients are column sums over the rows: a second kernel
// over tiles of columns, each column summed by kRowLanes threads over fixed sets of rows and
// the partial sums added in a fixed order, so the result does not depend on the run (no
// atomics). Views may be strided (row stride >= cols); out may alias inp.

#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace layernorm_detail {

using namespace ops_detail;

inline constexpr int kColTile = 32;
inline constexpr int kRowLanes = detail::kThreads / kColTile;  // 8

template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    layernorm_forward_kernel(DeviceView<T> out,    // (N, C)
                             DeviceView<T> mean,   // (N, 1)
                             DeviceView<T> rstd,   // (N, 1)
                             ConstView<T> inp,     // (N, C)
                             ConstView<T> weight,  // (1, C)
                             ConstView<T> bias,    // (1, C)
                             T eps) {
  const Index n = warp_row();
  if (n >= inp.rows) return;  // the whole warp: n is the same on every lane
  const Index C = inp.cols;
  const T* x = inp.data + n * inp.stride;
  T* y = out.data + n * out.stride;
  T sum = T(0);
  for (Index c = lane(); c < C; c += kWarp) sum += x[c];
  const T m = warp_sum(sum) / T(C);
  // The variance from the centred values (two passes): no cancellation of E[x^2] - m^2.
  T sq = T(0);
  for (Index c = lane(); c < C; c += kWarp) {
    const T d = x[c] - m;
    sq += d * d;
  }
  const T var = warp_sum(sq) / T(C);
  const T rs = T(1) / dev_sqrt(var + eps);
  for (Index c = lane(); c < C; c += kWarp) y[c] = (x[c] - m) * rs * weight.data[c] + bias.data[c];
  if (lane() == 0) {
    mean.data[n * mean.stride] = m;
    rstd.data[n * rstd.stride] = rs;
  }
}

// dx = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat ⊙ xhat)), one warp per row.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    layernorm_backward_kernel(DeviceView<T> dinp,   // (N, C)
                              ConstView<T> dout,    // (N, C)
                              ConstView<T> inp,     // (N, C)
                              ConstView<T> weight,  // (1, C)
                              ConstView<T> mean,    // (N, 1)
                              ConstView<T> rstd) {  // (N, 1)
  const Index n = warp_row();
  if (n >= inp.rows) return;
  const Index C = inp.cols;
  const T* dy = dout.data + n * dout.stride;
  const T* x = inp.data + n * inp.stride;
  T* dx = dinp.data + n * dinp.stride;
  const T m = mean.data[n * mean.stride], rs = rstd.data[n * rstd.stride];
  T sum_dxhat = T(0), sum_dxhat_xhat = T(0);
  for (Index c = lane(); c < C; c += kWarp) {
    const T dxhat = dy[c] * weight.data[c];
    const T xhat = (x[c] - m) * rs;
    sum_dxhat += dxhat;
    sum_dxhat_xhat += dxhat * xhat;
  }
  const T mean_dxhat = warp_sum(sum_dxhat) / T(C);
  const T mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / T(C);
  for (Index c = lane(); c < C; c += kWarp) {
    const T dxhat = dy[c] * weight.data[c];
    const T xhat = (x[c] - m) * rs;
    dx[c] = rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
  }
}

// dbias[c] += sum_n dout[n, c], dweight[c] += sum_n dout[n, c] xhat[n, c]. Launched with
// blockDim (kColTile, kRowLanes), one block per tile of kColTile columns: thread (x, y) sums
// rows y, y + kRowLanes, ... of column x in order, then row y == 0 adds the kRowLanes partial
// sums in order. Every thread reaches the barrier (no early return).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    layernorm_param_grad_kernel(DeviceView<T> dweight,  // (1, C) or absent (has_dweight false)
                                DeviceView<T> dbias,    // (1, C) or absent (has_dbias false)
                                ConstView<T> dout,      // (N, C)
                                ConstView<T> inp,       // (N, C)
                                ConstView<T> mean,      // (N, 1)
                                ConstView<T> rstd,      // (N, 1)
                                bool has_dweight, bool has_dbias) {
  __shared__ T part_w[kRowLanes][kColTile];
  __shared__ T part_b[kRowLanes][kColTile];
  const Index c = Index(blockIdx.x) * kColTile + threadIdx.x;
  T sw = T(0), sb = T(0);
  if (c < dout.cols) {
    for (Index n = threadIdx.y; n < dout.rows; n += kRowLanes) {
      const T d = dout.data[n * dout.stride + c];
      sb += d;
      sw += d * (inp.data[n * inp.stride + c] - mean.data[n * mean.stride]) *
            rstd.data[n * rstd.stride];
    }
  }
  part_w[threadIdx.y][threadIdx.x] = sw;
  part_b[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < dout.cols) {
    T tw = part_w[0][threadIdx.x], tb = part_b[0][threadIdx.x];
    for (int l = 1; l < kRowLanes; ++l) {
      tw += part_w[l][threadIdx.x];
      tb += part_b[l][threadIdx.x];
    }
    if (has_dweight) dweight.data[c] += tw;
    if (has_dbias) dbias.data[c] += tb;
  }
}

}  // namespace layernorm_detail

// out = (inp - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps) (biased variance, as
// PyTorch). mean and rstd are saved for backward.
template <class T>
void layernorm_forward(DeviceView<T> out,    // (N, C)
                       DeviceView<T> mean,   // (N, 1)
                       DeviceView<T> rstd,   // (N, 1)
                       ConstView<T> inp,     // (N, C)
                       ConstView<T> weight,  // (1, C)
                       ConstView<T> bias,    // (1, C)
                       T eps = T(1e-5)) {
  const Index N = inp.rows, C = inp.cols;
  ops_detail::check_shape("layernorm_forward", "out", out, N, C);
  ops_detail::check_shape("layernorm_forward", "mean", mean, N, 1);
  ops_detail::check_shape("layernorm_forward", "rstd", rstd, N, 1);
  ops_detail::check_shape("layernorm_forward", "weight", weight, 1, C);
  ops_detail::check_shape("layernorm_forward", "bias", bias, 1, C);
  if (N == 0) return;
  layernorm_detail::layernorm_forward_kernel<T>
      <<<ops_detail::row_grid(N), detail::kThreads, 0, context().stream()>>>(out, mean, rstd, inp,
                                                                             weight, bias, eps);
  SORA_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

// With xhat = (x - mean) * rstd and dxhat = dout ⊙ weight:
//   dbias += dout,  dweight += dout ⊙ xhat,
//   dx = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat ⊙ xhat)).
// Any of dinp, dweight, dbias may be absent.
template <class T>
void layernorm_backward(DeviceView<T> dinp,     // (N, C) or absent
                        DeviceView<T> dweight,  // (1, C) or absent
                        DeviceView<T> dbias,    // (1, C) or absent
                        ConstView<T> dout,      // (N, C)
                        ConstView<T> inp,       // (N, C)
                        ConstView<T> weight,    // (1, C)
                        ConstView<T> mean,      // (N, 1)
                        ConstView<T> rstd) {    // (N, 1)
  const Index N = inp.rows, C = inp.cols;
  ops_detail::check_shape("layernorm_backward", "dout", dout, N, C);
  ops_detail::check_shape("layernorm_backward", "weight", weight, 1, C);
  ops_detail::check_shape("layernorm_backward", "mean", mean, N, 1);
  ops_detail::check_shape("layernorm_backward", "rstd", rstd, N, 1);
  ops_detail::check_optional("layernorm_backward", "dinp", dinp, N, C);
  ops_detail::check_optional("layernorm_backward", "dweight", dweight, 1, C);
  ops_detail::check_optional("layernorm_backward", "dbias", dbias, 1, C);
  if (N == 0 || C == 0) return;
  const cudaStream_t stream = context().stream();
  const bool has_dweight = ops_detail::present(dweight), has_dbias = ops_detail::present(dbias);
  // Parameter gradients first, as on the CPU: they read dout, which dinp may overwrite.
  if (has_dweight || has_dbias) {
    using layernorm_detail::kColTile, layernorm_detail::kRowLanes;
    const dim3 block(kColTile, kRowLanes);
    const auto grid = static_cast<unsigned>((C + kColTile - 1) / kColTile);
    layernorm_detail::layernorm_param_grad_kernel<T>
        <<<grid, block, 0, stream>>>(dweight, dbias, dout, inp, mean, rstd, has_dweight, has_dbias);
    SORA_CUDA_CHECK_LAUNCH("layernorm_param_grad_kernel");
  }
  if (!ops_detail::present(dinp)) return;
  layernorm_detail::layernorm_backward_kernel<T>
      <<<ops_detail::row_grid(N), detail::kThreads, 0, stream>>>(dinp, dout, inp, weight, mean,
                                                                 rstd);
  SORA_CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
}

}  // namespace sora::cuda
