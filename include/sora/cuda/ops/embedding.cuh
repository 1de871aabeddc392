#pragma once
// CUDA twin of ops/embedding.hpp: token embedding lookup and learned position embedding, on
// device views, with the same names, arguments and checks (token ids are checked on the host
// copy that DeviceIndices keeps, with the CPU's message, before any kernel runs).
//
// Backward contract: parameter gradients accumulate (+=); there is no input gradient (token
// ids are integers). position_embedding_forward adds onto its output (+=).
//
// Sizes: N = B * T tokens, T sequence length, C channels, V vocabulary, P position table size,
// U distinct tokens of a batch.
//
// Both backward passes are deterministic and add in the CPU's order (bit-identical sums):
// every gradient element is owned by one thread, which adds its contributions in increasing
// token position. For embedding_backward that needs the positions of each distinct token: a
// small plan built on the host from the ids' host copy (a sort), copied into the context's
// scratch buffer on the stream. No float atomics, so a run does not depend on scheduling.

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "sora/cuda/backend.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/ops/checks.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/ops/embedding.hpp"

namespace sora::cuda {

namespace embedding_detail {

// For each distinct token u (blocks, grid-stride) and column c (threads, block-stride):
// dwte[tokens[u], c] += dout[positions[j], c] for j in [starts[u], starts[u + 1]), in order.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    embedding_backward_kernel(DeviceView<T> dwte,    // (V, C)
                              ConstView<T> dout,     // (N, C)
                              const int* positions,  // (N) token positions, grouped by token
                              const int* starts,     // (U + 1) each token's run in positions
                              const int* tokens,     // (U) the distinct tokens, increasing
                              Index U) {
  const Index C = dwte.cols;
  for (Index u = blockIdx.x; u < U; u += gridDim.x) {
    T* row = dwte.data + Index(tokens[u]) * dwte.stride;
    const int begin = starts[u], end = starts[u + 1];
    for (Index c = threadIdx.x; c < C; c += blockDim.x) {
      T acc = row[c];
      for (int j = begin; j < end; ++j) acc += dout.data[Index(positions[j]) * dout.stride + c];
      row[c] = acc;
    }
  }
}

// out[n, c] += wpe[n % T, c], one thread per element.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    position_forward_kernel(DeviceView<T> out,  // (N, C)
                            ConstView<T> wpe,   // (P, C)
                            Index T_len) {
  const Index n = out.size(), C = out.cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / C, c = i % C;
    out.data[r * out.stride + c] += wpe.data[(r % T_len) * wpe.stride + c];
  }
}

// dwpe[t, c] += dout[b T + t, c] for b = 0, 1, ..., in order: one thread per (t, c), t < T.
template <class T>
__global__ void __launch_bounds__(detail::kThreads)
    position_backward_kernel(DeviceView<T> dwpe,  // (P, C)
                             ConstView<T> dout,   // (N, C)
                             Index T_len) {
  const Index C = dwpe.cols, n = T_len * C, B = dout.rows / T_len;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index t = i / C, c = i % C;
    T acc = dwpe.data[t * dwpe.stride + c];
    for (Index b = 0; b < B; ++b) acc += dout.data[(b * T_len + t) * dout.stride + c];
    dwpe.data[t * dwpe.stride + c] = acc;
  }
}

// The plan of embedding_backward, in one int array: [positions (N) | starts (U + 1) |
// tokens (U)]. Sorting (token, position) pairs groups each token's positions in increasing
// order. Thread-local, reused from call to call (no allocation once it has grown).
inline const std::vector<int>& backward_plan(std::span<const int> ids, Index& U) {
  thread_local std::vector<std::uint64_t> keys;
  thread_local std::vector<int> starts, tokens, plan;
  const std::size_t N = ids.size();
  keys.resize(N);
  for (std::size_t n = 0; n < N; ++n) {
    // ids are checked >= 0; positions fit in 32 bits (they are ints on the device).
    keys[n] = (static_cast<std::uint64_t>(ids[n]) << 32) | static_cast<std::uint64_t>(n);
  }
  std::sort(keys.begin(), keys.end());
  starts.clear();
  tokens.clear();
  plan.resize(N);
  for (std::size_t j = 0; j < N; ++j) {
    const int token = static_cast<int>(keys[j] >> 32);
    if (j == 0 || token != tokens.back()) {
      tokens.push_back(token);
      starts.push_back(static_cast<int>(j));
    }
    plan[j] = static_cast<int>(keys[j] & 0xffffffffu);
  }
  starts.push_back(static_cast<int>(N));
  plan.insert(plan.end(), starts.begin(), starts.end());
  plan.insert(plan.end(), tokens.begin(), tokens.end());
  U = static_cast<Index>(tokens.size());
  return plan;
}

}  // namespace embedding_detail

