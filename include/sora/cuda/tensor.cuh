#pragma once
// Device tensors: row-major (rows, cols) matrices in GPU memory, mirroring sora::Matrix<T>.
//   DeviceView<T>     non-owning (data, rows, cols, stride): a whole tensor, a block, a row;
//                     DeviceView<const T> for read-only arguments
//   DeviceTensor<T>   owning, contiguous (stride == cols), move-only; allocated once
// Storage types: float, double and bf16 (__nv_bfloat16). Kernels compute bf16 in float
// (compute_t<bf16> = float) and round once on store, so a bf16 result equals the float
// result of the same bf16 input rounded to bf16.
// Host <-> device copies check shapes and throw sora::Error on mismatch; they complete before
// returning (the host buffer may be freed right after).

#include <cuda_bf16.h>

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"

namespace sora::cuda {

using bf16 = __nv_bfloat16;

template <class T>
struct compute_type {
  using type = T;
};
template <>
struct compute_type<bf16> {
  using type = float;
};
template <class T>
using compute_t = typename compute_type<std::remove_const_t<T>>::type;

// The host-side element type of a storage type (bf16 is exchanged with the host as float).
template <class T>
using host_t = compute_t<T>;

template <class T>
__host__ __device__ inline compute_t<T> to_compute(T v) {
  if constexpr (std::is_same_v<std::remove_const_t<T>, bf16>) {
    return __bfloat162float(v);
  } else {
    return v;
  }
}

template <class T>
__host__ __device__ inline T from_compute(compute_t<T> v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return __float2bfloat16(v);  // round to nearest even
  } else {
    return v;
  }
}

template <class T>
struct DeviceView {
  T* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index stride = 0;  // elements from one row to the next (>= cols)

  DeviceView() = default;
  __host__ __device__ DeviceView(T* d, Index r, Index c, Index s)
      : data(d), rows(r), cols(c), stride(s) {}
  __host__ __device__ DeviceView(T* d, Index r, Index c) : data(d), rows(r), cols(c), stride(c) {}

  // A view of T converts to a view of const T.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) __host__ __device__
      DeviceView(const DeviceView<U>& o)
      : data(o.data), rows(o.rows), cols(o.cols), stride(o.stride) {}

  __host__ __device__ Index size() const { return rows * cols; }
  __host__ __device__ bool empty() const { return rows == 0 || cols == 0; }
  // Gap-free storage: the view can be processed as one flat array of size() elements.
  __host__ __device__ bool contiguous() const { return rows <= 1 || stride == cols; }
  __device__ T& operator()(Index i, Index j) const { return data[i * stride + j]; }

  DeviceView block(Index r0, Index c0, Index nr, Index nc) const {
    SORA_CHECK(r0 >= 0 && c0 >= 0 && nr >= 0 && nc >= 0 && r0 + nr <= rows && c0 + nc <= cols,
               "DeviceView::block(", r0, ", ", c0, ", ", nr, ", ", nc, ") out of range for shape (",
               rows, ", ", cols, ")");
    return DeviceView(data + r0 * stride + c0, nr, nc, stride);
  }
  DeviceView row(Index i) const { return block(i, 0, 1, cols); }
};

template <class T>
using ConstView = DeviceView<const T>;

inline std::string shape_str(Index r, Index c) {
  return sora::detail::concat('(', r, ", ", c, ')');
}

template <class T>
class DeviceTensor {
 public:
  using value_type = T;

  DeviceTensor() = default;
  DeviceTensor(Index rows, Index cols) { allocate(rows, cols); }
  ~DeviceTensor() { release(); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        rows_(std::exchange(o.rows_, 0)),
        cols_(std::exchange(o.cols_, 0)),
        capacity_(std::exchange(o.capacity_, 0)) {}
  DeviceTensor& operator=(DeviceTensor&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      rows_ = std::exchange(o.rows_, 0);
      cols_ = std::exchange(o.cols_, 0);
      capacity_ = std::exchange(o.capacity_, 0);
    }
    return *this;
  }

