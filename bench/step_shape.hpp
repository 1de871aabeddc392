#pragma once
// The shape of the training-step benchmarks (bench/train_bench.cpp on the CPU,
// bench/cuda_train_bench.cu on the GPU): the model's config, its batch of random tokens, and
// the FLOPs a step does, counted once for both.

#include <cstdint>

#include "sora/core/rng.hpp"
#include "sora/model/config.hpp"
#include "sora/model/transformer.hpp"

namespace sora::bench {

// A GPT-style stack: width C, FFN 4C, a byte vocabulary with a tied LM head, causal, dropout 0
// (a step measures the arithmetic, not the random number generator); adapters of rank r on
// q, k, v, o, fc, proj.
struct StepShape {
  Index width, layers, heads, batch, seq, vocab, rank;

  model::TransformerConfig config() const {
    model::TransformerConfig c;
    c.vocab_size = vocab;
    c.width = width;
    c.heads = heads;
    c.layers = layers;
    c.ffn_width = 4 * width;
    c.max_len = seq;
    c.causal = true;
    c.dropout = 0.0;
    c.head = model::Head::lm;
    c.seed = 1;
    return c;
  }

  model::Batch make_batch() const {
    model::Batch b;
    b.batch = batch;
    b.seq = seq;
    Rng rng(3);
    for (Index i = 0; i < batch * seq; ++i)
      b.tokens.push_back(static_cast<int>(rng.below(static_cast<std::uint64_t>(vocab))));
    model::set_next_token_labels(b);
    return b;
  }

  // Multiply-adds x 2 of one step. Forward: every linear 2 N in out, attention 4 N T C
  // (q k^T and P v over full T x T blocks, which is what the op computes), the LM head 2 N C V.
  // Backward: a trainable weight costs two forward GEMMs (input and weight gradients), a
  // frozen one only the input gradient; attention's backward costs twice its forward; an
  // adapter of rank r costs 2 N r (in + out) forward and twice that backward.
  double step_flops(model::Method method) const {
    const double N = static_cast<double>(batch * seq), C = static_cast<double>(width), F = 4.0 * C,
                 T = static_cast<double>(seq), V = static_cast<double>(vocab),
                 R = static_cast<double>(rank), L = static_cast<double>(layers);
    const double linear_fwd = L * 2 * N * (4 * C * C + 2 * C * F);
    const double attention_fwd = L * 4 * N * T * C;
    const double head_fwd = 2 * N * C * V;
    const double fwd = linear_fwd + attention_fwd + head_fwd;
    if (method == model::Method::full) return 3 * fwd;
    const double adapter_fwd = L * 2 * N * R * (4 * (C + C) + (C + F) + (F + C));
    return fwd + linear_fwd + 2 * attention_fwd + head_fwd + 3 * adapter_fwd;
  }
};

}  // namespace sora::bench
