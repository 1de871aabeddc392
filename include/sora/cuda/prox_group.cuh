#pragma once
// CUDA twins of prox/group.hpp and prox/triplet.hpp: group soft threshold (group lasso),
// group hard threshold and group L0 prox over rows, columns, blocks, explicit partitions and
// rank triplets (row i of A, column i of B, g_i), in place and out of place, with optional
// per-group weights. Same rules as the CPU: a group with norm <= threshold becomes exactly 0
// (zero-norm groups stay 0, no 0/0), a kept group with factor 1 is not written, a NaN in a
// group makes soft turn it NaN and hard/L0 keep it.
//
// How each kind runs:
//   rows, blocks (contiguous)   one pass: each group is read once into registers by a
//                               sub-warp (short groups) or a whole block (long ones), its
//                               norm reduced there, then scaled and stored -- 8 bytes/element
//                               for fp32, like a copy. Groups too long for the registers
//                               are re-read, mostly from L2.
//   columns of row-major        three passes (column sums of squares by chunk, factors,
//                               scale): each column is spread over the whole tensor, so no
//                               group is in cache when its norm is known (12 bytes/element).
//   partitions, strided blocks  a warp per group gathers its norm and scatters the scale.
//   triplets                    row norms of A, column norms of B, g, then one scale pass each.
// Norms accumulate in the compute type (float for float and bf16, double for double), in a
// fixed order for every group kind (no atomics), so a run's verdicts do not vary.

#include <vector>

#include "sora/cuda/kernels.cuh"
#include "sora/prox/group.hpp"
#include "sora/prox/triplet.hpp"

namespace sora::cuda::prox {

// A group descriptor usable on the device: rows, cols and blocks carry only their parameters;
// a partition's CSR arrays are uploaded once here (build it once, reuse it every step).
class DeviceGroups {
 public:
  DeviceGroups(const sora::prox::Groups& groups)  // NOLINT: implicit, so a Groups can be passed
      : host_(groups) {
    if (groups.kind() == sora::prox::Groups::Kind::Partition) {
      offsets_ = upload_indices(groups.offsets());
      indices_ = upload_indices(groups.indices());
    }
  }
  const sora::prox::Groups& host() const { return host_; }
  sora::prox::Groups::Kind kind() const { return host_.kind(); }
  Index count(Index rows, Index cols, const char* op) const { return host_.count(rows, cols, op); }
  const Index* offsets() const { return offsets_.data(); }
  const Index* indices() const { return indices_.data(); }

 private:
  static DeviceTensor<Index> upload_indices(const std::vector<Index>& v) {
    DeviceTensor<Index> t(1, static_cast<Index>(v.size()));
    if (!v.empty()) {
      // On the context's stream, so that ops queued there (on any stream set with
      // set_stream) see the table; from pageable memory the call returns once v is staged.
      SORA_CUDA_CHECK(cudaMemcpyAsync(t.data(), v.data(), v.size() * sizeof(Index),
                                      cudaMemcpyHostToDevice, context().stream()));
    }
    return t;
  }

