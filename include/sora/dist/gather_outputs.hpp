#pragma once
// Sharded evaluation: each rank computes the model's outputs for its block of the examples,
// and every rank gets all of them, in example order, to compute the metric from. Any metric
// works this way (accuracy, F1, Spearman's rank correlation need every prediction, not a sum
// of per-rank statistics), and every rank computes the same metric from the same numbers, so
// the decisions taken from it (early stopping, the best checkpoint) agree.
//
// The gather is one all_reduce_sum of a buffer that is zero outside each rank's block: every
// element has one non-zero term, so the sum is exact.

#include <cstddef>
#include <span>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/dist/communicator.hpp"
#include "sora/dist/shard.hpp"

namespace sora::dist {

// compute(first, count, out) writes the `width` outputs of each of the examples
// [first, first + count) into out (count x width, row-major). Returns (examples x width).
template <Communicator C, class Compute>
std::vector<double> gather_outputs(C& comm, std::size_t examples, std::size_t width,
                                   Compute&& compute) {
  std::vector<double> all(examples * width, 0.0);  // (examples, width)
  if (examples == 0) return all;
  // Fewer examples than ranks: the first `examples` ranks take one each, the rest none.
  const int active =
      comm.size() <= static_cast<int>(examples) ? comm.size() : static_cast<int>(examples);
  if (comm.rank() < active) {
    const ShardRange r = shard_range(static_cast<Index>(examples), comm.rank(), active);
    const auto first = static_cast<std::size_t>(r.first);
    const auto count = static_cast<std::size_t>(r.count);
    compute(first, count, std::span<double>(all).subspan(first * width, count * width));
  }
  comm.all_reduce_sum(std::span<double>(all));
  return all;
}

}  // namespace sora::dist
