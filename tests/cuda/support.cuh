#pragma once
// Shared by the CUDA tests: random host matrices, host <-> device copies, the largest error of a
// device result against its CPU twin and a doctest check that reports it, the op twins'
// tolerance, and the message of a failing call.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/cuda/context.cuh"
#include "sora/cuda/tensor.cuh"

namespace sora::cuda::testing {

template <class T>
Matrix<T> random_matrix(Index r, Index c, unsigned seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, scale);
  Matrix<T> m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(nd(gen));
  return m;
}

// The tolerance of an op twin against its CPU op (scaled_error): the two sum in different
// orders, a few ulp per element.
template <class T>
constexpr double tol() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;
}

// Host <-> device on the ops' stream (downloads wait for everything queued before).
template <class T>
DeviceTensor<T> dev(const Matrix<T>& m) {
  return DeviceTensor<T>::from_host(m, context().stream());
}
template <class T>
Matrix<T> host(const DeviceTensor<T>& t) {
  return t.to_host(context().stream());
}
template <class U>  // U = T or const T: a view of either kind
auto host(DeviceView<U> v) {
  return download(v, context().stream());
}

// The sora::Error message of f(), or "" when it does not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const sora::Error& e) {
    return e.what();
  }
  return "";
}

// max_i |got_i - want_i| / (|want|_max + floor): an error relative to the tensor's scale, so
// that elements that cancel to near zero do not dominate. Shapes must agree (else +inf); a
// NaN or an infinity on either side gives +inf, even where both sides have it: a diverged
// model and its diverged twin must not pass as equal. (Tests of NaN/inf propagation compare
// with their own rule, cuda_test.cu's CHECK_CLOSE.)
template <class T>
double scaled_error(const Matrix<T>& got, const Matrix<T>& want, double floor = 1e-30) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return INFINITY;
  double scale = 0.0, err = 0.0;
  for (Index i = 0; i < want.size(); ++i) {
    const double a = static_cast<double>(got.data()[i]), b = static_cast<double>(want.data()[i]);
    if (!std::isfinite(a) || !std::isfinite(b)) return INFINITY;
    scale = std::max(scale, std::abs(b));
    err = std::max(err, std::abs(a - b));
  }
  return err / (scale + floor);
}

}  // namespace sora::cuda::testing

// CHECK that a device result (downloaded) matches the CPU twin to `tol` (scaled_error).
#define CHECK_TWIN(got, want, tol)                                          \
  do {                                                                      \
    const double err_ = ::sora::cuda::testing::scaled_error((got), (want)); \
    INFO("scaled error ", err_, " (tolerance ", (tol), ") for ", #got);     \
    CHECK(err_ <= (tol));                                                   \
  } while (false)
