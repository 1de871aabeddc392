#pragma once
// A tiny transformer for the GPU-against-CPU model tests (model_test.cu, adalora_test.cu): its
// config, a padded batch for any head, and random adapter weights.

#include <random>
#include <string>

#include "sora/model/transformer.hpp"
#include "support.cuh"

namespace sora::cuda::testing {

// 2 layers of width 24 with 3 heads, a 40-token vocabulary, dropout off (the GPU draws its
// masks with Philox, the CPU with xoshiro).
inline model::TransformerConfig tiny_config(model::Head head, bool causal) {
  model::TransformerConfig c;
  c.vocab_size = 40;
  c.width = 24;
  c.heads = 3;
  c.layers = 2;
  c.max_len = 12;
  c.causal = causal;
  c.dropout = 0.0;
  c.head = head;
  c.num_labels = head == model::Head::regression ? 2 : 3;
  c.seed = 5;
  return c;
}

// 3 sequences of 9 tokens, the last two padded on the right by 3 and 1 tokens, with the
// targets of c's head.
inline model::Batch tiny_batch(const model::TransformerConfig& c, unsigned seed) {
  model::Batch b;
  b.batch = 3;
  b.seq = 9;
  std::mt19937 gen(seed);
  for (Index i = 0; i < b.batch * b.seq; ++i)
    b.tokens.push_back(static_cast<int>(gen() % static_cast<unsigned>(c.vocab_size)));
  b.mask.assign(static_cast<std::size_t>(b.batch * b.seq), 1.0f);
  for (int t = 6; t < 9; ++t) b.mask[static_cast<std::size_t>(9 + t)] = 0.0f;
  b.mask[static_cast<std::size_t>(18 + 8)] = 0.0f;
  if (c.head == model::Head::lm) {
    model::set_next_token_labels(b);
  } else if (c.head == model::Head::classification) {
    for (Index i = 0; i < b.batch; ++i)
      b.labels.push_back(static_cast<int>(gen() % static_cast<unsigned>(c.num_labels)));
  } else {
    for (Index i = 0; i < b.batch * c.num_labels; ++i)
      b.values.push_back(static_cast<double>(gen() % 100) / 50.0 - 1.0);
  }
  return b;
}

// B = 0 (and AdaLoRA's E = 0) at initialisation would leave some adapter gradients exactly
// zero: give every adapter weight a random value (seeds first_seed + 1, + 2, ...) so that
// every gradient is exercised.
template <class T>
void randomize_adapters(model::Transformer<T>& m, unsigned first_seed) {
  unsigned seed = first_seed;
  m.visit_params([&](Param<T>& p) {
    if (p.name.find(".lora_") == std::string::npos) return;
    p.value = random_matrix<T>(p.value.rows(), p.value.cols(), ++seed, 0.3);
  });
}

}  // namespace sora::cuda::testing
