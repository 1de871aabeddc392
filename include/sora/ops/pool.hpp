#pragma once
// Row gather and its adjoint: a sequence head reads one token per sequence (the first token,
// or the last real one), and only those rows receive a gradient.
//
// Backward contract: scatter_rows overwrites (=) the whole input gradient: zero everywhere,
// the head's gradient in the gathered rows.
//
// Sizes: N tokens, B gathered rows (one per sequence), C channels.

#include <span>

#include "sora/ops/common.hpp"

namespace sora::ops {

namespace detail {
inline void check_rows(const char* op, std::span<const int> rows, Index N) {
  for (std::size_t b = 0; b < rows.size(); ++b) {
    SORA_CHECK(rows[b] >= 0 && rows[b] < N, op, ": row index ", rows[b], " at position ", b,
               " is outside [0, ", N, ")");
  }
}
}  // namespace detail

// out[b] = inp[rows[b]].
template <class T>
void gather_rows(MatrixRef<T> out,           // (B, C)
                 ConstMatrixRef<T> inp,      // (N, C)
                 std::span<const int> rows)  // (B)
{
  const Index B = static_cast<Index>(rows.size());
  detail::check_shape("gather_rows", "out", out, B, inp.cols());
  detail::check_rows("gather_rows", rows, inp.rows());
  for (Index b = 0; b < B; ++b) out.row(b) = inp.row(rows[static_cast<std::size_t>(b)]);
}

// dinp = 0, then dinp[rows[b]] += dout[b] (a row gathered twice collects both gradients).
template <class T>
void scatter_rows(MatrixRef<T> dinp,          // (N, C)
                  ConstMatrixRef<T> dout,     // (B, C)
                  std::span<const int> rows)  // (B)
{
  const Index B = static_cast<Index>(rows.size());
  detail::check_shape("scatter_rows", "dout", dout, B, dinp.cols());
  detail::check_rows("scatter_rows", rows, dinp.rows());
  dinp.setZero();
  for (Index b = 0; b < B; ++b) dinp.row(rows[static_cast<std::size_t>(b)]) += dout.row(b);
}

}  // namespace sora::ops