  sora::prox::Groups host_;
  DeviceTensor<Index> offsets_;
  DeviceTensor<Index> indices_;
};

namespace detail {

using namespace ::sora::cuda::detail;
namespace pd = ::sora::prox::detail;

inline constexpr int kCachePacks = 4;  // packs per thread held in registers by the line kernel

// Threshold of group g: scale, scale w_g, or scale sqrt(w_g) (the L0 cut-off sqrt(2γλ w_g)).
template <class T>
struct Thr {
  compute_t<T> scale;
  const T* w = nullptr;
  Index inc = 1;
  bool sqrt_w = false;
  __device__ compute_t<T> operator()(Index g) const {
    if (w == nullptr) return scale;
    const compute_t<T> wg = to_compute(w[g * inc]);
    return scale * (sqrt_w ? sqrt(wg) : wg);
  }
};

template <class C>
__device__ inline C factor(bool shrink, C norm, C thr) {
  if (norm <= thr) return C(0);
  return shrink ? C(1) - thr / norm : C(1);
}

// x * f with the CPU's conventions: f == 0 stores +0 (not x * 0 = -0 for negative x).
template <class T>
__device__ inline T scaled(T v, compute_t<T> f) {
  return f == compute_t<T>(0) ? from_compute<T>(compute_t<T>(0))
                              : from_compute<T>(to_compute(v) * f);
}

template <class T, int N>
__device__ inline compute_t<T> sumsq(const Pack<T, N>& p) {
  compute_t<T> s = 0;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const compute_t<T> e = to_compute(p.v[k]);
    s += e * e;
  }
  return s;
}

// G lines of L elements, line g at x + g * ld, each handled by TPG threads (a sub-warp or the
// whole block). N = elements per load (the pack, or 1 where alignment does not allow it).
// With n2_out set, only the squared norms are written (triplets combine them with B and g).
template <class T, int TPG, int N>
__global__ void __launch_bounds__(kThreads)
    lines_kernel(T* x, Index G, Index L, Index ld, bool shrink, Thr<T> thr, compute_t<T>* n2_out) {
  using C = compute_t<T>;
  using P = Pack<T, N>;
  constexpr int kGroupsPerBlock = kThreads / TPG;
  const int lane = static_cast<int>(threadIdx.x) % TPG;
  const int sub = static_cast<int>(threadIdx.x) / TPG;
  const Index units = L / N;
  const bool cached = units <= Index(TPG) * kCachePacks;
  // The loop bound is uniform over the block so that every thread reaches every reduction.
  for (Index base = Index(blockIdx.x) * kGroupsPerBlock; base < G;
       base += Index(gridDim.x) * kGroupsPerBlock) {
    const Index g = base + sub;
    const bool active = g < G;
    P* line = reinterpret_cast<P*>(x + (active ? g : 0) * ld);
    P cache[kCachePacks];
    C acc = 0;
    if (active) {
      if (cached) {
#pragma unroll
        for (int k = 0; k < kCachePacks; ++k) {
          const Index u = lane + Index(k) * TPG;
          if (u < units) {
            cache[k] = line[u];
            acc += sumsq(cache[k]);
          }
        }
      } else {
        for (Index u = lane; u < units; u += TPG) acc += sumsq(line[u]);
      }
    }
    const C n2 = group_sum<TPG>(acc);
    if (!active) continue;
    if (n2_out != nullptr) {
      if (lane == 0) n2_out[g] = n2;
      continue;
    }
    const C f = factor(shrink, sqrt(n2), thr(g));
    if (f == C(1)) continue;
    if (cached) {
#pragma unroll
      for (int k = 0; k < kCachePacks; ++k) {
        const Index u = lane + Index(k) * TPG;
        if (u < units) {
          P p = cache[k];
#pragma unroll
          for (int e = 0; e < N; ++e) p.v[e] = scaled(p.v[e], f);
          line[u] = p;
        }
      }
    } else {
      for (Index u = lane; u < units; u += TPG) {
        P p = line[u];
#pragma unroll
        for (int e = 0; e < N; ++e) p.v[e] = scaled(p.v[e], f);
        line[u] = p;
      }
    }
  }
}

template <class T, int N>
void launch_lines_n(T* x, Index G, Index L, Index ld, bool shrink, const Thr<T>& thr,
                    compute_t<T>* n2_out, cudaStream_t s) {
  const Index units = L / N;
  // The smallest group width that holds a line in registers; a block for long lines.
  if (units <= 8 * kCachePacks) {
    lines_kernel<T, 8, N><<<grid_for(G * 8), kThreads, 0, s>>>(x, G, L, ld, shrink, thr, n2_out);
  } else if (units <= 32 * kCachePacks) {
    lines_kernel<T, 32, N><<<grid_for(G * 32), kThreads, 0, s>>>(x, G, L, ld, shrink, thr, n2_out);
  } else {
    lines_kernel<T, kThreads, N>
        <<<grid_for(G * kThreads), kThreads, 0, s>>>(x, G, L, ld, shrink, thr, n2_out);
  }
  SORA_CUDA_CHECK_LAUNCH("lines_kernel");
}

template <class T>
void launch_lines(T* x, Index G, Index L, Index ld, bool shrink, const Thr<T>& thr,
                  compute_t<T>* n2_out, cudaStream_t s) {
  if (G == 0 || L == 0) return;
  constexpr int N = kPack<T>;
  if (aligned16(x) && L % N == 0 && ld % N == 0) {
    launch_lines_n<T, N>(x, G, L, ld, shrink, thr, n2_out, s);
  } else {
    launch_lines_n<T, 1>(x, G, L, ld, shrink, thr, n2_out, s);
  }
}

// n2[c] += Σ_r x(r, c)², in a fixed order. Each block sums a chunk of kColRows rows per
// column into its own slot of `partial` (chunks, cols), then one thread per column adds the
// chunks in chunk order. Float addition is not associative: with atomics the chunks were
// added in scheduling order, so a column whose norm is at the threshold (a rank exactly at
// the cut) could be kept on one run and dropped on the next. Now every run gives the same bits.
inline constexpr int kColRows = 64;

template <class T>
__global__ void __launch_bounds__(kThreads)
    col_sumsq_partial_kernel(ConstView<T> x, compute_t<T>* partial) {
  using C = compute_t<T>;
  const Index c = Index(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= x.cols) return;
  const Index chunks = (x.rows + kColRows - 1) / kColRows;
  for (Index chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const Index r0 = chunk * kColRows;
    const Index r1 = r0 + kColRows < x.rows ? r0 + kColRows : x.rows;
    C acc = 0;
    for (Index r = r0; r < r1; ++r) {
      const C e = to_compute(x.data[r * x.stride + c]);
      acc += e * e;
    }
    partial[chunk * x.cols + c] = acc;
  }
}

template <class C>
__global__ void __launch_bounds__(kThreads)
    col_sumsq_reduce_kernel(const C* partial, Index chunks, Index cols, C* n2) {
  for (Index c = Index(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += Index(gridDim.x) * blockDim.x) {
    C acc = 0;
    for (Index k = 0; k < chunks; ++k) acc += partial[k * cols + c];  // coalesced over c
    n2[c] += acc;
  }
}

template <class T>
void launch_col_sumsq(ConstView<T> x, compute_t<T>* n2, cudaStream_t s) {
  using C = compute_t<T>;
  if (x.empty()) return;
  const Index chunks = (x.rows + kColRows - 1) / kColRows;
  Scratch<C> partial(chunks * x.cols, s);  // (chunks, cols), 1/64 of x; freed in stream order
  const dim3 grid(static_cast<unsigned>((x.cols + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<Index>(chunks, 65535)));
  col_sumsq_partial_kernel<T><<<grid, kThreads, 0, s>>>(x, partial.get());
  SORA_CUDA_CHECK_LAUNCH("col_sumsq_partial_kernel");
  col_sumsq_reduce_kernel<C>
      <<<grid_for(x.cols), kThreads, 0, s>>>(partial.get(), chunks, x.cols, n2);
  SORA_CUDA_CHECK_LAUNCH("col_sumsq_reduce_kernel");
}

// f[g] = factor(sqrt(n2[g] (+ extra[g]²)), thr(g)), in place over n2. With `extra` (the gate
// of a triplet), the extra element is scaled too.
template <class T>
__global__ void factors_kernel(compute_t<T>* n2, Index G, bool shrink, Thr<T> thr, T* extra,
                               Index extra_inc) {
  using C = compute_t<T>;
  for (Index g = Index(blockIdx.x) * blockDim.x + threadIdx.x; g < G;
       g += Index(gridDim.x) * blockDim.x) {
    C v = n2[g];
    if (extra != nullptr) {
      const C e = to_compute(extra[g * extra_inc]);
      v += e * e;
    }
    const C f = factor(shrink, sqrt(v), thr(g));
    n2[g] = f;
    if (extra != nullptr && f != C(1)) extra[g * extra_inc] = scaled(extra[g * extra_inc], f);
  }
}

enum class Axis { Row, Col };

// x(r, c) *= f[r] (Row) or f[c] (Col), skipping factors of exactly 1.
template <class T>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(DeviceView<T> x, const compute_t<T>* f, Axis axis) {
  using C = compute_t<T>;
  const Index n = x.size();
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / x.cols, c = i % x.cols;
    const C fi = f[axis == Axis::Row ? r : c];
    if (fi != C(1)) {
      T& e = x.data[r * x.stride + c];
      e = scaled(e, fi);
    }
  }
}

// Column scaling of contiguous, aligned row-major storage with pack loads (the third pass of
// column groups): the column of a pack's first element is computed once per pack.
template <class T>
__global__ void __launch_bounds__(kThreads)
    scale_cols_pack_kernel(T* x, Index n, Index cols, const compute_t<T>* f) {
  constexpr int N = kPack<T>;
  using P = Pack<T, N>;
  P* xp = reinterpret_cast<P*>(x);
  const Index packs = n / N;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += Index(gridDim.x) * blockDim.x) {
    P p = xp[i];
    const Index c0 = (i * N) % cols;
#pragma unroll
    for (int k = 0; k < N; ++k) p.v[k] = scaled(p.v[k], f[c0 + k]);
    xp[i] = p;
  }
}

template <class T>
void launch_scale(DeviceView<T> x, const compute_t<T>* f, Axis axis, cudaStream_t s) {
  if (x.empty()) return;
  constexpr int N = kPack<T>;
  if (axis == Axis::Col && x.contiguous() && x.cols % N == 0 && aligned16(x.data)) {
    scale_cols_pack_kernel<T>
        <<<grid_for(x.size() / N), kThreads, 0, s>>>(x.data, x.size(), x.cols, f);
    SORA_CUDA_CHECK_LAUNCH("scale_cols_pack_kernel");
  } else {
    scale_kernel<T><<<grid_for(x.size()), kThreads, 0, s>>>(x, f, axis);
    SORA_CUDA_CHECK_LAUNCH("scale_kernel");
  }
}

// Groups given by flat row-major indices (partitions; blocks of strided views): a warp per
// group gathers the norm, then scatters the scale.
struct PartitionMap {
  const Index* off;
  const Index* idx;
  __device__ Index begin(Index g) const { return off[g]; }
  __device__ Index end(Index g) const { return off[g + 1]; }
  __device__ Index flat(Index p) const { return idx[p]; }
};
struct BlockMap {
  Index b;
  __device__ Index begin(Index g) const { return g * b; }
  __device__ Index end(Index g) const { return (g + 1) * b; }
  __device__ Index flat(Index p) const { return p; }
};

template <class T, class Map>
__global__ void __launch_bounds__(kThreads)
    mapped_groups_kernel(DeviceView<T> x, Index G, Map map, bool shrink, Thr<T> thr) {
  using C = compute_t<T>;
  constexpr int kWarps = kThreads / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  for (Index base = Index(blockIdx.x) * kWarps; base < G; base += Index(gridDim.x) * kWarps) {
    const Index g = base + static_cast<Index>(threadIdx.x) / 32;
    if (g >= G) break;  // whole warps leave together: g is uniform over a warp
    const Index b = map.begin(g), e = map.end(g);
    C acc = 0;
    for (Index p = b + lane; p < e; p += 32) {
      const Index flat = map.flat(p);
      const C v = to_compute(x.data[(flat / x.cols) * x.stride + flat % x.cols]);
      acc += v * v;
    }
    const C n2 = warp_sum(acc);
    const C f = factor(shrink, sqrt(n2), thr(g));
    if (f == C(1)) continue;
    for (Index p = b + lane; p < e; p += 32) {
      const Index flat = map.flat(p);
      T& v = x.data[(flat / x.cols) * x.stride + flat % x.cols];
      v = scaled(v, f);
    }
  }
}

template <class T, class Map>
void launch_mapped(DeviceView<T> x, Index G, const Map& map, bool shrink, const Thr<T>& thr,
                   cudaStream_t s) {
  if (G == 0) return;
  mapped_groups_kernel<T, Map><<<grid_for(G * 32), kThreads, 0, s>>>(x, G, map, shrink, thr);
  SORA_CUDA_CHECK_LAUNCH("mapped_groups_kernel");
}

template <class T>
void group_apply(DeviceView<T> x, const DeviceGroups& groups, Index G, bool shrink,
                 const Thr<T>& thr, cudaStream_t s) {
  using Kind = sora::prox::Groups::Kind;
  using C = compute_t<T>;
  if (x.empty()) return;
  switch (groups.kind()) {
    case Kind::Rows:
      launch_lines(x.data, G, x.cols, x.stride, shrink, thr, static_cast<C*>(nullptr), s);
      return;
    case Kind::Cols:
      if (x.rows == 1) {  // every column is one element: lines of length 1
        launch_lines(x.data, G, Index(1), Index(1), shrink, thr, static_cast<C*>(nullptr), s);
        return;
      }
      {
        Scratch<C> f(G, s);
        f.zero();
        launch_col_sumsq(ConstView<T>(x), f.get(), s);
        factors_kernel<T><<<grid_for(G), kThreads, 0, s>>>(f.get(), G, shrink, thr, nullptr, 0);
        SORA_CUDA_CHECK_LAUNCH("factors_kernel");
        launch_scale(x, f.get(), Axis::Col, s);
      }
      return;
    case Kind::Blocks: {
      const Index b = groups.host().block_size();
      if (x.contiguous()) {
        launch_lines(x.data, G, b, b, shrink, thr, static_cast<C*>(nullptr), s);
      } else {
        launch_mapped(x, G, BlockMap{b}, shrink, thr, s);
      }
      return;
    }
    case Kind::Partition:
      launch_mapped(x, G, PartitionMap{groups.offsets(), groups.indices()}, shrink, thr, s);
      return;
  }
}

template <class T>
Thr<T> make_thr(const char* op, compute_t<T> scale, bool sqrt_w, ConstView<T> w, Index G,
                cudaStream_t s) {
  Thr<T> thr{scale, nullptr, 1, sqrt_w};
  SORA_CHECK((w.rows == 1 || w.cols == 1 || w.size() == 0) && w.size() == G, op,
             ": group weights have shape ", shape_str(w.rows, w.cols), " but there are ", G,
             " groups (expected a vector of ", G, ")");
  SORA_CHECK(all_valid(w, false, s), op, ": weights must be finite and >= 0");
  thr.w = w.data;
  thr.inc = (w.cols == 1 && w.rows > 1) ? w.stride : 1;
  return thr;
}

template <class T>
void run_group(const char* op, DeviceView<T> x, const DeviceGroups& groups, bool shrink,
               compute_t<T> thr, cudaStream_t s) {
  const Index G = groups.count(x.rows, x.cols, op);
  group_apply(x, groups, G, shrink, Thr<T>{thr, nullptr, 1, false}, s);
}

template <class T>
void run_group_w(const char* op, DeviceView<T> x, const DeviceGroups& groups, bool shrink,
                 compute_t<T> scale, bool sqrt_w, ConstView<T> w, cudaStream_t s) {
  const Index G = groups.count(x.rows, x.cols, op);
  group_apply(x, groups, G, shrink, make_thr(op, scale, sqrt_w, w, G, s), s);
}

// Triplets: A (R, in), B (out, R), g (R).
template <class T>
void run_triplets(const char* op, DeviceView<T> a, DeviceView<T> b, DeviceView<T> g, bool shrink,
                  compute_t<T> scale, bool sqrt_w, const ConstView<T>* w, cudaStream_t s) {
  using C = compute_t<T>;
  const Index R = a.rows;
  SORA_CHECK(b.cols == R, op, ": B (out, R) has shape ", shape_str(b.rows, b.cols),
             " but A (R, in) has ", shape_str(a.rows, a.cols), "; B must have ", R, " columns");
  SORA_CHECK((g.rows == 1 || g.cols == 1 || g.size() == 0) && g.size() == R, op,
             ": gate g has shape ", shape_str(g.rows, g.cols), " but A (R, in) has ",
             shape_str(a.rows, a.cols), "; g must be a vector of ", R);
  const Thr<T> thr =
      w != nullptr ? make_thr(op, scale, sqrt_w, *w, R, s) : Thr<T>{scale, nullptr, 1, false};
  if (R == 0) return;
  Scratch<C> f(R, s);
  f.zero();
  if (a.cols > 0) launch_lines(a.data, R, a.cols, a.stride, shrink, thr, f.get(), s);
  // A's row norms were written (not added) above; B's column norms add onto them.
  launch_col_sumsq(ConstView<T>(b), f.get(), s);
  const Index g_inc = (g.cols == 1 && g.rows > 1) ? g.stride : 1;
  factors_kernel<T><<<grid_for(R), kThreads, 0, s>>>(f.get(), R, shrink, thr, g.data, g_inc);
  SORA_CUDA_CHECK_LAUNCH("factors_kernel");
  launch_scale(a, f.get(), Axis::Row, s);
  launch_scale(b, f.get(), Axis::Col, s);
}

template <class X>
DeviceTensor<scalar_t<X>> copy_like(const X& x, cudaStream_t s) {
  return DeviceTensor<scalar_t<X>>::copy_of(cview_of(x), s);
}

}  // namespace detail

