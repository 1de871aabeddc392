#pragma once
// CUDA twin of ops/rmsnorm.hpp: RMSNorm over the channels of each token (transformers'
// LlamaRMSNorm), on device views, with the same names, arguments, formulas and shape checks.
//
// Backward contract: the parameter gradient accumulates (+=); the input gradient overwrites (=).
//
// Sizes: N tokens, C channels.
//
// As cuda/ops/layernorm.cuh: one warp per row for rstd and the input gradient (shuffle
// reductions in a fixed order), and the weight gradient as column sums over tiles of columns,
// kRowLanes threads per column over fixed sets of rows, partial sums added in a fixed order (no
// atomics: the result does not depend on the run). Views may be strided; out may alias inp.

#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace rmsnorm_detail {

using namespace ops_detail;

inline constexpr int kColTile = 32;
inline constexpr int kRowLanes = detail::kThreads / kColTile;  // 8

template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    rmsnorm_forward_kernel(DeviceView<T> out,    // (N, C)
                           DeviceView<T> rstd,   // (N, 1)
                           ConstView<T> inp,     // (N, C)
                           ConstView<T> weight,  // (1, C)
                           T eps) {
  const Index n = warp_row();
  if (n >= inp.rows) return;  // the whole warp: n is the same on every lane
  const Index C = inp.cols;
  const T* x = inp.data + n * inp.stride;
  T* y = out.data + n * out.stride;
  T sq = T(0);
  for (Index c = lane(); c < C; c += kWarp) sq += x[c] * x[c];
  const T rs = T(1) / dev_sqrt(warp_sum(sq) / T(C) + eps);
  for (Index c = lane(); c < C; c += kWarp) y[c] = x[c] * rs * weight.data[c];
  if (lane() == 0) rstd.data[n * rstd.stride] = rs;
}

// dx = rstd * (dxhat - xhat * mean_c(dxhat ⊙ xhat)), xhat = x rstd, dxhat = dout ⊙ weight.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    rmsnorm_backward_kernel(DeviceView<T> dinp,   // (N, C)
                            ConstView<T> dout,    // (N, C)
                            ConstView<T> inp,     // (N, C)
                            ConstView<T> weight,  // (1, C)
                            ConstView<T> rstd) {  // (N, 1)
  const Index n = warp_row();
  if (n >= inp.rows) return;
  const Index C = inp.cols;
  const T* dy = dout.data + n * dout.stride;
  const T* x = inp.data + n * inp.stride;
  T* dx = dinp.data + n * dinp.stride;
  const T rs = rstd.data[n * rstd.stride];
  T sum_dxhat_xhat = T(0);
  for (Index c = lane(); c < C; c += kWarp) sum_dxhat_xhat += dy[c] * weight.data[c] * x[c] * rs;
  const T mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / T(C);
  for (Index c = lane(); c < C; c += kWarp) {
    const T dxhat = dy[c] * weight.data[c];
    dx[c] = rs * (dxhat - x[c] * rs * mean_dxhat_xhat);
  }
}

// dweight[c] += sum_n dout[n, c] x[n, c] rstd[n]. blockDim (kColTile, kRowLanes), one block per
// tile of kColTile columns: thread (x, y) sums rows y, y + kRowLanes, ... of column x in order,
// then row y == 0 adds the kRowLanes partial sums in order. Every thread reaches the barrier.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    rmsnorm_weight_grad_kernel(DeviceView<T> dweight,  // (1, C)
                               ConstView<T> dout,      // (N, C)
                               ConstView<T> inp,       // (N, C)
                               ConstView<T> rstd) {    // (N, 1)
  __shared__ T part[kRowLanes][kColTile];
  const Index c = Index(blockIdx.x) * kColTile + threadIdx.x;
  T s = T(0);
  if (c < dout.cols) {
    for (Index n = threadIdx.y; n < dout.rows; n += kRowLanes)
      s += dout.data[n * dout.stride + c] * inp.data[n * inp.stride + c] *
           rstd.data[n * rstd.stride];
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < dout.cols) {
    T t = part[0][threadIdx.x];
    for (int l = 1; l < kRowLanes; ++l) t += part[l][threadIdx.x];
    dweight.data[c] += t;
  }
}

}  // namespace rmsnorm_detail

// out = weight ⊙ (x * rstd), rstd = 1 / sqrt(mean_c(x^2) + eps); rstd is saved for backward.
template <class T>
void rmsnorm_forward(DeviceView<T> out,    // (N, C)
                     DeviceView<T> rstd,   // (N, 1)
                     ConstView<T> inp,     // (N, C)
                     ConstView<T> weight,  // (1, C)
                     T eps = T(1e-6)) {
  const Index N = inp.rows, C = inp.cols;
  ops_detail::check_shape("rmsnorm_forward", "out", out, N, C);
  ops_detail::check_shape("rmsnorm_forward", "rstd", rstd, N, 1);
  ops_detail::check_shape("rmsnorm_forward", "weight", weight, 1, C);
  SORA_CHECK(C > 0, "rmsnorm_forward: inputs (", N, ", ", C, ") have no channels");
  if (N == 0) return;
  rmsnorm_detail::rmsnorm_forward_kernel<T>
      <<<ops_detail::row_grid(N), detail::kThreads, 0, context().stream()>>>(out, rstd, inp, weight,
                                                                             eps);
  SORA_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

// dweight += dout ⊙ xhat, dx = rstd * (dxhat - xhat * mean_c(dxhat ⊙ xhat)). dinp and dweight
// may be absent.
template <class T>
void rmsnorm_backward(DeviceView<T> dinp,     // (N, C) or absent
                      DeviceView<T> dweight,  // (1, C) or absent
                      ConstView<T> dout,      // (N, C)
                      ConstView<T> inp,       // (N, C)
                      ConstView<T> weight,    // (1, C)
                      ConstView<T> rstd) {    // (N, 1)
  const Index N = inp.rows, C = inp.cols;
  ops_detail::check_shape("rmsnorm_backward", "dout", dout, N, C);
  ops_detail::check_shape("rmsnorm_backward", "weight", weight, 1, C);
  ops_detail::check_shape("rmsnorm_backward", "rstd", rstd, N, 1);
  ops_detail::check_optional("rmsnorm_backward", "dinp", dinp, N, C);
  ops_detail::check_optional("rmsnorm_backward", "dweight", dweight, 1, C);
  if (N == 0 || C == 0) return;
  const cudaStream_t stream = context().stream();
  // The weight gradient first, as on the CPU: it reads dout, which dinp may overwrite.
  if (ops_detail::present(dweight)) {
    using rmsnorm_detail::kColTile, rmsnorm_detail::kRowLanes;
    const dim3 block(kColTile, kRowLanes);
    const auto grid = static_cast<unsigned>((C + kColTile - 1) / kColTile);
    rmsnorm_detail::rmsnorm_weight_grad_kernel<T>
        <<<grid, block, 0, stream>>>(dweight, dout, inp, rstd);
    SORA_CUDA_CHECK_LAUNCH("rmsnorm_weight_grad_kernel");
  }
  if (!ops_detail::present(dinp)) return;
  rmsnorm_detail::rmsnorm_backward_kernel<T>
      <<<ops_detail::row_grid(N), detail::kThreads, 0, stream>>>(dinp, dout, inp, weight, rstd);
  SORA_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
}

}  // namespace sora::cuda
