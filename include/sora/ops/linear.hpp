#pragma once
// Linear layer and the gated low-rank product (LoRA / SoRA / AdaLoRA share it).
//
// Backward contract: parameter gradients accumulate (+=) so that they can be summed over
// micro-batches; input gradients overwrite (=), except lowrank_backward's dinp, which
// accumulates (+=): the low-rank product is a branch added onto a base layer's output, so its
// input gradient is added onto the base layer's.
//
// Sizes: N tokens, C input channels, OC output channels, R rank.
//
// Aliasing: no output of these ops may share memory with an input (each is a matrix product
// that reads its inputs while writing); the ops check and throw.

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// out = inp weight^T + bias. bias may be absent<T>().
template <class T>
void linear_forward(MatrixRef<T> out,          // (N, OC)
                    ConstMatrixRef<T> inp,     // (N, C)
                    ConstMatrixRef<T> weight,  // (OC, C)
                    ConstMatrixRef<T> bias) {  // (1, OC) or absent
  const Index N = inp.rows(), C = inp.cols(), OC = weight.rows();
  detail::check_shape("linear_forward", "weight", weight, OC, C);
  detail::check_shape("linear_forward", "out", out, N, OC);
  detail::check_optional("linear_forward", "bias", bias, 1, OC);
  detail::check_no_alias("linear_forward", "out", out, "inp", inp);
  detail::check_no_alias("linear_forward", "out", out, "weight", weight);
  detail::check_no_alias("linear_forward", "out", out, "bias", bias);
  {
    GemmThreads threads(N, OC, C);
    out.noalias() = inp * weight.transpose();
  }
  if (present(bias)) out.rowwise() += bias.row(0);
}

template <class T>
void linear_forward(MatrixRef<T> out, ConstMatrixRef<T> inp, ConstMatrixRef<T> weight) {
  linear_forward<T>(out, inp, weight, absent<T>());
}

// y = x W^T + b  =>  dx = dy W (=),  dW += dy^T x,  db += sum_n dy[n].
// Any of dinp, dweight, dbias may be absent (a frozen weight has no gradient; the first layer
// needs no input gradient).
template <class T>
void linear_backward(MatrixRef<T> dinp,           // (N, C) or absent
                     MatrixRef<T> dweight,        // (OC, C) or absent
                     MatrixRef<T> dbias,          // (1, OC) or absent
                     ConstMatrixRef<T> dout,      // (N, OC)
                     ConstMatrixRef<T> inp,       // (N, C)
                     ConstMatrixRef<T> weight) {  // (OC, C)
  const Index N = inp.rows(), C = inp.cols(), OC = weight.rows();
  detail::check_shape("linear_backward", "weight", weight, OC, C);
  detail::check_shape("linear_backward", "dout", dout, N, OC);
  detail::check_optional("linear_backward", "dinp", dinp, N, C);
  detail::check_optional("linear_backward", "dweight", dweight, OC, C);
  detail::check_optional("linear_backward", "dbias", dbias, 1, OC);
  detail::check_no_alias("linear_backward", "dinp", dinp, "dout", dout);
  detail::check_no_alias("linear_backward", "dinp", dinp, "inp", inp);
  detail::check_no_alias("linear_backward", "dinp", dinp, "weight", weight);
  detail::check_no_alias("linear_backward", "dweight", dweight, "inp", inp);
  detail::check_no_alias("linear_backward", "dweight", dweight, "dout", dout);
  GemmThreads threads(N, C, OC);  // both products: N x OC x C multiply-adds
  if (present(dinp)) dinp.noalias() = dout * weight;
  if (present(dweight)) dweight.noalias() += dout.transpose() * inp;
  if (present(dbias)) dbias.row(0) += dout.colwise().sum();
}