// --- group soft threshold (group lasso): x_g max(0, 1 - τ w_g / ||x_g||) ----------------------
template <DeviceArg X>
void group_soft_threshold_inplace(X&& x, const DeviceGroups& groups, arg_t<X> tau,
                                  cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_soft_threshold", "tau", tau);
  detail::run_group<scalar_t<X>>("group_soft_threshold", view_of(x), groups, true, tau, s);
}
template <DeviceArg X, DeviceArg W>
void group_soft_threshold_inplace(X&& x, const DeviceGroups& groups, arg_t<X> tau, const W& w,
                                  cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_soft_threshold", "tau", tau);
  detail::run_group_w<scalar_t<X>>("group_soft_threshold", view_of(x), groups, true, tau, false,
                                   cview_of(w), s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> group_soft_threshold(const X& x, const DeviceGroups& groups, arg_t<X> tau,
                                               cudaStream_t s = context().stream()) {
  auto y = detail::copy_like(x, s);
  group_soft_threshold_inplace(y, groups, tau, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> group_soft_threshold(const X& x, const DeviceGroups& groups, arg_t<X> tau,
                                               const W& w, cudaStream_t s = context().stream()) {
  auto y = detail::copy_like(x, s);
  group_soft_threshold_inplace(y, groups, tau, w, s);
  return y;
}

// --- group L2,1 prox: group soft threshold at γλ --------------------------------------------
template <DeviceArg X>
void group_l21_prox_inplace(X&& x, const DeviceGroups& groups, arg_t<X> gamma, arg_t<X> lambda,
                            cudaStream_t s = context().stream()) {
  detail::pd::check_positive("group_l21_prox", "gamma", gamma);
  detail::pd::check_threshold("group_l21_prox", "lambda", lambda);
  detail::run_group<scalar_t<X>>("group_l21_prox", view_of(x), groups, true, gamma * lambda, s);
}
template <DeviceArg X, DeviceArg W>
void group_l21_prox_inplace(X&& x, const DeviceGroups& groups, arg_t<X> gamma, arg_t<X> lambda,
                            const W& w, cudaStream_t s = context().stream()) {
  detail::pd::check_positive("group_l21_prox", "gamma", gamma);
  detail::pd::check_threshold("group_l21_prox", "lambda", lambda);
  detail::run_group_w<scalar_t<X>>("group_l21_prox", view_of(x), groups, true, gamma * lambda,
                                   false, cview_of(w), s);
}

// --- group hard threshold: keep x_g iff ||x_g|| > τ w_g ---------------------------------------
template <DeviceArg X>
void group_hard_threshold_inplace(X&& x, const DeviceGroups& groups, arg_t<X> tau,
                                  cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_hard_threshold", "tau", tau);
  detail::run_group<scalar_t<X>>("group_hard_threshold", view_of(x), groups, false, tau, s);
}
template <DeviceArg X, DeviceArg W>
void group_hard_threshold_inplace(X&& x, const DeviceGroups& groups, arg_t<X> tau, const W& w,
                                  cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_hard_threshold", "tau", tau);
  detail::run_group_w<scalar_t<X>>("group_hard_threshold", view_of(x), groups, false, tau, false,
                                   cview_of(w), s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> group_hard_threshold(const X& x, const DeviceGroups& groups, arg_t<X> tau,
                                               cudaStream_t s = context().stream()) {
  auto y = detail::copy_like(x, s);
  group_hard_threshold_inplace(y, groups, tau, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> group_hard_threshold(const X& x, const DeviceGroups& groups, arg_t<X> tau,
                                               const W& w, cudaStream_t s = context().stream()) {
  auto y = detail::copy_like(x, s);
  group_hard_threshold_inplace(y, groups, tau, w, s);
  return y;
}

// --- group L0 prox: keep x_g iff ||x_g|| > sqrt(2γλ w_g) --------------------------------------
template <DeviceArg X>
void group_l0_prox_inplace(X&& x, const DeviceGroups& groups, arg_t<X> gamma, arg_t<X> lambda,
                           cudaStream_t s = context().stream()) {
  const auto cut = detail::pd::l0_cutoff("group_l0_prox", gamma, lambda);
  detail::run_group<scalar_t<X>>("group_l0_prox", view_of(x), groups, false, cut, s);
}
template <DeviceArg X, DeviceArg W>
void group_l0_prox_inplace(X&& x, const DeviceGroups& groups, arg_t<X> gamma, arg_t<X> lambda,
                           const W& w, cudaStream_t s = context().stream()) {
  const auto cut = detail::pd::l0_cutoff("group_l0_prox", gamma, lambda);
  detail::run_group_w<scalar_t<X>>("group_l0_prox", view_of(x), groups, false, cut, true,
                                   cview_of(w), s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> group_l0_prox(const X& x, const DeviceGroups& groups, arg_t<X> gamma,
                                        arg_t<X> lambda, cudaStream_t s = context().stream()) {
  auto y = detail::copy_like(x, s);
  group_l0_prox_inplace(y, groups, gamma, lambda, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> group_l0_prox(const X& x, const DeviceGroups& groups, arg_t<X> gamma,
                                        arg_t<X> lambda, const W& w,
                                        cudaStream_t s = context().stream()) {
  auto y = detail::copy_like(x, s);
  group_l0_prox_inplace(y, groups, gamma, lambda, w, s);
  return y;
}

// --- rank triplets (row i of A, column i of B, g_i) ------------------------------------------
template <DeviceArg A, DeviceArg B, DeviceArg G>
void group_soft_threshold_triplets_inplace(A&& a, B&& b, G&& g, arg_t<A> tau,
                                           cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_soft_threshold_triplets", "tau", tau);
  detail::run_triplets<scalar_t<A>>("group_soft_threshold_triplets", view_of(a), view_of(b),
                                    view_of(g), true, tau, false, nullptr, s);
}
template <DeviceArg A, DeviceArg B, DeviceArg G, DeviceArg W>
void group_soft_threshold_triplets_inplace(A&& a, B&& b, G&& g, arg_t<A> tau, const W& w,
                                           cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_soft_threshold_triplets", "tau", tau);
  const ConstView<scalar_t<A>> wv = cview_of(w);
  detail::run_triplets<scalar_t<A>>("group_soft_threshold_triplets", view_of(a), view_of(b),
                                    view_of(g), true, tau, false, &wv, s);
}
template <DeviceArg A, DeviceArg B, DeviceArg G>
void group_hard_threshold_triplets_inplace(A&& a, B&& b, G&& g, arg_t<A> tau,
                                           cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_hard_threshold_triplets", "tau", tau);
  detail::run_triplets<scalar_t<A>>("group_hard_threshold_triplets", view_of(a), view_of(b),
                                    view_of(g), false, tau, false, nullptr, s);
}
template <DeviceArg A, DeviceArg B, DeviceArg G, DeviceArg W>
void group_hard_threshold_triplets_inplace(A&& a, B&& b, G&& g, arg_t<A> tau, const W& w,
                                           cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("group_hard_threshold_triplets", "tau", tau);
  const ConstView<scalar_t<A>> wv = cview_of(w);
  detail::run_triplets<scalar_t<A>>("group_hard_threshold_triplets", view_of(a), view_of(b),
                                    view_of(g), false, tau, false, &wv, s);
}
template <DeviceArg A, DeviceArg B, DeviceArg G>
void group_l0_prox_triplets_inplace(A&& a, B&& b, G&& g, arg_t<A> gamma, arg_t<A> lambda,
                                    cudaStream_t s = context().stream()) {
  const auto cut = detail::pd::l0_cutoff("group_l0_prox_triplets", gamma, lambda);
  detail::run_triplets<scalar_t<A>>("group_l0_prox_triplets", view_of(a), view_of(b), view_of(g),
                                    false, cut, false, nullptr, s);
}
template <DeviceArg A, DeviceArg B, DeviceArg G, DeviceArg W>
void group_l0_prox_triplets_inplace(A&& a, B&& b, G&& g, arg_t<A> gamma, arg_t<A> lambda,
                                    const W& w, cudaStream_t s = context().stream()) {
  const auto cut = detail::pd::l0_cutoff("group_l0_prox_triplets", gamma, lambda);
  const ConstView<scalar_t<A>> wv = cview_of(w);
  detail::run_triplets<scalar_t<A>>("group_l0_prox_triplets", view_of(a), view_of(b), view_of(g),
                                    false, cut, true, &wv, s);
}

}  // namespace sora::cuda::prox
