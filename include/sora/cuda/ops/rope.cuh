#pragma once
// CUDA twin of ops/rope.hpp: rotary position embeddings in Hugging Face's half-rotation layout
// (pairs (i, i + D/2) of each head), on device views, with the same names, arguments, formulas
// and checks. The cos/sin table is the CPU's RopeTable, uploaded once (DeviceRopeTable); the
// position ids travel as a DeviceIndices (checked on the host against the table, as on the CPU).
//
// Backward contract: the input gradient overwrites (=); no parameters. Backward is the rotation
// by -angle.
//
// Sizes: N tokens, H heads of D channels, inputs (N, H * D).
//
// One thread per pair (token, head, i < D/2), grid-stride, any row strides. A thread reads both
// elements of its pair before writing them, so out may alias inp (in place).

#include <span>

#include "sora/cuda/backend.cuh"
#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/rope.hpp"

namespace sora::cuda {

// ops::RopeTable's cos and sin (max_positions, head_dim / 2) on the device.
template <class T>
struct DeviceRopeTable {
  Index head_dim = 0;
  Index max_positions = 0;
  DeviceTensor<T> cos, sin;  // (max_positions, head_dim / 2)

  DeviceRopeTable() = default;
  explicit DeviceRopeTable(const ops::RopeTable<T>& table)
      : head_dim(table.head_dim),
        max_positions(table.max_positions),
        cos(DeviceTensor<T>::from_host(table.cos, context().stream())),
        sin(DeviceTensor<T>::from_host(table.sin, context().stream())) {}
};

namespace rope_detail {

// out = the rotation of inp by sign * angle, pair (i, i + D/2) of head h of token n:
//   y_i = x_i cos - x_{i+D/2} sin,  y_{i+D/2} = x_{i+D/2} cos + x_i sin.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    rope_kernel(DeviceView<T> out,     // (N, H * D)
                ConstView<T> inp,      // (N, H * D)
                const int* positions,  // (N)
                ConstView<T> cos,      // (max_positions, D / 2)
                ConstView<T> sin,      // (max_positions, D / 2)
                Index heads, T sign) {
  const Index half = cos.cols, per_token = heads * half, n_pairs = inp.rows * per_token;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n_pairs;
       i += Index(gridDim.x) * blockDim.x) {
    const Index n = i / per_token, rem = i % per_token, h = rem / half, j = rem % half;
    const Index p = positions[n];
    const T c = cos.data[p * cos.stride + j], s = sign * sin.data[p * sin.stride + j];
    const Index lo = h * 2 * half + j, hi = lo + half;
    const T x1 = inp.data[n * inp.stride + lo], x2 = inp.data[n * inp.stride + hi];
    out.data[n * out.stride + lo] = x1 * c - x2 * s;
    out.data[n * out.stride + hi] = x2 * c + x1 * s;
  }
}

template <class T>
void launch(DeviceView<T> out, ConstView<T> inp, const DeviceIndices& positions,
            const DeviceRopeTable<T>& table, Index heads, T sign) {
  const Index pairs = inp.rows * heads * (table.head_dim / 2);
  if (pairs == 0) return;
  rope_kernel<T><<<detail::grid_for(pairs), detail::kThreads, 0, context().stream()>>>(
      out, inp, positions.device(), table.cos.view(), table.sin.view(), heads, sign);
  SORA_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace rope_detail

// out = RoPE(inp) at the given positions. out may be inp (in place).
template <class T>
void rope_forward(DeviceView<T> out,                // (N, heads * D)
                  ConstView<T> inp,                 // (N, heads * D)
                  const DeviceIndices& positions,   // (N)
                  const DeviceRopeTable<T>& table,  // D = table.head_dim
                  Index heads) {
  ops::detail::check_rope("rope_forward", "inp", inp.rows, inp.cols, positions.host(), table,
                          heads);
  ops_detail::check_shape("rope_forward", "out", out, inp.rows, inp.cols);
  rope_detail::launch<T>(out, inp, positions, table, heads, T(1));
}

// dinp = R(-angle) dout. dinp may be dout (in place).
template <class T>
void rope_backward(DeviceView<T> dinp,               // (N, heads * D)
                   ConstView<T> dout,                // (N, heads * D)
                   const DeviceIndices& positions,   // (N)
                   const DeviceRopeTable<T>& table,  // D = table.head_dim
                   Index heads) {
  ops::detail::check_rope("rope_backward", "dout", dout.rows, dout.cols, positions.host(), table,
                          heads);
  ops_detail::check_shape("rope_backward", "dinp", dinp, dout.rows, dout.cols);
  rope_detail::launch<T>(dinp, dout, positions, table, heads, T(-1));
}

}  // namespace sora::cuda
