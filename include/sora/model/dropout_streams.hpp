#pragma once
// The dropout generators of a model: its own (residual, embedding, attention-probability and
// head dropout) and one per adapter (the adapter's input dropout). Models with dropout_rng()
// and visit_linears (core/concepts.hpp's Checkpointable) get both functions below.
//
// Gradient checkpointing saves and restores them around each block's recompute
// (model/block_checkpoints.hpp); data-parallel training restarts them per rank
// (train/trainer.hpp), so that the ranks' shards do not share dropout masks.

#include <cstdint>

#include "sora/core/rng.hpp"

namespace sora::model {

// fn(Rng&) on every dropout generator of `model`, the model's first, then the adapters' in
// visit_linears order.
template <class M, class Fn>
void visit_dropout_rngs(M& model, Fn&& fn) {
  fn(model.dropout_rng());
  model.visit_linears([&](const auto&, auto& linear) {
    if (linear.adapter) fn(linear.adapter->dropout_rng());
  });
}

// Restarts every dropout generator of `model` from `seed`: two forward passes after the same
// reseed draw identical masks (gradient checks through dropout rely on it).
template <class M>
void reseed_dropout_streams(M& model, std::uint64_t seed) {
  model.dropout_rng().reseed(seed, 2);
  std::uint64_t i = 0;
  model.visit_linears([&](const auto&, auto& linear) {
    if (linear.adapter) linear.adapter->dropout_rng().reseed(seed + 7919 * ++i, 1);
  });
}

}  // namespace sora::model
