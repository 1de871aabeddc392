#pragma once
// bfloat16 storage for frozen weights: a float's sign, its 8 exponent bits and the top 7 of its
// 23 mantissa bits, i.e. the upper half of the float's bit pattern. The exponent range is a
// float's, so every weight of a trained model fits (no overflow, no scaling); what is lost is
// precision: a relative rounding error of at most 2^-9 (about 0.2%) per weight.
//
// bf16 is storage only here: a frozen weight is kept as Bf16Matrix and widened into an fp32
// buffer right before the product that reads it (nn/common.hpp, detail::weight_scratch), so that
// every GEMM, every activation, gradient and optimizer state stays fp32. Widening is exact (a bf16
// value is a float), so a model with a bf16 base computes exactly what the fp32 model whose
// weights were rounded to bf16 computes.
//
// Rounding is to nearest, ties to even (what PyTorch's .to(torch.bfloat16) does), so that weights
// stored here and weights stored by PyTorch have the same bits. NaN stays NaN (a quiet NaN of
// the same sign); infinities stay infinite; a finite float beyond bf16's largest finite value
// (3.39e38) rounds to infinity, as round-to-nearest says.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/core/threading.hpp"

namespace sora {

// How a parameter's value is stored: as the model's scalar (fp32 for a float model) or, for a
// frozen weight, as bf16 (half the bytes).
enum class Precision : std::uint8_t { fp32, bf16 };

inline const char* precision_name(Precision p) {
  return p == Precision::bf16 ? "bf16" : "fp32";
}

// The nearest bf16 to x, ties to even.
inline std::uint16_t float_to_bf16(float x) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep the sign and the top of the payload and set the quiet bit, so that cutting the
    // low payload bits can never leave an all-zero mantissa (which would read as infinity).
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  }
  // Adding 0x7fff rounds the dropped half up when it is above one half; the kept half's lowest
  // bit adds the last 1 on a tie exactly when rounding up makes the result even.
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// The float a bf16 stands for (exact).
inline float bf16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

// The value x would have after a round trip through bf16: what a bf16 base computes with.
inline float round_to_bf16(float x) {
  return bf16_to_float(float_to_bf16(x));
}

// A (rows, cols) row-major matrix of bf16 bits.
class Bf16Matrix {
 public:
  Bf16Matrix() = default;

  // Rounds every entry of a float matrix to bf16.
  explicit Bf16Matrix(const Matrix<float>& m)
      : rows_(m.rows()), cols_(m.cols()), bits_(static_cast<std::size_t>(m.size())) {
    const float* src = m.data();
    std::uint16_t* dst = bits_.data();
    parallel_for(
        0, rows_,
        [&](Index i) {
          for (Index j = 0; j < cols_; ++j) dst[i * cols_ + j] = float_to_bf16(src[i * cols_ + j]);
        },
        static_cast<double>(cols_));
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index size() const { return rows_ * cols_; }
  // What the matrix holds: 2 bytes per entry.
  std::size_t bytes() const { return bits_.size() * sizeof(std::uint16_t); }

  // dst = the matrix widened to float. dst is (rows, cols): a matrix, or a block of whole rows of
  // a row-major one (the stacked weights of nn/stacked_projections.hpp).
  template <class Dst>
  void widen_to(Dst&& dst) const {
    static_assert(std::remove_cvref_t<Dst>::IsRowMajor, "Bf16Matrix::widen_to writes whole rows");
    SORA_CHECK(dst.rows() == rows_ && dst.cols() == cols_, "Bf16Matrix::widen_to: destination ",
               shape_of(dst), " is not (", rows_, ", ", cols_, ")");
    if (cols_ == 0) return;
    const std::uint16_t* src = bits_.data();
    parallel_for(
        0, rows_,
        [&](Index i) {
          float* out = &dst(i, 0);  // a row of a row-major destination is contiguous
          for (Index j = 0; j < cols_; ++j) out[j] = bf16_to_float(src[i * cols_ + j]);
        },
        static_cast<double>(cols_));
  }

  // out[0, cols) = row i widened (an embedding lookup reads single rows).
  void widen_row(Index i, float* out) const {
    const std::uint16_t* src = bits_.data() + i * cols_;
    for (Index j = 0; j < cols_; ++j) out[j] = bf16_to_float(src[j]);
  }

  Matrix<float> to_float() const {
    Matrix<float> m(rows_, cols_);
    widen_to(m);
    return m;
  }

 private:
  Index rows_ = 0, cols_ = 0;
  std::vector<std::uint16_t> bits_;  // (rows, cols) row-major
};

}  // namespace sora
