#pragma once
// CUDA twins of ops/pool.hpp: row gather and its adjoint, on device views, with the same names,
// arguments, semantics and checks (row indices are checked on the host copy that DeviceIndices
// keeps, with the CPU's message, before any kernel runs).
//
// Backward contract: scatter_rows overwrites (=) the whole input gradient: zero everywhere,
// the head's gradient in the gathered rows.
//
// Sizes: N tokens, B gathered rows (one per sequence), C channels.
//
// scatter_rows is deterministic and adds in the CPU's order: a row gathered more than once is
// written by one thread per column only (the one of its first occurrence), which adds every
// occurrence's gradient in increasing b. That scans the B indices per element, O(B^2 C) work:
// B is the number of sequences of a batch, small next to N C.

#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/pool.hpp"

namespace sora::cuda {

namespace pool_detail {

// For each (b, c) whose row rows[b] does not occur before b:
// dinp[rows[b], c] = 0 + sum of dout[k, c] over k >= b with rows[k] == rows[b], in order.
// (dinp is zeroed before, so the rows nobody gathered read 0.)
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    scatter_rows_kernel(DeviceView<T> dinp,  // (N, C)
                        ConstView<T> dout,   // (B, C)
                        const int* rows) {   // (B)
  const Index n = dout.size(), C = dout.cols, B = dout.rows;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index b = i / C, c = i % C;
    const int r = rows[b];
    bool first = true;
    for (Index k = 0; k < b && first; ++k) first = rows[k] != r;
    if (!first) continue;  // an earlier occurrence's thread writes this element
    T acc = T(0);
    for (Index k = b; k < B; ++k) {
      if (rows[k] == r) acc += dout.data[k * dout.stride + c];
    }
    dinp.data[Index(r) * dinp.stride + c] = acc;
  }
}

}  // namespace pool_detail

// out[b] = inp[rows[b]].
template <class T>
void gather_rows(DeviceView<T> out,            // (B, C)
                 ConstView<T> inp,             // (N, C)
                 const DeviceIndices& rows) {  // (B)
  const Index B = static_cast<Index>(rows.host().size());
  ops_detail::check_shape("gather_rows", "out", out, B, inp.cols);
  ops::detail::check_rows("gather_rows", rows.host(), inp.rows);
  if (out.size() == 0) return;
  ops_detail::gather_rows_kernel<T>
      <<<detail::grid_for(out.size()), detail::kThreads, 0, context().stream()>>>(out, inp,
                                                                                  rows.device());
  SORA_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

// dinp = 0, then dinp[rows[b]] += dout[b] (a row gathered twice collects both gradients).
// dinp must not alias dout.
template <class T>
void scatter_rows(DeviceView<T> dinp,           // (N, C)
                  ConstView<T> dout,            // (B, C)
                  const DeviceIndices& rows) {  // (B)
  const Index B = static_cast<Index>(rows.host().size());
  ops_detail::check_shape("scatter_rows", "dout", dout, B, dinp.cols);
  ops::detail::check_rows("scatter_rows", rows.host(), dinp.rows);
  if (dinp.size() == 0) return;
  const cudaStream_t stream = context().stream();
  // All-zero bytes are 0.0 in float and double; the pitch steps over a strided view's gaps.
  SORA_CUDA_CHECK(cudaMemset2DAsync(dinp.data, static_cast<std::size_t>(dinp.stride) * sizeof(T), 0,
                                    static_cast<std::size_t>(dinp.cols) * sizeof(T),
                                    static_cast<std::size_t>(dinp.rows), stream));
  if (dout.size() == 0) return;
  pool_detail::scatter_rows_kernel<T>
      <<<detail::grid_for(dout.size()), detail::kThreads, 0, stream>>>(dinp, dout, rows.device());
  SORA_CUDA_CHECK_LAUNCH("scatter_rows_kernel");
}

}  // namespace sora::cuda
