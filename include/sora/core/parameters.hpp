#pragma once
// Parameter lists of anything with visit_params(fn) (a layer, a block, a model): written once
// here rather than once per model class.

#include <vector>

#include "sora/core/concepts.hpp"
#include "sora/core/param.hpp"

namespace sora {

// The Param type a model's visitor hands out: Param<Scalar, BackendTag> (Cpu without a tag).
template <class M>
using param_type_t = Param<typename M::Scalar, typename backend_of<M>::type>;

// Every parameter, in visiting order. The pointers stay valid while the model is neither
// rebuilt nor pruned (pruning replaces adapters and their parameters).
template <Trainable M>
std::vector<param_type_t<M>*> parameters(M& model) {
  std::vector<param_type_t<M>*> all;
  model.visit_params([&](param_type_t<M>& p) { all.push_back(&p); });
  return all;
}

// The parameters that own a gradient, i.e. what an optimizer and clipping see.
template <Trainable M>
std::vector<param_type_t<M>*> trainable_parameters(M& model) {
  std::vector<param_type_t<M>*> all;
  model.visit_params([&](param_type_t<M>& p) {
    if (p.trainable()) all.push_back(&p);
  });
  return all;
}

// Zeroes every gradient (frozen parameters have none).
template <Trainable M>
void zero_grad(M& model) {
  model.visit_params([](param_type_t<M>& p) { p.zero_grad(); });
}

// The same three as members, for a model class that derives from it (CRTP):
// `class MyModel : public ParameterLists<MyModel>`.
template <class Derived>
class ParameterLists {
 public:
  auto parameters() { return sora::parameters(self()); }
  auto trainable_parameters() { return sora::trainable_parameters(self()); }
  void zero_grad() { sora::zero_grad(self()); }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

}  // namespace sora
