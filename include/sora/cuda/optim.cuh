#pragma once
// CUDA twins of optim/adamw.hpp and optim/sparse_adamw.hpp, fused: one pass over parameter,
// gradient and both moments does the AdamW update and, for gates, the proximal step, so each
// element is read and written once (fp32: 16 bytes read, 12 written).
//   adamw_step(p, g, m, v, scalars, weight_decay)                    any trainable tensor
//   sparse_adamw_step(p, g, m, v, scalars, threshold, official)      one gate tensor
//   GateBatch                                                        every gate of the model
//                                                                    in ONE launch per step
// The step's scalars come from sora::optim::adamw_scalars (computed once on the host, in
// double), the same ones the CPU optimizers use; the threshold is the CPU SparseAdamW's
// threshold() (ξ, or ξ lr). Results match the CPU up to FMA contraction.
//
// Why GateBatch: a SoRA model has one gate of r (~8) elements per adapted module (six per
// block), so a per-module step is dozens of launches each moving a few bytes; launch latency
// is the whole cost. GateBatch uploads the table of gate tensors once and steps all of them
// with one kernel whose scalars are plain launch arguments (nothing is copied per step).

#include <algorithm>
#include <type_traits>
#include <vector>

#include "sora/cuda/kernels.cuh"
#include "sora/optim/adamw.hpp"
#include "sora/optim/sparse_adamw.hpp"

namespace sora::cuda::optim {

using sora::optim::AdamWScalars;

namespace detail {

using namespace ::sora::cuda::detail;

// The step's scalars in T, passed by value to every kernel.
template <class T>
struct StepArgs {
  T b1, b2, c1, c2, step_size, inv_sqrt_bc2, eps;
  T decay;      // 1 - lr wd (1: no decay)
  T threshold;  // proximal threshold; 0: none
  bool official;
};

template <class T>
StepArgs<T> step_args(const AdamWScalars& s, double weight_decay, double threshold, bool official) {
  StepArgs<T> a;
  a.b1 = static_cast<T>(s.beta1);
  a.b2 = static_cast<T>(s.beta2);
  a.c1 = static_cast<T>(1.0 - s.beta1);
  a.c2 = static_cast<T>(1.0 - s.beta2);
  a.step_size = static_cast<T>(s.step_size);
  a.inv_sqrt_bc2 = static_cast<T>(s.inv_sqrt_bc2);
  a.eps = static_cast<T>(s.eps);
  a.decay = static_cast<T>(1.0 - s.lr * weight_decay);
  a.threshold = static_cast<T>(threshold);
  a.official = official;
  return a;
}

// One element: decoupled decay, moments, update, then the gate's proximal step. The order
// of operations is the CPU's (optim/adamw.hpp detail::adamw_update, sparse_adamw.hpp).
template <class T>
__device__ inline void adam_element(T& p, T g, T& m, T& v, const StepArgs<T>& a, bool decay,
                                    bool prox) {
  if (decay) p *= a.decay;
  m = a.b1 * m + a.c1 * g;
  v = a.b2 * v + a.c2 * (g * g);
  p -= a.step_size * m / (sqrt(v) * a.inv_sqrt_bc2 + a.eps);
  if (prox) {
    const T t = a.threshold;
    if (a.official) {  // the official code's three masked updates (zeros |p| < 2ξ)
      if (p > t) p -= t;
      if (p < -t) p += t;
      if ((p < T(0) ? -p : p) < t) p = T(0);
    } else {  // soft threshold in clamp form, |p| == t gives 0
      p = p - (p < -t ? -t : (p > t ? t : p));
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    adam_pack_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                     T* __restrict__ v, Index n, StepArgs<T> a, bool decay, bool prox) {
  constexpr int N = kPack<T>;
  using P = Pack<T, N>;
  const Index packs = n / N;
  const Index tid = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  const Index nthreads = Index(gridDim.x) * blockDim.x;
  for (Index i = tid; i < packs; i += nthreads) {
    P pp = reinterpret_cast<const P*>(p)[i];
    const P gg = reinterpret_cast<const P*>(g)[i];
    P mm = reinterpret_cast<const P*>(m)[i];
    P vv = reinterpret_cast<const P*>(v)[i];
#pragma unroll
    for (int k = 0; k < N; ++k) adam_element(pp.v[k], gg.v[k], mm.v[k], vv.v[k], a, decay, prox);
    reinterpret_cast<P*>(p)[i] = pp;
    reinterpret_cast<P*>(m)[i] = mm;
    reinterpret_cast<P*>(v)[i] = vv;
  }
  for (Index j = packs * N + tid; j < n; j += nthreads)
    adam_element(p[j], g[j], m[j], v[j], a, decay, prox);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    adam_scalar_kernel(T* p, const T* g, T* m, T* v, Index n, StepArgs<T> a, bool decay,
                       bool prox) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    adam_element(p[i], g[i], m[i], v[i], a, decay, prox);
  }
}

template <class T>
void run_adam(const char* op, DeviceView<T> p, ConstView<T> g, DeviceView<T> m, DeviceView<T> v,
              const StepArgs<T>& a, bool decay, bool prox, cudaStream_t s) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the fused optimizer steps keep fp32 or fp64 parameters and moments");
  check_same_shape(op, "the gradient", ConstView<T>(p), g);
  check_same_shape(op, "the first moment", ConstView<T>(p), m);
  check_same_shape(op, "the second moment", ConstView<T>(p), v);
  SORA_CHECK(p.contiguous() && g.contiguous() && m.contiguous() && v.contiguous(), op,
             ": parameter, gradient and moments must be contiguous device tensors");
  const Index n = p.size();
  if (n == 0) return;
  if (aligned16(p.data) && aligned16(g.data) && aligned16(m.data) && aligned16(v.data)) {
    adam_pack_kernel<T><<<grid_for(n / kPack<T> + 1), kThreads, 0, s>>>(p.data, g.data, m.data,
                                                                        v.data, n, a, decay, prox);
    SORA_CUDA_CHECK_LAUNCH("adam_pack_kernel");
  } else {
    adam_scalar_kernel<T>
        <<<grid_for(n), kThreads, 0, s>>>(p.data, g.data, m.data, v.data, n, a, decay, prox);
    SORA_CUDA_CHECK_LAUNCH("adam_scalar_kernel");
  }
}

template <class T>
struct GateSlot {
  T* p;
  const T* g;
  T* m;
  T* v;
};

// Element i of the concatenation of all gates: find its tensor by binary search over the
// offsets (a few dozen entries, cached), then step it.
template <class T>
__global__ void __launch_bounds__(kThreads)
    gate_batch_kernel(const GateSlot<T>* slots, const Index* offsets, Index count, Index total,
                      StepArgs<T> a, bool prox) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += Index(gridDim.x) * blockDim.x) {
    Index lo = 0, hi = count;  // offsets[lo] <= i < offsets[hi]
    while (hi - lo > 1) {
      const Index mid = (lo + hi) / 2;
      if (offsets[mid] <= i) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const GateSlot<T> sl = slots[lo];
    const Index j = i - offsets[lo];
    adam_element(sl.p[j], sl.g[j], sl.m[j], sl.v[j], a, false, prox);
  }
}

inline void check_threshold(const char* op, double t) {
  SORA_CHECK(std::isfinite(t) && t >= 0.0, op, ": threshold must be finite and >= 0, got ", t);
}

}  // namespace detail

