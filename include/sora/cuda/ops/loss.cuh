#pragma once
// CUDA twins of ops/loss.hpp: softmax cross-entropy (fused, with an ignore index) and mean
// squared error, on device views, with the same names, arguments, semantics and checks
// (targets are validated on the host copy that DeviceIndices keeps, with the CPU's messages).
//
// Backward contract: the gradient with respect to the logits / predictions overwrites (=).
// The forward returns the scalar loss; backward takes its upstream gradient dloss.
//
// Sizes: N rows, V classes (vocabulary), K regression outputs, G partial sums.
//
// The two forwards are the only ops that synchronise with the host: they read the loss back.
// Their sums are deterministic (fixed order, no float atomics): per-row or per-block partial
// sums into the context's scratch buffer, then one block adds those in a fixed order.

#include <algorithm>
#include <cstddef>

#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/kernels.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/loss.hpp"

namespace sora::cuda {

namespace loss_detail {

using namespace ops_detail;

// The most blocks of mse_forward's first pass: enough to fill the device with loads, and a
// fixed geometry for a given size, so the order of the additions is the same on every device.
inline constexpr Index kMaxPartials = 256;

// One warp per row: probs = softmax(logits) (the CPU's steps: max, exp(x - max), divide by
// the sum) and row_loss[n] = -log p[target] = log(sum) + max - logit[target] (log-sum-exp:
// exact even where p underflows), 0 for an ignored row. probs must not alias logits (the
// target's logit is read after probs is written), as on the CPU.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    cross_entropy_forward_kernel(DeviceView<T> probs,  // (N, V)
                                 ConstView<T> logits,  // (N, V)
                                 const int* targets,   // (N)
                                 int ignore_index,
                                 T* row_loss) {  // (N)
  const Index n = warp_row();
  if (n >= logits.rows) return;  // the whole warp: n is the same on every lane
  const T* x = logits.data + n * logits.stride;
  const SoftmaxRow<T> row = warp_softmax_row(x, probs.data + n * probs.stride, logits.cols);
  if (lane() == 0) {
    const int t = targets[n];
    row_loss[n] = t == ignore_index ? T(0) : dev_log(row.sum) + row.max - x[t];
  }
}

// out[0] = (sum of x[0 .. n)) / divisor (0 when divisor is 0), by one block of kThreads:
// thread i adds x[i], x[i + kThreads], ... in order, then the block sum (fixed order).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    mean_kernel(const T* x, Index n, Index divisor, T* out) {
  T s = T(0);
  for (Index i = threadIdx.x; i < n; i += detail::kThreads) s += x[i];
  s = detail::group_sum<detail::kThreads>(s);
  if (threadIdx.x == 0) out[0] = divisor == 0 ? T(0) : s / T(divisor);
}

// partial[b] = sum of (pred - target)^2 over the elements i = b kThreads + j, stepping by
// gridDim.x kThreads (each thread in order, then the block sum).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    squared_error_kernel(ConstView<T> pred,    // (N, K)
                         ConstView<T> target,  // (N, K)
                         T* partial) {         // (G)
  const Index n = pred.size(), K = pred.cols;
  T s = T(0);
  for (Index i = Index(blockIdx.x) * detail::kThreads + threadIdx.x; i < n;
       i += Index(gridDim.x) * detail::kThreads) {
    const Index r = i / K, c = i % K;
    const T d = pred.data[r * pred.stride + c] - target.data[r * target.stride + c];
    s += d * d;
  }
  s = detail::group_sum<detail::kThreads>(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// dlogits[n] = probs[n] * factor - factor onehot(targets[n]), 0 for an ignored row; one
// thread per element. dlogits may alias probs.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    cross_entropy_backward_kernel(DeviceView<T> dlogits,  // (N, V)
                                  ConstView<T> probs,     // (N, V)
                                  const int* targets,     // (N)
                                  int ignore_index, T factor) {
  const Index n = probs.size(), V = probs.cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / V, c = i % V;
    const int t = targets[r];
    T g = T(0);
    if (t != ignore_index) {
      g = probs.data[r * probs.stride + c] * factor;
      if (c == t) g -= factor;
    }
    dlogits.data[r * dlogits.stride + c] = g;
  }
}

template <class T>
struct MseGrad {  // (pred - target) * scale; the engine calls it as (pred, target)
  static constexpr bool kBinary = true;
  T scale;
  __device__ T operator()(T pred, T target) const { return (pred - target) * scale; }
};

