#pragma once
// Element types of tensor files (safetensors names) and the conversions between them and
// float / double. Narrowing conversions round to nearest, ties to even, the IEEE default
// and what PyTorch does, so a tensor written here reads back in PyTorch as it would have
// had PyTorch done the cast. The half formats are rounded straight from double: rounding
// through float first would round twice and can land one ulp off on ties.

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <type_traits>

#include "sora/core/bf16.hpp"
#include "sora/core/error.hpp"

namespace sora::io {

// The files are little-endian; on such a host their bytes are the in-memory values, which
// is what lets tensors be read straight out of a memory map.
static_assert(std::endian::native == std::endian::little,
              "sora::io reads and writes little-endian tensor files on little-endian hosts only");

// The floating-point types sora reads and writes, then the integer types that checkpoints carry
// beside their weights (BERT's I64 `position_ids` buffer, say): listed and laid out like any
// tensor, so that such a file opens, but never converted to weights (is_floating).
enum class Dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

constexpr bool is_floating(Dtype dtype) {
  return dtype == Dtype::F64 || dtype == Dtype::F32 || dtype == Dtype::F16 || dtype == Dtype::BF16;
}

constexpr std::string_view dtype_name(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
      return "F64";
    case Dtype::F32:
      return "F32";
    case Dtype::F16:
      return "F16";
    case Dtype::BF16:
      return "BF16";
    case Dtype::I64:
      return "I64";
    case Dtype::I32:
      return "I32";
    case Dtype::I16:
      return "I16";
    case Dtype::I8:
      return "I8";
    case Dtype::U8:
      return "U8";
    case Dtype::BOOL:
      return "BOOL";
  }
  return "?";
}

constexpr std::size_t dtype_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
    case Dtype::I64:
      return 8;
    case Dtype::F32:
    case Dtype::I32:
      return 4;
    case Dtype::F16:
    case Dtype::BF16:
    case Dtype::I16:
      return 2;
    case Dtype::I8:
    case Dtype::U8:
    case Dtype::BOOL:
      return 1;
  }
  return 0;
}

constexpr std::optional<Dtype> parse_dtype(std::string_view name) {
  for (Dtype d : {Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::I32,
                  Dtype::I16, Dtype::I8, Dtype::U8, Dtype::BOOL}) {
    if (dtype_name(d) == name) return d;
  }
  return std::nullopt;
}

// The dtype whose bytes are exactly a T in memory (what a zero-copy view needs).
template <class T>
constexpr Dtype native_dtype() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "tensor files hold float or double values");
  return std::is_same_v<T, float> ? Dtype::F32 : Dtype::F64;
}

namespace dtype_detail {

// A binary16-like format with E exponent bits and M stored mantissa bits.
template <int E, int M>
struct SmallFloat {
  static constexpr int bias = (1 << (E - 1)) - 1;
  static constexpr int emin = 1 - bias;  // exponent of the smallest normal
  static constexpr std::uint32_t exp_mask = (1u << E) - 1;
  static constexpr std::uint32_t inf_bits = exp_mask << M;
  static constexpr std::uint32_t sign_bit = 1u << (E + M);
  static constexpr std::uint32_t quiet_bit = 1u << (M - 1);

