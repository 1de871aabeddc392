#pragma once
// AdaLoraOptimizer on the GPU, the device twin of optim/adalora.hpp (read its header for the
// math: importance eq. 8-11, triplet scores eq. 7, the cubic budget eq. 12, PEFT's orthogonal
// regularizer): AdamW over every trainable parameter (no weight decay on vectors), AdaLoRA's
// rank allocation inside step() and the orthogonal regularizer, with the options, phases,
// budget schedule and selection of the CPU optimizer. The module collection, the budgets and
// the selection are the CPU file's own functions, so the two cannot drift apart.
//
// One step, with n AdaLoRA modules:
//   regularizer   two Gram GEMMs per module into one preallocated buffer, ONE kernel for all
//                 2n matrices (M = A Aᵀ - I and N = Bᵀ B - I, their Frobenius norms, then each
//                 matrix scaled by its gradient coefficient w / (n ||M||), 0 at a zero norm),
//                 one accumulating GEMM per trainable A and B (dA += (w/n) M A / ||M||,
//                 dB += (w/n) B N / ||N||), one kernel for the value, which stays on the
//                 device (orth_loss() reads it back)
//   AdamW         one fused kernel per parameter (cuda/optim.cuh adamw_step)
//   importance    one elementwise kernel per trainable A, B and E (eq. 8-10)
//   allocation    on a step that masks: ONE kernel for the b_init triplet scores (eq. 7), their
//                 read-back (the only synchronisation of any step), the CPU's selection
//                 (optim::select_rank_pattern) on the host, the 0/1 mask uploaded, and ONE
//                 kernel zeroing the masked E_i of every module. After the final allocation
//                 that kernel alone re-applies the mask every step (no read-back).
//   clipping      clip_grad_norm: cuda/clip.cuh, as DeviceFineTuneOptimizer
// Every buffer is allocated by the constructor: step() allocates nothing.
//
// The optimizer keeps the model's parameter addresses (device tables of them are uploaded
// once): build it after cuda::copy_model into the model, and rebuild it after the model's
// adapters change (copy_model, pruning), as the CPU optimizer after pruning.
//
// Checkpoints: save_to / load_from exchange the whole state (AdamW moments, step and learning
// rates, the allocator's importance, pattern, finalization and budget, the regularizer's value)
// with a CPU AdaLoraOptimizer built over the CPU twin of the model (cuda::copy_model), which
// io::save_checkpoint / load_checkpoint read and write. The options are each side's own.

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/cuda/backend.cuh"
#include "sora/cuda/clip.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/gate_l1.cuh"  // train::fit on device models finds it with this optimizer
#include "sora/cuda/gemm.cuh"
#include "sora/cuda/kernels.cuh"
#include "sora/cuda/optim.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/optim/adalora.hpp"

namespace sora::cuda {

namespace detail {

// One module as the allocator's kernels see it: its statistics (Ī, Ū) of A (R, C), B (OC, R)
// and E (1, R), its E values, and the global index of its first triplet.
template <class T>
struct AdaLoraModuleSlot {
  const T* sens_A;
  const T* unc_A;
  const T* sens_B;
  const T* unc_B;
  const T* sens_E;
  const T* unc_E;
  T* E;
  Index R, C, OC;
  Index offset;
};

// One (R, R) matrix of the regularizer's Gram buffer.
struct GramSlot {
  Index offset;  // into the buffer
  Index rank;    // R
};

// Eq. 8-10 for one tensor: I = |p g|, Ī <- b1 Ī + c1 I, Ū <- b2 Ū + c2 |I - Ī| (the new Ī),
// with c = 1 - b computed in T as on the CPU.
template <class T>
__global__ void __launch_bounds__(kThreads)
    importance_kernel(const T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sens,
                      T* __restrict__ unc, Index n, T b1, T c1, T b2, T c2) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Index(gridDim.x) * blockDim.x) {
    const T pg = p[i] * g[i];
    const T I = pg < T(0) ? -pg : pg;
    const T s = b1 * sens[i] + c1 * I;
    const T d = I - s;
    sens[i] = s;
    unc[i] = b2 * unc[i] + c2 * (d < T(0) ? -d : d);
  }
}

inline constexpr int kWarpsPerBlock = kThreads / 32;

