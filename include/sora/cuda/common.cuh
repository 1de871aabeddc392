#pragma once
// CUDA backend basics: the translation-unit guard, error checking that turns every CUDA and
// cuBLAS failure into a sora::Error naming the call, RAII streams / events / cuBLAS handles,
// device queries and the launch geometry shared by the kernels.
//
// Everything under sora/cuda/ is reachable only from .cu translation units compiled by nvcc:
// a CPU-only consumer of sora never includes it and never needs the toolkit.

#ifndef __CUDACC__
#error \
    "sora/cuda/*.cuh are CUDA headers: include them only from .cu files compiled by nvcc (link sora::cuda)"
#endif

// Eigen is used only on the host side of the backend (uploads, downloads, argument checks).
// Without this, Eigen 3.4 marks its functions __host__ __device__ and nvcc warns on its
// defaulted special members (diagnostic 20012), which -Werror turns into build failures.
#ifndef EIGEN_NO_CUDA
#define EIGEN_NO_CUDA
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora::cuda::detail {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  // Consume the error so that it is not reported again by the next launch check (a sticky
  // error, after a kernel fault, is reported by every later call anyway).
  (void)cudaGetLastError();
  sora::detail::throw_error("CUDA error in ", call, " (", file, ":", line,
                            "): ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}

[[noreturn]] inline void throw_cublas(cublasStatus_t st, const char* call, const char* file,
                                      int line) {
  sora::detail::throw_error("cuBLAS error in ", call, " (", file, ":", line,
                            "): ", cublasGetStatusName(st), ": ", cublasGetStatusString(st));
}

}  // namespace sora::cuda::detail

// SORA_CUDA_CHECK(cudaMalloc(...)): throws sora::Error naming the call, file and line and the
// CUDA error when the call does not return cudaSuccess.
#define SORA_CUDA_CHECK(expr)                                                      \
  do {                                                                             \
    const cudaError_t sora_cuda_err_ = (expr);                                     \
    if (sora_cuda_err_ != cudaSuccess) [[unlikely]] {                              \
      ::sora::cuda::detail::throw_cuda(sora_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                              \
  } while (false)

#define SORA_CUBLAS_CHECK(expr)                                                       \
  do {                                                                                \
    const cublasStatus_t sora_cublas_st_ = (expr);                                    \
    if (sora_cublas_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]] {                      \
      ::sora::cuda::detail::throw_cublas(sora_cublas_st_, #expr, __FILE__, __LINE__); \
    }                                                                                 \
  } while (false)

// After a kernel launch: a launch-configuration error surfaces here, named after the kernel.
#define SORA_CUDA_CHECK_LAUNCH(kernel_name)                                                \
  do {                                                                                     \
    const cudaError_t sora_cuda_err_ = cudaGetLastError();                                 \
    if (sora_cuda_err_ != cudaSuccess) [[unlikely]] {                                      \
      ::sora::cuda::detail::throw_cuda(sora_cuda_err_, "launch of " kernel_name, __FILE__, \
                                       __LINE__);                                          \
    }                                                                                      \
  } while (false)

namespace sora::cuda {

// Number of visible devices; 0 where the driver is missing or no GPU is present (the
// query's error is consumed so it does not leak into the next CUDA call).
inline int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

inline bool gpu_available() {
  return device_count() > 0;
}

// Multiprocessors of the current device, queried once per device.
inline int sm_count() {
  int dev = 0;
  SORA_CUDA_CHECK(cudaGetDevice(&dev));
  thread_local int cached_dev = -1;  // per host thread: each may drive another device
  thread_local int cached = 0;
  if (dev != cached_dev) {
    SORA_CUDA_CHECK(cudaDeviceGetAttribute(&cached, cudaDevAttrMultiProcessorCount, dev));
    cached_dev = dev;
  }
  return cached;
}

inline void synchronize() {
  SORA_CUDA_CHECK(cudaDeviceSynchronize());
}

// An owned non-blocking stream.
class Stream {
 public:
  Stream() { SORA_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_ != nullptr) (void)cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    if (this != &o) {
      if (s_ != nullptr) (void)cudaStreamDestroy(s_);
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  cudaStream_t get() const { return s_; }
  operator cudaStream_t() const { return s_; }  // NOLINT: passes where a stream is expected
  void synchronize() const { SORA_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

// An owned event (timing enabled), for benchmarks and cross-stream ordering.
class Event {
 public:
  Event() { SORA_CUDA_CHECK(cudaEventCreate(&e_)); }
  ~Event() {
    if (e_ != nullptr) (void)cudaEventDestroy(e_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  cudaEvent_t get() const { return e_; }
  void record(cudaStream_t s = nullptr) const { SORA_CUDA_CHECK(cudaEventRecord(e_, s)); }
  void synchronize() const { SORA_CUDA_CHECK(cudaEventSynchronize(e_)); }
  // Milliseconds from `start` to this event (both recorded and complete).
  float elapsed_ms_since(const Event& start) const {
    float ms = 0.0f;
    SORA_CUDA_CHECK(cudaEventElapsedTime(&ms, start.e_, e_));
    return ms;
  }

 private:
  cudaEvent_t e_ = nullptr;
};

// An owned cuBLAS handle bound to a stream (GEMMs of the ops/ twins use it).
class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream = nullptr) {
    SORA_CUBLAS_CHECK(cublasCreate(&h_));
    set_stream(stream);
  }
  ~CublasHandle() {
    if (h_ != nullptr) (void)cublasDestroy(h_);
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  CublasHandle(CublasHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  cublasHandle_t get() const { return h_; }
  void set_stream(cudaStream_t stream) { SORA_CUBLAS_CHECK(cublasSetStream(h_, stream)); }

 private:
  cublasHandle_t h_ = nullptr;
};

namespace detail {

inline constexpr int kThreads = 256;

// Grid for a grid-stride loop over `work` items, `per_thread` items per thread: enough blocks
// to fill every multiprocessor several times over, no more (the loop covers the rest).
inline unsigned grid_for(Index work, int per_thread = 1) {
  const Index per_block = Index(kThreads) * per_thread;
  const Index needed = std::max<Index>(1, (work + per_block - 1) / per_block);
  const Index cap = Index(sm_count()) * 16;
  return static_cast<unsigned>(std::min(needed, cap));
}

// cuBLAS (and the int arrays some kernels read) take 32-bit sizes. A 64-bit size over INT_MAX
// would wrap in the static_cast to int and make the call read the wrong extent, or fail with
// an unrelated status; refuse it first, naming every size of the call and what takes ints.
struct IntSize {
  const char* name;
  Index value;
};
inline void check_int_sizes(const char* op, const char* takes_int,
                            std::initializer_list<IntSize> sizes) {
  bool fits = true;
  for (const IntSize& s : sizes) fits = fits && s.value >= 0 && s.value <= Index(INT_MAX);
  if (fits) return;
  std::string list;
  for (const IntSize& s : sizes) {
    if (!list.empty()) list += ", ";
    list += std::string(s.name) + " = " + std::to_string(s.value);
  }
  sora::detail::throw_error(op, ": sizes ", list, " must each be in [0, INT_MAX = ", INT_MAX,
                            "]: ", takes_int, " takes 32-bit ints");
}

}  // namespace detail
}  // namespace sora::cuda
