#pragma once
// Group descriptors for the group operators (group.hpp) and regularizers. A group partitions
// the coefficients of a (rows, cols) x:
//   Groups::rows()              group i = row i                         (rows groups)
//   Groups::cols()              group j = column j                      (cols groups)
//   Groups::blocks(b)           consecutive runs of b coefficients in row-major (row, col)
//                               order, whatever the storage order        (size / b groups)
//   Groups::partition(ids, n)   explicit groups of row-major flat indices i*cols + j,
//                               validated once here: every index in [0, n) exactly once
// Rank triplets (row i of A, column i of B, g_i) span three tensors and live in triplet.hpp.

#include <cstddef>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora::prox {

class Groups {
 public:
  enum class Kind { Rows, Cols, Blocks, Partition };

  static Groups rows() { return Groups(Kind::Rows); }
  static Groups cols() { return Groups(Kind::Cols); }

  static Groups blocks(Index block_size) {
    SORA_CHECK(block_size > 0, "Groups::blocks: block size must be > 0, got ", block_size);
    Groups g(Kind::Blocks);
    g.block_size_ = block_size;
    return g;
  }

  // groups[k] lists the flat indices (i * cols + j) of group k; together they must cover
  // [0, size) exactly once. Empty groups are allowed (they hold nothing and stay empty).
  static Groups partition(const std::vector<std::vector<Index>>& groups, Index size) {
    SORA_CHECK(size >= 0, "Groups::partition: size must be >= 0, got ", size);
    Groups g(Kind::Partition);
    g.size_ = size;
    std::vector<Index> owner(static_cast<std::size_t>(size), Index(-1));  // (size) group of i
    g.offsets_.reserve(groups.size() + 1);
    g.offsets_.push_back(0);
    g.indices_.reserve(static_cast<std::size_t>(size));
    for (std::size_t k = 0; k < groups.size(); ++k) {
      for (const Index i : groups[k]) {
        SORA_CHECK(i >= 0 && i < size, "Groups::partition: index ", i, " in group ", k,
                   " is out of range [0, ", size, ")");
        Index& o = owner[static_cast<std::size_t>(i)];
        SORA_CHECK(o < 0, "Groups::partition: index ", i, " appears twice (in group ", o,
                   " and in group ", k, "); groups must not overlap");
        o = static_cast<Index>(k);
        g.indices_.push_back(i);
      }
      g.offsets_.push_back(static_cast<Index>(g.indices_.size()));
    }
    for (Index i = 0; i < size; ++i) {
      SORA_CHECK(owner[static_cast<std::size_t>(i)] >= 0, "Groups::partition: index ", i,
                 " is in no group; groups must cover every index in [0, ", size, ")");
    }
    return g;
  }

  Kind kind() const { return kind_; }
  Index block_size() const { return block_size_; }
  // Partition only: CSR layout, group k = indices()[offsets()[k] .. offsets()[k+1]).
  const std::vector<Index>& offsets() const { return offsets_; }
  const std::vector<Index>& indices() const { return indices_; }

  // Number of groups for an x of shape (rows, cols); throws if the descriptor does not fit
  // that shape (`op` names the caller in the message).
  Index count(Index rows, Index cols, const char* op = "groups") const {
    switch (kind_) {
      case Kind::Rows:
        return rows;
      case Kind::Cols:
        return cols;
      case Kind::Blocks:
        SORA_CHECK((rows * cols) % block_size_ == 0, op, ": x of shape (", rows, ", ", cols,
                   ") has ", rows * cols, " elements, not a multiple of the block size ",
                   block_size_);
        return rows * cols / block_size_;
      case Kind::Partition:
        SORA_CHECK(rows * cols == size_, op, ": the partition covers ", size_,
                   " indices but x of shape (", rows, ", ", cols, ") has ", rows * cols);
        return static_cast<Index>(offsets_.size()) - 1;
    }
    return 0;
  }

 private:
  explicit Groups(Kind kind) : kind_(kind) {}

  Kind kind_;
  Index block_size_ = 0;
  Index size_ = 0;
  std::vector<Index> offsets_;  // (groups + 1)
  std::vector<Index> indices_;  // (size)
};

namespace detail {

// Calls fn(group, i, j) for every coefficient (i, j) of a (rows, cols) x; the groups must
// already have been checked with count(). The generic (slow, any storage) path of every group
// kernel and of the group regularizers.
template <class Fn>
void visit_groups(const Groups& groups, Index rows, Index cols, Fn&& fn) {
  switch (groups.kind()) {
    case Groups::Kind::Rows:
    case Groups::Kind::Cols:
    case Groups::Kind::Blocks: {
      const bool by_row = groups.kind() == Groups::Kind::Rows;
      const bool by_col = groups.kind() == Groups::Kind::Cols;
      for (Index i = 0; i < rows; ++i) {
        for (Index j = 0; j < cols; ++j) {
          const Index g = by_row ? i : by_col ? j : (i * cols + j) / groups.block_size();
          fn(g, i, j);
        }
      }
      break;
    }
    case Groups::Kind::Partition: {
      const auto& off = groups.offsets();
      const auto& idx = groups.indices();
      for (std::size_t g = 0; g + 1 < off.size(); ++g) {
        for (Index p = off[g]; p < off[g + 1]; ++p) {
          const Index flat = idx[static_cast<std::size_t>(p)];
          fn(static_cast<Index>(g), flat / cols, flat % cols);
        }
      }
      break;
    }
  }
}

}  // namespace detail
}  // namespace sora::prox