// Eq. 7 for every triplet of every module, one warp per triplet:
// S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji) with s = Ī ⊙ Ū. The element scores are
// products in T, as on the CPU; their sums are kept in double, in a fixed order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    triplet_score_kernel(const AdaLoraModuleSlot<T>* modules, const int* owner, Index total,
                         T* scores) {
  const Index t = (Index(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (t >= total) return;  // the whole warp: t is the same on its 32 lanes
  const AdaLoraModuleSlot<T> m = modules[owner[t]];
  const Index i = t - m.offset;
  double a = 0.0, b = 0.0;
  for (Index j = lane; j < m.C; j += 32)  // row i of A
    a += static_cast<double>(m.sens_A[i * m.C + j] * m.unc_A[i * m.C + j]);
  for (Index j = lane; j < m.OC; j += 32)  // column i of B
    b += static_cast<double>(m.sens_B[j * m.R + i] * m.unc_B[j * m.R + i]);
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    T s = m.sens_E[i] * m.unc_E[i];
    s += static_cast<T>(a / static_cast<double>(m.C));
    s += static_cast<T>(b / static_cast<double>(m.OC));
    scores[t] = s;
  }
}

// E_i = 0 for every masked triplet (mask 0) of every module.
template <class T>
__global__ void apply_mask_kernel(const AdaLoraModuleSlot<T>* modules, const int* owner,
                                  const T* mask, Index total) {
  for (Index t = Index(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += Index(gridDim.x) * blockDim.x) {
    if (mask[t] != T(0)) continue;
    const AdaLoraModuleSlot<T>& m = modules[owner[t]];
    m.E[t - m.offset] = T(0);
  }
}

// One block per Gram matrix G (A Aᵀ or Bᵀ B, (R, R)): G <- G - I, norms[b] = ||G||_F (the sum
// of squares in double, cast to T as the CPU's M.norm() is), then G <- coef G with the
// gradient's coefficient coef = w / (n ||G||), 0 where the norm is 0 (the CPU skips those).
template <class T>
__global__ void __launch_bounds__(kThreads)
    gram_fixup_kernel(T* gram, const GramSlot* slots, T* norms, double weight, double n) {
  const GramSlot g = slots[blockIdx.x];
  T* M = gram + g.offset;
  const Index RR = g.rank * g.rank;
  double ss = 0.0;
  for (Index e = threadIdx.x; e < RR; e += blockDim.x) {
    T v = M[e];
    if (e / g.rank == e % g.rank) v -= T(1);
    M[e] = v;
    ss += static_cast<double>(v) * static_cast<double>(v);
  }
  ss = group_sum<kThreads>(ss);
  const T norm = static_cast<T>(sqrt(ss));
  const T coef = norm > T(0) ? static_cast<T>(weight / (n * static_cast<double>(norm))) : T(0);
  for (Index e = threadIdx.x; e < RR; e += blockDim.x) M[e] *= coef;  // only this thread's
  if (threadIdx.x == 0) norms[blockIdx.x] = norm;
}

// R = w Σ norms / (2n), summed in double in the CPU's order (A then B, module by module).
template <class T>
__global__ void orth_loss_kernel(const T* norms, int count, double weight, double n, double* loss) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double total = 0.0;
  for (int i = 0; i < count; ++i) total += static_cast<double>(norms[i]);
  loss[0] = weight * total / (2.0 * n);
}

}  // namespace detail

template <class T>
class DeviceAdaLoraOptimizer {
 public:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the AdaLoRA optimizer keeps fp32 or fp64 parameters and state");
  using DeviceParam = Param<T, Cuda>;
  using Module = sora::optim::AdaLoraModule<T, Cuda>;

