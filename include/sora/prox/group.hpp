#pragma once
// Group proximal operators over the groups of groups.hpp (rows, cols, blocks, partitions):
//   group soft threshold (group lasso, prox of τ Σ_g w_g ||x_g||_2):
//       x_g <- x_g max(0, 1 - τ w_g / ||x_g||)           (zero-norm groups stay 0)
//   group hard threshold: keep x_g iff ||x_g|| > τ w_g, else 0
//   group L0 prox (prox of γλ Σ_g w_g [x_g != 0]): keep x_g iff ||x_g|| > sqrt(2γλ w_g)
//       (keeping costs λ w_g, zeroing costs ||x_g||²/(2γ); any other non-zero y_g costs more
//       than keeping, so the prox is x_g or 0, exactly as in the elementwise case)
// In place (`*_inplace(x, groups, ...)`) and out of place; optional per-group weights w (a
// vector with one finite, >= 0 entry per group).
//
// Each group's norm and its scaling are done while the group is in cache: rows of row-major
// storage, columns of column-major storage and blocks of contiguous storage take one pass over
// memory. Groups that cut across the storage order (columns of a row-major matrix, ...) take
// two (norms first, then the scaling), as do partitions (coefficient access).
// A group whose factor is exactly 1 (kept by hard/L0) is not written back at all.
//
// Non-finite values: a NaN in a group makes its norm NaN; the rules zero only groups whose
// norm is provably <= the threshold, so group soft turns that group NaN and hard/L0 keep it.
// An infinite norm keeps the group (factor 1 - τ/inf = 1).

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "sora/prox/detail.hpp"
#include "sora/prox/groups.hpp"

