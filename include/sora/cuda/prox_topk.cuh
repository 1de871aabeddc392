#pragma once
// CUDA twin of prox/topk.hpp: projection onto the L0 ball, keeping the k entries of largest
// magnitude, ties broken by position (the earlier entry in row-major order wins), an x
// containing NaN rejected before any write -- the CPU's exact rule, so results are equal.
//
// The k-th largest magnitude is found by radix selection on the bit patterns of |x| (for
// non-negative IEEE numbers the bit pattern orders like the value): 8 bits per pass, one
// histogram pass each (4 for float/bf16, 8 for double). Ties at the threshold, where only
// some may stay, are ranked by position with per-chunk counts and an in-block scan.
// Not bandwidth-optimal (several read passes and host round trips); top-k is a projection
// used on adapter-sized tensors, not in the hot loop.

#include <type_traits>
#include <vector>

#include "sora/cuda/kernels.cuh"
#include "sora/prox/topk.hpp"

namespace sora::cuda::prox {
namespace detail {

using namespace ::sora::cuda::detail;

template <class T>
using key_t =
    std::conditional_t<std::is_same_v<compute_t<T>, double>, unsigned long long, unsigned>;

// The bit pattern of |v| with the sign bit cleared (so -0 and +0 share the key 0).
template <class T>
__device__ inline key_t<T> mag_key(T v) {
  const compute_t<T> c = to_compute(v);
  if constexpr (std::is_same_v<compute_t<T>, double>) {
    return static_cast<unsigned long long>(__double_as_longlong(c)) & 0x7fffffffffffffffull;
  } else {
    return __float_as_uint(c) & 0x7fffffffu;
  }
}

template <class T>
__device__ inline T& at_flat(DeviceView<T> x, Index i) {
  return x.data[(i / x.cols) * x.stride + i % x.cols];
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    radix_hist_kernel(DeviceView<T> x, key_t<T> prefix, key_t<T> mask, int shift,
                      unsigned long long* hist) {
  __shared__ unsigned local[256];
  for (int t = static_cast<int>(threadIdx.x); t < 256; t += kThreads) local[t] = 0;
  __syncthreads();
  const Index n = x.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const key_t<T> k = mag_key(at_flat(x, i));
    if ((k & mask) == prefix) atomicAdd(&local[(k >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (int t = static_cast<int>(threadIdx.x); t < 256; t += kThreads) {
    if (local[t] != 0) atomicAdd(&hist[t], static_cast<unsigned long long>(local[t]));
  }
}

// Zero every element whose magnitude key is below the threshold (no ties to rank).
template <class T>
__global__ void __launch_bounds__(kThreads) topk_cut_kernel(DeviceView<T> x, key_t<T> thr) {
  const Index n = x.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    T& e = at_flat(x, i);
    if (mag_key(e) < thr) e = from_compute<T>(compute_t<T>(0));
  }
}

inline constexpr int kTopkPerThread = 16;
inline constexpr Index kTopkChunk = Index(kThreads) * kTopkPerThread;

// Exclusive prefix sum over the block of one value per thread.
__device__ inline unsigned block_exclusive_scan(unsigned v, unsigned* total) {
  __shared__ unsigned warp_tot[kThreads / 32];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  unsigned inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned up = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += up;
  }
  __syncthreads();
  if (lane == 31) warp_tot[warp] = inc;
  __syncthreads();
  unsigned before = 0, all = 0;
  for (int w = 0; w < kThreads / 32; ++w) {
    if (w < warp) before += warp_tot[w];
    all += warp_tot[w];
  }
  *total = all;
  return before + inc - v;
}

// Per chunk of kTopkChunk consecutive elements: how many sit exactly at the threshold.
template <class T>
__global__ void __launch_bounds__(kThreads)
    topk_tie_count_kernel(DeviceView<T> x, key_t<T> thr, Index chunks, unsigned* counts) {
  const Index n = x.size();
  for (Index c = blockIdx.x; c < chunks; c += gridDim.x) {
    const Index begin = c * kTopkChunk + Index(threadIdx.x) * kTopkPerThread;
    unsigned mine = 0;
    for (int j = 0; j < kTopkPerThread; ++j) {
      const Index i = begin + j;
      if (i < n && mag_key(at_flat(x, i)) == thr) ++mine;
    }
    unsigned total = 0;
    block_exclusive_scan(mine, &total);
    if (threadIdx.x == 0) counts[c] = total;
  }
}

// Keep keys above the threshold, the first `take` ties in row-major order, zero the rest.
template <class T>
__global__ void __launch_bounds__(kThreads)
    topk_tie_apply_kernel(DeviceView<T> x, key_t<T> thr, Index chunks, const Index* chunk_offset,
                          Index take) {
  const Index n = x.size();
  for (Index c = blockIdx.x; c < chunks; c += gridDim.x) {
    const Index begin = c * kTopkChunk + Index(threadIdx.x) * kTopkPerThread;
    unsigned mine = 0;
    for (int j = 0; j < kTopkPerThread; ++j) {
      const Index i = begin + j;
      if (i < n && mag_key(at_flat(x, i)) == thr) ++mine;
    }
    unsigned total = 0;
    Index rank = chunk_offset[c] + block_exclusive_scan(mine, &total);
    for (int j = 0; j < kTopkPerThread; ++j) {
      const Index i = begin + j;
      if (i >= n) break;
      T& e = at_flat(x, i);
      const key_t<T> k = mag_key(e);
      bool keep = k > thr;
      if (k == thr) keep = rank++ < take;
      if (!keep) e = from_compute<T>(compute_t<T>(0));
    }
  }
}

}  // namespace detail

template <DeviceArg X>
void topk_project_inplace(X&& x_arg, Index k, cudaStream_t s = context().stream()) {
  using T = scalar_t<X>;
  using K = detail::key_t<T>;
  using namespace detail;
  const DeviceView<T> x = view_of(x_arg);
  const Index n = x.size();
  SORA_CHECK(k >= 0 && k <= n, "topk_project: k must be in [0, ", n, "] for x of shape ",
             shape_str(x.rows, x.cols), ", got ", k);
  SORA_CHECK(all_valid(ConstView<T>(x), true, s), "topk_project: x contains NaN");
  if (k == n) return;
  if (k == 0) {
    topk_cut_kernel<T><<<grid_for(n), kThreads, 0, s>>>(x, ~K(0));  // every key is below
    SORA_CUDA_CHECK_LAUNCH("topk_cut_kernel");
    return;
  }
  // Radix select of the k-th largest key, most significant digit first.
  Scratch<unsigned long long> hist(256, s);
  std::vector<unsigned long long> h(256);
  K prefix = 0, mask = 0;
  Index remaining = k;  // how many of the keys matching the prefix still have to be kept
  unsigned long long at_threshold = 0;
  for (int shift = static_cast<int>(sizeof(K) * 8) - 8; shift >= 0; shift -= 8) {
    hist.zero();
    radix_hist_kernel<T><<<grid_for(n), kThreads, 0, s>>>(x, prefix, mask, shift, hist.get());
    SORA_CUDA_CHECK_LAUNCH("radix_hist_kernel");
    SORA_CUDA_CHECK(cudaMemcpyAsync(h.data(), hist.get(), 256 * sizeof(unsigned long long),
                                    cudaMemcpyDeviceToHost, s));
    SORA_CUDA_CHECK(cudaStreamSynchronize(s));
    int d = 255;
    for (; d > 0; --d) {
      if (static_cast<Index>(h[static_cast<std::size_t>(d)]) >= remaining) break;
      remaining -= static_cast<Index>(h[static_cast<std::size_t>(d)]);
    }
    at_threshold = h[static_cast<std::size_t>(d)];
    prefix |= K(d) << shift;
    mask |= K(255) << shift;
  }
  const K thr = prefix;
  if (static_cast<Index>(at_threshold) == remaining) {
    topk_cut_kernel<T><<<grid_for(n), kThreads, 0, s>>>(x, thr);
    SORA_CUDA_CHECK_LAUNCH("topk_cut_kernel");
    return;
  }
  // Only the first `remaining` ties stay: rank them by position.
  const Index chunks = (n + kTopkChunk - 1) / kTopkChunk;
  Scratch<unsigned> counts(chunks, s);
  const unsigned grid = static_cast<unsigned>(std::min<Index>(chunks, Index(sm_count()) * 8));
  topk_tie_count_kernel<T><<<grid, kThreads, 0, s>>>(x, thr, chunks, counts.get());
  SORA_CUDA_CHECK_LAUNCH("topk_tie_count_kernel");
  std::vector<unsigned> hc(static_cast<std::size_t>(chunks));
  SORA_CUDA_CHECK(cudaMemcpyAsync(hc.data(), counts.get(), hc.size() * sizeof(unsigned),
                                  cudaMemcpyDeviceToHost, s));
  SORA_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<Index> off(hc.size());
  Index run = 0;
  for (std::size_t c = 0; c < hc.size(); ++c) {
    off[c] = run;
    run += hc[c];
  }
  Scratch<Index> doff(chunks, s);
  SORA_CUDA_CHECK(cudaMemcpyAsync(doff.get(), off.data(), off.size() * sizeof(Index),
                                  cudaMemcpyHostToDevice, s));
  topk_tie_apply_kernel<T><<<grid, kThreads, 0, s>>>(x, thr, chunks, doff.get(), remaining);
  SORA_CUDA_CHECK_LAUNCH("topk_tie_apply_kernel");
  // `off` must outlive the asynchronous copy above.
  SORA_CUDA_CHECK(cudaStreamSynchronize(s));
}

template <DeviceArg X>
DeviceTensor<scalar_t<X>> topk_project(const X& x, Index k, cudaStream_t s = context().stream()) {
  auto y = DeviceTensor<scalar_t<X>>::copy_of(cview_of(x), s);
  topk_project_inplace(y, k, s);
  return y;
}

}  // namespace sora::cuda::prox
