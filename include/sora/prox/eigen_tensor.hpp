#pragma once
// Proximal operators over Eigen's Tensor / TensorMap of any rank (docs/design.md section 5),
// for code that keeps its parameters in unsupported/Eigen/CXX11/Tensor. Not included by
// sora/prox.hpp: the Tensor module is heavy to compile and most users never need it.
//
// Elementwise operators see the tensor through a flat map of its storage (flat(t)): every
// operator of elementwise.hpp works on a tensor as it does on a dense vector, with the same
// kernels, checks and non-finite rules, in place and out of place, and per-element weights
// given as a tensor of the same dimensions:
//     prox::l1_prox_inplace(t, gamma, lambda);          // t: Tensor<float, 4>
//     auto y = prox::hard_threshold(t, tau, weights);   // weights: t's dimensions
//
// Group operators take an Axis instead of Groups: group i is the slice of all coefficients
// whose index along that axis is i (t.chip(i, axis)), so there are t.dimension(axis) groups
// and per-group weights are an Eigen vector of that length. For a rank-2 tensor, Axis{0}
// groups rows and Axis{1} groups columns, as Groups::rows() / Groups::cols() do for a matrix.
//     prox::group_soft_threshold_inplace(t, prox::Axis{2}, tau);

#include <unsupported/Eigen/CXX11/Tensor>

#include <string>
#include <type_traits>

#include "sora/prox/detail.hpp"
#include "sora/prox/elementwise.hpp"
#include "sora/prox/group.hpp"

namespace sora::prox {

// The axis that indexes the groups of a group operator on a tensor.
struct Axis {
  Index index = 0;
};

namespace detail {

// Tensors whose coefficients are one contiguous run of memory: Tensor and TensorMap. (Tensor
// expressions have no storage to write into; evaluate them into a Tensor first.)
template <class X>
struct is_tensor_storage : std::false_type {};
template <class S, int N, int O, class I>
struct is_tensor_storage<Eigen::Tensor<S, N, O, I>> : std::true_type {};
template <class P, int O, template <class> class M>
struct is_tensor_storage<Eigen::TensorMap<P, O, M>> : std::true_type {};

template <class X>
concept TensorStorage = is_tensor_storage<std::remove_cvref_t<X>>::value;

// A tensor we may write through: not const, and (for a map) not a map of const scalars.
template <class X>
concept WritableTensor =
    TensorStorage<X> && !std::is_const_v<std::remove_reference_t<X>> &&
    !std::is_const_v<
        std::remove_pointer_t<decltype(std::declval<std::remove_cvref_t<X>&>().data())>>;

template <class X>
using tensor_scalar_of = std::remove_const_t<typename std::remove_cvref_t<X>::Scalar>;

// The Tensor an out-of-place operator returns: x's scalar, rank and layout.
template <class X>
using plain_tensor_of = Eigen::Tensor<tensor_scalar_of<X>, std::remove_cvref_t<X>::NumDimensions,
                                      std::remove_cvref_t<X>::Layout>;

template <class X>
std::string tensor_dims(const X& x) {
  std::string out = "(";
  for (int d = 0; d < X::NumDimensions; ++d) {
    out += (d > 0 ? ", " : "") + std::to_string(x.dimension(d));
  }
  return out + ")";
}

// A scalar argument passes through; a tensor argument (per-element weights) becomes the flat
// map of its storage once its dimensions are checked against x's. The layouts must agree too,
// or the two flat orders would pair different coefficients.
template <class X, class A>
decltype(auto) flat_argument(const char* op, const X& x, const A& a) {
  if constexpr (TensorStorage<A>) {
    static_assert(int(A::Layout) == int(X::Layout), "weights must have the layout of x");
    static_assert(int(A::NumDimensions) == int(X::NumDimensions), "weights must have x's rank");
    bool same = true;
    for (int d = 0; d < X::NumDimensions; ++d) same = same && a.dimension(d) == x.dimension(d);
    SORA_CHECK(same, op, ": weights have dimensions ", tensor_dims(a), " but x has ",
               tensor_dims(x));
    return ConstFlatMap<tensor_scalar_of<A>>(a.data(), static_cast<Index>(a.size()));
  } else {
    return a;
  }
}

}  // namespace detail

// The flat (size) view of a tensor's storage, in storage order. Any elementwise operator can
// take it directly: prox::firm_threshold_inplace(prox::flat(t), gamma, lambda, mu).
template <detail::WritableTensor X>
detail::FlatMap<detail::tensor_scalar_of<X>> flat(X&& x) {
  return detail::FlatMap<detail::tensor_scalar_of<X>>(x.data(), static_cast<Index>(x.size()));
}
template <detail::TensorStorage X>
detail::ConstFlatMap<detail::tensor_scalar_of<X>> flat(const X& x) {
  return detail::ConstFlatMap<detail::tensor_scalar_of<X>>(x.data(), static_cast<Index>(x.size()));
}

// Each elementwise operator of elementwise.hpp, for tensors: the in-place form runs the dense
// operator on flat(x) (scalars as given, weight tensors flattened after a dimension check);
// the out-of-place form copies x into a Tensor and runs the in-place form on the copy.
#define SORA_PROX_TENSOR_ELEMENTWISE(name)                             \
  template <detail::WritableTensor X, class... Args>                   \
  void name##_inplace(X&& x, const Args&... args) {                    \
    name##_inplace(flat(x), detail::flat_argument(#name, x, args)...); \
  }                                                                    \
  template <detail::TensorStorage X, class... Args>                    \
  detail::plain_tensor_of<X> name(const X& x, const Args&... args) {   \
    detail::plain_tensor_of<X> y = x;                                  \
    name##_inplace(y, args...);                                        \
    return y;                                                          \
  }