// The gated low-rank product, added onto a base output (docs/design.md 4, SoRA eq. 2):
//   out += s * ((inp A^T) ⊙ g) B^T,   i.e. per token y += s B ((A x) ⊙ g).
// LoRA is g absent (fixed at 1, no gate gradient); AdaLoRA's P diag(E) Q is g = E.
// Saved for backward: h = inp A^T (the gate gradient needs it) and u = s (h ⊙ g) (the B
// gradient needs it; recomputing it would cost a pass over (N, R) per step, keeping it costs
// N R memory, which is small next to the (N, C) activations).
template <class T>
void lowrank_forward(MatrixRef<T> out,       // (N, OC)  accumulated into
                     MatrixRef<T> h,         // (N, R)   saved
                     MatrixRef<T> u,         // (N, R)   saved
                     ConstMatrixRef<T> inp,  // (N, C)
                     ConstMatrixRef<T> A,    // (R, C)
                     ConstMatrixRef<T> B,    // (OC, R)
                     ConstMatrixRef<T> g,    // (1, R) or absent
                     T scale) {
  const Index N = inp.rows(), C = inp.cols(), R = A.rows(), OC = B.rows();
  detail::check_shape("lowrank_forward", "A", A, R, C);
  detail::check_shape("lowrank_forward", "B", B, OC, R);
  detail::check_shape("lowrank_forward", "out", out, N, OC);
  detail::check_shape("lowrank_forward", "h", h, N, R);
  detail::check_shape("lowrank_forward", "u", u, N, R);
  detail::check_optional("lowrank_forward", "g", g, 1, R);
  detail::check_no_alias("lowrank_forward", "out", out, "inp", inp);
  detail::check_no_alias("lowrank_forward", "h", h, "inp", inp);
  detail::check_no_alias("lowrank_forward", "u", u, "inp", inp);
  GemmThreads threads(N, R, C + OC);  // (N, C) x (C, R) and (N, R) x (R, OC), by their sum
  h.noalias() = inp * A.transpose();
  if (present(g)) {
    u.array() = (h.array().rowwise() * g.row(0).array()) * scale;
  } else {
    u.array() = h.array() * scale;
  }
  out.noalias() += u * B.transpose();
}

// With u = s (h ⊙ g) and out += u B^T:
//   dB += dout^T u;   du = dout B;
//   dg += s * sum_n (du ⊙ h)[n]           (the gate gradient, per rank)
//   dh  = s * du ⊙ g;  dA += dh^T inp;  dinp += dh A.
// dh (N, R) is written (=): it is the gradient of the saved h, and the workspace of this
// backward. dinp accumulates (+=, see the contract above). dA, dB, dg, dinp may be absent; dg
// must be absent when g is.
template <class T>
void lowrank_backward(MatrixRef<T> dinp,       // (N, C) or absent, accumulated into
                      MatrixRef<T> dA,         // (R, C) or absent
                      MatrixRef<T> dB,         // (OC, R) or absent
                      MatrixRef<T> dg,         // (1, R) or absent
                      MatrixRef<T> dh,         // (N, R) written
                      ConstMatrixRef<T> dout,  // (N, OC)
                      ConstMatrixRef<T> inp,   // (N, C)
                      ConstMatrixRef<T> h,     // (N, R)
                      ConstMatrixRef<T> u,     // (N, R)
                      ConstMatrixRef<T> A,     // (R, C)
                      ConstMatrixRef<T> B,     // (OC, R)
                      ConstMatrixRef<T> g,     // (1, R) or absent
                      T scale) {
  const Index N = inp.rows(), C = inp.cols(), R = A.rows(), OC = B.rows();
  detail::check_shape("lowrank_backward", "A", A, R, C);
  detail::check_shape("lowrank_backward", "B", B, OC, R);
  detail::check_shape("lowrank_backward", "dout", dout, N, OC);
  detail::check_shape("lowrank_backward", "h", h, N, R);
  detail::check_shape("lowrank_backward", "u", u, N, R);
  detail::check_shape("lowrank_backward", "dh", dh, N, R);
  detail::check_optional("lowrank_backward", "g", g, 1, R);
  detail::check_optional("lowrank_backward", "dinp", dinp, N, C);
  detail::check_optional("lowrank_backward", "dA", dA, R, C);
  detail::check_optional("lowrank_backward", "dB", dB, OC, R);
  detail::check_optional("lowrank_backward", "dg", dg, 1, R);
  SORA_CHECK(present(g) || !present(dg), "lowrank_backward: dg has shape ", shape_of(dg),
             " but g is absent (shape ", shape_of(g), "): an ungated product has no gate gradient");
  GemmThreads threads(N, R, C + OC);
  if (present(dB)) dB.noalias() += dout.transpose() * u;
  dh.noalias() = dout * B;  // du
  if (present(g)) {
    if (present(dg)) dg.row(0) += scale * (dh.array() * h.array()).colwise().sum().matrix();
    dh.array() = (dh.array().rowwise() * g.row(0).array()) * scale;
  } else {
    dh *= scale;
  }
  if (present(dA)) dA.noalias() += dh.transpose() * inp;
  if (present(dinp)) dinp.noalias() += dh * A;
}

}  // namespace sora::ops