  static DeviceTensor zeros(Index rows, Index cols, cudaStream_t stream = context().stream()) {
    DeviceTensor t(rows, cols);
    t.set_zero(stream);
    return t;
  }

  // A device copy of a host matrix (bf16 tensors take a float matrix and round it).
  static DeviceTensor from_host(const Matrix<host_t<T>>& m,
                                cudaStream_t stream = context().stream());

  // A device copy of a device view (device-to-device).
  static DeviceTensor copy_of(ConstView<T> v, cudaStream_t stream = context().stream());

  Matrix<host_t<T>> to_host(cudaStream_t stream = context().stream()) const;

  void set_zero(cudaStream_t stream = context().stream()) {
    if (size() > 0) {
      SORA_CUDA_CHECK(cudaMemsetAsync(data_, 0, bytes(), stream));
    }
  }

  // Eigen's names, so that layers written against Matrix<T> compute on device tensors too.
  // resize keeps the allocation whenever the new shape fits in it, so a training loop
  // allocates on its largest batch only: the short last batch of an epoch and an evaluation
  // batch of another size reuse the buffers (cudaFree would also stall the stream). Resizing
  // to no elements frees the memory (a frozen parameter's gradient must own none). After a
  // resize that reallocates, the contents are undefined.
  void resize(Index rows, Index cols) {
    SORA_CHECK(rows >= 0 && cols >= 0, "DeviceTensor::resize: negative shape ",
               shape_str(rows, cols));
    if (rows * cols == 0 || rows * cols > capacity_) {
      release();
      allocate(rows, cols);
    } else {
      rows_ = rows;
      cols_ = cols;
    }
  }
  // Elements the allocation holds (>= size()).
  Index capacity() const { return capacity_; }
  // Zeroes on the context's stream (cuda/context.cuh), in order with the op twins.
  void setZero() { set_zero(context().stream()); }
  void setZero(Index rows, Index cols) {
    resize(rows, cols);
    setZero();
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index size() const { return rows_ * cols_; }
  std::size_t bytes() const { return static_cast<std::size_t>(size()) * sizeof(T); }

  DeviceView<T> view() { return DeviceView<T>(data_, rows_, cols_); }
  ConstView<T> view() const { return ConstView<T>(data_, rows_, cols_); }
  ConstView<T> cview() const { return view(); }
  operator DeviceView<T>() {
    return view();
  }  // NOLINT: a tensor is passed where a view is expected
  operator ConstView<T>() const { return view(); }  // NOLINT

 private:
  void allocate(Index rows, Index cols) {
    SORA_CHECK(rows >= 0 && cols >= 0, "DeviceTensor: negative shape ", shape_str(rows, cols));
    rows_ = rows;
    cols_ = cols;
    if (size() > 0) {
      void* p = nullptr;
      SORA_CUDA_CHECK(cudaMalloc(&p, bytes()));
      data_ = static_cast<T*>(p);
      capacity_ = size();
    }
  }
  void release() {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = nullptr;
    rows_ = cols_ = 0;
    capacity_ = 0;
  }

  T* data_ = nullptr;
  Index rows_ = 0;
  Index cols_ = 0;
  Index capacity_ = 0;  // elements allocated
};

namespace detail {

template <class T, class U>
void check_same_shape(const char* op, const char* what, const DeviceView<T>& a,
                      const DeviceView<U>& b) {
  SORA_CHECK(a.rows == b.rows && a.cols == b.cols, op, ": ", what, " has shape ",
             shape_str(b.rows, b.cols), " but x has shape ", shape_str(a.rows, a.cols));
}

template <class T>
void memcpy_2d(T* dst, Index dst_stride, const T* src, Index src_stride, Index rows, Index cols,
               cudaMemcpyKind kind, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  const std::size_t w = sizeof(T);
  SORA_CUDA_CHECK(cudaMemcpy2DAsync(
      dst, static_cast<std::size_t>(dst_stride) * w, src, static_cast<std::size_t>(src_stride) * w,
      static_cast<std::size_t>(cols) * w, static_cast<std::size_t>(rows), kind, stream));
}

}  // namespace detail

// Host -> device into an existing view of the same shape.
template <class T>
void upload(DeviceView<T> dst, const Matrix<host_t<T>>& src,
            cudaStream_t stream = context().stream()) {
  SORA_CHECK(dst.rows == src.rows() && dst.cols == src.cols(),
             "cuda::upload: host matrix has shape ", shape_of(src),
             " but the device view has shape ", shape_str(dst.rows, dst.cols));
  if constexpr (std::is_same_v<T, bf16>) {
    std::vector<bf16> tmp(static_cast<std::size_t>(src.size()));
    for (Index i = 0; i < src.size(); ++i)
      tmp[static_cast<std::size_t>(i)] = __float2bfloat16(src.data()[i]);
    detail::memcpy_2d(dst.data, dst.stride, tmp.data(), src.cols(), src.rows(), src.cols(),
                      cudaMemcpyHostToDevice, stream);
    SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else {
    detail::memcpy_2d(dst.data, dst.stride, src.data(), src.cols(), src.rows(), src.cols(),
                      cudaMemcpyHostToDevice, stream);
    SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

// Device -> host, as a new matrix (bf16 widens to float exactly).
template <class T>
Matrix<host_t<T>> download(ConstView<T> src, cudaStream_t stream = context().stream()) {
  using U = std::remove_const_t<T>;
  Matrix<host_t<U>> out(src.rows, src.cols);
  if constexpr (std::is_same_v<U, bf16>) {
    std::vector<bf16> tmp(static_cast<std::size_t>(src.size()));
    detail::memcpy_2d(tmp.data(), src.cols, src.data, src.stride, src.rows, src.cols,
                      cudaMemcpyDeviceToHost, stream);
    SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (Index i = 0; i < out.size(); ++i)
      out.data()[i] = __bfloat162float(tmp[static_cast<std::size_t>(i)]);
  } else {
    detail::memcpy_2d(out.data(), src.cols, src.data, src.stride, src.rows, src.cols,
                      cudaMemcpyDeviceToHost, stream);
    SORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  return out;
}

template <class T>
Matrix<host_t<T>> download(DeviceView<T> src, cudaStream_t stream = context().stream()) {
  return download(ConstView<T>(src), stream);
}

// Device -> device between views of one shape (asynchronous on `stream`).
template <class T>
void copy(DeviceView<T> dst, ConstView<T> src, cudaStream_t stream = context().stream()) {
  SORA_CHECK(dst.rows == src.rows && dst.cols == src.cols, "cuda::copy: source has shape ",
             shape_str(src.rows, src.cols), " but destination has shape ",
             shape_str(dst.rows, dst.cols));
  detail::memcpy_2d(dst.data, dst.stride, src.data, src.stride, src.rows, src.cols,
                    cudaMemcpyDeviceToDevice, stream);
}

template <class T>
DeviceTensor<T> DeviceTensor<T>::from_host(const Matrix<host_t<T>>& m, cudaStream_t stream) {
  DeviceTensor t(m.rows(), m.cols());
  upload(t.view(), m, stream);
  return t;
}

template <class T>
DeviceTensor<T> DeviceTensor<T>::copy_of(ConstView<T> v, cudaStream_t stream) {
  DeviceTensor t(v.rows, v.cols);
  copy(t.view(), v, stream);
  return t;
}

template <class T>
Matrix<host_t<T>> DeviceTensor<T>::to_host(cudaStream_t stream) const {
  return download(view(), stream);
}

}  // namespace sora::cuda