  // Round x to the nearest representable value, ties to even.
  static std::uint16_t encode(double x) {
    const auto bits = std::bit_cast<std::uint64_t>(x);
    const std::uint32_t sign = (bits >> 63) ? sign_bit : 0u;
    const int biased = static_cast<int>((bits >> 52) & 0x7ff);
    const std::uint64_t frac = bits & ((std::uint64_t{1} << 52) - 1);
    if (biased == 0x7ff) {
      if (frac == 0) return static_cast<std::uint16_t>(sign | inf_bits);
      // Keep the top payload bits and force the quiet bit: a NaN never becomes infinity.
      const auto payload = static_cast<std::uint32_t>(frac >> (52 - M));
      return static_cast<std::uint16_t>(sign | inf_bits | quiet_bit | payload);
    }
    // Double subnormals (and zero) are far below half the smallest target subnormal.
    if (biased == 0) return static_cast<std::uint16_t>(sign);
    const int exponent = biased - 1023;
    const std::uint64_t significand = frac | (std::uint64_t{1} << 52);  // 53 bits
    // Normal targets keep M bits after the point; subnormals lose one more per binade.
    int shift = 52 - M;
    if (exponent < emin) shift += emin - exponent;
    // Below half the smallest subnormal: rounds to zero (the shift would also overflow).
    if (shift > 53) return static_cast<std::uint16_t>(sign);
    std::uint64_t q = significand >> shift;
    const std::uint64_t rest = significand & ((std::uint64_t{1} << shift) - 1);
    const std::uint64_t half = std::uint64_t{1} << (shift - 1);
    if (rest > half || (rest == half && (q & 1))) ++q;
    // q holds the implicit bit for normals; adding the exponent field on top lets a
    // rounding carry move into the next binade (and subnormals into the normals).
    std::uint64_t magnitude = q;
    if (exponent >= emin) magnitude += static_cast<std::uint64_t>(exponent + bias - 1) << M;
    if (magnitude >= inf_bits) return static_cast<std::uint16_t>(sign | inf_bits);
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(magnitude));
  }

  // Exact: every value of the small format is a double.
  static double decode(std::uint16_t h) {
    const double sign = (h & sign_bit) ? -1.0 : 1.0;
    const std::uint32_t e = (h >> M) & exp_mask;
    const std::uint32_t m = h & ((1u << M) - 1);
    if (e == exp_mask) {
      return m == 0 ? sign * std::numeric_limits<double>::infinity()
                    : std::copysign(std::numeric_limits<double>::quiet_NaN(), sign);
    }
    if (e == 0) return sign * std::ldexp(static_cast<double>(m), emin - M);
    return sign * std::ldexp(static_cast<double>(m | (1u << M)), static_cast<int>(e) - bias - M);
  }
};

using Half = SmallFloat<5, 10>;
using BFloat = SmallFloat<8, 7>;

}  // namespace dtype_detail

inline std::uint16_t double_to_f16(double x) {
  return dtype_detail::Half::encode(x);
}
inline std::uint16_t double_to_bf16(double x) {
  return dtype_detail::BFloat::encode(x);
}
inline double f16_to_double(std::uint16_t h) {
  return dtype_detail::Half::decode(h);
}
// bfloat16 is the top half of a float, so widening is a shift: core/bf16.hpp's, which the
// bf16 frozen base uses too.
using sora::bf16_to_float;

// Converts n values stored as `dtype` at `src` (little-endian, any alignment) to T. Integer
// tensors are not weights: reading one as T is an error (callers name the tensor first).
template <class T>
void decode_values(Dtype dtype, const std::byte* src, T* out, std::size_t n) {
  SORA_CHECK(is_floating(dtype), "a ", dtype_name(dtype),
             " tensor holds integers, not floating-point values");
  switch (dtype) {
    case Dtype::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        out[i] = static_cast<T>(v);
      }
      return;
    case Dtype::F32:
      for (std::size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, src + 4 * i, 4);
        out[i] = static_cast<T>(v);
      }
      return;
    case Dtype::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = static_cast<T>(f16_to_double(h));
      }
      return;
    case Dtype::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = static_cast<T>(bf16_to_float(h));
      }
      return;
    default:
      return;
  }
}

// Stores one value as `dtype` at dst (dtype_size(dtype) bytes, any alignment).
template <class T>
void encode_value(Dtype dtype, T value, std::byte* dst) {
  SORA_CHECK(is_floating(dtype), "sora writes floating-point tensors only, not ",
             dtype_name(dtype));
  switch (dtype) {
    case Dtype::F64: {
      const auto v = static_cast<double>(value);
      std::memcpy(dst, &v, 8);
      return;
    }
    case Dtype::F32: {
      const auto v = static_cast<float>(value);  // round to nearest even
      std::memcpy(dst, &v, 4);
      return;
    }
    case Dtype::F16: {
      const std::uint16_t h = double_to_f16(static_cast<double>(value));
      std::memcpy(dst, &h, 2);
      return;
    }
    case Dtype::BF16: {
      const std::uint16_t h = double_to_bf16(static_cast<double>(value));
      std::memcpy(dst, &h, 2);
      return;
    }
    default:
      return;
  }
}

}  // namespace sora::io
