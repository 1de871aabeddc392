#pragma once
// CUDA twins of ops/linear.hpp: the linear layer and the gated low-rank product (LoRA / SoRA /
// AdaLoRA), on device views, with the same names, argument order, shape checks and contracts.
//
// Backward contract (as on the CPU): parameter gradients accumulate (+=); input gradients
// overwrite (=), except lowrank_backward's dinp, which accumulates (+=) onto the base layer's;
// lowrank_backward's dh is written (=).
//
// Sizes: N tokens, C input channels, OC output channels, R rank.
//
// Every matrix product is a cuBLAS GEMM (cuda/gemm.cuh); the elementwise steps (bias, gate)
// and the column sums (bias and gate gradients) are small kernels. All of it is queued on
// context().stream(), without host synchronisation or allocation. Views may be strided
// (row stride >= cols): the kernels index rows with the view's stride.

#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/gemm.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace linear_detail {

// The column sums run over tiles of kColTile columns, one block per tile, kRowLanes threads
// per column: each thread sums a fixed set of rows, then one thread adds the kRowLanes
// partial sums in a fixed order. No atomics, so the result does not depend on the run.
inline constexpr int kColTile = 32;
inline constexpr int kRowLanes = detail::kThreads / kColTile;  // 8

// out (N, OC) += bias (1, OC), the bias broadcast over the rows.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    add_bias_kernel(DeviceView<T> out, ConstView<T> bias) {
  const Index n = out.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / out.cols, c = i % out.cols;
    out.data[r * out.stride + c] += bias.data[c];
  }
}

// acc[0, c] += scale * sum_n x[n, c]              (kProduct false: y is not read)
// acc[0, c] += scale * sum_n x[n, c] * y[n, c]    (kProduct true)
// Launched with blockDim (kColTile, kRowLanes) and one block per column tile.
template <class T, bool kProduct>
__global__ void __launch_bounds__(detail::kThreads)
    col_sum_kernel(DeviceView<T> acc,  // (1, K)
                   ConstView<T> x,     // (M, K)
                   ConstView<T> y,     // (M, K), or absent without kProduct
                   T scale) {
  __shared__ T part[kRowLanes][kColTile];
  const Index c = Index(blockIdx.x) * kColTile + threadIdx.x;
  T s = T(0);
  if (c < x.cols) {
    for (Index n = threadIdx.y; n < x.rows; n += kRowLanes) {
      if constexpr (kProduct) {
        s += x.data[n * x.stride + c] * y.data[n * y.stride + c];
      } else {
        s += x.data[n * x.stride + c];
      }
    }
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < x.cols) {
    T total = part[0][threadIdx.x];
    for (int l = 1; l < kRowLanes; ++l) total += part[l][threadIdx.x];
    acc.data[c] += scale * total;
  }
}

template <class T, bool kProduct>
void col_sum(DeviceView<T> acc, ConstView<T> x, ConstView<T> y, T scale) {
  if (x.cols == 0) return;
  const dim3 block(kColTile, kRowLanes);
  const auto grid = static_cast<unsigned>((x.cols + kColTile - 1) / kColTile);
  col_sum_kernel<T, kProduct><<<grid, block, 0, context().stream()>>>(acc, x, y, scale);
  SORA_CUDA_CHECK_LAUNCH("col_sum_kernel");
}

// y = (x ⊙ g) * scale with g broadcast over rows (g == nullptr: y = x * scale), in the CPU's
// order of operations. y may alias x (each element is read only to write itself).
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    gate_scale_kernel(DeviceView<T> y,  // (N, R)
                      ConstView<T> x,   // (N, R)
                      const T* g,       // (1, R) or nullptr
                      T scale) {
  const Index n = y.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / y.cols, c = i % y.cols;
    const T v = x.data[r * x.stride + c];
    y.data[r * y.stride + c] = (g != nullptr ? v * g[c] : v) * scale;
  }
}

