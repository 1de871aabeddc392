#pragma once
// Rotary position embeddings (Su et al. 2021, RoFormer) in Hugging Face's half-rotation layout
// (transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb, also Mistral's and Qwen2's).
//
// For a head of D channels, channel i and channel i + D/2 (i < D/2) form one pair, rotated by
// the angle pos * inv_freq[i], inv_freq[i] = 1 / theta^(2i / D):
//   y_i       = x_i cos - x_{i+D/2} sin
//   y_{i+D/2} = x_{i+D/2} cos + x_i sin
// which is HF's y = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), with cos and
// sin of pos * inv_freq duplicated to D channels. (The interleaved GPT-J / Meta layout pairs
// (2i, 2i + 1) instead; HF checkpoints have q_proj / k_proj rows permuted for this layout.)
//
// Backward contract: the input gradient overwrites (=); no parameters. A rotation is
// orthogonal, so the backward is the rotation by -angle.
//
// Sizes: N tokens, H heads of D channels; inputs are (N, H * D) with head h in columns
// [h D, (h + 1) D) (q with the query heads, k with the key/value heads). Each token's position
// comes from an explicit position id (N of them, token n = b T + t of B sequences of T), so
// that padding or packed sequences can use any positions; rope_positions(B, T) gives HF's
// default arange(T) per sequence.

#include <cmath>
#include <numbers>
#include <span>
#include <utility>
#include <vector>

#include "sora/core/threading.hpp"
#include "sora/ops/common.hpp"

