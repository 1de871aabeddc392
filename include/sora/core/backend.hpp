#pragma once
// The CPU backend tag. Layers and the transformer are templates on a backend tag (docs/design.md
// section 3) and reach everything backend-specific through it:
//   Tensor<T>            the tensor they compute on (here Eigen's row-major Matrix<T>)
//   Ref<T>, ConstRef<T>  what an op takes as an output / input argument
//   absent<T>()          the "not passed" value of an optional op argument
//   Indices              integer ids an op reads (tokens, labels, pooled rows)
//   from_host, upload, set_indices, to_host
//                        moving host data (initial weights, a batch, logits) in and out
//   copy                 dst = src between two tensors of the backend (a training loop's
//                        snapshot of the best parameters)
// Ops themselves are free functions found by argument-dependent lookup on the tensor type: the
// CPU ops live in sora::ops (made visible to layers by using-declarations), a device backend's
// twins in the namespace of its tensor type, with the same names and argument order. A device
// backend (cuda/backend.cuh) defines a tag with the same members.

#include <span>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora {

struct Cpu {
  template <class T>
  using Tensor = Matrix<T>;
  template <class T>
  using Ref = MatrixRef<T>;
  template <class T>
  using ConstRef = ConstMatrixRef<T>;
  using Indices = std::vector<int>;

  static constexpr const char* name = "cpu";

  template <class T>
  static MatrixMap<T> absent() {
    return MatrixMap<T>(nullptr, 0, 0);
  }

  // A tensor holding host values (a parameter's initial value).
  template <class T>
  static Matrix<T> from_host(Matrix<T> m) {
    return m;
  }
  // dst = src, resizing dst (no allocation when the size is unchanged).
  template <class T>
  static void upload(Matrix<T>& dst, const Matrix<T>& src) {
    dst = src;
  }
  // dst = src, resizing dst.
  template <class T>
  static void copy(Matrix<T>& dst, const Matrix<T>& src) {
    dst = src;
  }
  static void set_indices(Indices& dst, std::span<const int> src) {
    dst.assign(src.begin(), src.end());
  }
  // The values of a tensor on the host: the tensor itself here (a copy on a device backend).
  template <class T>
  static const Matrix<T>& to_host(const Matrix<T>& m) {
    return m;
  }
};

}  // namespace sora
