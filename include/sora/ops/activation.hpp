#pragma once
// GELU (tanh approximation and exact erf form), tanh and row-wise softmax.
//
// Backward contract: input gradients overwrite (=); these ops have no parameters.
//
// Sizes: N rows, C columns.

#include <algorithm>
#include <cmath>
#include <numbers>

#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>  // vectorized erf (Eigen's own module)

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

enum class Gelu {
  tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GPT-2's / BERT-TF's
  exact  // x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), PyTorch's default
};

namespace detail {
template <class T>
struct GeluConstants {
  static constexpr T k = T(0.7978845608028654);  // sqrt(2 / pi)
  static constexpr T c = T(0.044715);
  static constexpr T inv_sqrt2 = T(0.7071067811865476);
  static constexpr T inv_sqrt_2pi = T(0.3989422804014327);
};
}  // namespace detail

template <class T>
void gelu_forward(MatrixRef<T> out,       // (N, C)
                  ConstMatrixRef<T> inp,  // (N, C)
                  Gelu kind = Gelu::tanh) {
  detail::check_shape("gelu_forward", "out", out, inp.rows(), inp.cols());
  using K = detail::GeluConstants<T>;
  if (kind == Gelu::tanh) {
    // Eigen's array tanh is vectorized for float (a rational approximation good to a few ulp);
    // std::tanh one element at a time made GELU a fifth of a LoRA training step. Row by row,
    // in parallel: the rows are independent and each is a contiguous stretch of memory.
    parallel_for(
        0, inp.rows(),
        [&](Index n) {
          const auto x = inp.row(n).array();
          out.row(n).array() = T(0.5) * x * (T(1) + (K::k * (x + K::c * x.cube())).tanh());
        },
        static_cast<double>(inp.cols()));
    return;
  }
  // Exact form. In float, Eigen's vectorized erf (a rational approximation good to a few ulp,
  // the one XLA uses): std::erf one element at a time was a twelfth of a MiniLM training step.
  // In double, std::erf: double runs are the reference of gradient checks.
  parallel_for(
      0, inp.rows(),
      [&](Index n) {
        const auto x = inp.row(n).array();
        if constexpr (std::is_same_v<T, float>) {
          out.row(n).array() = T(0.5) * x * (T(1) + (x * K::inv_sqrt2).erf());
        } else {
          for (Index c = 0; c < inp.cols(); ++c)
            out(n, c) = T(0.5) * x(c) * (T(1) + std::erf(x(c) * K::inv_sqrt2));
        }
      },
      static_cast<double>(inp.cols()));
}

// The epilogue of the MLP's first projection: pre += bias (broadcast over the rows), then
// act = gelu(pre); pre keeps the biased value, which gelu_backward reads. One pass over
// (N, C), as on the GPU: each row gets its bias and its activation while it is in cache,
// instead of a bias pass that reads and writes the whole activation before the GELU pass.
template <class T>
void bias_gelu_forward(MatrixRef<T> act,        // (N, C)
                       MatrixRef<T> pre,        // (N, C) in: x W^T (+ adapter), out: + bias
                       ConstMatrixRef<T> bias,  // (1, C)
                       Gelu kind = Gelu::tanh) {
  detail::check_shape("bias_gelu_forward", "bias", bias, 1, pre.cols());
  detail::check_shape("bias_gelu_forward", "act", act, pre.rows(), pre.cols());
  parallel_for(
      0, pre.rows(),
      [&](Index n) {
        pre.row(n) += bias.row(0);
        // gelu_forward on this one row: the same arithmetic, so the results are bit-identical.
        gelu_forward<T>(act.row(n), pre.row(n), kind);
      },
      static_cast<double>(pre.cols()));
}