namespace sora::prox {
namespace detail {

enum class GroupMode { Shrink, Keep };

template <class T>
T group_factor(GroupMode mode, T norm, T thr) {
  if (norm <= thr) return T(0);  // also norm == 0: the group stays exactly 0, no 0/0
  return mode == GroupMode::Shrink ? T(1) - thr / norm : T(1);
}

// Lines are the rows of `a` and each row is contiguous-ish (inner): norm and scale per row.
template <class A, class Thr>
void lines_one_pass(A&& a, GroupMode mode, const Thr& thr) {
  using T = typename std::remove_cvref_t<A>::Scalar;
  for (Index i = 0; i < a.rows(); ++i) {
    auto row = a.row(i);
    const T f = group_factor(mode, std::sqrt(row.abs2().sum()), thr(i));
    if (f == T(0)) {
      row.setZero();  // +0 rather than x * 0 (which is -0 for negative x)
    } else if (f != T(1)) {
      row *= f;
    }
  }
}

// Small contiguous blocks of a compile-time size B: Eigen unrolls and vectorizes the norm of a
// fixed-size block, where a dynamic-size row pays a reduction set-up per group.
//
// Group soft threshold (Shrink) rescales every surviving block, so it writes every block; its
// write is branch-free (x f + 0, always stored) because whether a small group survives is close
// to a coin toss and a mispredicted branch per 16 elements costs more than the store; adding +0
// turns the -0 of a zeroed negative entry into +0, as the branchy path's setZero() does.
template <int B, class T, class Thr>
void blocks_fixed_shrink(T* data, Index G, const Thr& thr) {
  for (Index g = 0; g < G; ++g) {
    Eigen::Map<Eigen::Array<T, B, 1>> block(data + g * B);  // (B) contiguous
    const T norm = std::sqrt(block.abs2().sum());
    // max(0, 1 - t / norm) as selects, not a branch. A zero group divides by 1 instead of
    // 0 (its factor is irrelevant: 0 * f = 0); a NaN norm gives a NaN factor, as in
    // group_factor, because NaN < 0 is false.
    const T shrink = T(1) - thr(g) / (norm == T(0) ? T(1) : norm);
    const T f = shrink < T(0) ? T(0) : shrink;
    block = block * f + T(0);
  }
}

// Group hard threshold and L0 (Keep) leave a kept block as it is and zero a dropped one, so a
// kept block needs no write at all. A branch on each block's fate would be mispredicted about
// as often as a coin toss, so per chunk of 64 blocks: the norms first (each block's sum
// unrolled and vectorized as above, summed exactly as blocks_fixed_shrink sums them), a 64-bit
// mask of the dropped blocks built without branches, then a loop over the mask's set bits that
// writes zeros to those blocks only. The chunk 8 KiB ahead is prefetched: the norms' reductions
// keep the core busy between loads, and the hardware prefetcher alone then falls behind
// (2^24 fp32 blocks of 16, -march=native, applied back to back: 10.1 ms without, 8.6 ms with,
// 10.7 ms for the store-every-block path before; bench's BM_GroupHardThreshold_RateOfCopy:
// 0.68 of the in-place copy's rate, 0.52 before). Eigen's vectorized sqrt for float is an
// approximation under EIGEN_FAST_MATH, so the square roots are std::sqrt: a norm exactly at the
// threshold gets the generic path's verdict. (Comparing squared norms against t^2 first, to
// skip most square roots, was slower: the comparisons became unpredictable branches.)
template <int B, class T, class Thr>
void blocks_fixed_keep(T* data, Index G, const Thr& thr) {
  constexpr Index kChunk = 64;                                    // blocks per mask
  constexpr Index kLine = 64 / static_cast<Index>(sizeof(T));     // elements per cache line
  constexpr Index kAhead = 8192 / static_cast<Index>(sizeof(T));  // prefetch distance
  for (Index g0 = 0; g0 < G; g0 += kChunk) {
    const Index count = std::min(kChunk, G - g0);
    T* x = data + g0 * B;  // (count, B) row-major: block k is row k
#if defined(__GNUC__)
    if ((g0 + kChunk) * B + kAhead <= G * B) {  // the prefetched lines are inside the buffer
      for (Index i = 0; i < kChunk * B; i += kLine) __builtin_prefetch(x + kAhead + i, 1);
    }
#endif
    std::uint64_t dropped = 0;  // bit k: block g0 + k is zeroed
    for (Index k = 0; k < count; ++k) {
      const T norm = std::sqrt(Eigen::Map<const Eigen::Array<T, B, 1>>(x + k * B).abs2().sum());
      // NaN norms keep (the comparison is false), as in group_factor.
      dropped |= static_cast<std::uint64_t>(norm <= thr(g0 + k)) << k;
    }
    while (dropped != 0) {
      const int k = std::countr_zero(dropped);
      dropped &= dropped - 1;
      Eigen::Map<Eigen::Array<T, B, 1>>(x + static_cast<Index>(k) * B).setZero();  // +0
    }
  }
}

template <int B, class T, class Thr>
void blocks_fixed(T* data, Index G, GroupMode mode, const Thr& thr) {
  if (mode == GroupMode::Shrink) {
    blocks_fixed_shrink<B>(data, G, thr);
  } else {
    blocks_fixed_keep<B>(data, G, thr);
  }
}

// Dispatches the block sizes worth a fixed-size path; false if b is not one of them.
template <class T, class Thr>
bool blocks_fixed_dispatch(T* data, Index b, Index G, GroupMode mode, const Thr& thr) {
  switch (b) {
    case 4:
      blocks_fixed<4>(data, G, mode, thr);
      return true;
    case 8:
      blocks_fixed<8>(data, G, mode, thr);
      return true;
    case 16:
      blocks_fixed<16>(data, G, mode, thr);
      return true;
    case 32:
      blocks_fixed<32>(data, G, mode, thr);
      return true;
    default:
      return false;
  }
}

// Lines are the rows of `a` but its storage is column-major: accumulate all row norms in one
// sweep over the (contiguous) columns, then scale in a second sweep.
template <class A, class Thr>
void lines_two_pass(A&& a, GroupMode mode, const Thr& thr) {
  using T = typename std::remove_cvref_t<A>::Scalar;
  const Index R = a.rows();
  Eigen::Array<T, Eigen::Dynamic, 1> f = Eigen::Array<T, Eigen::Dynamic, 1>::Zero(R);  // (R)
  for (Index j = 0; j < a.cols(); ++j) f += a.col(j).abs2();
  bool all_one = true;
  for (Index i = 0; i < R; ++i) {
    f(i) = group_factor(mode, std::sqrt(f(i)), thr(i));
    all_one = all_one && f(i) == T(1);
  }
  if (all_one) return;
  for (Index j = 0; j < a.cols(); ++j) a.col(j) *= f;
}

// Any groups, any storage: two passes with coefficient access.
template <class X, class Thr>
void groups_generic(X& x, const Groups& groups, Index G, GroupMode mode, const Thr& thr) {
  using T = typename X::Scalar;
  std::vector<T> f(static_cast<std::size_t>(G), T(0));  // (G) squared norms, then factors
  visit_groups(groups, x.rows(), x.cols(), [&](Index g, Index i, Index j) {
    const T v = x.coeff(i, j);
    f[static_cast<std::size_t>(g)] += v * v;
  });
  for (Index g = 0; g < G; ++g) {
    auto& fg = f[static_cast<std::size_t>(g)];
    fg = group_factor(mode, std::sqrt(fg), thr(g));
  }
  visit_groups(groups, x.rows(), x.cols(), [&](Index g, Index i, Index j) {
    const T fg = f[static_cast<std::size_t>(g)];
    if (fg == T(0)) {
      x.coeffRef(i, j) = T(0);
    } else if (fg != T(1)) {
      x.coeffRef(i, j) *= fg;
    }
  });
}

template <class Derived, class Thr>
void group_apply(Eigen::DenseBase<Derived>& x, const Groups& groups, Index G, GroupMode mode,
                 const Thr& thr) {
  if (x.size() == 0) return;
  decltype(auto) a = as_array(x);
  constexpr bool row_major = bool(Derived::IsRowMajor);
  switch (groups.kind()) {
    case Groups::Kind::Rows:
      if (row_major || x.cols() == 1) {
        lines_one_pass(a, mode, thr);
      } else {
        lines_two_pass(a, mode, thr);
      }
      return;
    case Groups::Kind::Cols:
      if (!row_major || x.rows() == 1) {
        lines_one_pass(a.transpose(), mode, thr);
      } else {
        lines_two_pass(a.transpose(), mode, thr);
      }
      return;
    case Groups::Kind::Blocks:
      if constexpr (has_direct_access<Derived>()) {
        const bool vector = x.rows() == 1 || x.cols() == 1;
        if (is_contiguous(x) && (row_major || vector)) {
          auto flat = flat_map(x);
          const Index b = groups.block_size();
          if (blocks_fixed_dispatch(flat.data(), b, G, mode, thr)) return;
          // A (G, b) row-major view: block g is row g, contiguous.
          Eigen::Map<Eigen::Array<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic,
                                  Eigen::RowMajor>>
              blocks(flat.data(), G, b);
          lines_one_pass(blocks, mode, thr);
          return;
        }
      }
      groups_generic(x.derived(), groups, G, mode, thr);
      return;
    case Groups::Kind::Partition:
      groups_generic(x.derived(), groups, G, mode, thr);
      return;
  }
}

template <class T>
struct ConstantThreshold {
  T thr;
  T operator()(Index) const { return thr; }
};

// thr_g = scale * w_g, or scale * sqrt(w_g) for the L0 cut-off sqrt(2γλ w_g).
template <class T, class W>
struct WeightedThreshold {
  T scale;
  const W& w;
  bool sqrt_weight;
  T operator()(Index g) const {
    const T wg = w.coeff(g);
    return scale * (sqrt_weight ? std::sqrt(wg) : wg);
  }
};

template <class W>
void check_group_weights(const char* op, const Eigen::DenseBase<W>& w, Index G) {
  SORA_CHECK((w.rows() == 1 || w.cols() == 1 || w.size() == 0) && w.size() == G, op,
             ": group weights have shape ", shape_of(w), " but there are ", G,
             " groups (expected a vector of ", G, ")");
  check_weights(op, w);
}

template <class X>
void run_group(X& x, const Groups& groups, const char* op, GroupMode mode, typename X::Scalar thr) {
  const Index G = groups.count(x.rows(), x.cols(), op);
  group_apply(x, groups, G, mode, ConstantThreshold<typename X::Scalar>{thr});
}

template <class X, class W>
void run_group(X& x, const Groups& groups, const char* op, GroupMode mode, typename X::Scalar scale,
               bool sqrt_weight, const Eigen::DenseBase<W>& w) {
  static_assert(std::is_same_v<typename X::Scalar, typename W::Scalar>,
                "weights must have the scalar type of x");
  const Index G = groups.count(x.rows(), x.cols(), op);
  check_group_weights(op, w, G);
  group_apply(x, groups, G, mode,
              WeightedThreshold<typename X::Scalar, W>{scale, w.derived(), sqrt_weight});
}

}  // namespace detail

// ------------------------------------------------------------------------------------------
// Group soft threshold (group lasso) at τ (weights: τ w_g).

template <detail::WritableDense X>
void group_soft_threshold_inplace(X&& x, const Groups& groups, detail::scalar_of<X> tau) {
  detail::check_threshold("group_soft_threshold", "tau", tau);
  detail::run_group(x, groups, "group_soft_threshold", detail::GroupMode::Shrink, tau);
}

template <detail::WritableDense X, class W>
void group_soft_threshold_inplace(X&& x, const Groups& groups, detail::scalar_of<X> tau,
                                  const Eigen::DenseBase<W>& w) {
  detail::check_threshold("group_soft_threshold", "tau", tau);
  detail::run_group(x, groups, "group_soft_threshold", detail::GroupMode::Shrink, tau, false, w);
}

template <class X>
detail::plain_of<X> group_soft_threshold(const Eigen::DenseBase<X>& x, const Groups& groups,
                                         typename X::Scalar tau) {
  detail::plain_of<X> y = x.derived();
  group_soft_threshold_inplace(y, groups, tau);
  return y;
}

template <class X, class W>
detail::plain_of<X> group_soft_threshold(const Eigen::DenseBase<X>& x, const Groups& groups,
                                         typename X::Scalar tau, const Eigen::DenseBase<W>& w) {
  detail::plain_of<X> y = x.derived();
  group_soft_threshold_inplace(y, groups, tau, w);
  return y;
}

// Group L2,1 prox: prox of γλ Σ_g w_g ||x_g|| = group soft threshold at γλ.
template <detail::WritableDense X>
void group_l21_prox_inplace(X&& x, const Groups& groups, detail::scalar_of<X> gamma,
                            detail::scalar_of<X> lambda) {
  detail::check_positive("group_l21_prox", "gamma", gamma);
  detail::check_threshold("group_l21_prox", "lambda", lambda);
  detail::run_group(x, groups, "group_l21_prox", detail::GroupMode::Shrink, gamma * lambda);
}

template <detail::WritableDense X, class W>
void group_l21_prox_inplace(X&& x, const Groups& groups, detail::scalar_of<X> gamma,
                            detail::scalar_of<X> lambda, const Eigen::DenseBase<W>& w) {
  detail::check_positive("group_l21_prox", "gamma", gamma);
  detail::check_threshold("group_l21_prox", "lambda", lambda);
  detail::run_group(x, groups, "group_l21_prox", detail::GroupMode::Shrink, gamma * lambda, false,
                    w);
}

// ------------------------------------------------------------------------------------------
// Group hard threshold at τ (weights: τ w_g): keep x_g iff ||x_g|| > τ w_g.

template <detail::WritableDense X>
void group_hard_threshold_inplace(X&& x, const Groups& groups, detail::scalar_of<X> tau) {
  detail::check_threshold("group_hard_threshold", "tau", tau);
  detail::run_group(x, groups, "group_hard_threshold", detail::GroupMode::Keep, tau);
}

template <detail::WritableDense X, class W>
void group_hard_threshold_inplace(X&& x, const Groups& groups, detail::scalar_of<X> tau,
                                  const Eigen::DenseBase<W>& w) {
  detail::check_threshold("group_hard_threshold", "tau", tau);
  detail::run_group(x, groups, "group_hard_threshold", detail::GroupMode::Keep, tau, false, w);
}

template <class X>
detail::plain_of<X> group_hard_threshold(const Eigen::DenseBase<X>& x, const Groups& groups,
                                         typename X::Scalar tau) {
  detail::plain_of<X> y = x.derived();
  group_hard_threshold_inplace(y, groups, tau);
  return y;
}

template <class X, class W>
detail::plain_of<X> group_hard_threshold(const Eigen::DenseBase<X>& x, const Groups& groups,
                                         typename X::Scalar tau, const Eigen::DenseBase<W>& w) {
  detail::plain_of<X> y = x.derived();
  group_hard_threshold_inplace(y, groups, tau, w);
  return y;
}

// ------------------------------------------------------------------------------------------
// Group L0 prox: keep x_g iff ||x_g|| > sqrt(2γλ w_g) (w_g = 1 unweighted; ties give 0).

template <detail::WritableDense X>
void group_l0_prox_inplace(X&& x, const Groups& groups, detail::scalar_of<X> gamma,
                           detail::scalar_of<X> lambda) {
  const auto cut = detail::l0_cutoff("group_l0_prox", gamma, lambda);
  detail::run_group(x, groups, "group_l0_prox", detail::GroupMode::Keep, cut);
}

template <detail::WritableDense X, class W>
void group_l0_prox_inplace(X&& x, const Groups& groups, detail::scalar_of<X> gamma,
                           detail::scalar_of<X> lambda, const Eigen::DenseBase<W>& w) {
  const auto cut = detail::l0_cutoff("group_l0_prox", gamma, lambda);
  detail::run_group(x, groups, "group_l0_prox", detail::GroupMode::Keep, cut, true, w);
}

template <class X>
detail::plain_of<X> group_l0_prox(const Eigen::DenseBase<X>& x, const Groups& groups,
                                  typename X::Scalar gamma, typename X::Scalar lambda) {
  detail::plain_of<X> y = x.derived();
  group_l0_prox_inplace(y, groups, gamma, lambda);
  return y;
}

template <class X, class W>
detail::plain_of<X> group_l0_prox(const Eigen::DenseBase<X>& x, const Groups& groups,
                                  typename X::Scalar gamma, typename X::Scalar lambda,
                                  const Eigen::DenseBase<W>& w) {
  detail::plain_of<X> y = x.derived();
  group_l0_prox_inplace(y, groups, gamma, lambda, w);
  return y;
}

}  // namespace sora::prox
