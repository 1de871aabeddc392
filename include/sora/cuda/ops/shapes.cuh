#pragma once
// Shared by the op twins in cuda/ops/ (linear.cuh, attention.cuh): "absent" optional
// arguments and the shape checks every public entry runs, with the messages of
// ops/common.hpp, so that a shape error reads the same on both backends.
//
// An optional argument (a bias, a gate, a gradient nobody wants) is an empty view,
// DeviceView<T>() (Cuda::absent<T>()), as absent<T>() is a 0 x 0 map on the CPU.

#include <string>

#include "sora/cuda/tensor.cuh"

namespace sora::cuda::shapes {

template <class T>
bool present(const DeviceView<T>& v) {
  return v.size() != 0;
}

// Throws "<op>: <what> has shape (a, b), expected (c, d)"; -1 in an expected size means any.
template <class T>
void check_shape(const char* op, const char* what, const DeviceView<T>& v, Index rows, Index cols) {
  const bool ok = (rows < 0 || v.rows == rows) && (cols < 0 || v.cols == cols);
  if (!ok) [[unlikely]] {
    auto dim = [](Index d) { return d < 0 ? std::string("*") : std::to_string(d); };
    ::sora::detail::throw_error(op, ": ", what, " has shape ", shape_str(v.rows, v.cols),
                                ", expected (", dim(rows), ", ", dim(cols), ")");
  }
}

// Same, for an optional argument: absent is always fine.
template <class T>
void check_optional(const char* op, const char* what, const DeviceView<T>& v, Index rows,
                    Index cols) {
  if (present(v)) check_shape(op, what, v, rows, cols);
}

}  // namespace sora::cuda::shapes