SORA_PROX_TENSOR_ELEMENTWISE(soft_threshold)
SORA_PROX_TENSOR_ELEMENTWISE(hard_threshold)
SORA_PROX_TENSOR_ELEMENTWISE(l1_prox)
SORA_PROX_TENSOR_ELEMENTWISE(l0_prox)
SORA_PROX_TENSOR_ELEMENTWISE(elastic_net_prox)
SORA_PROX_TENSOR_ELEMENTWISE(nonneg_soft_threshold)
SORA_PROX_TENSOR_ELEMENTWISE(firm_threshold)
SORA_PROX_TENSOR_ELEMENTWISE(box_project)
#undef SORA_PROX_TENSOR_ELEMENTWISE

namespace detail {

// Group g along `axis`: viewed in storage order, the tensor is (inner, G, outer) with inner the
// product of the dimensions that vary faster than the axis and outer of those that vary
// slower. Two cases are the dense kernels of group.hpp: outer == 1 makes each group one
// contiguous column of an (inner, G) block (norm and scale while in cache, one pass), and
// inner == 1 makes the groups the rows of a column-major (G, outer) block (two passes). In
// general each outer slab is an (inner, G) column-major block whose column g belongs to group
// g: the squared norms are a sum over slabs of column norms, then column g of every slab is
// scaled; two sequential sweeps over memory, and a kept group is not written.
// Slabs of at most this many elements (16 KiB of fp32) accumulate their squares in one
// L1-resident (inner, G) buffer.
inline constexpr Index kSlabAccumulator = 4096;

template <class X, class Thr>
void axis_group_apply(X& x, Index axis, GroupMode mode, const Thr& thr) {
  using T = tensor_scalar_of<X>;
  constexpr int N = std::remove_cvref_t<X>::NumDimensions;
  constexpr bool row_major = int(std::remove_cvref_t<X>::Layout) == int(Eigen::RowMajor);
  if (x.size() == 0) return;
  const Index G = x.dimension(axis);
  Index inner = 1, outer = 1;
  for (int d = 0; d < N; ++d) {
    const bool faster = row_major ? d > axis : d < axis;
    if (d != axis) (faster ? inner : outer) *= x.dimension(d);
  }
  using Block = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>>;  // column-major
  if (outer == 1) {
    lines_one_pass(Block(x.data(), inner, G).transpose(), mode, thr);  // (G, inner) view
    return;
  }
  if (inner == 1) {
    lines_two_pass(Block(x.data(), G, outer), mode, thr);  // (G, outer)
    return;
  }
  Eigen::Array<T, 1, Eigen::Dynamic> f(G);  // (G) squared norms, then factors
  if (inner * G <= kSlabAccumulator) {
    // Small slabs: add the slabs' squares elementwise (vertical, vectorized adds), then sum
    // each column once, instead of a short horizontal reduction per column per slab.
    Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic> acc =
        Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>::Zero(inner, G);  // (inner, G)
    for (Index o = 0; o < outer; ++o) acc += Block(x.data() + o * inner * G, inner, G).abs2();
    f = acc.colwise().sum();
  } else {
    f.setZero();
    for (Index o = 0; o < outer; ++o) {
      f += Block(x.data() + o * inner * G, inner, G).abs2().colwise().sum();  // slab (inner, G)
    }
  }
  bool all_one = true;
  for (Index g = 0; g < G; ++g) {
    f(g) = group_factor(mode, std::sqrt(f(g)), thr(g));
    all_one = all_one && f(g) == T(1);
  }
  if (all_one) return;
  for (Index o = 0; o < outer; ++o) {
    Block slab(x.data() + o * inner * G, inner, G);  // (inner, G)
    for (Index g = 0; g < G; ++g) {
      if (f(g) == T(0)) {
        slab.col(g).setZero();  // +0 rather than x * 0 (-0 for negative x)
      } else if (f(g) != T(1)) {
        slab.col(g) *= f(g);
      }
    }
  }
}

template <class X>
void check_axis(const char* op, const X& /*x*/, Axis axis) {
  constexpr int N = std::remove_cvref_t<X>::NumDimensions;
  SORA_CHECK(axis.index >= 0 && axis.index < N, op, ": axis ", axis.index,
             " is out of range for a tensor of rank ", N);
}

template <class X>
void run_axis_group(X& x, Axis axis, const char* op, GroupMode mode, tensor_scalar_of<X> thr) {
  check_axis(op, x, axis);
  axis_group_apply(x, axis.index, mode, ConstantThreshold<tensor_scalar_of<X>>{thr});
}

template <class X, class W>
void run_axis_group(X& x, Axis axis, const char* op, GroupMode mode, tensor_scalar_of<X> scale,
                    bool sqrt_weight, const Eigen::DenseBase<W>& w) {
  static_assert(std::is_same_v<tensor_scalar_of<X>, typename W::Scalar>,
                "weights must have the scalar type of x");
  check_axis(op, x, axis);
  check_group_weights(op, w, x.dimension(axis.index));
  axis_group_apply(x, axis.index, mode,
                   WeightedThreshold<tensor_scalar_of<X>, W>{scale, w.derived(), sqrt_weight});
}

}  // namespace detail

