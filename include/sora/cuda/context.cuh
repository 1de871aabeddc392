#pragma once
// The execution context of the CUDA op twins: one stream and one cuBLAS handle per host
// thread, and the math mode of their GEMMs. Every op twin, every DeviceTensor::setZero and
// every upload of the Cuda backend runs on context().stream(), so a training step is a single
// ordered stream of work (the issue's "one stream") with no host synchronisation unless a
// value is read back.
//
//   cuda::context().set_stream(s)          run later ops on s (default: the legacy stream 0);
//                                          s first waits for the work already queued on the
//                                          old stream, so nothing is reordered by the switch
//   cuda::context().set_math(Math::tf32)   GEMMs of fp32 tensors on TF32 / bf16 tensor cores,
//                                          accumulating in fp32; Math::exact (the default) keeps
//                                          full fp32, which the CPU-twin tests compare against

#include <cublas_v2.h>

#include <cstddef>
#include <memory>

#include "sora/cuda/common.cuh"

namespace sora::cuda {

enum class Math {
  exact,  // fp32 GEMMs in fp32 (fp64 in fp64)
  tf32,   // fp32 GEMMs on TF32 tensor cores, fp32 accumulation (fp64 unaffected)
  bf16    // fp32 GEMMs on bf16 tensor cores, fp32 accumulation (fp64 unaffected)
};

class Context {
 public:
  cudaStream_t stream() const { return stream_; }
  void set_stream(cudaStream_t s) {
    if (s == stream_) return;
    // Work queued on the old stream (an upload, a step, a zeroed gradient) may still be
    // running; ops queued on s read its results, so s waits for an event recorded after it.
    // (A non-blocking stream does not synchronise with the legacy stream by itself.) The wait
    // is queued on s: the host does not block.
    cudaEvent_t done = nullptr;
    SORA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    SORA_CUDA_CHECK(cudaEventRecord(done, stream_));
    SORA_CUDA_CHECK(cudaStreamWaitEvent(s, done, 0));
    SORA_CUDA_CHECK(cudaEventDestroy(done));  // released once the wait has been satisfied
    stream_ = s;
    if (cublas_) cublas_->set_stream(s);
  }

  Math math() const { return math_; }
  void set_math(Math m) { math_ = m; }

  // Created on first use (a CPU-only path through a .cu file never initialises cuBLAS).
  cublasHandle_t cublas() {
    if (!cublas_) {
      cublas_ = std::make_unique<CublasHandle>(stream_);
      // Results must not depend on the run: no atomics-based split-K reductions.
      SORA_CUBLAS_CHECK(cublasSetAtomicsMode(cublas_->get(), CUBLAS_ATOMICS_NOT_ALLOWED));
    }
    return cublas_->get();
  }

  // A persistent device buffer of at least `bytes` bytes for the temporaries of an op (partial
  // sums of the loss reductions, the embedding gradient's token plan). Its contents are
  // undefined on return, and it is shared by every op of this context: an op may use it only
  // for work queued on stream() (stream order keeps ops from overlapping on it). It grows when
  // a larger size is asked for and never shrinks, so a training loop allocates once. Growing
  // waits for the device first: queued work may still read the old buffer.
  void* scratch(std::size_t bytes) {
    if (bytes > scratch_bytes_) {
      SORA_CUDA_CHECK(cudaDeviceSynchronize());
      scratch_.reset();
      scratch_bytes_ = 0;
      void* p = nullptr;
      SORA_CUDA_CHECK(cudaMalloc(&p, bytes));
      scratch_.reset(p);
      scratch_bytes_ = bytes;
    }
    return scratch_.get();
  }

 private:
  struct DeviceFree {
    void operator()(void* p) const { (void)cudaFree(p); }
  };

  cudaStream_t stream_ = nullptr;
  Math math_ = Math::exact;
  std::unique_ptr<CublasHandle> cublas_;
  std::unique_ptr<void, DeviceFree> scratch_;  // (scratch_bytes_) bytes
  std::size_t scratch_bytes_ = 0;
};

inline Context& context() {
  thread_local Context c;
  return c;
}

}  // namespace sora::cuda