namespace sora::ops {

// transformers' default RoPE frequencies (_compute_default_rope_parameters):
// inv_freq[i] = 1 / theta^(2i / D), i < D/2, computed in T at the steps where transformers
// computes in float32 (see RopeTable).
template <class T>
std::vector<T> rope_inv_freq(Index head_dim, double theta = 10000.0) {
  SORA_CHECK(head_dim > 0 && head_dim % 2 == 0,
             "rope_inv_freq: head_dim must be positive and even, got ", head_dim);
  SORA_CHECK(theta > 0, "rope_inv_freq: theta must be positive, got ", theta);
  std::vector<T> inv_freq(static_cast<std::size_t>(head_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i)
    inv_freq[i] = T(1) / std::pow(T(theta), T(2 * i) / T(head_dim));
  return inv_freq;
}

// config.json's "rope_scaling" of LLaMA 3.1 and later ({"rope_type": "llama3", ...}).
struct RopeLlama3Scaling {
  double factor = 8;
  double low_freq_factor = 1;
  double high_freq_factor = 4;
  double original_max_position_embeddings = 8192;
};

// transformers' _compute_llama3_parameters: with wavelen = 2 pi / inv_freq, frequencies whose
// wavelength is shorter than old_len / high_freq_factor are kept, those longer than
// old_len / low_freq_factor are divided by factor, and those in between interpolate with
// smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor):
//   inv_freq' = (1 - smooth) inv_freq / factor + smooth inv_freq.
// (The attention scaling of this rope type is 1: cos and sin are not rescaled.)
template <class T>
std::vector<T> rope_llama3_inv_freq(std::vector<T> inv_freq, const RopeLlama3Scaling& s) {
  SORA_CHECK(s.factor > 0 && s.high_freq_factor > s.low_freq_factor && s.low_freq_factor > 0 &&
                 s.original_max_position_embeddings > 0,
             "rope_llama3_inv_freq: bad rope_scaling (factor ", s.factor, ", low_freq_factor ",
             s.low_freq_factor, ", high_freq_factor ", s.high_freq_factor,
             ", original_max_position_embeddings ", s.original_max_position_embeddings, ")");
  const double low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (T& f : inv_freq) {
    const T wavelen = T(2 * std::numbers::pi) / f;
    if (wavelen > T(low_freq_wavelen)) {
      f = f / T(s.factor);
    } else if (!(wavelen < T(high_freq_wavelen))) {
      const T smooth = (T(s.original_max_position_embeddings) / wavelen - T(s.low_freq_factor)) /
                       T(s.high_freq_factor - s.low_freq_factor);
      f = (T(1) - smooth) * f / T(s.factor) + smooth * f;
    }
  }
  return inv_freq;
}

// cos and sin of pos * inv_freq[i] for every position in [0, max_positions) and i < D/2,
// computed once so that forward and backward only multiply.
template <class T>
struct RopeTable {
  Index head_dim = 0;
  Index max_positions = 0;
  std::vector<T> inv_freq;  // (D / 2)
  Matrix<T> cos, sin;       // (max_positions, D / 2)

  RopeTable() = default;
  // The default rope type: inv_freq from theta (config.json's rope_theta).
  RopeTable(Index head_dim_, Index max_positions_, double theta = 10000.0)
      : RopeTable(rope_inv_freq<T>(head_dim_, theta), max_positions_) {}
  // Any frequencies (rope_llama3_inv_freq, ...); D = 2 * inv_freq.size().
  RopeTable(std::vector<T> inv_freq_, Index max_positions_)
      : head_dim(2 * static_cast<Index>(inv_freq_.size())),
        max_positions(max_positions_),
        inv_freq(std::move(inv_freq_)) {
    SORA_CHECK(head_dim > 0, "RopeTable: no frequencies");
    SORA_CHECK(max_positions > 0, "RopeTable: max_positions must be positive, got ", max_positions);
    const Index half = head_dim / 2;
    cos.resize(max_positions, half);
    sin.resize(max_positions, half);
    // The frequencies and the angle are rounded to T at the steps where transformers rounds
    // them to float32 (inv_freq in float, freqs = pos * inv_freq in float), so that a float
    // model's angles at large positions carry HF's rounding (pos * inv_freq in float is off by
    // up to pos ulps) instead of differing from it; cos and sin go through double. torch's pow
    // and cos are within an ulp but not correctly rounded, so the tables agree with HF's to
    // about 6e-8, not bit for bit. (HF also uses float32 tables for a float64 model; in double
    // this table is accurate to double.)
    for (Index i = 0; i < half; ++i) {
      const T f = inv_freq[static_cast<std::size_t>(i)];
      for (Index p = 0; p < max_positions; ++p) {
        const T angle = T(p) * f;
        cos(p, i) = T(std::cos(double(angle)));
        sin(p, i) = T(std::sin(double(angle)));
      }
    }
  }
};

// Position ids 0..T-1 for each of B sequences (HF's default position_ids, arange(T)).
inline std::vector<int> rope_positions(Index B, Index T) {
  SORA_CHECK(B > 0 && T > 0, "rope_positions: B and T must be positive, got B=", B, ", T=", T);
  std::vector<int> positions(static_cast<std::size_t>(B * T));
  for (Index n = 0; n < B * T; ++n)
    positions[static_cast<std::size_t>(n)] = static_cast<int>(n % T);
  return positions;
}

namespace detail {

// Table: RopeTable<T> or the CUDA twin's device table (head_dim and max_positions), so that both
// backends reject a call with the same message.
template <class Table>
void check_rope(const char* op, const char* what, Index N, Index C, std::span<const int> positions,
                const Table& table, Index heads) {
  SORA_CHECK(heads > 0 && table.head_dim > 0 && C == heads * table.head_dim, op, ": ", what,
             " has ", C, " columns, expected heads * head_dim = ", heads, " * ", table.head_dim,
             " = ", heads * table.head_dim);
  SORA_CHECK(static_cast<Index>(positions.size()) == N, op, ": ", positions.size(),
             " position ids for ", N, " tokens");
  for (std::size_t n = 0; n < positions.size(); ++n) {
    SORA_CHECK(positions[n] >= 0 && positions[n] < table.max_positions, op, ": position id ",
               positions[n], " of token ", n, " is outside the table's [0, ", table.max_positions,
               ")");
  }
}

// out = the rotation of inp by sign * angle. Each pair is read before it is written, so out may
// be inp (in place).
template <class T>
void rope_rotate(MatrixRef<T> out, ConstMatrixRef<T> inp, std::span<const int> positions,
                 const RopeTable<T>& table, Index heads, T sign) {
  const Index N = inp.rows(), D = table.head_dim, half = D / 2;
  parallel_for(
      0, N,
      [&](Index n) {
        const Index p = positions[static_cast<std::size_t>(n)];
        const T* c = &table.cos(p, 0);
        const T* s = &table.sin(p, 0);
        for (Index h = 0; h < heads; ++h) {
          const Index lo = h * D, hi = h * D + half;
          for (Index i = 0; i < half; ++i) {
            const T x1 = inp(n, lo + i), x2 = inp(n, hi + i), si = sign * s[i];
            out(n, lo + i) = x1 * c[i] - x2 * si;
            out(n, hi + i) = x2 * c[i] + x1 * si;
          }
        }
      },
      static_cast<double>(inp.cols()));
}

}  // namespace detail

// out = RoPE(inp) at the given positions. out may be inp (in place).
template <class T>
void rope_forward(MatrixRef<T> out,                // (N, heads * D)
                  ConstMatrixRef<T> inp,           // (N, heads * D)
                  std::span<const int> positions,  // (N)
                  const RopeTable<T>& table,       // D = table.head_dim
                  Index heads) {
  detail::check_rope("rope_forward", "inp", inp.rows(), inp.cols(), positions, table, heads);
  detail::check_shape("rope_forward", "out", out, inp.rows(), inp.cols());
  detail::rope_rotate<T>(out, inp, positions, table, heads, T(1));
}

// dinp = R(-angle) dout: the transpose of the forward's rotation. dinp may be dout (in place).
template <class T>
void rope_backward(MatrixRef<T> dinp,               // (N, heads * D)
                   ConstMatrixRef<T> dout,          // (N, heads * D)
                   std::span<const int> positions,  // (N)
                   const RopeTable<T>& table,       // D = table.head_dim
                   Index heads) {
  detail::check_rope("rope_backward", "dout", dout.rows(), dout.cols(), positions, table, heads);
  detail::check_shape("rope_backward", "dinp", dinp, dout.rows(), dout.cols());
  detail::rope_rotate<T>(dinp, dout, positions, table, heads, T(-1));
}

}  // namespace sora::ops
