#pragma once
// Token embedding and learned position embedding layers. Their backward has no input
// gradient (token ids are integers); parameter gradients accumulate (+=). A frozen table may be
// stored in bf16 (core/param.hpp): a token lookup widens the rows it reads, a position table
// (small) is widened into the shared scratch (nn/common.hpp).

#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "sora/core/rng.hpp"
#include "sora/nn/common.hpp"
#include "sora/ops/embedding.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class Embedding {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  Param<T, Backend> weight;  // (V, C)

  Embedding() = default;
  // N(0, 0.02^2), GPT-2's and BERT's initialisation.
  Embedding(Index vocab, Index channels, bool trainable = true, std::uint64_t seed = 0,
            double stddev = 0.02) {
    SORA_CHECK(vocab > 0 && channels > 0, "Embedding: sizes must be positive, got vocab=", vocab,
               " channels=", channels);
    Rng rng(seed);
    Matrix<T> w(vocab, channels);
    rng.fill_normal(w, 0.0, stddev);
    weight = Param<T, Backend>("weight", std::move(w), trainable, false, ParamRole::embedding);
  }

  Index vocab_size() const { return weight.rows(); }
  Index channels() const { return weight.cols(); }

  const Tensor& forward(std::span<const int> tokens) {
    forward_to(y_, tokens);
    return y_;
  }
  // The same into a caller's buffer (the model's residual stream).
  void forward_to(Tensor& y, std::span<const int> tokens) {
    Backend::set_indices(tokens_, tokens);  // backward needs the ids
    y.resize(static_cast<Index>(tokens.size()), channels());
    if constexpr (std::is_same_v<Backend, Cpu> && std::is_same_v<T, float>) {
      if (weight.storage() == Precision::bf16) {
        ops::embedding_forward_bf16(y, tokens_, weight.bf16_value());
        return;
      }
    }
    embedding_forward<T>(y, tokens_, weight.value);
  }

  void backward(const Tensor& dy) {
    if (weight.trainable()) embedding_backward<T>(weight.gradient(), dy, tokens_);
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    detail::visit_one(weight, prefix, "weight", fn);
  }

 private:
  typename Backend::Indices tokens_;  // (N)
  Tensor y_;                          // (N, C)
};

// Learned absolute positions, added onto the token embeddings of B sequences of length T.
template <class T, class Backend = Cpu>
class PositionEmbedding {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  Param<T, Backend> weight;  // (P, C), P the longest sequence

  PositionEmbedding() = default;
  PositionEmbedding(Index max_positions, Index channels, bool trainable = true,
                    std::uint64_t seed = 0, double stddev = 0.02) {
    SORA_CHECK(max_positions > 0 && channels > 0,
               "PositionEmbedding: sizes must be positive, got positions=", max_positions,
               " channels=", channels);
    Rng rng(seed);
    Matrix<T> w(max_positions, channels);
    rng.fill_normal(w, 0.0, stddev);
    weight = Param<T, Backend>("weight", std::move(w), trainable, false, ParamRole::embedding);
  }

  // y[b T + t] += wpe[t].
  void forward_add(Tensor& y, Index T_len) {
    T_ = T_len;
    position_embedding_forward<T>(y, detail::dense_value(weight), T_len);
  }
  void backward(const Tensor& dy) {
    if (weight.trainable()) position_embedding_backward<T>(weight.gradient(), dy, T_);
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    detail::visit_one(weight, prefix, "weight", fn);
  }

 private:
  Index T_ = 0;
};

}  // namespace sora::nn
