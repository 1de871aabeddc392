#pragma once
// The CUDA backend tag: the same members as sora::Cpu (core/backend.hpp), over device
// tensors. `model::Transformer<float, cuda::Cuda>` is the transformer of model/, unchanged,
// computing with the op twins of cuda/ops/ (found by argument-dependent lookup on
// DeviceTensor / DeviceView, which live in this namespace).
//
// Indices (tokens, labels, pooled rows) are kept twice: on the host, where the ops check
// them (a bad token id is a sora::Error naming it, never an out-of-bounds read on the
// device), and on the device, where the kernels read them.

#include <span>
#include <vector>

#include "sora/core/backend.hpp"
#include "sora/cuda/context.cuh"
#include "sora/cuda/grad_bucket.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

class DeviceIndices {
 public:
  // Copies ids to the host buffer and, asynchronously on the context's stream, to the device
  // (the device buffer grows only when a batch has more ids than any before).
  void assign(std::span<const int> ids) {
    host_.assign(ids.begin(), ids.end());
    const Index n = static_cast<Index>(ids.size());
    if (n > device_.size()) device_ = DeviceTensor<int>(1, n);
    size_ = n;
    if (n > 0) {
      // From pageable memory: returns once the ids are staged, so host_ may change after.
      SORA_CUDA_CHECK(cudaMemcpyAsync(device_.data(), host_.data(),
                                      static_cast<std::size_t>(n) * sizeof(int),
                                      cudaMemcpyHostToDevice, context().stream()));
    }
  }

  std::span<const int> host() const { return host_; }
  const int* device() const { return device_.data(); }
  Index size() const { return size_; }

 private:
  std::vector<int> host_;
  DeviceTensor<int> device_;  // (1, capacity)
  Index size_ = 0;
};

struct Cuda {
  template <class T>
  using Tensor = DeviceTensor<T>;
  template <class T>
  using Ref = DeviceView<T>;
  template <class T>
  using ConstRef = ConstView<T>;
  using Indices = DeviceIndices;

  static constexpr const char* name = "cuda";

  template <class T>
  static DeviceView<T> absent() {
    return DeviceView<T>();
  }

  template <class T>
  static DeviceTensor<T> from_host(Matrix<T> m) {
    DeviceTensor<T> t(m.rows(), m.cols());
    upload(t, m);
    SORA_CUDA_CHECK(cudaStreamSynchronize(context().stream()));  // m dies on return
    return t;
  }

  // dst = src (resized; asynchronous: from pageable memory the copy returns once src is
  // staged, so src may change or die right after).
  template <class T>
  static void upload(DeviceTensor<T>& dst, const Matrix<T>& src) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "the Cuda backend computes in float or double");
    dst.resize(src.rows(), src.cols());
    if (src.size() == 0) return;
    SORA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(),
                                    static_cast<std::size_t>(src.size()) * sizeof(T),
                                    cudaMemcpyHostToDevice, context().stream()));
  }

  // dst = src on the device, resizing dst (asynchronous, on the context's stream).
  template <class T>
  static void copy(DeviceTensor<T>& dst, const DeviceTensor<T>& src) {
    dst.resize(src.rows(), src.cols());
    ::sora::cuda::copy<T>(dst.view(), src.view(), context().stream());
  }

  static void set_indices(DeviceIndices& dst, std::span<const int> src) { dst.assign(src); }

  // A host copy (waits for the stream: everything queued before is done).
  template <class T>
  static Matrix<T> to_host(const DeviceTensor<T>& t) {
    return t.to_host(context().stream());
  }

  // Data-parallel training (train::fit with a device communicator): the stream the
  // communicator's collectives must run on, and the gradient bucket (cuda/grad_bucket.cuh).
  static cudaStream_t stream() { return context().stream(); }
  template <class T>
  static void pack_gradients(DeviceTensor<T>& flat, const std::vector<DeviceTensor<T>*>& grads, T w,
                             T loss_share) {
    ::sora::cuda::pack_gradients(flat, grads, w, loss_share);
  }
  template <class T>
  static double unpack_gradients(const DeviceTensor<T>& flat,
                                 const std::vector<DeviceTensor<T>*>& grads) {
    return ::sora::cuda::unpack_gradients(flat, grads);
  }
};

}  // namespace sora::cuda
