#pragma once
// Kernel building blocks shared by cuda/prox.cuh and cuda/optim.cuh: 16-byte packs for
// vectorized loads, argument adapters (tensor or view), warp / block sums, the elementwise
// engine (grid-stride, two packs in flight per thread) and a device-side validity check.

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "sora/cuda/tensor.cuh"

namespace sora::cuda {

// Accept a DeviceTensor or a DeviceView wherever a tensor argument is expected.
template <class T>
DeviceView<T> view_of(DeviceView<T> v) {
  return v;
}
template <class T>
DeviceView<T> view_of(DeviceTensor<T>& t) {
  return t.view();
}
template <class T>
ConstView<T> view_of(const DeviceTensor<T>& t) {
  return t.view();
}

template <class X>
concept DeviceArg = requires(X& x) {
  view_of(x);
};

template <class X>
using view_t = decltype(view_of(std::declval<std::remove_reference_t<X>&>()));

template <class V>
struct view_scalar;
template <class T>
struct view_scalar<DeviceView<T>> {
  using type = std::remove_const_t<T>;
};

// The storage scalar of a tensor argument, and the (non-deduced) type of its scalar options.
template <class X>
using scalar_t = typename view_scalar<view_t<X>>::type;
template <class X>
using arg_t = std::type_identity_t<compute_t<scalar_t<X>>>;

template <class X>
ConstView<scalar_t<X>> cview_of(const X& x) {
  return ConstView<scalar_t<X>>(view_of(const_cast<X&>(x)));
}

namespace detail {

// 16 bytes of T: 4 floats, 2 doubles or 8 bf16 per load/store instruction.
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <class T>
inline constexpr int kPack = static_cast<int>(16 / sizeof(T));

inline bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

template <class C>
__device__ inline C warp_sum(C v, int width = 32) {
  for (int o = width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, width);
  return v;
}

// Sum over the TPG threads of a group: a sub-warp (TPG <= 32, shuffles only) or the whole
// block (TPG == blockDim.x). Every thread gets the total; the order of the additions is fixed,
// so the result is deterministic. Every thread of the block must call it (uniform loops).
template <int TPG, class C>
__device__ inline C group_sum(C v) {
  if constexpr (TPG <= 32) {
    return warp_sum(v, TPG);
  } else {
    __shared__ C part[TPG / 32];
    v = warp_sum(v);
    __syncthreads();  // the previous call's readers are done with `part`
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    C s = C(0);
#pragma unroll
    for (int i = 0; i < TPG / 32; ++i) s += part[i];
    return s;
  }
}

// y = op(x[, w]) elementwise over contiguous, 16-byte aligned storage: pack loads, two packs
// in flight per thread per iteration, a scalar tail. y may alias x (each element is read
// only to write itself), so y and x are not __restrict__.
template <class T, bool HasW, class Op>
__global__ void __launch_bounds__(kThreads)
    ew_pack_kernel(T* y, const T* x, const T* __restrict__ w, Index n, Op op) {
  constexpr int N = kPack<T>;
  using P = Pack<T, N>;
  const Index packs = n / N;
  const Index tid = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  const Index nthreads = Index(gridDim.x) * blockDim.x;
  const P* xp = reinterpret_cast<const P*>(x);
  const P* wp = reinterpret_cast<const P*>(w);
  P* yp = reinterpret_cast<P*>(y);
  Index i = tid;
  for (; i + nthreads < packs; i += 2 * nthreads) {
    P a = xp[i];
    P b = xp[i + nthreads];
    P wa{}, wb{};
    if constexpr (HasW) {
      wa = wp[i];
      wb = wp[i + nthreads];
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if constexpr (HasW) {
        a.v[k] = from_compute<T>(op(to_compute(a.v[k]), to_compute(wa.v[k])));
        b.v[k] = from_compute<T>(op(to_compute(b.v[k]), to_compute(wb.v[k])));
      } else {
        a.v[k] = from_compute<T>(op(to_compute(a.v[k])));
        b.v[k] = from_compute<T>(op(to_compute(b.v[k])));
      }
    }
    yp[i] = a;
    yp[i + nthreads] = b;
  }
  if (i < packs) {
    P a = xp[i];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if constexpr (HasW) {
        a.v[k] = from_compute<T>(op(to_compute(a.v[k]), to_compute(w[i * N + k])));
      } else {
        a.v[k] = from_compute<T>(op(to_compute(a.v[k])));
      }
    }
    yp[i] = a;
  }
  for (Index j = packs * N + tid; j < n; j += nthreads) {
    if constexpr (HasW) {
      y[j] = from_compute<T>(op(to_compute(x[j]), to_compute(w[j])));
    } else {
      y[j] = from_compute<T>(op(to_compute(x[j])));
    }
  }
}

// Any strides (blocks of larger tensors, unaligned views): scalar loads, (r, c) per element.
template <class T, bool HasW, class Op>
__global__ void __launch_bounds__(kThreads)
    ew_strided_kernel(DeviceView<T> y, ConstView<T> x, ConstView<T> w, Op op) {
  const Index n = y.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / y.cols, c = i % y.cols;
    const auto xv = to_compute(x.data[r * x.stride + c]);
    if constexpr (HasW) {
      y.data[r * y.stride + c] = from_compute<T>(op(xv, to_compute(w.data[r * w.stride + c])));
    } else {
      y.data[r * y.stride + c] = from_compute<T>(op(xv));
    }
  }
}