template <class T>
void gate_scale(DeviceView<T> y, ConstView<T> x, ConstView<T> g, T scale) {
  if (y.size() == 0) return;
  const T* gp = ops_detail::present(g) ? g.data : nullptr;
  gate_scale_kernel<T>
      <<<detail::grid_for(y.size()), detail::kThreads, 0, context().stream()>>>(y, x, gp, scale);
  SORA_CUDA_CHECK_LAUNCH("gate_scale_kernel");
}

}  // namespace linear_detail

// out = inp weight^T + bias. bias may be absent (DeviceView<T>()).
template <class T>
void linear_forward(DeviceView<T> out,    // (N, OC)
                    ConstView<T> inp,     // (N, C)
                    ConstView<T> weight,  // (OC, C)
                    ConstView<T> bias) {  // (1, OC) or absent
  const Index N = inp.rows, C = inp.cols, OC = weight.rows;
  ops_detail::check_shape("linear_forward", "weight", weight, OC, C);
  ops_detail::check_shape("linear_forward", "out", out, N, OC);
  ops_detail::check_optional("linear_forward", "bias", bias, 1, OC);
  gemm<T>(false, true, T(1), inp, weight, T(0), out);  // (N, C) (C, OC)
  if (ops_detail::present(bias) && out.size() > 0) {
    linear_detail::add_bias_kernel<T>
        <<<detail::grid_for(out.size()), detail::kThreads, 0, context().stream()>>>(out, bias);
    SORA_CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
}

template <class T>
void linear_forward(DeviceView<T> out, ConstView<T> inp, ConstView<T> weight) {
  linear_forward<T>(out, inp, weight, ConstView<T>());
}

// y = x W^T + b  =>  dx = dy W (=),  dW += dy^T x,  db += sum_n dy[n].
// Any of dinp, dweight, dbias may be absent.
template <class T>
void linear_backward(DeviceView<T> dinp,     // (N, C) or absent
                     DeviceView<T> dweight,  // (OC, C) or absent
                     DeviceView<T> dbias,    // (1, OC) or absent
                     ConstView<T> dout,      // (N, OC)
                     ConstView<T> inp,       // (N, C)
                     ConstView<T> weight) {  // (OC, C)
  const Index N = inp.rows, C = inp.cols, OC = weight.rows;
  ops_detail::check_shape("linear_backward", "weight", weight, OC, C);
  ops_detail::check_shape("linear_backward", "dout", dout, N, OC);
  ops_detail::check_optional("linear_backward", "dinp", dinp, N, C);
  ops_detail::check_optional("linear_backward", "dweight", dweight, OC, C);
  ops_detail::check_optional("linear_backward", "dbias", dbias, 1, OC);
  if (ops_detail::present(dinp)) gemm<T>(false, false, T(1), dout, weight, T(0), dinp);
  // No tokens: the sum over them is empty and the += adds nothing (gemm refuses K = 0 with
  // beta = 1).
  if (ops_detail::present(dweight) && N > 0) gemm<T>(true, false, T(1), dout, inp, T(1), dweight);
  if (ops_detail::present(dbias))
    linear_detail::col_sum<T, false>(dbias, dout, ConstView<T>(), T(1));
}

// The gated low-rank product, added onto a base output (docs/design.md 4, SoRA eq. 2):
//   out += s * ((inp A^T) ⊙ g) B^T;  g absent is LoRA (g = 1).
// Saved for backward: h = inp A^T and u = s (h ⊙ g).
template <class T>
void lowrank_forward(DeviceView<T> out,  // (N, OC)  accumulated into
                     DeviceView<T> h,    // (N, R)   saved
                     DeviceView<T> u,    // (N, R)   saved
                     ConstView<T> inp,   // (N, C)
                     ConstView<T> A,     // (R, C)
                     ConstView<T> B,     // (OC, R)
                     ConstView<T> g,     // (1, R) or absent
                     T scale) {
  const Index N = inp.rows, C = inp.cols, R = A.rows, OC = B.rows;
  ops_detail::check_shape("lowrank_forward", "A", A, R, C);
  ops_detail::check_shape("lowrank_forward", "B", B, OC, R);
  ops_detail::check_shape("lowrank_forward", "out", out, N, OC);
  ops_detail::check_shape("lowrank_forward", "h", h, N, R);
  ops_detail::check_shape("lowrank_forward", "u", u, N, R);
  ops_detail::check_optional("lowrank_forward", "g", g, 1, R);
  gemm<T>(false, true, T(1), inp, A, T(0), h);  // (N, C) (C, R)
  linear_detail::gate_scale<T>(u, h, g, scale);
  // Rank 0: the product is empty and out is unchanged (gemm refuses K = 0 with beta = 1).
  if (R > 0) gemm<T>(false, true, T(1), u, B, T(1), out);  // (N, R) (R, OC)
}

// With u = s (h ⊙ g) and out += u B^T:
//   dB += dout^T u;   du = dout B;
//   dg += s * sum_n (du ⊙ h)[n]           (the gate gradient, per rank)
//   dh  = s * du ⊙ g;  dA += dh^T inp;  dinp += dh A.
// dh is written (=) and is the workspace (it holds du first). dA, dB, dg, dinp may be absent;
// dg must be absent when g is.
template <class T>
void lowrank_backward(DeviceView<T> dinp,  // (N, C) or absent, accumulated into
                      DeviceView<T> dA,    // (R, C) or absent
                      DeviceView<T> dB,    // (OC, R) or absent
                      DeviceView<T> dg,    // (1, R) or absent
                      DeviceView<T> dh,    // (N, R) written
                      ConstView<T> dout,   // (N, OC)
                      ConstView<T> inp,    // (N, C)
                      ConstView<T> h,      // (N, R)
                      ConstView<T> u,      // (N, R)
                      ConstView<T> A,      // (R, C)
                      ConstView<T> B,      // (OC, R)
                      ConstView<T> g,      // (1, R) or absent
                      T scale) {
  const Index N = inp.rows, C = inp.cols, R = A.rows, OC = B.rows;
  ops_detail::check_shape("lowrank_backward", "A", A, R, C);
  ops_detail::check_shape("lowrank_backward", "B", B, OC, R);
  ops_detail::check_shape("lowrank_backward", "dout", dout, N, OC);
  ops_detail::check_shape("lowrank_backward", "h", h, N, R);
  ops_detail::check_shape("lowrank_backward", "u", u, N, R);
  ops_detail::check_shape("lowrank_backward", "dh", dh, N, R);
  ops_detail::check_optional("lowrank_backward", "g", g, 1, R);
  ops_detail::check_optional("lowrank_backward", "dinp", dinp, N, C);
  ops_detail::check_optional("lowrank_backward", "dA", dA, R, C);
  ops_detail::check_optional("lowrank_backward", "dB", dB, OC, R);
  ops_detail::check_optional("lowrank_backward", "dg", dg, 1, R);
  SORA_CHECK(ops_detail::present(g) || !ops_detail::present(dg), "lowrank_backward: dg has shape ",
             shape_str(dg.rows, dg.cols), " but g is absent (shape ", shape_str(g.rows, g.cols),
             "): an ungated product has no gate gradient");
  // The accumulating GEMMs are skipped when their sum is empty (N = 0 or R = 0): += 0.
  if (ops_detail::present(dB) && N > 0)
    gemm<T>(true, false, T(1), dout, u, T(1), dB);  // (OC, N) (N, R)
  gemm<T>(false, false, T(1), dout, B, T(0), dh);   // du = (N, OC) (OC, R)
  // The gate gradient reads du, so it comes before dh overwrites du in place.
  if (ops_detail::present(dg)) linear_detail::col_sum<T, true>(dg, dh, h, scale);
  linear_detail::gate_scale<T>(dh, dh, g, scale);  // dh = s du ⊙ g (g absent: s du)
  if (ops_detail::present(dA) && N > 0)
    gemm<T>(true, false, T(1), dh, inp, T(1), dA);  // (R, N) (N, C)
  if (ops_detail::present(dinp) && R > 0)
    gemm<T>(false, false, T(1), dh, A, T(1), dinp);  // (N, R) (R, C)
}

}  // namespace sora::cuda
