#pragma once
// Row gather and its adjoint: a sequence head reads one token per sequence (the first token,
// or the last real one), and only those rows receive a gradient. Mean pooling and its adjoint:
// a sentence embedding is the mean of its sequence's real (unmasked) tokens, as
// sentence-transformers' mean pooling computes it.
//
// Backward contract: scatter_rows and mean_pool_backward overwrite (=) the whole input
// gradient (zero where a token was not pooled).
//
// Sizes: N = B T tokens, B gathered rows (one per sequence), T positions, C channels.

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

// out[b] = sum_t m[b, t] inp[b T + t] / sum_t m[b, t], m the mask (1 real, 0 padding; all 1
// when mask is empty). A sequence with no real token is an error: its mean is undefined.
template <class T>
void mean_pool_forward(MatrixRef<T> out,             // (B, C)
                       ConstMatrixRef<T> inp,        // (N, C)
                       Index T_len,                  // T
                       std::span<const float> mask)  // (B T) or empty
{
  SORA_CHECK(T_len > 0 && inp.rows() % T_len == 0, "mean_pool_forward: ", inp.rows(),
             " rows are not whole sequences of length ", T_len);
  const Index B = inp.rows() / T_len;
  detail::check_shape("mean_pool_forward", "out", out, B, inp.cols());
  SORA_CHECK(mask.empty() || static_cast<Index>(mask.size()) == inp.rows(),
             "mean_pool_forward: mask of ", mask.size(), " entries for ", inp.rows(), " tokens");
  for (Index b = 0; b < B; ++b) {
    out.row(b).setZero();
    T count = T(0);
    for (Index t = 0; t < T_len; ++t) {
      const T m =
          mask.empty() ? T(1) : static_cast<T>(mask[static_cast<std::size_t>(b * T_len + t)]);
      if (m == T(0)) continue;
      out.row(b) += m * inp.row(b * T_len + t);
      count += m;
    }
    SORA_CHECK(count > T(0), "mean_pool_forward: sequence ", b, " has no unmasked token");
    out.row(b) /= count;
  }
}

// dinp[b T + t] = m[b, t] dout[b] / sum_t m[b, t]: each pooled token gets its share.
template <class T>
void mean_pool_backward(MatrixRef<T> dinp,            // (N, C)
                        ConstMatrixRef<T> dout,       // (B, C)
                        Index T_len,                  // T
                        std::span<const float> mask)  // (B T) or empty
{
  SORA_CHECK(T_len > 0 && dinp.rows() == dout.rows() * T_len, "mean_pool_backward: dinp has ",
             dinp.rows(), " rows, not ", dout.rows(), " sequences x ", T_len);
  detail::check_shape("mean_pool_backward", "dout", dout, dout.rows(), dinp.cols());
  SORA_CHECK(mask.empty() || static_cast<Index>(mask.size()) == dinp.rows(),
             "mean_pool_backward: mask of ", mask.size(), " entries for ", dinp.rows(), " tokens");
  for (Index b = 0; b < dout.rows(); ++b) {
    T count = T(0);
    for (Index t = 0; t < T_len; ++t)
      count += mask.empty() ? T(1) : static_cast<T>(mask[static_cast<std::size_t>(b * T_len + t)]);
    SORA_CHECK(count > T(0), "mean_pool_backward: sequence ", b, " has no unmasked token");
    for (Index t = 0; t < T_len; ++t) {
      const T m =
          mask.empty() ? T(1) : static_cast<T>(mask[static_cast<std::size_t>(b * T_len + t)]);
      dinp.row(b * T_len + t) = (m / count) * dout.row(b);
    }
  }
}

}  // namespace sora::ops