// Op::kBinary says whether the operator reads a second operand (weights) per element.
template <class T, class Op>
void run_ew(const Op& op, DeviceView<T> y, ConstView<T> x, ConstView<T> w, cudaStream_t stream) {
  constexpr bool kW = Op::kBinary;
  const Index n = y.size();
  if (n == 0) return;
  const bool flat = y.contiguous() && x.contiguous() && (!kW || w.contiguous()) &&
                    aligned16(y.data) && aligned16(x.data) && (!kW || aligned16(w.data));
  if (flat) {
    const unsigned grid = grid_for(n / kPack<T> + 1, 2);
    ew_pack_kernel<T, kW><<<grid, kThreads, 0, stream>>>(y.data, x.data, w.data, n, op);
    SORA_CUDA_CHECK_LAUNCH("ew_pack_kernel");
  } else {
    ew_strided_kernel<T, kW><<<grid_for(n), kThreads, 0, stream>>>(y, x, w, op);
    SORA_CUDA_CHECK_LAUNCH("ew_strided_kernel");
  }
}

// Sets *bad to 1 if some element is not (finite and >= 0) (weights), or, with nan_only, is NaN.
template <class T>
__global__ void find_invalid_kernel(ConstView<T> v, bool nan_only, int* bad) {
  const Index n = v.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const auto e = to_compute(v.data[(i / v.cols) * v.stride + i % v.cols]);
    const bool ok = nan_only ? !isnan(e) : (e >= 0 && isfinite(e));
    if (!ok) atomicOr(bad, 1);
  }
}

// True iff every element passes (one read of v and one synchronisation: argument checks come
// before any write, as on the CPU, so a failed call leaves x untouched).
template <class T>
bool all_valid(ConstView<T> v, bool nan_only, cudaStream_t stream) {
  if (v.size() == 0) return true;
  int* bad = nullptr;
  SORA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(int), stream));
  SORA_CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(int), stream));
  find_invalid_kernel<T><<<grid_for(v.size()), kThreads, 0, stream>>>(v, nan_only, bad);
  SORA_CUDA_CHECK_LAUNCH("find_invalid_kernel");
  int host = 0;
  SORA_CUDA_CHECK(cudaMemcpyAsync(&host, bad, sizeof(int), cudaMemcpyDeviceToHost, stream));
  SORA_CUDA_CHECK(cudaFreeAsync(bad, stream));
  SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host == 0;
}

// Stream-ordered scratch memory for a call's temporaries (norms, factors, histograms).
template <class T>
class Scratch {
 public:
  Scratch(Index n, cudaStream_t stream) : n_(n), stream_(stream) {
    if (n > 0) {
      SORA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p_),
                                      static_cast<std::size_t>(n) * sizeof(T), stream));
    }
  }
  ~Scratch() {
    if (p_ != nullptr) (void)cudaFreeAsync(p_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }
  void zero() const {
    if (n_ > 0)
      SORA_CUDA_CHECK(cudaMemsetAsync(p_, 0, static_cast<std::size_t>(n_) * sizeof(T), stream_));
  }

 private:
  T* p_ = nullptr;
  Index n_ = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace detail
}  // namespace sora::cuda