// ------------------------------------------------------------------------------------------
// Group operators along an axis: the rules of group.hpp, with group i = t.chip(i, axis).

template <detail::WritableTensor X>
void group_soft_threshold_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> tau) {
  detail::check_threshold("group_soft_threshold", "tau", tau);
  detail::run_axis_group(x, axis, "group_soft_threshold", detail::GroupMode::Shrink, tau);
}

template <detail::WritableTensor X, class W>
void group_soft_threshold_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> tau,
                                  const Eigen::DenseBase<W>& w) {
  detail::check_threshold("group_soft_threshold", "tau", tau);
  detail::run_axis_group(x, axis, "group_soft_threshold", detail::GroupMode::Shrink, tau, false, w);
}

template <detail::WritableTensor X>
void group_l21_prox_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> gamma,
                            detail::tensor_scalar_of<X> lambda) {
  detail::check_positive("group_l21_prox", "gamma", gamma);
  detail::check_threshold("group_l21_prox", "lambda", lambda);
  detail::run_axis_group(x, axis, "group_l21_prox", detail::GroupMode::Shrink, gamma * lambda);
}

template <detail::WritableTensor X, class W>
void group_l21_prox_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> gamma,
                            detail::tensor_scalar_of<X> lambda, const Eigen::DenseBase<W>& w) {
  detail::check_positive("group_l21_prox", "gamma", gamma);
  detail::check_threshold("group_l21_prox", "lambda", lambda);
  detail::run_axis_group(x, axis, "group_l21_prox", detail::GroupMode::Shrink, gamma * lambda,
                         false, w);
}

template <detail::WritableTensor X>
void group_hard_threshold_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> tau) {
  detail::check_threshold("group_hard_threshold", "tau", tau);
  detail::run_axis_group(x, axis, "group_hard_threshold", detail::GroupMode::Keep, tau);
}

template <detail::WritableTensor X, class W>
void group_hard_threshold_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> tau,
                                  const Eigen::DenseBase<W>& w) {
  detail::check_threshold("group_hard_threshold", "tau", tau);
  detail::run_axis_group(x, axis, "group_hard_threshold", detail::GroupMode::Keep, tau, false, w);
}

template <detail::WritableTensor X>
void group_l0_prox_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> gamma,
                           detail::tensor_scalar_of<X> lambda) {
  const auto cut = detail::l0_cutoff("group_l0_prox", gamma, lambda);
  detail::run_axis_group(x, axis, "group_l0_prox", detail::GroupMode::Keep, cut);
}

template <detail::WritableTensor X, class W>
void group_l0_prox_inplace(X&& x, Axis axis, detail::tensor_scalar_of<X> gamma,
                           detail::tensor_scalar_of<X> lambda, const Eigen::DenseBase<W>& w) {
  const auto cut = detail::l0_cutoff("group_l0_prox", gamma, lambda);
  detail::run_axis_group(x, axis, "group_l0_prox", detail::GroupMode::Keep, cut, true, w);
}

// Out of place: a copy (a Tensor of x's scalar, rank and layout) through the in-place form.
#define SORA_PROX_TENSOR_GROUP_COPY(name)                                       \
  template <detail::TensorStorage X, class... Args>                             \
  detail::plain_tensor_of<X> name(const X& x, Axis axis, const Args&... args) { \
    detail::plain_tensor_of<X> y = x;                                           \
    name##_inplace(y, axis, args...);                                           \
    return y;                                                                   \
  }

SORA_PROX_TENSOR_GROUP_COPY(group_soft_threshold)
SORA_PROX_TENSOR_GROUP_COPY(group_l21_prox)
SORA_PROX_TENSOR_GROUP_COPY(group_hard_threshold)
SORA_PROX_TENSOR_GROUP_COPY(group_l0_prox)
#undef SORA_PROX_TENSOR_GROUP_COPY

}  // namespace sora::prox
