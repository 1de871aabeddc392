#pragma once
// Data-parallel batch sharding: rank r of P takes a contiguous block of the global batch's
// sequences, and its gradient counts by its share of the global loss.
//
// The model's loss is a mean over the batch's loss terms (labelled tokens for a language
// model, sequences for classification, values for regression). With n_r terms on rank r and
// N = sum n_r, the global batch's mean loss is
//   L = sum_r (n_r / N) L_r,
// so rank r scales its gradient by w_r = n_r / N before the sum over ranks: P ranks x batch b
// then compute the gradient of one rank x batch P b, whatever the padding or ignored labels
// of each shard. Every rank sees the global batch, so N needs no communication.

#include <cstddef>
#include <span>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/model/config.hpp"
#include "sora/ops/loss.hpp"

namespace sora::dist {

// Sequences [first, first + count) of the global batch that rank r of P takes: the first
// B mod P ranks take one more than the others. A batch smaller than P (an epoch's last) leaves
// the last ranks none: their share of the loss is 0.
struct ShardRange {
  Index first = 0;
  Index count = 0;
};

inline ShardRange shard_range(Index batch, int rank, int size) {
  SORA_CHECK(size >= 1 && rank >= 0 && rank < size, "shard_range: rank ", rank,
             " is not in a world of ", size);
  SORA_CHECK(batch > 0, "data-parallel training: an empty batch");
  const Index base = batch / size, extra = batch % size;
  const Index r = rank;
  return {r * base + (r < extra ? r : extra), base + (r < extra ? 1 : 0)};
}

namespace detail {
template <class V>
void copy_rows(V& out, const V& in, Index row_width, ShardRange range) {
  if (in.empty()) {
    out.clear();
    return;
  }
  const auto first = static_cast<std::size_t>(range.first * row_width);
  const auto count = static_cast<std::size_t>(range.count * row_width);
  out.assign(in.begin() + static_cast<std::ptrdiff_t>(first),
             in.begin() + static_cast<std::ptrdiff_t>(first + count));
}
}  // namespace detail

// Rank r's shard of `global` into `out` (reused across steps: no allocation once its vectors
// have grown). Labels are per token (B T entries) or per sequence (B); values B K.
inline void shard_batch(model::Batch& out, const model::Batch& global, int rank, int size) {
  const Index B = global.batch, T = global.seq;
  const ShardRange range = shard_range(B, rank, size);
  SORA_CHECK(static_cast<Index>(global.tokens.size()) == B * T,
             "shard_batch: ", global.tokens.size(), " tokens for ", B, " x ", T);
  const auto labels = static_cast<Index>(global.labels.size());
  SORA_CHECK(labels == 0 || labels == B * T || labels == B, "shard_batch: ", labels,
             " labels fit neither one per token (", B * T, ") nor one per sequence (", B, ")");
  const auto values = static_cast<Index>(global.values.size());
  SORA_CHECK(values % B == 0, "shard_batch: ", values, " regression values for ", B, " sequences");
  out.batch = range.count;
  out.seq = T;
  detail::copy_rows(out.tokens, global.tokens, T, range);
  detail::copy_rows(out.mask, global.mask, T, range);
  detail::copy_rows(out.token_types, global.token_types, T, range);
  detail::copy_rows(out.labels, global.labels, labels == B * T ? T : 1, range);
  detail::copy_rows(out.values, global.values, values / B, range);
}

// The number of loss terms the model's mean runs over: regression values, else labels that
// are not ignored.
inline Index loss_terms(const model::Batch& batch) {
  if (!batch.values.empty()) return static_cast<Index>(batch.values.size());
  Index count = 0;
  for (const int label : batch.labels) count += label != ops::kIgnoreIndex ? 1 : 0;
  return count;
}

// A batch type fit can shard: shard_batch and loss_terms exist for it (here or by
// argument-dependent lookup).
template <class Batch>
concept Shardable = requires(Batch& out, const Batch& in) {
  shard_batch(out, in, 0, 1);
  { loss_terms(in) } -> std::convertible_to<Index>;
};

}  // namespace sora::dist
