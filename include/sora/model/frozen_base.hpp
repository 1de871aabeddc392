#pragma once
// A frozen base in half the memory: the frozen linear weights and embedding tables of a model
// (what LoRA, SoRA and AdaLoRA leave untouched) stored in bf16 (core/bf16.hpp). Each weight is
// widened into one shared fp32 scratch right before the product that reads it (nn/common.hpp,
// detail::dense_value), in forward and again in backward (the input gradient dy W reads W
// too); a token lookup widens only the rows it reads. Adapters, biases, norms, heads,
// gradients and optimizer state stay fp32.
//
// Opt-in per model, after its method is set:
//
//   model.apply_peft(peft);                              // lora, sora or adalora
//   model::store_frozen_base(model, Precision::bf16);
//
// The model then computes exactly what the fp32 model whose frozen weights were rounded to bf16
// computes (widening is exact), i.e. its outputs are within bf16 rounding of the fp32 model's.
// Full fine-tuning trains every weight and so has no frozen base: it is refused, as is making a
// bf16 weight trainable. What needs the fp32 matrices themselves (model files, merging an adapter
// into its base, copying the model to the GPU) refuses a bf16 base by name;
// store_frozen_base(model, Precision::fp32) widens it back first (its values stay rounded).
// Checkpoints (io/checkpoint.hpp) widen it while they are written or read; a PEFT adapter export
// reads adapters only and works either way.
//
// Works on any model with visit_linears and visit_params (model::Transformer, the Hugging Face
// models of model/hf/).

#include <cstddef>
#include <string>
#include <type_traits>

#include "sora/core/bf16.hpp"
#include "sora/core/param.hpp"

namespace sora::model {

// Stores every frozen linear weight of the model in `precision`, and (with_embeddings) every
// frozen embedding table; returns how many parameters changed. bf16 needs a float model on the
// CPU with at least one frozen linear weight; fp32 widens every bf16 parameter back.
//
// A token table is read one row per token, widened straight into the activations; a tied LM head
// (logits = h wte^T) reads its whole table through the shared scratch, i.e. costs the table's
// fp32 bytes while it runs: with a large vocabulary and a tied head, keep the tables in fp32
// (with_embeddings = false).
template <class Model>
Index store_frozen_base(Model& model, Precision precision, bool with_embeddings = true) {
  using T = typename Model::Scalar;
  using Backend = typename Model::BackendTag;
  if (precision == Precision::bf16) {
    // Checked before any weight is changed.
    SORA_CHECK((std::is_same_v<T, float> && std::is_same_v<Backend, Cpu>),
               "store_frozen_base: bf16 storage is for float models on the CPU");
    Index frozen = 0;
    model.visit_linears([&](const std::string&, auto& lin) {
      if (!lin.base.weight.trainable()) ++frozen;
    });
    SORA_CHECK(frozen > 0,
               "store_frozen_base: the model has no frozen linear weight to store in bf16 (full "
               "fine-tuning trains every weight; a bf16 base is for lora, sora and adalora: call "
               "apply_peft first)");
  }
  Index changed = 0;
  auto store = [&](auto& p) {
    if (p.storage() == precision || (precision == Precision::bf16 && p.trainable())) return;
    p.store_as(precision);
    ++changed;
  };
  model.visit_linears([&](const std::string&, auto& lin) { store(lin.base.weight); });
  model.visit_params([&](auto& p) {
    if (precision == Precision::fp32 || (with_embeddings && p.role == ParamRole::embedding))
      store(p);
  });
  return changed;
}

// bf16 when some parameter of the model is stored in bf16, else fp32.
template <class Model>
Precision frozen_base_precision(Model& model) {
  Precision precision = Precision::fp32;
  model.visit_params([&](const auto& p) {
    if (p.storage() == Precision::bf16) precision = Precision::bf16;
  });
  return precision;
}

// Bytes held by the values of the model's frozen parameters (the base a bf16 store halves).
template <class Model>
std::size_t frozen_bytes(Model& model) {
  std::size_t bytes = 0;
  model.visit_params([&](const auto& p) {
    if (!p.trainable()) bytes += p.value_bytes();
  });
  return bytes;
}

}  // namespace sora::model
