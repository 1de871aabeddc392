#pragma once
// CUDA twins of ops/dropout.hpp: inverted dropout and residual addition, on device views, with
// the same names, arguments, semantics and checks.
//
// Backward contract: dropout's input gradient overwrites (=). residual_backward accumulates
// into both input gradients (+=).
//
// Sizes: N tokens, C channels.
//
// Random numbers: a training call draws ONE 64-bit seed from the host Rng (rng.next_u64()),
// and element i (row-major index n C + c) is dropped by the counter-based Philox4x32-10
// generator keyed by that seed, so the mask is a pure function of (seed, i): reproducible from
// the Rng's state, independent of the launch geometry, and the host stream advances by one
// draw per call. GPU masks differ from the CPU's (which draws N C uniforms from the Rng).
// Drop rule: with w the 32-bit Philox word of element i, uniform on [0, 2^32), drop iff
// w < ceil(p 2^32), so P(drop) = ceil(p 2^32) / 2^32, within 2^-32 of p (exact when p 2^32 is
// an integer). One Philox call gives four words: words x, y, z, w of counter g serve elements
// 4g, 4g + 1, 4g + 2, 4g + 3.
//
// Every output may alias its input as on the CPU (out = inp, dinp = dout, out = inp1 or inp2):
// each element is read by the thread that writes it, before it writes it.

#include <cuda_runtime.h>
#include <curand_philox4x32_x.h>

#include <cmath>
#include <cstdint>

#include "sora/core/rng.hpp"
#include "sora/cuda/context.cuh"
#include "sora/cuda/kernels.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace dropout_detail {

template <class T>
struct Fill {
  static constexpr bool kBinary = false;
  T value;
  __device__ T operator()(T) const { return value; }
};

template <class T>
struct Add {
  static constexpr bool kBinary = true;
  __device__ T operator()(T x, T w) const { return x + w; }
};

template <class T>
struct Twice {  // x + x: residual_forward with inp1 and inp2 the same tensor
  static constexpr bool kBinary = false;
  __device__ T operator()(T x) const { return x + x; }
};

template <class T>
struct Mul {
  static constexpr bool kBinary = true;
  __device__ T operator()(T x, T w) const { return x * w; }
};

// Thread-group g (grid-stride) draws Philox(counter = (g lo, g hi, 0, 0), key = seed) and
// handles the elements 4g .. 4g + 3 of the row-major order that exist.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    dropout_forward_kernel(DeviceView<T> out,   // (N, C)
                           DeviceView<T> mask,  // (N, C)
                           ConstView<T> inp,    // (N, C)
                           std::uint64_t seed,
                           std::uint64_t threshold,  // ceil(p 2^32): drop iff word < threshold
                           T keep_scale) {
  const Index n = inp.size(), C = inp.cols;
  const Index groups = (n + 3) / 4;
  const uint2 key = make_uint2(static_cast<unsigned>(seed), static_cast<unsigned>(seed >> 32));
  for (Index g = Index(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += Index(gridDim.x) * blockDim.x) {
    const auto ug = static_cast<std::uint64_t>(g);
    const uint4 ctr =
        make_uint4(static_cast<unsigned>(ug), static_cast<unsigned>(ug >> 32), 0u, 0u);
    const uint4 r = curand_Philox4x32_10(ctr, key);
    const unsigned words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const Index i = 4 * g + k;
      if (i < n) {
        const Index row = i / C, c = i % C;
        const T x = inp.data[row * inp.stride + c];
        const T factor = static_cast<std::uint64_t>(words[k]) < threshold ? T(0) : keep_scale;
        mask.data[row * mask.stride + c] = factor;
        out.data[row * out.stride + c] = x * factor;
      }
    }
  }
}

}  // namespace dropout_detail