// One fused AdamW step of p with gradient g and moments m, v (all of p's shape), decoupled
// weight decay `weight_decay` (0 for biases and LayerNorms).
template <DeviceArg P, DeviceArg G, DeviceArg M, DeviceArg V>
void adamw_step(P&& p, const G& g, M&& m, V&& v, const AdamWScalars& scalars, double weight_decay,
                cudaStream_t s = context().stream()) {
  using T = scalar_t<P>;
  SORA_CHECK(std::isfinite(weight_decay) && weight_decay >= 0.0,
             "cuda::adamw_step: weight_decay must be finite and >= 0, got ", weight_decay);
  detail::run_adam<T>("cuda::adamw_step", view_of(p), cview_of(g), view_of(m), view_of(v),
                      detail::step_args<T>(scalars, weight_decay, 0.0, false), weight_decay != 0.0,
                      false, s);
}

// One fused SparseAdamW step of a gate: AdamW without decay, then the proximal step at
// `threshold` (soft threshold, or the official code's masked updates).
template <DeviceArg P, DeviceArg G, DeviceArg M, DeviceArg V>
void sparse_adamw_step(P&& p, const G& g, M&& m, V&& v, const AdamWScalars& scalars,
                       double threshold, bool official_compat = false,
                       cudaStream_t s = context().stream()) {
  using T = scalar_t<P>;
  detail::check_threshold("cuda::sparse_adamw_step", threshold);
  detail::run_adam<T>("cuda::sparse_adamw_step", view_of(p), cview_of(g), view_of(m), view_of(v),
                      detail::step_args<T>(scalars, 0.0, threshold, official_compat), false,
                      threshold > 0.0, s);
}

