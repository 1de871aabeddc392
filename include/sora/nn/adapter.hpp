#pragma once
// Low-rank adapters on a frozen linear layer: LoRA, SoRA and AdaLoRA share one core,
// LowRankAdapter, which differs between them only in its gate:
//
//   kind      gate           y += s * B ((A dropout(x)) ⊙ g)        s
//   lora      none (g = 1)   Hu et al. 2021                          alpha / r
//   sora      lora_gate      Ding et al. 2023, eq. 2                 alpha / r_max, fixed for life
//                            (docs/design.md section 4)
//   adalora   lora_E         Zhang et al. 2023, P diag(E) Q          alpha / (r_init + 1e-5)
//
// AdaptedLinear is a linear layer with an optional adapter attached (a projection slot in
// which model code can inject one by name); LoraLinear, SoraLinear and AdaLoraLinear are
// AdaptedLinear constructed with an adapter of that kind.
//
// Backward contract: parameter gradients accumulate (+=); the returned input gradient is
// overwritten (=) on every call.

#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>

#include "sora/core/rng.hpp"
#include "sora/nn/linear.hpp"
#include "sora/ops/dropout.hpp"
#include "sora/ops/linear.hpp"

namespace sora::nn {

enum class AdapterKind { lora, sora, adalora };
enum class GateInit { normal, ones };  // SoRA's gate: standard normal (official code) or ones

struct AdapterConfig {
  AdapterKind kind = AdapterKind::sora;
  Index rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;  // on the adapter's input x, before A
  GateInit gate_init = GateInit::normal;
  std::uint64_t seed = 0;  // initialisation (stream 0) and dropout (stream 1)
};

// The kind as files name it ("lora", "sora", "adalora": checkpoints, model files).
inline const char* kind_name(AdapterKind kind) {
  switch (kind) {
    case AdapterKind::lora:
      return "lora";
    case AdapterKind::sora:
      return "sora";
    case AdapterKind::adalora:
      return "adalora";
  }
  return "?";
}

inline const char* gate_name(AdapterKind kind) {
  return kind == AdapterKind::adalora ? "lora_E" : "lora_gate";
}
// SoRA's gate gets the proximal step; AdaLoRA's E is masked by rank allocation instead.
inline ParamRole gate_role(AdapterKind kind) {
  return kind == AdapterKind::adalora ? ParamRole::singular_value : ParamRole::gate;
}

template <class T, class Backend = Cpu>
class LowRankAdapter {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  using Ref = typename Backend::template Ref<T>;

  Param<T, Backend> lora_A;  // (R, C)
  Param<T, Backend> lora_B;  // (OC, R)
  Param<T, Backend> gate;    // (1, R): SoRA's g or AdaLoRA's E; empty for LoRA