// Training: each element is kept with probability 1 - p and scaled by 1 / (1 - p), so the
// expectation is unchanged and eval needs no rescaling. mask holds the per-element factor
// (0 or 1 / (1 - p)) for backward. Eval (or p == 0): out = inp and the mask (if present) is
// all ones, and rng is not used. out may alias inp.
template <class T>
void dropout_forward(DeviceView<T> out,   // (N, C)
                     DeviceView<T> mask,  // (N, C) saved; may be absent in eval
                     ConstView<T> inp,    // (N, C)
                     T p, Rng& rng, bool training = true) {
  const Index N = inp.rows, C = inp.cols;
  SORA_CHECK(p >= T(0) && p < T(1), "dropout_forward: probability ", p, " is not in [0, 1)");
  ops_detail::check_shape("dropout_forward", "out", out, N, C);
  const cudaStream_t stream = context().stream();
  const bool identity = !training || p == T(0);
  if (identity) {
    ops_detail::check_optional("dropout_forward", "mask", mask, N, C);
    if (ops_detail::present(mask)) {
      detail::run_ew<T>(dropout_detail::Fill<T>{T(1)}, mask, mask, ConstView<T>(), stream);
    }
    if (out.data != inp.data) cuda::copy<T>(out, inp, stream);
    return;
  }
  ops_detail::check_shape("dropout_forward", "mask", mask, N, C);
  const std::uint64_t seed = rng.next_u64();  // one draw per training call
  if (inp.size() == 0) return;
  // p 2^32 is exact in double (a power-of-two scaling) and below 2^32 for p < 1.
  const auto threshold =
      static_cast<std::uint64_t>(std::ceil(static_cast<double>(p) * 4294967296.0));
  const T keep_scale = T(1) / (T(1) - p);
  const Index groups = (inp.size() + 3) / 4;
  dropout_detail::dropout_forward_kernel<T>
      <<<detail::grid_for(groups), detail::kThreads, 0, stream>>>(out, mask, inp, seed, threshold,
                                                                  keep_scale);
  SORA_CUDA_CHECK_LAUNCH("dropout_forward_kernel");
}

// dinp = dout ⊙ mask (absent mask: the identity of eval mode). dinp may alias dout.
template <class T>
void dropout_backward(DeviceView<T> dinp,   // (N, C)
                      ConstView<T> dout,    // (N, C)
                      ConstView<T> mask) {  // (N, C) or absent
  ops_detail::check_shape("dropout_backward", "dinp", dinp, dout.rows, dout.cols);
  ops_detail::check_optional("dropout_backward", "mask", mask, dout.rows, dout.cols);
  const cudaStream_t stream = context().stream();
  if (ops_detail::present(mask)) {
    detail::run_ew<T>(dropout_detail::Mul<T>{}, dinp, dout, mask, stream);
  } else if (dinp.data != dout.data) {
    cuda::copy<T>(dinp, dout, stream);
  }
}

// out = inp1 + inp2 (out may alias either input).
template <class T>
void residual_forward(DeviceView<T> out, ConstView<T> inp1, ConstView<T> inp2) {
  ops_detail::check_shape("residual_forward", "inp2", inp2, inp1.rows, inp1.cols);
  ops_detail::check_shape("residual_forward", "out", out, inp1.rows, inp1.cols);
  const cudaStream_t stream = context().stream();
  // The engine lets its output alias its first operand only (the second is __restrict__), so
  // an output that is inp2 takes it as the first operand: inp2 + inp1 is the same number.
  if (inp1.data == inp2.data && inp1.stride == inp2.stride) {
    detail::run_ew<T>(dropout_detail::Twice<T>{}, out, inp1, ConstView<T>(), stream);
  } else if (out.data == inp2.data) {
    detail::run_ew<T>(dropout_detail::Add<T>{}, out, inp2, inp1, stream);
  } else {
    detail::run_ew<T>(dropout_detail::Add<T>{}, out, inp1, inp2, stream);
  }
}

// dinp1 += dout, dinp2 += dout. Either may be absent.
template <class T>
void residual_backward(DeviceView<T> dinp1, DeviceView<T> dinp2, ConstView<T> dout) {
  ops_detail::check_optional("residual_backward", "dinp1", dinp1, dout.rows, dout.cols);
  ops_detail::check_optional("residual_backward", "dinp2", dinp2, dout.rows, dout.cols);
  const cudaStream_t stream = context().stream();
  if (ops_detail::present(dinp1)) {
    detail::run_ew<T>(dropout_detail::Add<T>{}, dinp1, dinp1, dout, stream);
  }
  if (ops_detail::present(dinp2)) {
    detail::run_ew<T>(dropout_detail::Add<T>{}, dinp2, dinp2, dout, stream);
  }
}

}  // namespace sora::cuda
