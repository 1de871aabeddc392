#pragma once
// Internals shared by the proximal operators: argument checks, the "writable dense
// expression" concept, and the elementwise engine that runs a kernel over one flat contiguous
// map when the storage allows it (the fast path every benchmark measures) and over Eigen's own
// strided traversal otherwise.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <type_traits>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/core/threading.hpp"

namespace sora::prox::detail {

// Any non-const Eigen dense expression, lvalue or rvalue: Matrix, Array, Map, Block, Ref,
// m.row(i), m.col(j), ... Rvalues are accepted so that `soft_threshold_inplace(m.row(2), t)`
// writes through the temporary block into m.
template <class X>
concept WritableDense =
    std::is_base_of_v<Eigen::DenseBase<std::remove_cvref_t<X>>, std::remove_cvref_t<X>> &&
    !std::is_const_v<std::remove_reference_t<X>>;

template <class X>
using scalar_of = typename std::remove_cvref_t<X>::Scalar;

template <class X>
using plain_of = typename std::remove_cvref_t<X>::PlainObject;

// ---------------------------------------------------------------------------------------
// Argument checks. Written as !(v >= 0) so that NaN fails them too.

template <class T>
void check_threshold(const char* op, const char* name, T value) {
  SORA_CHECK(value >= T(0) && std::isfinite(value), op, ": ", name,
             " must be finite and >= 0, got ", value);
}

template <class T>
void check_positive(const char* op, const char* name, T value) {
  SORA_CHECK(value > T(0) && std::isfinite(value), op, ": ", name, " must be finite and > 0, got ",
             value);
}

template <class T>
T l0_cutoff(const char* op, T gamma, T lambda) {
  check_positive(op, "gamma", gamma);
  check_threshold(op, "lambda", lambda);
  // prox of γλ||y||_0 per coordinate: keeping y = x costs λ (penalty), zeroing costs
  // x²/(2γ) (distance); any other y != 0 costs λ + (y-x)²/(2γ) > λ. So keep iff
  // x²/(2γ) > λ, i.e. |x| > sqrt(2γλ) -- not γλ, the cut-off several libraries use.
  return std::sqrt(T(2) * gamma * lambda);
}

template <class A, class B>
void check_same_shape(const char* op, const char* what, const Eigen::EigenBase<A>& x,
                      const Eigen::EigenBase<B>& w) {
  SORA_CHECK(x.rows() == w.rows() && x.cols() == w.cols(), op, ": ", what, " have shape ",
             shape_of(w), " but x has shape ", shape_of(x));
}

// Weights scale a threshold, so they must be finite and >= 0 (a negative weight would turn
// "shrink" into "grow"). One read pass over w; the unweighted kernels pay nothing for it.
template <class W>
void check_weights(const char* op, const Eigen::DenseBase<W>& w) {
  for (Index i = 0; i < w.rows(); ++i) {
    for (Index j = 0; j < w.cols(); ++j) {
      const auto v = w.coeff(i, j);
      SORA_CHECK(v >= 0 && std::isfinite(v), op, ": weights must be finite and >= 0, got ", v,
                 " at (", i, ", ", j, ")");
    }
  }
}

// ---------------------------------------------------------------------------------------
// Array views. Kernels are written once against ArrayBase (abs, max, min, abs2 are array
// methods), so a Matrix-kind expression is viewed through .array().

template <class D>
decltype(auto) as_array(Eigen::DenseBase<D>& x) {
  if constexpr (std::is_base_of_v<Eigen::ArrayBase<D>, D>) {
    return static_cast<D&>(x.derived());
  } else {
    return x.derived().array();
  }
}

template <class D>
decltype(auto) as_array(const Eigen::DenseBase<D>& x) {
  if constexpr (std::is_base_of_v<Eigen::ArrayBase<D>, D>) {
    return static_cast<const D&>(x.derived());
  } else {
    return x.derived().array();
  }
}

template <class D>
constexpr bool has_direct_access() {
  return (int(D::Flags) & Eigen::DirectAccessBit) != 0;
}

// True when the expression's coefficients occupy one gap-free run of memory, so it can be
// processed as a flat 1-D array of size() elements in storage order.
template <class D>
bool is_contiguous(const Eigen::DenseBase<D>& x) {
  if constexpr (has_direct_access<D>()) {
    if (x.size() <= 1) return true;
    if (x.innerSize() == 1) return x.outerStride() == 1;
    return x.innerStride() == 1 && (x.outerSize() == 1 || x.outerStride() == x.innerSize());
  } else {
    return false;
  }
}

// Two contiguous expressions of one shape visit their coefficients in the same order when
// flattened if they are vectors or share a storage order.
template <class A, class B>
bool same_flat_order(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& /*b*/) {
  const bool vector = a.rows() == 1 || a.cols() == 1;
  return vector || bool(A::IsRowMajor) == bool(B::IsRowMajor);
}

template <class T>
using FlatMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstFlatMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

template <class D>
FlatMap<typename D::Scalar> flat_map(Eigen::DenseBase<D>& x) {
  return FlatMap<typename D::Scalar>(x.derived().data(), x.size());
}
template <class D>
ConstFlatMap<typename D::Scalar> flat_map(const Eigen::DenseBase<D>& x) {
  return ConstFlatMap<typename D::Scalar>(x.derived().data(), x.size());
}

// Splitting large flat kernels over OpenMP threads: written but OFF. Not yet measured against
// a copy baseline with the same threading on a quiet machine (the 2-core development box was
// shared with other builds), and the serial kernels already run at about the in-place copy
// rate there, so single-threaded is the honest default until a benchmark shows a gain.
inline constexpr Index kParallelMinElements = Index(1) << 18;
inline constexpr bool kParallel = false;

// y = op(xs...) elementwise. y may be one of the xs (in place): every kernel reads
// coefficient i only to write coefficient i, so exact aliasing is safe.
template <class Op, class Y, class... Xs>
void apply_elementwise(const Op& op, Eigen::DenseBase<Y>& y, const Eigen::DenseBase<Xs>&... xs) {
  if (y.size() == 0) return;
  if constexpr (has_direct_access<Y>() && (has_direct_access<Xs>() && ...)) {
    const bool flat =
        is_contiguous(y) && (is_contiguous(xs) && ...) && (same_flat_order(y, xs) && ...);
    if (flat) {
      auto ym = flat_map(y);
      const Index n = ym.size();
      if (kParallel && n >= kParallelMinElements && num_threads() > 1) {
        // One chunk per thread, boundaries on 64-byte multiples so no cache line is shared.
        const Index parts = num_threads();
        const Index chunk = ((n + parts - 1) / parts + 15) / 16 * 16;
        parallel_for(0, parts, [&](Index p) {
          const Index begin = std::min(n, p * chunk);
          const Index len = std::min(n, begin + chunk) - begin;
          if (len > 0) ym.segment(begin, len) = op(flat_map(xs).segment(begin, len)...);
        });
      } else {
        ym = op(flat_map(xs)...);
      }
      return;
    }
  }
  as_array(y) = op(as_array(xs)...);
}

}  // namespace sora::prox::detail
