#pragma once
// The transformer's configuration and the batch it consumes (docs/design.md section 7).

#include <cstdint>
#include <string>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/ops/activation.hpp"
#include "sora/ops/loss.hpp"

namespace sora::model {

// What sits on top of the final LayerNorm.
enum class Head {
  lm,              // logits over the vocabulary for every token; cross-entropy
  classification,  // pooled token -> dense -> tanh -> out; cross-entropy over num_labels
  regression       // the same head with num_labels outputs; mean squared error
};

// Which token a sequence-level head reads.
enum class Pooling {
  automatic,  // first for a bidirectional model (a [CLS] position), last for a causal one
  first,      // position 0 (BERT / RoBERTa)
  last        // the last real (unpadded) token (GPT-2's sequence classification)
};

inline Head parse_head(const std::string& name) {
  if (name == "lm") return Head::lm;
  if (name == "classification" || name == "cls") return Head::classification;
  if (name == "regression" || name == "reg") return Head::regression;
  ::sora::detail::throw_error("unknown head '", name,
                              "' (expected lm, classification or regression)");
}

inline const char* head_name(Head head) {
  switch (head) {
    case Head::lm:
      return "lm";
    case Head::classification:
      return "classification";
    case Head::regression:
      return "regression";
  }
  return "?";
}

struct TransformerConfig {
  Index vocab_size = 256;  // V
  Index width = 64;        // C
  Index heads = 4;         // H; C must be a multiple of H
  Index layers = 2;        // L
  Index ffn_width = 0;     // the MLP's hidden width; 0 means 4 C
  Index max_len = 128;     // longest sequence (rows of the position table)
  bool causal = true;      // causal (GPT) or bidirectional (BERT) attention
  // Dropout on the embeddings, on each residual branch before it is added, and before the
  // classification head's dense and output layers: the places GPT-2 and RoBERTa drop.
  double dropout = 0.1;
  bool tied_lm_head = true;  // the LM head reuses the token embedding (GPT-2)
  ops::Gelu gelu = ops::Gelu::tanh;
  bool bias = true;  // biases on every linear layer (the LM head never has one)
  // Blocked attention (ops/blocked_attention.hpp, CPU): memory linear in the sequence length
  // instead of (B H T, T) probabilities per layer, the same results to rounding.
  bool blocked_attention = false;
  double ln_eps = 1e-5;
  Head head = Head::lm;
  Index num_labels = 2;  // classes (classification) or outputs (regression)
  Pooling pooling = Pooling::automatic;
  std::uint64_t seed = 0;  // initialisation; dropout draws from a separate stream

  Index hidden() const { return ffn_width > 0 ? ffn_width : 4 * width; }
  Pooling pooled_token() const {
    if (pooling != Pooling::automatic) return pooling;
    return causal ? Pooling::last : Pooling::first;
  }

  void validate() const {
    SORA_CHECK(
        vocab_size > 0 && width > 0 && heads > 0 && layers > 0 && max_len > 0 && ffn_width >= 0,
        "TransformerConfig: sizes must be positive (vocab ", vocab_size, ", width ", width,
        ", heads ", heads, ", layers ", layers, ", ffn ", ffn_width, ", max_len ", max_len, ")");
    SORA_CHECK(width % heads == 0, "TransformerConfig: width ", width, " does not split into ",
               heads, " heads");
    SORA_CHECK(dropout >= 0.0 && dropout < 1.0, "TransformerConfig: dropout ", dropout,
               " is not in [0, 1)");
    SORA_CHECK(ln_eps > 0.0, "TransformerConfig: ln_eps must be positive, got ", ln_eps);
    SORA_CHECK(head == Head::lm || num_labels > 0, "TransformerConfig: a ", head_name(head),
               " head needs num_labels > 0, got ", num_labels);
  }
};

// B sequences of T tokens. Labels depend on the head:
//   lm              labels (B T): the target id of every token (usually the next token), or
//                   ops::kIgnoreIndex where no loss is wanted (padding, the last position)
//   classification  labels (B): the class of each sequence
//   regression      values (B num_labels): the targets
// mask (B T): 1 for a real token, 0 for padding (keys at padded positions are invisible to
// every query); empty when nothing is padded. Pad on the right: Pooling::last reads the
// last real token.
struct Batch {
  Index batch = 0;  // B
  Index seq = 0;    // T
  std::vector<int> tokens;
  std::vector<float> mask;
  std::vector<int> token_types;  // (B T) segment ids (BERT's token_type_ids); empty: all 0
  std::vector<int> labels;
  std::vector<double> values;

  Index tokens_count() const { return batch * seq; }

  void validate(Index max_len) const {
    SORA_CHECK(batch > 0 && seq > 0, "Batch: empty batch (", batch, " x ", seq, ")");
    SORA_CHECK(seq <= max_len, "Batch: sequences of ", seq,
               " tokens are longer than the model's max_len ", max_len);
    SORA_CHECK(static_cast<Index>(tokens.size()) == batch * seq, "Batch: ", tokens.size(),
               " tokens for ", batch, " x ", seq);
    SORA_CHECK(mask.empty() || static_cast<Index>(mask.size()) == batch * seq, "Batch: mask of ",
               mask.size(), " entries for ", batch, " x ", seq, " tokens");
    SORA_CHECK(token_types.empty() || static_cast<Index>(token_types.size()) == batch * seq,
               "Batch: ", token_types.size(), " token types for ", batch, " x ", seq, " tokens");
  }
};

// Next-token targets for causal language modelling: labels[b T + t] = tokens[b T + t + 1],
// kIgnoreIndex at each sequence's last position and wherever the next token is padding.
inline void set_next_token_labels(Batch& batch) {
  const Index B = batch.batch, T = batch.seq;
  batch.labels.assign(static_cast<std::size_t>(B * T), ops::kIgnoreIndex);
  for (Index b = 0; b < B; ++b) {
    for (Index t = 0; t + 1 < T; ++t) {
      const auto next = static_cast<std::size_t>(b * T + t + 1);
      if (batch.mask.empty() || batch.mask[next] != 0.0f)
        batch.labels[next - 1] = batch.tokens[next];
    }
  }
}

}  // namespace sora::model