  // AdamW over every trainable parameter of `model` (anything with visit_params over
  // Param<T, Cuda>; weight decay adamw.weight_decay on matrices, 0 on vectors) and the rank
  // allocator over its AdaLoRA modules, as optim::AdaLoraOptimizer.
  template <class Model>
  DeviceAdaLoraOptimizer(Model& model, const sora::optim::AdamWOptions& adamw,
                         const sora::optim::AdaLoraOptions& options)
      : adamw_(adamw), options_(options), base_lr_(adamw.lr), lr_(adamw.lr) {
    sora::optim::check_adamw_options("DeviceAdaLoraOptimizer", adamw_);
    modules_ = sora::optim::collect_adalora_modules<T, Cuda>(model);
    const sora::optim::AdaLoraBudgets b =
        sora::optim::adalora_budgets(modules_, options_, "DeviceAdaLoraOptimizer");
    b_init_ = b.initial;
    b_target_ = b.target;
    cudaStream_t s = context().stream();
    std::vector<DeviceParam*> trainable;
    model.visit_params([&](DeviceParam& p) {
      if (!p.trainable()) return;
      Slot slot;
      slot.p = &p;
      slot.name = p.name;
      slot.weight_decay = p.is_vector ? 0.0 : adamw_.weight_decay;
      slot.m = DeviceTensor<T>::zeros(p.value.rows(), p.value.cols(), s);
      slot.v = DeviceTensor<T>::zeros(p.value.rows(), p.value.cols(), s);
      slots_.push_back(std::move(slot));
      trainable.push_back(&p);
    });
    clipper_ = GradNormClipper<T>(std::move(trainable));
    build_allocator();
    build_regularizer();
  }

  DeviceAdaLoraOptimizer(const DeviceAdaLoraOptimizer&) = delete;
  DeviceAdaLoraOptimizer& operator=(const DeviceAdaLoraOptimizer&) = delete;

