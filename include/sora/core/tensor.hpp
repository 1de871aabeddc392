#pragma once
// Tensor aliases. Activations are row-major (N, C) matrices with N = batch * seq tokens;
// a linear weight is (out, in) as in PyTorch, so y = x W^T + b and weights exchange with
// PyTorch / PEFT files without transposes. Vectors (biases, gates, LayerNorm scales) are
// stored as (1, n) rows so that they broadcast over the tokens of an activation.

#include <Eigen/Core>
#include <sstream>
#include <string>

namespace sora {

using Index = Eigen::Index;

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using Array = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <class T>
using MatrixRef = Eigen::Ref<Matrix<T>>;
template <class T>
using ConstMatrixRef = Eigen::Ref<const Matrix<T>>;

using MatrixF = Matrix<float>;
using MatrixD = Matrix<double>;

// "(rows, cols)", for error messages.
template <class Derived>
std::string shape_of(const Eigen::EigenBase<Derived>& m) {
  std::ostringstream out;
  out << '(' << m.rows() << ", " << m.cols() << ')';
  return out.str();
}

}  // namespace sora
