#pragma once
// The model protocol: what each entry point of the library needs from a model, as C++20
// concepts (docs/design.md section 2, "one visitor on the model").
//
//   sora::Trainable<M>       using Scalar = float | double;  visit_params(fn)
//                            (parameters(), trainable_parameters(), zero_grad(); the
//                            optimizers, FineTuneOptimizer::for_model and group_parameters,
//                            which are told the scalar, need only visit_params(fn))
//   sora::Model<M>           Trainable, and using Batch; forward(const Batch&) -> loss;
//                            backward(); train(bool)                          (train::fit)
//   sora::HasAdapters<M>     Trainable, and using Linear (nn::AdaptedLinear<Scalar>);
//                            visit_linears(fn(const std::string& name, Linear&))
//                            (io::export_peft_adapter, pruning a whole model)
//   sora::Checkpointable<M>  HasAdapters, and dropout_rng() -> Rng&  (io::save_checkpoint)
//
// visit_params(fn) calls fn(Param<Scalar, Backend>&) once per parameter, in a fixed order,
// with p.name the parameter's stable dotted path. Every nn:: layer, model::Block and model
// offers it, and also visit_params(prefix, fn), which names the parameters under `prefix`.
//
// Each entry point checks its concept with SORA_REQUIRE_<CONCEPT>(Model, "entry"): one
// static_assert per member, whose message names the entry point and the member missing,
// instead of a page of template errors from deep inside the library.

#include <concepts>
#include <string>
#include <string_view>

#include "sora/core/backend.hpp"
#include "sora/core/rng.hpp"

namespace sora {

// The backend a model computes on: Model::BackendTag, or Cpu for a model without one.
template <class M>
struct backend_of {
  using type = Cpu;
};
template <class M>
requires requires {
  typename M::BackendTag;
}
struct backend_of<M> {
  using type = typename M::BackendTag;
};

namespace protocol {

// Visitors that accept anything a visitor may be handed: what the requires-expressions below
// pass to visit_params / visit_linears.
struct AnyParamVisitor {
  template <class P>
  void operator()(P&) const {}
};
struct AnyLinearVisitor {
  template <class L>
  void operator()(const std::string&, L&) const {}
};

template <class M>
concept has_scalar = requires {
  typename M::Scalar;
}
&&std::floating_point<typename M::Scalar>;

template <class M>
concept has_visit_params = requires(M& m, AnyParamVisitor fn) {
  m.visit_params(fn);
};

template <class M>
concept has_prefixed_visit_params = requires(M& m, AnyParamVisitor fn) {
  m.visit_params(std::string_view{}, fn);
};

template <class M>
concept has_batch = requires {
  typename M::Batch;
};

template <class M>
concept has_forward = has_scalar<M> && has_batch<M> && requires(M& m, const typename M::Batch& b) {
  { m.forward(b) } -> std::convertible_to<typename M::Scalar>;
};

template <class M>
concept has_backward = requires(M& m) {
  m.backward();
};

template <class M>
concept has_train = requires(M& m) {
  m.train(true);
};

template <class M>
concept has_visit_linears = requires {
  typename M::Linear;
}
&&requires(M& m, AnyLinearVisitor fn) {
  m.visit_linears(fn);
};

template <class M>
concept has_dropout_rng = requires(M& m) {
  { m.dropout_rng() } -> std::same_as<Rng&>;
};

}  // namespace protocol

template <class M>
concept Trainable = protocol::has_scalar<M> && protocol::has_visit_params<M>;

template <class M>
concept Model =
    Trainable<M> && protocol::has_forward<M> && protocol::has_backward<M> && protocol::has_train<M>;

template <class M>
concept HasAdapters = Trainable<M> && protocol::has_visit_linears<M>;

template <class M>
concept Checkpointable = HasAdapters<M> && protocol::has_dropout_rng<M>;

}  // namespace sora

// One static_assert per member, so that the first error names what is missing. `who` is a
// string literal naming the entry point.
#define SORA_REQUIRE_VISIT_PARAMS(M, who)                                                     \
  static_assert(::sora::protocol::has_visit_params<M>, who                                    \
                ": the model needs `template <class Fn> void visit_params(Fn&& fn)` calling " \
                "fn(Param<Scalar>&) for each parameter (see sora/core/concepts.hpp)")

#define SORA_REQUIRE_TRAINABLE(M, who)                                                      \
  static_assert(::sora::protocol::has_scalar<M>,                                            \
                who ": the model needs a member type `using Scalar = float;` (or double)"); \
  SORA_REQUIRE_VISIT_PARAMS(M, who)

#define SORA_REQUIRE_MODEL(M, who)                                                                \
  SORA_REQUIRE_TRAINABLE(M, who);                                                                 \
  static_assert(::sora::protocol::has_batch<M>,                                                   \
                who ": the model needs a member type `using Batch = ...;` (what forward takes)"); \
  static_assert(::sora::protocol::has_forward<M>,                                                 \
                who ": the model needs `Scalar forward(const Batch&)` returning the loss");       \
  static_assert(::sora::protocol::has_backward<M>,                                                \
                who ": the model needs `void backward()` (gradients of the last loss)");          \
  static_assert(::sora::protocol::has_train<M>,                                                   \
                who ": the model needs `void train(bool)` (dropout on in training, off in eval)")

#define SORA_REQUIRE_HAS_ADAPTERS(M, who)                                             \
  SORA_REQUIRE_TRAINABLE(M, who);                                                     \
  static_assert(::sora::protocol::has_visit_linears<M>, who                           \
                ": the model needs `using Linear = nn::AdaptedLinear<Scalar>;` and "  \
                "`template <class Fn> void visit_linears(Fn&& fn)` calling fn(name, " \
                "Linear&) for each adaptable linear layer")

#define SORA_REQUIRE_CHECKPOINTABLE(M, who)                                             \
  SORA_REQUIRE_HAS_ADAPTERS(M, who);                                                    \
  static_assert(::sora::protocol::has_dropout_rng<M>, who                               \
                ": the model needs `Rng& dropout_rng()` (its dropout stream, saved so " \
                "that a resumed run draws the same masks)")
