#pragma once
// Data-parallel training's one bucket on the device (train::fit with a device communicator,
// dist::Nccl): every trainable gradient, scaled by the rank's share w of the batch's loss
// terms, and the rank's share of the loss, packed into one flat device buffer for ONE
// all-reduce, then copied back. Everything runs on the context's stream; nothing waits for the
// device but the read-back of the summed loss.

#include <cstddef>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

namespace detail {

// x[0 .. n) *= w, then x[n] = last: the gradients' scale and the loss share in one launch.
template <class T>
__global__ void scale_and_set_last_kernel(T* x, Index n, T w, T last) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i <= n;
       i += Index(gridDim.x) * blockDim.x)
    x[i] = i == n ? last : x[i] * w;
}

template <class T>
Index bucket_size(const std::vector<DeviceTensor<T>*>& grads) {
  Index n = 0;
  for (const DeviceTensor<T>* g : grads) n += g->size();
  return n;
}

}  // namespace detail

// flat (1, N + 1) = [w g_1, w g_2, ..., loss_share] (N: the gradients' scalars in order); flat
// is resized when its size differs.
template <class T>
void pack_gradients(DeviceTensor<T>& flat, const std::vector<DeviceTensor<T>*>& grads, T w,
                    T loss_share) {
  const Index n = detail::bucket_size(grads);
  if (flat.size() != n + 1) flat.resize(1, n + 1);
  const cudaStream_t stream = context().stream();
  Index offset = 0;
  for (const DeviceTensor<T>* g : grads) {
    if (g->size() > 0)
      SORA_CUDA_CHECK(cudaMemcpyAsync(flat.data() + offset, g->data(),
                                      static_cast<std::size_t>(g->size()) * sizeof(T),
                                      cudaMemcpyDeviceToDevice, stream));
    offset += g->size();
  }
  detail::scale_and_set_last_kernel<<<detail::grid_for(n + 1), detail::kThreads, 0, stream>>>(
      flat.data(), n, w, loss_share);
  SORA_CUDA_CHECK(cudaGetLastError());
}

// The gradients back from flat (as packed by pack_gradients, after the all-reduce); returns
// flat's last entry, the summed loss (the one value read back: waits for the stream).
template <class T>
double unpack_gradients(const DeviceTensor<T>& flat, const std::vector<DeviceTensor<T>*>& grads) {
  const Index n = detail::bucket_size(grads);
  SORA_CHECK(flat.size() == n + 1, "cuda::unpack_gradients: the bucket holds ", flat.size(),
             " values, the gradients need ", n + 1);
  const cudaStream_t stream = context().stream();
  Index offset = 0;
  for (DeviceTensor<T>* g : grads) {
    if (g->size() > 0)
      SORA_CUDA_CHECK(cudaMemcpyAsync(g->data(), flat.data() + offset,
                                      static_cast<std::size_t>(g->size()) * sizeof(T),
                                      cudaMemcpyDeviceToDevice, stream));
    offset += g->size();
  }
  T loss{};
  SORA_CUDA_CHECK(
      cudaMemcpyAsync(&loss, flat.data() + n, sizeof(T), cudaMemcpyDeviceToHost, stream));
  SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<double>(loss);
}

}  // namespace sora::cuda
