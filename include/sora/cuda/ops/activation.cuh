#pragma once
// CUDA twins of ops/activation.hpp: GELU (tanh approximation and exact erf form), the fused
// bias + GELU epilogue of the MLP, tanh and row-wise softmax, on device views, with the same names,
// arguments, formulas and checks.
//
// Backward contract: input gradients overwrite (=); these ops have no parameters.
//
// Sizes: N rows, C columns.
//
// GELU and tanh are elementwise (the engine of cuda/kernels.cuh: packed loads on contiguous
// aligned views, any row stride otherwise). Softmax puts one warp on each row. Every output
// may alias its first input (out = inp, dinp = dout, probs = logits, dlogits = dprobs): each
// element is read by the thread that writes it, before it writes it.

#include "sora/cuda/context.cuh"
#include "sora/cuda/kernels.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/activation.hpp"

namespace sora::cuda {

namespace activation_detail {

using namespace ops_detail;

// The GELU constants are the CPU's, ops::detail::GeluConstants<T>.

template <class T>
struct GeluTanhForward {
  static constexpr bool kBinary = false;
  __device__ T operator()(T x) const {
    using G = ops::detail::GeluConstants<T>;
    return T(0.5) * x * (T(1) + dev_tanh(G::k * (x + G::c * (x * x * x))));
  }
};

template <class T>
struct GeluExactForward {
  static constexpr bool kBinary = false;
  __device__ T operator()(T x) const {
    using G = ops::detail::GeluConstants<T>;
    return T(0.5) * x * (T(1) + dev_erf(x * G::inv_sqrt2));
  }
};

// dinp = gelu'(inp) dout; the engine calls it as (dout, inp). The tanh form writes
// 1 - t^2 = sech^2(u) = 4 s / (1 + s)^2 with s = exp(-2|u|), as the CPU does: 1 minus a
// rounded t^2 cancels badly for |u| > 2.
template <class T>
struct GeluTanhBackward {
  static constexpr bool kBinary = true;
  __device__ T operator()(T dout, T x) const {
    using G = ops::detail::GeluConstants<T>;
    const T u = G::k * (x + G::c * (x * x * x));
    const T s = dev_exp(T(-2) * (u < T(0) ? -u : u));
    const T grad = T(0.5) * (T(1) + dev_tanh(u)) + T(2) * x * (s / ((T(1) + s) * (T(1) + s))) *
                                                       G::k * (T(1) + T(3) * G::c * (x * x));
    return grad * dout;
  }
};

// d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
template <class T>
struct GeluExactBackward {
  static constexpr bool kBinary = true;
  __device__ T operator()(T dout, T x) const {
    using G = ops::detail::GeluConstants<T>;
    const T grad = T(0.5) * (T(1) + dev_erf(x * G::inv_sqrt2)) +
                   x * G::inv_sqrt_2pi * dev_exp(T(-0.5) * x * x);
    return grad * dout;
  }
};

template <class T>
struct TanhForward {
  static constexpr bool kBinary = false;
  __device__ T operator()(T x) const { return dev_tanh(x); }
};

// dinp = dout (1 - out^2); the engine calls it as (dout, out).
template <class T>
struct TanhBackward {
  static constexpr bool kBinary = true;
  __device__ T operator()(T dout, T out) const { return dout * (T(1) - out * out); }
};

// pre += bias, act = gelu(pre) in one pass: each element is read once and written twice,
// where a bias pass and a GELU pass would read it twice and write it twice.
template <class T, class Gelu>
__global__ void __launch_bounds__(detail::kThreads) bias_gelu_kernel(DeviceView<T> act,  // (N, C)
                                                                     DeviceView<T> pre,  // (N, C)
                                                                     ConstView<T> bias,  // (1, C)
                                                                     Gelu gelu) {
  const Index n = pre.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / pre.cols, c = i - r * pre.cols;
    const T v = pre.data[r * pre.stride + c] + bias.data[c];
    pre.data[r * pre.stride + c] = v;
    act.data[r * act.stride + c] = gelu(v);
  }
}

// One warp per row (ops_detail::warp_softmax_row).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    softmax_forward_kernel(DeviceView<T> probs,    // (N, C)
                           ConstView<T> logits) {  // (N, C)
  const Index n = warp_row();
  if (n >= logits.rows) return;  // the whole warp: n is the same on every lane
  warp_softmax_row(logits.data + n * logits.stride, probs.data + n * probs.stride, logits.cols);
}

// dlogits = p ⊙ (dprobs - <dprobs, p>), one warp per row.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    softmax_backward_kernel(DeviceView<T> dlogits,  // (N, C)
                            ConstView<T> dprobs,    // (N, C)
                            ConstView<T> probs) {   // (N, C)
  const Index n = warp_row();
  if (n >= probs.rows) return;
  const Index C = probs.cols;
  const T* dp = dprobs.data + n * dprobs.stride;
  const T* p = probs.data + n * probs.stride;
  T* dl = dlogits.data + n * dlogits.stride;
  T dot = T(0);
  for (Index c = lane(); c < C; c += kWarp) dot += dp[c] * p[c];
  dot = warp_sum(dot);
  for (Index c = lane(); c < C; c += kWarp) dl[c] = p[c] * (dp[c] - dot);
}

}  // namespace activation_detail