  LowRankAdapter(Index in, Index out, const AdapterConfig& config)
      : kind_(config.kind),
        r_max_(config.rank),
        dropout_(static_cast<T>(config.dropout)),
        dropout_rng_(config.seed, 1) {
    const Index R = config.rank;
    SORA_CHECK(in > 0 && out > 0 && R > 0, "LowRankAdapter: sizes must be positive, got in=", in,
               " out=", out, " rank=", R);
    SORA_CHECK(config.dropout >= 0.0 && config.dropout < 1.0, "LowRankAdapter: dropout ",
               config.dropout, " is not in [0, 1)");
    SORA_CHECK(std::isfinite(config.alpha) && config.alpha > 0.0,
               "LowRankAdapter: alpha must be a finite number > 0, got ", config.alpha);
    Rng rng(config.seed, 0);
    Matrix<T> A(R, in), B(out, R);
    if (kind_ == AdapterKind::adalora) {
      // AdaLoRA (PEFT): A, B ~ N(0, 0.02^2), E = 0, so that the update starts at zero.
      rng.fill_normal(A, 0.0, 0.02);
      rng.fill_normal(B, 0.0, 0.02);
      scale_ = static_cast<T>(config.alpha / (static_cast<double>(R) + 1e-5));
    } else {
      // LoRA / SoRA: A Kaiming-uniform U(-1/sqrt(in), 1/sqrt(in)), B = 0, so that the update
      // starts at zero whatever the gate.
      rng.fill_kaiming_uniform(A, in);
      B.setZero();
      scale_ = static_cast<T>(config.alpha / static_cast<double>(R));
    }
    SORA_CHECK(std::isfinite(static_cast<double>(scale_)) && scale_ > T(0),
               "LowRankAdapter: ", "the scale alpha / rank = ", config.alpha, " / ", R,
               " is not a finite number > 0 ", "in this scalar type");
    lora_A = Param<T, Backend>("lora_A", std::move(A), true, false, ParamRole::adapter_A);
    lora_B = Param<T, Backend>("lora_B", std::move(B), true, false, ParamRole::adapter_B);
    if (kind_ != AdapterKind::lora) {
      Matrix<T> g(1, R);
      if (kind_ == AdapterKind::adalora) {
        g.setZero();
      } else if (config.gate_init == GateInit::ones) {
        g.setOnes();
      } else {
        rng.fill_normal(g, 0.0, 1.0);
      }
      gate = Param<T, Backend>(gate_name(kind_), std::move(g), true, /*vector=*/true,
                               gate_role(kind_));
    }
  }

  // An adapter from explicit weights (pruning produces these): gate empty for LoRA. scale is
  // given, not derived: a pruned SoRA module keeps alpha / r_max.
  static LowRankAdapter from_weights(AdapterKind kind, Matrix<T> A, Matrix<T> B, Matrix<T> g,
                                     T scale, Index r_max, T dropout = T(0),
                                     std::uint64_t seed = 0) {
    SORA_CHECK(A.rows() > 0 && A.cols() > 0 && B.rows() > 0 && B.cols() == A.rows(),
               "LowRankAdapter::from_weights: A ", shape_of(A), " and B ", shape_of(B),
               " are not (R, in) and (out, R) with R > 0");
    SORA_CHECK(kind == AdapterKind::lora ? g.size() == 0 : (g.rows() == 1 && g.cols() == A.rows()),
               "LowRankAdapter::from_weights: gate ", shape_of(g), " does not fit A ", shape_of(A));
    AdapterConfig config;
    config.kind = AdapterKind::lora;  // skip the random gate; set below
    config.rank = A.rows();
    config.dropout = static_cast<double>(dropout);
    config.seed = seed;
    LowRankAdapter out(A.cols(), B.rows(), config);
    out.kind_ = kind;
    out.scale_ = scale;
    out.r_max_ = r_max;
    out.lora_A = Param<T, Backend>("lora_A", std::move(A), true, false, ParamRole::adapter_A);
    out.lora_B = Param<T, Backend>("lora_B", std::move(B), true, false, ParamRole::adapter_B);
    if (kind != AdapterKind::lora)
      out.gate = Param<T, Backend>(gate_name(kind), std::move(g), true, true, gate_role(kind));
    return out;
  }

  AdapterKind kind() const { return kind_; }
  bool gated() const { return kind_ != AdapterKind::lora; }
  Index rank() const { return lora_A.value.rows(); }
  Index r_max() const { return r_max_; }
  Index in_features() const { return lora_A.value.cols(); }
  Index out_features() const { return lora_B.value.rows(); }
  T scale() const { return scale_; }
  T dropout() const { return dropout_; }
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  Rng& dropout_rng() { return dropout_rng_; }

  // y += s B ((A dropout(x)) ⊙ g). x must stay alive until backward.
  void forward_add(Tensor& y, const Tensor& x) {
    const Index N = x.rows(), R = rank();
    dropping_ = training_ && dropout_ > T(0);
    if (dropping_) {
      xd_.resize(N, x.cols());
      mask_.resize(N, x.cols());
      dropout_forward<T>(xd_, mask_, x, dropout_, dropout_rng_);
      x_ = &xd_;
    } else {
      x_ = &x;
    }
    h_.resize(N, R);
    u_.resize(N, R);
    lowrank_forward<T>(y, h_, u_, *x_, lora_A.value, lora_B.value,
                       detail::value_or_absent(gate, gated()), scale_);
  }