// The gates of every adapted module, stepped together in one launch. The tensors must
// outlive the batch (it keeps their device addresses); rebuild it after pruning.
template <class T>
class GateBatch {
 public:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "gates are kept in fp32 or fp64");
  struct Entry {
    DeviceView<T> p;  // gate values
    ConstView<T> g;   // gradient
    DeviceView<T> m;  // first moment
    DeviceView<T> v;  // second moment
  };

  GateBatch() = default;
  explicit GateBatch(const std::vector<Entry>& entries) {
    std::vector<Slot> slots;
    slots.reserve(entries.size());
    std::vector<Index> offsets(1, 0);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const Entry& e = entries[i];
      const auto label = [&] { return sora::detail::concat("GateBatch: gate ", i); };
      sora::cuda::detail::check_same_shape(label().c_str(), "the gradient", ConstView<T>(e.p), e.g);
      sora::cuda::detail::check_same_shape(label().c_str(), "the first moment", ConstView<T>(e.p),
                                           ConstView<T>(e.m));
      sora::cuda::detail::check_same_shape(label().c_str(), "the second moment", ConstView<T>(e.p),
                                           ConstView<T>(e.v));
      SORA_CHECK(e.p.contiguous() && e.g.contiguous() && e.m.contiguous() && e.v.contiguous(),
                 label(), ": gate tensors must be contiguous");
      if (e.p.size() == 0) continue;  // a rank-0 module has no gate left to step
      slots.push_back(Slot{e.p.data, e.g.data, e.m.data, e.v.data});
      offsets.push_back(offsets.back() + e.p.size());
    }
    count_ = static_cast<Index>(slots.size());
    total_ = offsets.back();
    if (count_ > 0) {
      slots_ = DeviceBuffer(slots.size() * sizeof(Slot));
      offsets_ = DeviceBuffer(offsets.size() * sizeof(Index));
      // On the context's stream, ordered before the steps queued there (a blocking cudaMemcpy
      // runs on the legacy stream, which a non-blocking stream does not wait for). From
      // pageable memory the calls return once the host tables are staged, so the vectors
      // may go out of scope.
      cudaStream_t s = context().stream();
      SORA_CUDA_CHECK(cudaMemcpyAsync(slots_.get(), slots.data(), slots.size() * sizeof(Slot),
                                      cudaMemcpyHostToDevice, s));
      SORA_CUDA_CHECK(cudaMemcpyAsync(offsets_.get(), offsets.data(),
                                      offsets.size() * sizeof(Index), cudaMemcpyHostToDevice, s));
    }
  }

  Index tensors() const { return count_; }
  Index elements() const { return total_; }

  // One SparseAdamW step of every gate: one kernel launch, no host-device copies.
  void step(const AdamWScalars& scalars, double threshold, bool official_compat = false,
            cudaStream_t s = context().stream()) const {
    detail::check_threshold("GateBatch::step", threshold);
    if (total_ == 0) return;
    const auto a = detail::step_args<T>(scalars, 0.0, threshold, official_compat);
    const unsigned grid = sora::cuda::detail::grid_for(total_);
    detail::gate_batch_kernel<T><<<grid, sora::cuda::detail::kThreads, 0, s>>>(
        static_cast<const Slot*>(slots_.get()), static_cast<const Index*>(offsets_.get()), count_,
        total_, a, threshold > 0.0);
    SORA_CUDA_CHECK_LAUNCH("gate_batch_kernel");
  }

 private:
  using Slot = detail::GateSlot<T>;

  // Untyped device memory owned by the batch (the tables).
  class DeviceBuffer {
   public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t bytes) { SORA_CUDA_CHECK(cudaMalloc(&p_, bytes)); }
    ~DeviceBuffer() {
      if (p_ != nullptr) (void)cudaFree(p_);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
      if (this != &o) {
        if (p_ != nullptr) (void)cudaFree(p_);
        p_ = std::exchange(o.p_, nullptr);
      }
      return *this;
    }
    void* get() const { return p_; }

   private:
    void* p_ = nullptr;
  };

  DeviceBuffer slots_;
  DeviceBuffer offsets_;
  Index count_ = 0;
  Index total_ = 0;
};

}  // namespace sora::cuda::optim
