#pragma once
// Shared pieces of ops/: "absent" optional arguments, the shape checks every public entry
// runs, and the aliasing check of the outputs that must not share memory with an input.
//
// Calling convention (llm.c's): outputs, saved values, inputs, weights, sizes. Every op takes
// Eigen::Ref arguments so that blocks and maps of row-major matrices pass without copies; a
// Ref does not deduce the scalar, so ops are called as `op<float>(...)` / `op<double>(...)`.
// An optional argument (a bias, a gate, a gradient nobody wants) is passed as absent<T>(), a
// 0 x 0 map: "no bias" and "no gradient wanted" then need no extra overloads or flags.

#include <functional>
#include <string>
#include <utility>

#include "sora/core/backend.hpp"
#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora {

namespace ops {

// The "not passed" value of an optional argument.
template <class T>
MatrixMap<T> absent() {
  return MatrixMap<T>(nullptr, 0, 0);
}

template <class Derived>
bool present(const Eigen::EigenBase<Derived>& m) {
  return m.size() != 0;
}

namespace detail {

// Throws "<op>: <what> has shape (a, b), expected (c, d)"; -1 in an expected size means any.
template <class Derived>
void check_shape(const char* op, const char* what, const Eigen::EigenBase<Derived>& m, Index rows,
                 Index cols) {
  const bool ok = (rows < 0 || m.rows() == rows) && (cols < 0 || m.cols() == cols);
  if (!ok) [[unlikely]] {
    auto dim = [](Index d) { return d < 0 ? std::string("*") : std::to_string(d); };
    ::sora::detail::throw_error(op, ": ", what, " has shape ", shape_of(m), ", expected (",
                                dim(rows), ", ", dim(cols), ")");
  }
}

// Same, for an optional argument: absent is always fine.
template <class Derived>
void check_optional(const char* op, const char* what, const Eigen::EigenBase<Derived>& m,
                    Index rows, Index cols) {
  if (present(m)) check_shape(op, what, m, rows, cols);
}

// The addresses a matrix view spans, [first, last): its storage with the outer stride.
template <class M>
std::pair<const void*, const void*> span_of(const M& m) {
  if (m.size() == 0) return {nullptr, nullptr};
  const auto* first = m.data();
  return {first, first + m.outerStride() * (m.outerSize() - 1) + m.innerSize()};
}

// Throws "<op>: <out> must not alias <in>" when the two views share memory. Ops whose
// output is written while an input is still being read (matrix products, for one) call it;
// ops that may be called in place say so in their comment instead.
template <class Out, class In>
void check_no_alias(const char* op, const char* out_name, const Out& out, const char* in_name,
                    const In& in) {
  if (!present(out) || !present(in)) return;
  const auto [a0, a1] = span_of(out);
  const auto [b0, b1] = span_of(in);
  const auto lt = std::less<const void*>();
  if (lt(a0, b1) && lt(b0, a1)) [[unlikely]]
    ::sora::detail::throw_error(op, ": ", out_name, " must not alias ", in_name,
                                " (they share memory); pass a separate output");
}

}  // namespace detail
}  // namespace ops
}  // namespace sora