  // dx += d/dx of the adapter branch (dx already holds the base layer's input gradient).
  void backward_add(Tensor& dx, bool want_dx, const Tensor& dy) {
    SORA_CHECK(x_ != nullptr, "LowRankAdapter::backward_add called before forward_add");
    dh_.resize(dy.rows(), rank());
    auto dA = detail::grad_or_absent(lora_A);
    auto dB = detail::grad_or_absent(lora_B);
    auto dg = gated() ? detail::grad_or_absent(gate) : Ref(Backend::template absent<T>());
    auto g = detail::value_or_absent(gate, gated());
    if (!want_dx || !dropping_) {
      lowrank_backward<T>(detail::ref_or_absent<Backend, T>(dx, want_dx), dA, dB, dg, dh_, dy, *x_,
                          h_, u_, lora_A.value, lora_B.value, g, scale_);
      return;
    }
    // Through dropout: the branch's gradient w.r.t. dropout(x), masked, then added onto dx.
    dxd_.setZero(dx.rows(), dx.cols());
    lowrank_backward<T>(dxd_, dA, dB, dg, dh_, dy, *x_, h_, u_, lora_A.value, lora_B.value, g,
                        scale_);
    dropout_backward<T>(dxd_, dxd_, mask_);
    residual_backward<T>(dx, Backend::template absent<T>(), dxd_);
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    detail::visit_one(lora_A, prefix, "lora_A", fn);
    detail::visit_one(lora_B, prefix, "lora_B", fn);
    if (gated()) detail::visit_one(gate, prefix, gate_name(kind_), fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    x_ = nullptr;
    release_buffers(xd_, mask_, h_, u_, dh_, dxd_);
  }

 private:
  AdapterKind kind_ = AdapterKind::lora;
  Index r_max_ = 0;
  T scale_ = T(1);
  T dropout_ = T(0);
  bool training_ = true;
  bool dropping_ = false;
  Rng dropout_rng_;
  const Tensor* x_ = nullptr;  // the adapter's input: x, or xd_ under dropout
  Tensor xd_, mask_;           // (N, C) dropout output and mask
  Tensor h_, u_, dh_;          // (N, R) saved A x, s (A x ⊙ g), and the backward workspace
  Tensor dxd_;                 // (N, C) gradient w.r.t. dropout(x)
};

// A linear layer with an optional low-rank adapter. With an adapter attached the base weight
// and bias are frozen (they own no gradient); merged() folds the adapter into the base weight
// (see prune/), after which the forward is the base layer's alone.
template <class T, class Backend = Cpu>
class AdaptedLinear {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;
  using Adapter = LowRankAdapter<T, Backend>;

  Linear<T, Backend> base;
  std::optional<Adapter> adapter;

  AdaptedLinear() = default;
  AdaptedLinear(Index in, Index out, bool with_bias = true, std::uint64_t seed = 0)
      : base(in, out, with_bias, /*trainable=*/true, seed) {}

  // Freezes the base and attaches a freshly initialised adapter of config.kind.
  void attach(const AdapterConfig& config) {
    base.set_trainable(false);
    adapter.emplace(base.in_features(), base.out_features(), config);
    adapter->train(training_);
    merged_ = false;
  }
  void attach(Adapter a) {
    SORA_CHECK(a.in_features() == base.in_features() && a.out_features() == base.out_features(),
               "AdaptedLinear::attach: adapter (", a.out_features(), ", ", a.in_features(),
               ") does not fit the base layer (", base.out_features(), ", ", base.in_features(),
               ")");
    base.set_trainable(false);
    adapter.emplace(std::move(a));
    adapter->train(training_);
    merged_ = false;
  }
  void detach() {
    adapter.reset();
    merged_ = false;
  }