// Reads one T from device memory: waits for everything queued on the stream.
template <class T>
T read_back(const T* value, cudaStream_t stream) {
  T host = T(0);
  SORA_CUDA_CHECK(cudaMemcpyAsync(&host, value, sizeof(T), cudaMemcpyDeviceToHost, stream));
  SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace loss_detail

// loss = mean over rows n with targets[n] != ignore_index of -log softmax(logits[n])[targets[n]]
// (0 when every row is ignored). probs = softmax(logits) is saved for backward. Synchronises.
template <class T>
T cross_entropy_forward(DeviceView<T> probs,           // (N, V)
                        ConstView<T> logits,           // (N, V)
                        const DeviceIndices& targets,  // (N)
                        int ignore_index = ops::kIgnoreIndex) {
  const Index N = logits.rows, V = logits.cols;
  SORA_CHECK(static_cast<Index>(targets.host().size()) == N, "cross_entropy_forward: logits ",
             shape_str(logits.rows, logits.cols), " but ", targets.host().size(), " targets");
  ops_detail::check_shape("cross_entropy_forward", "probs", probs, N, V);
  const Index count =
      ops::detail::count_targets("cross_entropy_forward", targets.host(), V, ignore_index);
  if (N == 0) return T(0);
  Context& ctx = context();
  const cudaStream_t stream = ctx.stream();
  T* scratch = static_cast<T*>(ctx.scratch(static_cast<std::size_t>(N + 1) * sizeof(T)));
  T* row_loss = scratch;  // (N)
  T* loss = scratch + N;  // (1)
  loss_detail::cross_entropy_forward_kernel<T>
      <<<ops_detail::row_grid(N), detail::kThreads, 0, stream>>>(probs, logits, targets.device(),
                                                                 ignore_index, row_loss);
  SORA_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
  loss_detail::mean_kernel<T><<<1, detail::kThreads, 0, stream>>>(row_loss, N, count, loss);
  SORA_CUDA_CHECK_LAUNCH("mean_kernel");
  return loss_detail::read_back(loss, stream);
}

// d loss / d logits[n] = (probs[n] - onehot(targets[n])) / count for kept rows, 0 for ignored.
template <class T>
void cross_entropy_backward(DeviceView<T> dlogits,         // (N, V)
                            ConstView<T> probs,            // (N, V)
                            const DeviceIndices& targets,  // (N)
                            int ignore_index = ops::kIgnoreIndex, T dloss = T(1)) {
  const Index N = probs.rows, V = probs.cols;
  SORA_CHECK(static_cast<Index>(targets.host().size()) == N, "cross_entropy_backward: probs ",
             shape_str(probs.rows, probs.cols), " but ", targets.host().size(), " targets");
  ops_detail::check_shape("cross_entropy_backward", "dlogits", dlogits, N, V);
  const Index count =
      ops::detail::count_targets("cross_entropy_backward", targets.host(), V, ignore_index);
  const T factor = count == 0 ? T(0) : dloss / T(count);
  if (probs.size() == 0) return;
  loss_detail::cross_entropy_backward_kernel<T>
      <<<detail::grid_for(probs.size()), detail::kThreads, 0, context().stream()>>>(
          dlogits, probs, targets.device(), ignore_index, factor);
  SORA_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

// loss = mean over all N K elements of (pred - target)^2. Synchronises.
template <class T>
T mse_forward(ConstView<T> pred,      // (N, K)
              ConstView<T> target) {  // (N, K)
  ops_detail::check_shape("mse_forward", "target", target, pred.rows, pred.cols);
  const Index n = pred.size();
  if (n == 0) return T(0);
  Context& ctx = context();
  const cudaStream_t stream = ctx.stream();
  const Index G =
      std::min<Index>((n + detail::kThreads - 1) / detail::kThreads, loss_detail::kMaxPartials);
  T* scratch = static_cast<T*>(ctx.scratch(static_cast<std::size_t>(G + 1) * sizeof(T)));
  T* partial = scratch;   // (G)
  T* loss = scratch + G;  // (1)
  loss_detail::squared_error_kernel<T>
      <<<static_cast<unsigned>(G), detail::kThreads, 0, stream>>>(pred, target, partial);
  SORA_CUDA_CHECK_LAUNCH("squared_error_kernel");
  loss_detail::mean_kernel<T><<<1, detail::kThreads, 0, stream>>>(partial, G, n, loss);
  SORA_CUDA_CHECK_LAUNCH("mean_kernel");
  return loss_detail::read_back(loss, stream);
}

// dpred = 2 (pred - target) / (N K) * dloss. dpred may alias pred.
template <class T>
void mse_backward(DeviceView<T> dpred,  // (N, K)
                  ConstView<T> pred,    // (N, K)
                  ConstView<T> target,  // (N, K)
                  T dloss = T(1)) {
  ops_detail::check_shape("mse_backward", "target", target, pred.rows, pred.cols);
  ops_detail::check_shape("mse_backward", "dpred", dpred, pred.rows, pred.cols);
  if (pred.size() == 0) return;
  const T scale = T(2) * dloss / T(pred.size());
  detail::run_ew<T>(loss_detail::MseGrad<T>{scale}, dpred, pred, target, context().stream());
}

}  // namespace sora::cuda