  // Adds the orthogonal regularizer's gradient now (call it before clip_grad_norm to clip it
  // with the loss's, as PEFT does); step() then does not add it again, otherwise step() adds
  // it. Unlike the CPU optimizer's, it returns nothing: the value stays on the device
  // (orth_loss() reads it back).
  void add_orth_regularizer() {
    const double w = options_.orth_reg_weight;
    SORA_CHECK(std::isfinite(w) && w >= 0.0,
               "orthogonal_regularizer: weight must be finite and >= 0, got ", w);
    cudaStream_t s = context().stream();
    orth_added_ = true;
    if (w == 0.0) {  // the CPU returns 0 and adds nothing
      SORA_CUDA_CHECK(cudaMemsetAsync(orth_loss_.data(), 0, sizeof(double), s));
      return;
    }
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const Module& m = modules_[k];
      check_module(k);
      gemm<T>(false, true, T(1), m.A->value.view(), m.A->value.view(), T(0), gram(2 * k));
      gemm<T>(true, false, T(1), m.B->value.view(), m.B->value.view(), T(0), gram(2 * k + 1));
    }
    const double n = static_cast<double>(modules_.size());
    detail::gram_fixup_kernel<T>
        <<<static_cast<unsigned>(2 * modules_.size()), detail::kThreads, 0, s>>>(
            gram_.data(), gram_slots_.data(), orth_norms_.data(), w, n);
    SORA_CUDA_CHECK_LAUNCH("gram_fixup_kernel");
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const Module& m = modules_[k];
      // dA += [(w / (n ||M||)) M] A, dB += B [(w / (n ||N||)) N]: the factors are in the buffer.
      if (m.A->trainable())
        gemm<T>(false, false, T(1), gram(2 * k), m.A->value.view(), T(1), m.A->gradient().view());
      if (m.B->trainable())
        gemm<T>(false, false, T(1), m.B->value.view(), gram(2 * k + 1), T(1),
                m.B->gradient().view());
    }
    detail::orth_loss_kernel<T><<<1, 1, 0, s>>>(
        orth_norms_.data(), static_cast<int>(2 * modules_.size()), w, n, orth_loss_.data());
    SORA_CUDA_CHECK_LAUNCH("orth_loss_kernel");
  }

  // Regularizer gradient (if not added yet) -> AdamW -> importance and allocation.
  void step() {
    if (!orth_added_) add_orth_regularizer();
    ++step_;
    sora::optim::AdamWOptions o = adamw_;
    o.lr = lr_;
    const sora::optim::AdamWScalars scalars = sora::optim::adamw_scalars(o, step_);
    for (Slot& s : slots_) {
      SORA_CHECK(s.p->trainable(), "DeviceAdaLoraOptimizer: parameter '", s.name,
                 "' was frozen after the optimizer was built");
      optim::adamw_step(s.p->value, s.p->gradient(), s.m, s.v, scalars, s.weight_decay,
                        context().stream());
    }
    last_ = update_and_allocate(step_);
    orth_added_ = false;
  }

  void zero_grad() {
    for (Slot& s : slots_) s.p->zero_grad();
  }

  // Scales every gradient so that their global L2 norm is at most max_norm (<= 0: off), on
  // the device, without reading anything back.
  void clip_grad_norm(double max_norm) { clipper_.clip(max_norm); }
  // The global norm before the last clipping (reads it back: for logging only).
  double last_grad_norm() const { return clipper_.last_norm(); }

  void set_lr_multiplier(double multiplier) { lr_ = checked_lr(base_lr_ * multiplier); }
  void set_lr(double lr) {
    lr_ = checked_lr(lr);
    base_lr_ = lr;
  }
  double lr() const { return lr_; }
  double base_lr() const { return base_lr_; }

  long step_count() const { return step_; }
  // The regularizer at the last step (reads it back: for logging only).
  double orth_loss() const {
    double v = 0.0;
    SORA_CUDA_CHECK(cudaMemcpyAsync(&v, orth_loss_.data(), sizeof(double), cudaMemcpyDeviceToHost,
                                    context().stream()));
    SORA_CUDA_CHECK(cudaStreamSynchronize(context().stream()));
    return v;
  }
  const sora::optim::BudgetStep& last_budget() const { return last_; }

  // The allocator's side, as optim::RankAllocator's.
  const std::vector<Module>& modules() const { return modules_; }
  const sora::optim::AdaLoraOptions& options() const { return options_; }
  Index initial_budget() const { return b_init_; }
  Index target_budget() const { return b_target_; }
  sora::optim::BudgetStep budget_at(long t) const {
    return sora::optim::adalora_budget(t, b_init_, b_target_, options_);
  }
  // The pattern of the last allocation (all true before the first): true = rank kept.
  const std::vector<std::vector<bool>>& rank_pattern() const { return pattern_; }
  bool finalized() const { return finalized_; }
  Index current_budget() const { return budget_ < 0 ? b_init_ : budget_; }
  std::vector<Index> ranks() const { return sora::optim::kept_per_module(pattern_); }

  // Bytes of AdamW state (two moments per trainable element), as the CPU optimizer counts.
  std::size_t state_bytes() const {
    std::size_t b = 0;
    for (const Slot& s : slots_) b += s.m.bytes() + s.v.bytes();
    return b;
  }

  // The allocator's state as plain host data (reads the statistics back).
  sora::optim::RankAllocatorState<T> allocator_state() const {
    sora::optim::RankAllocatorState<T> st;
    cudaStream_t s = context().stream();
    for (const ModuleStats& ms : stats_) {
      sora::optim::ModuleImportance<T> mi;
      mi.A = {ms.A.sens.to_host(s), ms.A.unc.to_host(s)};
      mi.B = {ms.B.sens.to_host(s), ms.B.unc.to_host(s)};
      mi.E = {ms.E.sens.to_host(s), ms.E.unc.to_host(s)};
      st.importance.push_back(std::move(mi));
    }
    st.rank_pattern = pattern_;
    st.finalized = finalized_;
    st.budget = budget_;
    return st;
  }

  // The whole state into a CPU AdaLoraOptimizer built over the CPU twin of the model (same
  // AdaLoRA modules, same trainable parameters). Call it between steps.
  void save_to(sora::optim::AdaLoraOptimizer<T>& host) const {
    check_host_modules(host.allocator().modules(), "save_to");
    const auto& layout = host.adamw().state();
    SORA_CHECK(layout.size() == slots_.size(),
               "DeviceAdaLoraOptimizer::save_to: the CPU optimizer trains ", layout.size(),
               " parameters, this one ", slots_.size());
    sora::optim::AdaLoraOptimizerState<T> st;
    st.step = step_;
    cudaStream_t s = context().stream();
    for (const auto& want : layout) {
      const Slot* slot = find_slot(want.name);
      SORA_CHECK(slot != nullptr, "DeviceAdaLoraOptimizer::save_to: the CPU optimizer trains '",
                 want.name, "', which this optimizer does not");
      sora::optim::AdamState<T> a;
      a.name = want.name;
      a.m = slot->m.to_host(s);
      a.v = slot->v.to_host(s);
      a.weight_decay = want.weight_decay;
      st.adamw.push_back(std::move(a));
    }
    st.allocator = allocator_state();
    st.orth_loss = orth_loss();
    host.load_state(std::move(st));  // checks every shape again, changes nothing on failure
    host.set_lr(base_lr_);
    host.adamw().set_lr(lr_);
  }

  // The whole state from a CPU AdaLoraOptimizer (a loaded checkpoint). Everything is checked
  // before anything changes. The pattern is not re-applied: the model's E already obeys it.
  void load_from(const sora::optim::AdaLoraOptimizer<T>& host) {
    const char* who = "DeviceAdaLoraOptimizer::load_from";
    check_host_modules(host.allocator().modules(), "load_from");
    const sora::optim::AdaLoraOptimizerState<T> st = host.state();
    SORA_CHECK(st.step >= 0, who, ": the CPU optimizer is at step ", st.step);
    SORA_CHECK(st.adamw.size() == slots_.size(), who, ": the CPU optimizer has state for ",
               st.adamw.size(), " parameters, this one trains ", slots_.size());
    std::vector<const sora::optim::AdamState<T>*> moments;
    for (const Slot& slot : slots_) {
      const sora::optim::AdamState<T>* a = nullptr;
      for (const auto& c : st.adamw)
        if (c.name == slot.name) a = &c;
      SORA_CHECK(a != nullptr, who, ": no state for '", slot.name, "' in the CPU optimizer");
      SORA_CHECK(fits(a->m, slot.p->value) && fits(a->v, slot.p->value), who, ": the moments of '",
                 slot.name, "' have shapes ", shape_of(a->m), " and ", shape_of(a->v),
                 ", the parameter ", shape_str(slot.p->value.rows(), slot.p->value.cols()));
      moments.push_back(a);
    }
    const sora::optim::RankAllocatorState<T>& al = st.allocator;
    SORA_CHECK(al.importance.size() == modules_.size() && al.rank_pattern.size() == modules_.size(),
               who, ": the CPU allocator's state has ", al.importance.size(), " modules and ",
               al.rank_pattern.size(), " patterns, this optimizer ", modules_.size(), " modules");
    SORA_CHECK(al.budget >= -1 && al.budget <= b_init_, who, ": budget ", al.budget,
               " is not in [-1, ", b_init_, "]");
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const Module& m = modules_[k];
      const sora::optim::ModuleImportance<T>& mi = al.importance[k];
      const auto fit = [](const sora::optim::ImportanceStats<T>& x, const DeviceParam* p) {
        return fits(x.sensitivity, p->value) && fits(x.uncertainty, p->value);
      };
      SORA_CHECK(fit(mi.A, m.A) && fit(mi.B, m.B) && fit(mi.E, m.E), who,
                 ": the importance of module '", m.name, "' does not fit its A, B and E");
      SORA_CHECK(static_cast<Index>(al.rank_pattern[k].size()) == m.rank(), who,
                 ": the rank pattern of module '", m.name, "' has ", al.rank_pattern[k].size(),
                 " entries, the module rank ", m.rank());
    }

    cudaStream_t s = context().stream();
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      upload(slots_[i].m.view(), moments[i]->m, s);
      upload(slots_[i].v.view(), moments[i]->v, s);
    }
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const sora::optim::ModuleImportance<T>& mi = al.importance[k];
      stats_[k].A.load(mi.A, s);
      stats_[k].B.load(mi.B, s);
      stats_[k].E.load(mi.E, s);
    }
    pattern_ = al.rank_pattern;
    upload_mask();
    finalized_ = al.finalized;
    budget_ = al.budget;
    SORA_CUDA_CHECK(cudaMemcpyAsync(orth_loss_.data(), &st.orth_loss, sizeof(double),
                                    cudaMemcpyHostToDevice, s));
    step_ = st.step;
    base_lr_ = host.base_lr();
    lr_ = host.lr();
    orth_added_ = false;
    last_ = step_ > 0 ? budget_at(step_) : sora::optim::BudgetStep{};
    SORA_CUDA_CHECK(cudaStreamSynchronize(s));
  }

 private:
  struct Slot {
    DeviceParam* p = nullptr;
    std::string name;
    double weight_decay = 0.0;
    DeviceTensor<T> m, v;  // the parameter's shape
  };

  // Ī and Ū of one tensor (its shape).
  struct Stats {
    DeviceTensor<T> sens, unc;
    void zero(cudaStream_t s) {
      sens.set_zero(s);
      unc.set_zero(s);
    }
    void load(const sora::optim::ImportanceStats<T>& h, cudaStream_t s) {
      upload(sens.view(), h.sensitivity, s);
      upload(unc.view(), h.uncertainty, s);
    }
  };
  struct ModuleStats {
    Stats A, B, E;
  };

  template <class Tensor>
  static bool fits(const Matrix<T>& h, const Tensor& d) {
    return h.rows() == d.rows() && h.cols() == d.cols();
  }

  static double checked_lr(double lr) {
    SORA_CHECK(std::isfinite(lr) && lr >= 0.0,
               "DeviceAdaLoraOptimizer: lr must be finite and >= 0, got ", lr);
    return lr;
  }

  const Slot* find_slot(const std::string& name) const {
    for (const Slot& s : slots_)
      if (s.name == name) return &s;
    return nullptr;
  }

  // The parameters of module m must still have the shapes the buffers were built for.
  void check_module(std::size_t k) const {
    const auto same = [](const Stats& st, const DeviceParam* p) {
      return st.sens.rows() == p->value.rows() && st.sens.cols() == p->value.cols();
    };
    const Module& m = modules_[k];
    const ModuleStats& ms = stats_[k];
    SORA_CHECK(same(ms.A, m.A) && same(ms.B, m.B) && same(ms.E, m.E),
               "DeviceAdaLoraOptimizer: module '", m.name,
               "' changed shape (rebuild the optimizer after pruning)");
  }

  // The CPU optimizer's modules must be this one's: same names, same shapes, same order.
  void check_host_modules(const std::vector<sora::optim::AdaLoraModule<T>>& host,
                          const char* fn) const {
    SORA_CHECK(host.size() == modules_.size(), "DeviceAdaLoraOptimizer::", fn,
               ": the CPU optimizer has ", host.size(), " AdaLoRA modules, this one ",
               modules_.size());
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const Module& d = modules_[k];
      const sora::optim::AdaLoraModule<T>& h = host[k];
      SORA_CHECK(h.name == d.name, "DeviceAdaLoraOptimizer::", fn, ": module ", k, " is '", d.name,
                 "' here but '", h.name, "' in the CPU optimizer");
      SORA_CHECK(fits(h.A->value, d.A->value) && fits(h.B->value, d.B->value) &&
                     fits(h.E->value, d.E->value),
                 "DeviceAdaLoraOptimizer::", fn, ": module '", d.name, "' has A ",
                 shape_str(d.A->value.rows(), d.A->value.cols()), " and B ",
                 shape_str(d.B->value.rows(), d.B->value.cols()), " here but A ",
                 shape_of(h.A->value), " and B ", shape_of(h.B->value), " in the CPU optimizer");
    }
  }

  // The (R, R) Gram matrix j of the regularizer's buffer (2k: module k's A, 2k + 1: its B).
  DeviceView<T> gram(std::size_t j) {
    const Index R = modules_[j / 2].rank();
    return DeviceView<T>(gram_.data() + gram_offsets_[j], R, R);
  }

  void build_allocator() {
    cudaStream_t s = context().stream();
    std::vector<detail::AdaLoraModuleSlot<T>> table;
    std::vector<int> owner;
    stats_.resize(modules_.size());
    pattern_.resize(modules_.size());
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const Module& m = modules_[k];
      ModuleStats& ms = stats_[k];
      const auto make = [&](Stats& st, const DeviceParam* p) {
        st.sens = DeviceTensor<T>::zeros(p->value.rows(), p->value.cols(), s);
        st.unc = DeviceTensor<T>::zeros(p->value.rows(), p->value.cols(), s);
      };
      make(ms.A, m.A);
      make(ms.B, m.B);
      make(ms.E, m.E);
      table.push_back(detail::AdaLoraModuleSlot<T>{
          ms.A.sens.data(), ms.A.unc.data(), ms.B.sens.data(), ms.B.unc.data(), ms.E.sens.data(),
          ms.E.unc.data(), m.E->value.data(), m.rank(), m.A->value.cols(), m.B->value.rows(),
          static_cast<Index>(owner.size())});
      for (Index i = 0; i < m.rank(); ++i) owner.push_back(static_cast<int>(k));
      pattern_[k].assign(static_cast<std::size_t>(m.rank()), true);
    }
    module_table_ = DeviceTensor<detail::AdaLoraModuleSlot<T>>(1, static_cast<Index>(table.size()));
    owner_ = DeviceTensor<int>(1, b_init_);
    SORA_CUDA_CHECK(cudaMemcpyAsync(module_table_.data(), table.data(), module_table_.bytes(),
                                    cudaMemcpyHostToDevice, s));
    SORA_CUDA_CHECK(
        cudaMemcpyAsync(owner_.data(), owner.data(), owner_.bytes(), cudaMemcpyHostToDevice, s));
    scores_ = DeviceTensor<T>::zeros(1, b_init_, s);
    mask_ = DeviceTensor<T>(1, b_init_);
    host_scores_.resize(static_cast<std::size_t>(b_init_));
    host_mask_.resize(static_cast<std::size_t>(b_init_));
    order_.reserve(static_cast<std::size_t>(b_init_));
    upload_mask();
    SORA_CUDA_CHECK(cudaStreamSynchronize(s));  // the host tables die on return
  }

  void build_regularizer() {
    cudaStream_t s = context().stream();
    std::vector<detail::GramSlot> slots;
    Index total = 0;
    for (const Module& m : modules_) {
      for (int twice = 0; twice < 2; ++twice) {  // A Aᵀ, then Bᵀ B
        slots.push_back(detail::GramSlot{total, m.rank()});
        gram_offsets_.push_back(total);
        total += m.rank() * m.rank();
      }
    }
    gram_ = DeviceTensor<T>::zeros(1, total, s);
    gram_slots_ = DeviceTensor<detail::GramSlot>(1, static_cast<Index>(slots.size()));
    SORA_CUDA_CHECK(cudaMemcpyAsync(gram_slots_.data(), slots.data(), gram_slots_.bytes(),
                                    cudaMemcpyHostToDevice, s));
    orth_norms_ = DeviceTensor<T>::zeros(1, static_cast<Index>(slots.size()), s);
    orth_loss_ = DeviceTensor<double>::zeros(1, 1, s);
    SORA_CUDA_CHECK(cudaStreamSynchronize(s));  // the host table dies on return
  }

  // The host pattern as the device's 0/1 mask (asynchronous: host_mask_ is staged on return).
  void upload_mask() {
    std::size_t t = 0;
    for (const auto& p : pattern_)
      for (const bool kept : p) host_mask_[t++] = kept ? T(1) : T(0);
    SORA_CUDA_CHECK(cudaMemcpyAsync(mask_.data(), host_mask_.data(), mask_.bytes(),
                                    cudaMemcpyHostToDevice, context().stream()));
  }

  void apply_rank_pattern() {
    if (b_init_ == 0) return;
    detail::apply_mask_kernel<T>
        <<<detail::grid_for(b_init_), detail::kThreads, 0, context().stream()>>>(
            module_table_.data(), owner_.data(), mask_.data(), b_init_);
    SORA_CUDA_CHECK_LAUNCH("apply_mask_kernel");
  }

  void reset_importance() {
    for (ModuleStats& ms : stats_) {
      ms.A.zero(context().stream());
      ms.B.zero(context().stream());
      ms.E.zero(context().stream());
    }
  }

  void update_one(Stats& st, DeviceParam& p) {
    if (!p.trainable()) return;  // a frozen tensor keeps zero importance
    SORA_CHECK(st.sens.rows() == p.value.rows() && st.sens.cols() == p.value.cols(),
               "DeviceAdaLoraOptimizer: '", p.name, "' changed shape to ",
               shape_str(p.value.rows(), p.value.cols()), " (rebuild the optimizer after pruning)");
    const Index n = p.size();
    if (n == 0) return;
    const T b1 = static_cast<T>(options_.beta1), b2 = static_cast<T>(options_.beta2);
    detail::importance_kernel<T><<<detail::grid_for(n), detail::kThreads, 0, context().stream()>>>(
        p.value.data(), p.gradient().data(), st.sens.data(), st.unc.data(), n, b1, T(1) - b1, b2,
        T(1) - b2);
    SORA_CUDA_CHECK_LAUNCH("importance_kernel");
  }

  void update_importance() {
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      update_one(stats_[k].A, *modules_[k].A);
      update_one(stats_[k].B, *modules_[k].B);
      update_one(stats_[k].E, *modules_[k].E);
    }
  }

  // Scores on the device, one read-back, the CPU's selection, the mask back and applied.
  void mask_to_budget(Index budget) {
    if (b_init_ == 0) return;  // nothing to select (every module of rank 0)
    cudaStream_t s = context().stream();
    const unsigned blocks =
        static_cast<unsigned>((b_init_ + detail::kWarpsPerBlock - 1) / detail::kWarpsPerBlock);
    detail::triplet_score_kernel<T><<<blocks, detail::kThreads, 0, s>>>(
        module_table_.data(), owner_.data(), b_init_, scores_.data());
    SORA_CUDA_CHECK_LAUNCH("triplet_score_kernel");
    SORA_CUDA_CHECK(cudaMemcpyAsync(host_scores_.data(), scores_.data(), scores_.bytes(),
                                    cudaMemcpyDeviceToHost, s));
    SORA_CUDA_CHECK(cudaStreamSynchronize(s));
    order_.clear();
    std::size_t t = 0;
    for (std::size_t k = 0; k < modules_.size(); ++k)
      for (Index i = 0; i < modules_[k].rank(); ++i) order_.push_back({host_scores_[t++], k, i});
    sora::optim::select_rank_pattern(order_, budget, pattern_);
    upload_mask();
    apply_rank_pattern();
  }

  // optim::RankAllocator::update_and_allocate, phase by phase.
  sora::optim::BudgetStep update_and_allocate(long t) {
    const sora::optim::BudgetStep s = budget_at(t);
    switch (s.phase) {
      case sora::optim::AdaLoraPhase::warmup:
      case sora::optim::AdaLoraPhase::budgeting:
        update_importance();
        if (s.mask) mask_to_budget(s.budget);
        break;
      case sora::optim::AdaLoraPhase::finalize:
        update_importance();
        mask_to_budget(s.budget);
        finalized_ = true;
        reset_importance();
        break;
      case sora::optim::AdaLoraPhase::fixed:
        if (!finalized_) {  // attached late: finalize from what is known
          mask_to_budget(s.budget);
          finalized_ = true;
        }
        apply_rank_pattern();
        break;
    }
    budget_ = s.budget;
    return s;
  }

  sora::optim::AdamWOptions adamw_;
  sora::optim::AdaLoraOptions options_;
  double base_lr_ = 1e-3, lr_ = 1e-3;
  long step_ = 0;
  std::vector<Slot> slots_;
  GradNormClipper<T> clipper_;

  // The allocator.
  std::vector<Module> modules_;
  Index b_init_ = 0, b_target_ = 0, budget_ = -1;
  bool finalized_ = false;
  sora::optim::BudgetStep last_;
  std::vector<ModuleStats> stats_;                           // per module
  DeviceTensor<detail::AdaLoraModuleSlot<T>> module_table_;  // (1, modules)
  DeviceTensor<int> owner_;                                  // (1, b_init) module of a triplet
  DeviceTensor<T> scores_;                                   // (1, b_init) eq. 7
  DeviceTensor<T> mask_;                                     // (1, b_init) 1 kept, 0 masked
  std::vector<T> host_scores_, host_mask_;                   // (b_init) staging
  std::vector<sora::optim::TripletScore<T>> order_;          // (b_init) selection workspace
  std::vector<std::vector<bool>> pattern_;                   // per module (R), true = kept

  // The regularizer.
  DeviceTensor<T> gram_;                       // (1, Σ 2 R²) M and N of every module
  DeviceTensor<detail::GramSlot> gram_slots_;  // (1, 2n)
  std::vector<Index> gram_offsets_;            // (2n) the same offsets, on the host
  DeviceTensor<T> orth_norms_;                 // (1, 2n) ||M||, ||N|| per module
  DeviceTensor<double> orth_loss_;             // (1, 1) the last value
  bool orth_added_ = false;
};

}  // namespace sora::cuda