template <class T>
void gelu_forward(DeviceView<T> out,  // (N, C)
                  ConstView<T> inp,   // (N, C)
                  ops::Gelu kind = ops::Gelu::tanh) {
  ops_detail::check_shape("gelu_forward", "out", out, inp.rows, inp.cols);
  using namespace activation_detail;
  const cudaStream_t stream = context().stream();
  if (kind == ops::Gelu::tanh) {
    detail::run_ew<T>(GeluTanhForward<T>{}, out, inp, ConstView<T>(), stream);
  } else {
    detail::run_ew<T>(GeluExactForward<T>{}, out, inp, ConstView<T>(), stream);
  }
}

// The MLP's fused epilogue (ops::bias_gelu_forward): pre += bias, act = gelu(pre), one pass.
template <class T>
void bias_gelu_forward(DeviceView<T> act,  // (N, C)
                       DeviceView<T> pre,  // (N, C) in: x W^T (+ adapter), out: + bias
                       ConstView<T> bias,  // (1, C)
                       ops::Gelu kind = ops::Gelu::tanh) {
  ops_detail::check_shape("bias_gelu_forward", "bias", bias, 1, pre.cols);
  ops_detail::check_shape("bias_gelu_forward", "act", act, pre.rows, pre.cols);
  if (pre.size() == 0) return;
  using namespace activation_detail;
  const cudaStream_t stream = context().stream();
  const unsigned grid = detail::grid_for(pre.size());
  if (kind == ops::Gelu::tanh) {
    bias_gelu_kernel<T>
        <<<grid, detail::kThreads, 0, stream>>>(act, pre, bias, GeluTanhForward<T>{});
  } else {
    bias_gelu_kernel<T>
        <<<grid, detail::kThreads, 0, stream>>>(act, pre, bias, GeluExactForward<T>{});
  }
  SORA_CUDA_CHECK_LAUNCH("bias_gelu_kernel");
}

// tanh form: with t = tanh(k (x + c x^3)),
//   d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
// exact form: d/dx [x Phi(x)] = Phi(x) + x phi(x).
template <class T>
void gelu_backward(DeviceView<T> dinp,  // (N, C)
                   ConstView<T> dout,   // (N, C)
                   ConstView<T> inp,    // (N, C)
                   ops::Gelu kind = ops::Gelu::tanh) {
  ops_detail::check_shape("gelu_backward", "dout", dout, inp.rows, inp.cols);
  ops_detail::check_shape("gelu_backward", "dinp", dinp, inp.rows, inp.cols);
  using namespace activation_detail;
  const cudaStream_t stream = context().stream();
  if (kind == ops::Gelu::tanh) {
    detail::run_ew<T>(GeluTanhBackward<T>{}, dinp, dout, inp, stream);
  } else {
    detail::run_ew<T>(GeluExactBackward<T>{}, dinp, dout, inp, stream);
  }
}

// probs[n] = softmax(logits[n]), shifted by the row maximum so that exp never overflows.
template <class T>
void softmax_forward(DeviceView<T> probs,    // (N, C)
                     ConstView<T> logits) {  // (N, C)
  ops_detail::check_shape("softmax_forward", "probs", probs, logits.rows, logits.cols);
  if (logits.rows == 0) return;
  activation_detail::softmax_forward_kernel<T>
      <<<ops_detail::row_grid(logits.rows), detail::kThreads, 0, context().stream()>>>(probs,
                                                                                       logits);
  SORA_CUDA_CHECK_LAUNCH("softmax_forward_kernel");
}

// The softmax Jacobian is diag(p) - p p^T, so dlogits = p ⊙ (dprobs - <dprobs, p>).
template <class T>
void softmax_backward(DeviceView<T> dlogits,  // (N, C)
                      ConstView<T> dprobs,    // (N, C)
                      ConstView<T> probs) {   // (N, C)
  ops_detail::check_shape("softmax_backward", "dprobs", dprobs, probs.rows, probs.cols);
  ops_detail::check_shape("softmax_backward", "dlogits", dlogits, probs.rows, probs.cols);
  if (probs.rows == 0) return;
  activation_detail::softmax_backward_kernel<T>
      <<<ops_detail::row_grid(probs.rows), detail::kThreads, 0, context().stream()>>>(
          dlogits, dprobs, probs);
  SORA_CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}

// out = tanh(inp) (the classification head's activation).
template <class T>
void tanh_forward(DeviceView<T> out,   // (N, C)
                  ConstView<T> inp) {  // (N, C)
  ops_detail::check_shape("tanh_forward", "out", out, inp.rows, inp.cols);
  detail::run_ew<T>(activation_detail::TanhForward<T>{}, out, inp, ConstView<T>(),
                    context().stream());
}

// dinp = dout ⊙ (1 - out^2), from the saved output (tanh' = 1 - tanh^2). dinp may alias dout.
template <class T>
void tanh_backward(DeviceView<T> dinp,  // (N, C)
                   ConstView<T> dout,   // (N, C)
                   ConstView<T> out) {  // (N, C) tanh_forward's output
  ops_detail::check_shape("tanh_backward", "dout", dout, out.rows, out.cols);
  ops_detail::check_shape("tanh_backward", "dinp", dinp, out.rows, out.cols);
  detail::run_ew<T>(activation_detail::TanhBackward<T>{}, dinp, dout, out, context().stream());
}

}  // namespace sora::cuda
