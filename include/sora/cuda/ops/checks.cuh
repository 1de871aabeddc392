#pragma once
// Shared pieces of the non-GEMM op twins in cuda/ops/ (embedding, layernorm, activation,
// dropout, loss, pool): "absent" optional arguments, the shape checks every public entry runs
// (with the messages of ops/common.hpp, so that an error reads the same on both backends), the
// launch geometry of the row kernels, device math overloaded on float / double, and the two
// kernels' pieces that several ops share: the row gather (embedding lookup, pooled rows) and
// a warp's softmax of one row (softmax, cross-entropy).
//
// An optional argument (a gradient nobody wants, a mask in eval) is an empty view,
// DeviceView<T>() (Cuda::absent<T>()), as absent<T>() is a 0 x 0 map on the CPU.

#include <string>
#include <type_traits>

#include "sora/cuda/common.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda::ops_detail {

template <class T>
bool present(const DeviceView<T>& v) {
  return v.size() != 0;
}

// Throws "<op>: <what> has shape (a, b), expected (c, d)"; -1 in an expected size means any.
template <class T>
void check_shape(const char* op, const char* what, const DeviceView<T>& v, Index rows, Index cols) {
  const bool ok = (rows < 0 || v.rows == rows) && (cols < 0 || v.cols == cols);
  if (!ok) [[unlikely]] {
    auto dim = [](Index d) { return d < 0 ? std::string("*") : std::to_string(d); };
    ::sora::detail::throw_error(op, ": ", what, " has shape ", shape_str(v.rows, v.cols),
                                ", expected (", dim(rows), ", ", dim(cols), ")");
  }
}

// Same, for an optional argument: absent is always fine.
template <class T>
void check_optional(const char* op, const char* what, const DeviceView<T>& v, Index rows,
                    Index cols) {
  if (present(v)) check_shape(op, what, v, rows, cols);
}

// Row kernels put one warp on each row: kRowsPerBlock rows per block of kThreads threads. A
// warp reduces with shuffles only (no shared memory, no block barrier), in a fixed order.
inline constexpr int kWarp = 32;
inline constexpr int kRowsPerBlock = detail::kThreads / kWarp;  // 8

inline unsigned row_grid(Index rows) {
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

// The row of the calling warp, and the lane within it.
__device__ inline Index warp_row() {
  return Index(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
}
__device__ inline int lane() {
  return static_cast<int>(threadIdx.x % kWarp);
}

// Butterfly (xor) reductions over a full warp. Lane i adds s_i + s_{i^o} and lane i^o adds
// s_{i^o} + s_i, which is the same number (addition commutes exactly), so every lane ends with
// the same total, and the order depends on nothing but the data.
template <class T>
__device__ inline T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
__device__ inline T warp_max(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Math in the precision of T: the float functions for float (no silent promotion to double),
// the double ones for double, named from the global namespace (CUDA's device math), so that
// no function of an enclosing namespace can hide them. CUDA's are within 2 ulp (sqrt and
// division correctly rounded).
template <class T>
__device__ inline T dev_exp(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return ::expf(x);
  } else {
    return ::exp(x);
  }
}
template <class T>
__device__ inline T dev_log(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return ::logf(x);
  } else {
    return ::log(x);
  }
}
template <class T>
__device__ inline T dev_tanh(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return ::tanhf(x);
  } else {
    return ::tanh(x);
  }
}
template <class T>
__device__ inline T dev_erf(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return ::erff(x);
  } else {
    return ::erf(x);
  }
}
template <class T>
__device__ inline T dev_sqrt(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return ::sqrtf(x);
  } else {
    return ::sqrt(x);
  }
}

// out[r, c] = src[ids[r], c], one thread per element: the embedding lookup and the pooled-row
// gather (ids checked on the host before the launch).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    gather_rows_kernel(DeviceView<T> out,  // (R, C)
                       ConstView<T> src,   // (any, C)
                       const int* ids) {   // (R)
  const Index n = out.size(), C = out.cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / C, c = i % C;
    out.data[r * out.stride + c] = src.data[Index(ids[r]) * src.stride + c];
  }
}

// The row maximum and the sum of exp(x - max) of a softmax row.
template <class T>
struct SoftmaxRow {
  T max, sum;
};

// p = softmax(x) over one row of C values, by the calling warp (the CPU's steps: the row
// maximum, e = exp(x - max) with its sum, then p = e / sum, so that exp never overflows).
// p may alias x. Every lane returns the row's maximum and sum (softmax and cross-entropy).
template <class T>
__device__ inline SoftmaxRow<T> warp_softmax_row(const T* x, T* p, Index C) {
  T m = -INFINITY;
  for (Index c = lane(); c < C; c += kWarp) m = x[c] > m ? x[c] : m;
  m = warp_max(m);
  T sum = T(0);
  for (Index c = lane(); c < C; c += kWarp) {
    const T e = dev_exp(x[c] - m);
    p[c] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  for (Index c = lane(); c < C; c += kWarp) p[c] = p[c] / sum;
  return {m, sum};
}

}  // namespace sora::cuda::ops_detail
