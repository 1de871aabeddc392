#pragma once
// CUDA twin of ops/swiglu.hpp: LLaMA's gated activation silu(gate) ⊙ up, on device views, with
// the same names, arguments, formulas and shape checks.
//
// Backward contract: input gradients overwrite (=); no parameters.
//
// Sizes: N tokens, F hidden channels.
//
// One thread per element, grid-stride, any row strides. Each element's gate, up and dout are
// read by the thread that writes its outputs, before it writes them: out may alias gate or up,
// dgate / dup may alias dout.

#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace swiglu_detail {

using namespace ops_detail;

// out = gate / (1 + exp(-gate)) * up (silu(g) = g sigmoid(g); -0 rather than NaN when exp
// overflows for a very negative gate).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    swiglu_forward_kernel(DeviceView<T> out,  // (N, F)
                          ConstView<T> gate,  // (N, F)
                          ConstView<T> up) {  // (N, F)
  const Index n = gate.size(), F = gate.cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / F, c = i % F;
    const T g = gate.data[r * gate.stride + c], u = up.data[r * up.stride + c];
    out.data[r * out.stride + c] = g / (T(1) + dev_exp(-g)) * u;
  }
}

// With s = sigmoid(g): dgate = dout ⊙ up ⊙ s (1 + g (1 - s)), dup = dout ⊙ g s.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    swiglu_backward_kernel(DeviceView<T> dgate,  // (N, F) or absent (want_dgate false)
                           DeviceView<T> dup,    // (N, F) or absent (want_dup false)
                           ConstView<T> dout,    // (N, F)
                           ConstView<T> gate,    // (N, F)
                           ConstView<T> up,      // (N, F)
                           bool want_dgate, bool want_dup) {
  const Index n = gate.size(), F = gate.cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / F, c = i % F;
    const T g = gate.data[r * gate.stride + c], u = up.data[r * up.stride + c];
    const T d = dout.data[r * dout.stride + c];
    const T s = T(1) / (T(1) + dev_exp(-g));
    if (want_dgate) dgate.data[r * dgate.stride + c] = d * u * s * (T(1) + g * (T(1) - s));
    if (want_dup) dup.data[r * dup.stride + c] = d * g * s;
  }
}

}  // namespace swiglu_detail

template <class T>
void swiglu_forward(DeviceView<T> out,  // (N, F)
                    ConstView<T> gate,  // (N, F)
                    ConstView<T> up) {  // (N, F)
  const Index N = gate.rows, F = gate.cols;
  ops_detail::check_shape("swiglu_forward", "up", up, N, F);
  ops_detail::check_shape("swiglu_forward", "out", out, N, F);
  if (gate.size() == 0) return;
  swiglu_detail::swiglu_forward_kernel<T>
      <<<detail::grid_for(gate.size()), detail::kThreads, 0, context().stream()>>>(out, gate, up);
  SORA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

template <class T>
void swiglu_backward(DeviceView<T> dgate,  // (N, F) or absent
                     DeviceView<T> dup,    // (N, F) or absent
                     ConstView<T> dout,    // (N, F)
                     ConstView<T> gate,    // (N, F)
                     ConstView<T> up) {    // (N, F)
  const Index N = gate.rows, F = gate.cols;
  ops_detail::check_shape("swiglu_backward", "up", up, N, F);
  ops_detail::check_shape("swiglu_backward", "dout", dout, N, F);
  ops_detail::check_optional("swiglu_backward", "dgate", dgate, N, F);
  ops_detail::check_optional("swiglu_backward", "dup", dup, N, F);
  const bool want_dgate = ops_detail::present(dgate), want_dup = ops_detail::present(dup);
  if ((!want_dgate && !want_dup) || gate.size() == 0) return;
  swiglu_detail::swiglu_backward_kernel<T>
      <<<detail::grid_for(gate.size()), detail::kThreads, 0, context().stream()>>>(
          dgate, dup, dout, gate, up, want_dgate, want_dup);
  SORA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace sora::cuda
