#pragma once
// Gradient checkpointing at block granularity: activation memory of one block instead of all.
//
// A plain forward keeps every block's activations until backward: for L blocks that is L times
// the attention probabilities (B H T, T) and the MLP's hidden (N, 4C), which dominates the
// memory of a long-sequence step. With checkpoints, forward keeps only each block's input
// (N, C) and frees the block's activations as soon as its output is copied out; backward runs
// each block's forward again from its saved input, just before that block's backward, and
// frees it after. The cost is one extra forward of every block but the last (whose activations
// are still there when backward starts): about a third more compute for a training step.
//
// The recomputed forward must equal the first one bit for bit, or the gradients would belong
// to other activations. Dropout is the only thing that differs between two forwards, so the
// states of every generator a block can draw from (the model's, and each adapter's) are saved
// before each block, set back before its recompute, and after backward set to where the first
// forward left them, so that the next step draws what it would have drawn without
// checkpointing. The gradients are then equal to the plain backward's, not merely close
// (tests/model_test.cpp checks equality).
//
// The model runs its blocks through this class whether checkpointing is on or not (one loop,
// not two), and supplies how to run one block (the blocks of different families take
// different arguments) and how to visit its generators; every block type offers
// backward(dy, want_dx) and release_activations(). CPU backend; a device model runs the plain
// loop.

#include <cstddef>
#include <type_traits>
#include <vector>

#include "sora/core/backend.hpp"
#include "sora/core/error.hpp"
#include "sora/core/rng.hpp"
#include "sora/model/dropout_streams.hpp"

namespace sora::model {

template <class T, class Backend = Cpu>
class BlockCheckpoints {
 public:
  using Tensor = typename Backend::template Tensor<T>;

  // Checkpointing is a CPU feature (the device tensors have no copy to keep inputs with).
  void set_enabled(bool on) {
    constexpr bool cpu = std::is_same_v<Backend, Cpu>;
    SORA_CHECK(!on || cpu, "gradient checkpointing runs on the CPU backend only");
    enabled_ = on;
  }
  bool enabled() const { return enabled_; }

  // Runs the blocks' forward on x (N, C): plainly, or with checkpoints when enabled.
  // forward_block(block, x) -> const Tensor& runs one block on its input, which stays alive until
  // that block's backward. each_rng(fn) calls fn(Rng&) on every generator the blocks draw from,
  // in a fixed order. x must stay alive until backward. Returns the last block's output.
  template <class Blocks, class ForwardBlock, class EachRng>
  const Tensor& forward(Blocks& blocks, const Tensor& x, ForwardBlock&& forward_block,
                        EachRng&& each_rng) {
    forwarded_ = 0;
    const std::size_t L = blocks.size();
    const Tensor* out = &x;
    if constexpr (std::is_same_v<Backend, Cpu>) {
      if (enabled_ && L > 0) {
        inputs_.resize(L - 1);
        rngs_before_.resize(L);
        first_input_ = &x;
        for (std::size_t l = 0; l < L; ++l) {
          save_rngs(rngs_before_[l], each_rng);
          out = &forward_block(blocks[l], l == 0 ? x : inputs_[l - 1]);
          if (l + 1 == L) break;  // the last block's activations serve backward directly
          inputs_[l] = *out;      // (N, C) the next block's input, kept
          blocks[l].release_activations();
        }
        forwarded_ = L;
        return *out;
      }
    }
    release_inputs();  // from an earlier checkpointed forward that had no backward
    for (auto& block : blocks) out = &forward_block(block, *out);
    return *out;
  }

  // dout: the gradient of the last block's output. want_first_dx: whether the first block's
  // input gradient is wanted (the embeddings train). Returns that gradient (meaningless when not
  // wanted). After a checkpointed forward every block's activations are released at the end.
  template <class Blocks, class ForwardBlock, class EachRng>
  const Tensor& backward(Blocks& blocks, const Tensor& dout, bool want_first_dx,
                         ForwardBlock&& forward_block, EachRng&& each_rng) {
    const std::size_t L = blocks.size();
    const Tensor* grad = &dout;
    if (forwarded_ != L || L == 0) {  // the last forward was plain
      for (std::size_t l = L; l-- > 0;) grad = &blocks[l].backward(*grad, l > 0 || want_first_dx);
      return *grad;
    }
    if constexpr (std::is_same_v<Backend, Cpu>) {
      save_rngs(rngs_after_, each_rng);
      for (std::size_t l = L; l-- > 0;) {
        if (l + 1 < L) {
          restore_rngs(rngs_before_[l], each_rng);
          forward_block(blocks[l], l == 0 ? *first_input_ : inputs_[l - 1]);
        }
        grad = &blocks[l].backward(*grad, l > 0 || want_first_dx);
        // Block l + 1's input gradient, which block l just read, was its buffers' last use.
        if (l + 1 < L) blocks[l + 1].release_activations();
      }
      restore_rngs(rngs_after_, each_rng);
      if (want_first_dx) first_dx_ = *grad;  // (N, C) out of block 0 before it is released
      blocks[0].release_activations();
      release_inputs();
      forwarded_ = 0;
    }
    return first_dx_;
  }

 private:
  template <class EachRng>
  static void save_rngs(std::vector<Rng::State>& out, EachRng& each_rng) {
    out.clear();
    each_rng([&](Rng& rng) { out.push_back(rng.state()); });
  }
  template <class EachRng>
  static void restore_rngs(const std::vector<Rng::State>& saved, EachRng& each_rng) {
    std::size_t i = 0;
    each_rng([&](Rng& rng) {
      SORA_CHECK(i < saved.size(), "BlockCheckpoints: the model's generators changed in a step");
      rng.set_state(saved[i++]);
    });
  }
  // The saved inputs are dead once backward is through; keeping them would hold L (N, C)
  // buffers across evaluation, which the checkpoints are there to avoid.
  void release_inputs() {
    for (auto& input : inputs_) input = Tensor{};
  }

  bool enabled_ = false;
  std::size_t forwarded_ = 0;                         // blocks run by the last checkpointed forward
  const Tensor* first_input_ = nullptr;               // block 0's input, the caller's (N, C)
  std::vector<Tensor> inputs_;                        // L - 1 of (N, C): the input of block l + 1
  std::vector<std::vector<Rng::State>> rngs_before_;  // L: every generator before block l
  std::vector<Rng::State> rngs_after_;                // every generator when backward began
  Tensor first_dx_;                                   // (N, C) the first block's input gradient
};

}  // namespace sora::model
