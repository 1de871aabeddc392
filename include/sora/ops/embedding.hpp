#pragma once
// Token embedding lookup and learned position embedding.
//
// Backward contract: parameter gradients accumulate (+=); there is no input gradient (token
// ids are integers). position_embedding_forward adds onto its output (+=): positions are
// summed onto the token embeddings, the way a residual adds onto its stream.
//
// Sizes: N = B * T tokens, T sequence length, C channels, V vocabulary, P position table size.

#include <span>

#include "sora/core/bf16.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

namespace detail {
inline void check_tokens(const char* op, std::span<const int> tokens, Index V) {
  for (std::size_t n = 0; n < tokens.size(); ++n) {
    SORA_CHECK(tokens[n] >= 0 && tokens[n] < V, op, ": token ", tokens[n], " at position ", n,
               " is outside the vocabulary [0, ", V, ")");
  }
}
}  // namespace detail

// out[n] = wte[tokens[n]].
template <class T>
void embedding_forward(MatrixRef<T> out,             // (N, C)
                       std::span<const int> tokens,  // (N)
                       ConstMatrixRef<T> wte) {      // (V, C)
  const Index N = static_cast<Index>(tokens.size()), C = wte.cols(), V = wte.rows();
  detail::check_shape("embedding_forward", "out", out, N, C);
  detail::check_tokens("embedding_forward", tokens, V);
  for (Index n = 0; n < N; ++n) out.row(n) = wte.row(tokens[n]);
}

// The same from a table stored in bf16 (a frozen embedding, model/frozen_base.hpp): each row
// looked up is widened straight into out, so the table is never widened whole.
inline void embedding_forward_bf16(MatrixRef<float> out,         // (N, C)
                                   std::span<const int> tokens,  // (N)
                                   const Bf16Matrix& wte) {      // (V, C)
  const Index N = static_cast<Index>(tokens.size()), C = wte.cols(), V = wte.rows();
  detail::check_shape("embedding_forward", "out", out, N, C);
  detail::check_tokens("embedding_forward", tokens, V);
  for (Index n = 0; n < N; ++n) wte.widen_row(tokens[n], &out(n, 0));
}

// dwte[tokens[n]] += dout[n] (sequential: repeated tokens add into the same row).
template <class T>
void embedding_backward(MatrixRef<T> dwte,              // (V, C)
                        ConstMatrixRef<T> dout,         // (N, C)
                        std::span<const int> tokens) {  // (N)
  const Index N = static_cast<Index>(tokens.size()), C = dwte.cols(), V = dwte.rows();
  detail::check_shape("embedding_backward", "dout", dout, N, C);
  detail::check_tokens("embedding_backward", tokens, V);
  for (Index n = 0; n < N; ++n) dwte.row(tokens[n]) += dout.row(n);
}

// out[b*T + t] += wpe[t] for every sequence b.
template <class Scalar>
void position_embedding_forward(MatrixRef<Scalar> out,       // (N, C) accumulated into
                                ConstMatrixRef<Scalar> wpe,  // (P, C), P >= T
                                Index T) {
  const Index N = out.rows(), C = wpe.cols();
  SORA_CHECK(T > 0 && T <= wpe.rows() && N % T == 0, "position_embedding_forward: out ",
             shape_of(out), " is not a whole number of sequences of length ", T,
             " within the position table ", shape_of(wpe));
  detail::check_shape("position_embedding_forward", "out", out, N, C);
  for (Index n = 0; n < N; ++n) out.row(n) += wpe.row(n % T);
}

// dwpe[t] += sum_b dout[b*T + t].
template <class Scalar>
void position_embedding_backward(MatrixRef<Scalar> dwpe,       // (P, C)
                                 ConstMatrixRef<Scalar> dout,  // (N, C)
                                 Index T) {
  const Index N = dout.rows(), C = dwpe.cols();
  SORA_CHECK(T > 0 && T <= dwpe.rows() && N % T == 0, "position_embedding_backward: dout ",
             shape_of(dout), " is not a whole number of sequences of length ", T,
             " within the position table ", shape_of(dwpe));
  detail::check_shape("position_embedding_backward", "dout", dout, N, C);
  for (Index n = 0; n < N; ++n) dwpe.row(n % T) += dout.row(n);
}

}  // namespace sora::ops