// tanh form: with t = tanh(k (x + c x^3)),
//   d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
// exact form: d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
template <class T>
void gelu_backward(MatrixRef<T> dinp,       // (N, C)
                   ConstMatrixRef<T> dout,  // (N, C)
                   ConstMatrixRef<T> inp,   // (N, C)
                   Gelu kind = Gelu::tanh) {
  detail::check_shape("gelu_backward", "dout", dout, inp.rows(), inp.cols());
  detail::check_shape("gelu_backward", "dinp", dinp, inp.rows(), inp.cols());
  using K = detail::GeluConstants<T>;
  if (kind == Gelu::tanh) {
    // Vectorized as the forward, with 1 - t^2 = sech^2(u) = 4 s / (1 + s)^2, s = exp(-2|u|):
    // subtracting a rounded t^2 from 1 cancels badly for |u| > 2 (an error of 4e-6 in float
    // with Eigen's rational tanh), the exp form does not. u and s go through stack buffers of
    // at most kChunk columns (no heap allocation per call, and dinp may still alias dout).
    constexpr Index kChunk = 256;
    parallel_for(
        0, inp.rows(),
        [&](Index n) {
          Eigen::Array<T, 1, Eigen::Dynamic, Eigen::RowMajor, 1, kChunk> u, s;
          for (Index c0 = 0; c0 < inp.cols(); c0 += kChunk) {
            const Index len = std::min(kChunk, inp.cols() - c0);
            const auto x = inp.row(n).segment(c0, len).array();
            u = K::k * (x + K::c * x.cube());
            s = (T(-2) * u.abs()).exp();
            dinp.row(n).segment(c0, len).array() =
                (T(0.5) * (T(1) + u.tanh()) +
                 T(2) * x * (s / (T(1) + s).square()) * K::k * (T(1) + T(3) * K::c * x.square())) *
                dout.row(n).segment(c0, len).array();
          }
        },
        static_cast<double>(inp.cols()));
    return;
  }
  // Exact form, vectorized in float as the forward (dinp may alias dout: each element is read
  // before it is written).
  parallel_for(
      0, inp.rows(),
      [&](Index n) {
        const auto x = inp.row(n).array();
        if constexpr (std::is_same_v<T, float>) {
          dinp.row(n).array() = (T(0.5) * (T(1) + (x * K::inv_sqrt2).erf()) +
                                 x * K::inv_sqrt_2pi * (T(-0.5) * x.square()).exp()) *
                                dout.row(n).array();
        } else {
          for (Index c = 0; c < inp.cols(); ++c) {
            const T grad = T(0.5) * (T(1) + std::erf(x(c) * K::inv_sqrt2)) +
                           x(c) * K::inv_sqrt_2pi * std::exp(T(-0.5) * x(c) * x(c));
            dinp(n, c) = grad * dout(n, c);
          }
        }
      },
      static_cast<double>(inp.cols()));
}

// probs[n] = softmax(logits[n]), shifted by the row maximum so that exp never overflows.
template <class T>
void softmax_forward(MatrixRef<T> probs,          // (N, C)
                     ConstMatrixRef<T> logits) {  // (N, C)
  detail::check_shape("softmax_forward", "probs", probs, logits.rows(), logits.cols());
  for (Index n = 0; n < logits.rows(); ++n) {
    const T m = logits.row(n).maxCoeff();
    probs.row(n).array() = (logits.row(n).array() - m).exp();
    probs.row(n) /= probs.row(n).sum();
  }
}

// The softmax Jacobian is diag(p) - p p^T, so dlogits = p ⊙ (dprobs - <dprobs, p>).
template <class T>
void softmax_backward(MatrixRef<T> dlogits,       // (N, C)
                      ConstMatrixRef<T> dprobs,   // (N, C)
                      ConstMatrixRef<T> probs) {  // (N, C)
  detail::check_shape("softmax_backward", "dprobs", dprobs, probs.rows(), probs.cols());
  detail::check_shape("softmax_backward", "dlogits", dlogits, probs.rows(), probs.cols());
  for (Index n = 0; n < probs.rows(); ++n) {
    const T dot = dprobs.row(n).dot(probs.row(n));
    dlogits.row(n).array() = probs.row(n).array() * (dprobs.row(n).array() - dot);
  }
}

// out = tanh(inp) (the classification head's activation).
template <class T>
void tanh_forward(MatrixRef<T> out,         // (N, C)
                  ConstMatrixRef<T> inp) {  // (N, C)
  detail::check_shape("tanh_forward", "out", out, inp.rows(), inp.cols());
  out.array() = inp.array().tanh();
}

// dinp = dout ⊙ (1 - out^2), from the saved output (tanh' = 1 - tanh^2). dinp may alias dout.
template <class T>
void tanh_backward(MatrixRef<T> dinp,        // (N, C)
                   ConstMatrixRef<T> dout,   // (N, C)
                   ConstMatrixRef<T> out) {  // (N, C) tanh_forward's output
  detail::check_shape("tanh_backward", "dout", dout, out.rows(), out.cols());
  detail::check_shape("tanh_backward", "dinp", dinp, out.rows(), out.cols());
  dinp.array() = dout.array() * (T(1) - out.array().square());
}

}  // namespace sora::ops