  Index in_features() const { return base.in_features(); }
  Index out_features() const { return base.out_features(); }
  // A task head's layer (nn::Linear::mark_as_head); an adapter attached later keeps its own
  // adapter roles.
  void mark_as_head() { base.mark_as_head(); }
  bool is_head() const { return base.is_head(); }
  bool merged() const { return merged_; }
  const Tensor& output() const { return y_; }  // the last forward's output
  void set_merged(bool on) { merged_ = on; }   // used by prune::merge / unmerge
  void train(bool on) {
    training_ = on;
    if (adapter) adapter->train(on);
  }

  const Tensor& forward(const Tensor& x) {
    x_ = &x;
    base.forward_to(y_, x);
    if (active()) adapter->forward_add(y_, x);
    return y_;
  }
  const Tensor& forward(Tensor&&) = delete;
  SORA_LAYER_INPUT_ONLY(forward)

  // forward without the base layer's bias, for a caller that adds it in a fused epilogue
  // (MLP: bias + GELU in one pass). The returned buffer is this layer's output: the caller must
  // have added the bias to it before backward, which reads it as the output.
  Tensor& forward_unbiased(const Tensor& x) {
    x_ = &x;
    base.forward_to(y_, x, /*add_bias=*/false);
    if (active()) adapter->forward_add(y_, x);
    return y_;
  }
  Tensor& forward_unbiased(Tensor&&) = delete;

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    SORA_CHECK(x_ != nullptr, "AdaptedLinear::backward called before forward");
    base.backward_to(dx_, want_dx, dy, *x_);
    if (active()) adapter->backward_add(dx_, want_dx, dy);
    return dx_;
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    base.visit_params(prefix, fn);
    if (adapter) adapter->visit_params(prefix, fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    x_ = nullptr;
    release_buffers(y_, dx_);
    if (adapter) adapter->release_activations();
  }

 private:
  bool active() const { return adapter.has_value() && !merged_; }
  bool merged_ = false;
  bool training_ = true;
  const Tensor* x_ = nullptr;
  Tensor y_;   // (N, OC)
  Tensor dx_;  // (N, C)
};

namespace detail {
inline AdapterConfig with_kind(AdapterConfig config, AdapterKind kind) {
  config.kind = kind;
  return config;
}
}  // namespace detail

// LoRA (Hu et al. 2021): y = W0 x + b0 + (alpha / r) B A dropout(x).
template <class T, class Backend = Cpu>
class LoraLinear : public AdaptedLinear<T, Backend> {
 public:
  LoraLinear(Index in, Index out, const AdapterConfig& config = {}, bool with_bias = true,
             std::uint64_t base_seed = 0)
      : AdaptedLinear<T, Backend>(in, out, with_bias, base_seed) {
    this->attach(detail::with_kind(config, AdapterKind::lora));
  }
};

// SoRA (Ding et al. 2023, eq. 2): y = W0 x + b0 + (alpha / r_max) B ((A dropout(x)) ⊙ g).
template <class T, class Backend = Cpu>
class SoraLinear : public AdaptedLinear<T, Backend> {
 public:
  SoraLinear(Index in, Index out, const AdapterConfig& config = {}, bool with_bias = true,
             std::uint64_t base_seed = 0)
      : AdaptedLinear<T, Backend>(in, out, with_bias, base_seed) {
    this->attach(detail::with_kind(config, AdapterKind::sora));
  }
};

// AdaLoRA (Zhang et al. 2023): y = W0 x + b0 + alpha / (r + 1e-5) P diag(E) Q dropout(x), with
// P = lora_B, E = lora_E, Q = lora_A.
template <class T, class Backend = Cpu>
class AdaLoraLinear : public AdaptedLinear<T, Backend> {
 public:
  AdaLoraLinear(Index in, Index out, const AdapterConfig& config = {}, bool with_bias = true,
                std::uint64_t base_seed = 0)
      : AdaptedLinear<T, Backend>(in, out, with_bias, base_seed) {
    this->attach(detail::with_kind(config, AdapterKind::adalora));
  }
};

}  // namespace sora::nn