// out[n] = wte[tokens[n]].
template <class T>
void embedding_forward(DeviceView<T> out,            // (N, C)
                       const DeviceIndices& tokens,  // (N)
                       ConstView<T> wte) {           // (V, C)
  const Index N = tokens.size(), C = wte.cols, V = wte.rows;
  ops_detail::check_shape("embedding_forward", "out", out, N, C);
  ops::detail::check_tokens("embedding_forward", tokens.host(), V);
  if (out.size() == 0) return;
  ops_detail::gather_rows_kernel<T>
      <<<detail::grid_for(out.size()), detail::kThreads, 0, context().stream()>>>(out, wte,
                                                                                  tokens.device());
  SORA_CUDA_CHECK_LAUNCH("gather_rows_kernel (embedding_forward)");
}

// dwte[tokens[n]] += dout[n] (repeated tokens add into the same row, in increasing n).
template <class T>
void embedding_backward(DeviceView<T> dwte,             // (V, C)
                        ConstView<T> dout,              // (N, C)
                        const DeviceIndices& tokens) {  // (N)
  const Index N = tokens.size(), C = dwte.cols, V = dwte.rows;
  ops_detail::check_shape("embedding_backward", "dout", dout, N, C);
  ops::detail::check_tokens("embedding_backward", tokens.host(), V);
  if (N == 0 || C == 0) return;
  // The plan stores positions and run starts (up to N) as ints.
  detail::check_int_sizes("embedding_backward", "the backward plan", {{"N (tokens)", N}});
  Index U = 0;
  const std::vector<int>& plan = embedding_detail::backward_plan(tokens.host(), U);
  Context& ctx = context();
  const std::size_t bytes = plan.size() * sizeof(int);
  int* d_plan = static_cast<int*>(ctx.scratch(bytes));
  // From pageable memory: returns once the plan is staged, so the host buffer may be reused.
  SORA_CUDA_CHECK(
      cudaMemcpyAsync(d_plan, plan.data(), bytes, cudaMemcpyHostToDevice, ctx.stream()));
  const int* positions = d_plan;         // (N)
  const int* starts = d_plan + N;        // (U + 1)
  const int* distinct = starts + U + 1;  // (U)
  const auto grid = static_cast<unsigned>(std::min<Index>(U, Index(sm_count()) * 16));
  embedding_detail::embedding_backward_kernel<T>
      <<<grid, detail::kThreads, 0, ctx.stream()>>>(dwte, dout, positions, starts, distinct, U);
  SORA_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

// out[b*T + t] += wpe[t] for every sequence b.
template <class Scalar>
void position_embedding_forward(DeviceView<Scalar> out,  // (N, C) accumulated into
                                ConstView<Scalar> wpe,   // (P, C), P >= T
                                Index T) {
  const Index N = out.rows, C = wpe.cols;
  SORA_CHECK(T > 0 && T <= wpe.rows && N % T == 0, "position_embedding_forward: out ",
             shape_str(out.rows, out.cols), " is not a whole number of sequences of length ", T,
             " within the position table ", shape_str(wpe.rows, wpe.cols));
  ops_detail::check_shape("position_embedding_forward", "out", out, N, C);
  if (out.size() == 0) return;
  embedding_detail::position_forward_kernel<Scalar>
      <<<detail::grid_for(out.size()), detail::kThreads, 0, context().stream()>>>(out, wpe, T);
  SORA_CUDA_CHECK_LAUNCH("position_forward_kernel");
}

// dwpe[t] += sum_b dout[b*T + t].
template <class Scalar>
void position_embedding_backward(DeviceView<Scalar> dwpe,  // (P, C)
                                 ConstView<Scalar> dout,   // (N, C)
                                 Index T) {
  const Index N = dout.rows, C = dwpe.cols;
  SORA_CHECK(T > 0 && T <= dwpe.rows && N % T == 0, "position_embedding_backward: dout ",
             shape_str(dout.rows, dout.cols), " is not a whole number of sequences of length ", T,
             " within the position table ", shape_str(dwpe.rows, dwpe.cols));
  ops_detail::check_shape("position_embedding_backward", "dout", dout, N, C);
  if (T * C == 0) return;
  embedding_detail::position_backward_kernel<Scalar>
      <<<detail::grid_for(T * C), detail::kThreads, 0, context().stream()>>>(dwpe, dout, T);
  SORA_CUDA_CHECK_LAUNCH("position_backward_kernel");
}

}  // namespace sora::cuda
