#pragma once
// A seedable random number generator whose streams are identical on every platform and
// standard library: xoshiro256** seeded through splitmix64, uniform doubles from the top
// 53 bits, normals by Box-Muller. (std::normal_distribution is implementation-defined, so
// it cannot give reproducible runs or checkpoints that resume bit for bit.)

#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora {

class Rng {
 public:
  // Everything needed to continue a stream exactly (saved in checkpoints).
  struct State {
    std::array<std::uint64_t, 4> s{};
    bool has_spare_normal = false;
    double spare_normal = 0.0;
    bool operator==(const State&) const = default;
  };

  // Streams with different `stream` ids from one seed are independent sequences, so that
  // e.g. initialisation and dropout do not perturb each other when one of them changes.
  explicit Rng(std::uint64_t seed = 0, std::uint64_t stream = 0) { reseed(seed, stream); }

  void reseed(std::uint64_t seed, std::uint64_t stream = 0) {
    std::uint64_t x = seed ^ (0x9E3779B97F4A7C15ULL * (stream + 1));
    for (auto& word : state_.s) word = splitmix64(x);
    state_.has_spare_normal = false;
    state_.spare_normal = 0.0;
  }

  const State& state() const { return state_; }
  void set_state(const State& state) { state_ = state; }

  std::uint64_t next_u64() {
    auto& s = state_.s;
    const std::uint64_t result = rotl(s[1] * 5, 7) * 9;
    const std::uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }

  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform integer in [0, n).
  std::uint64_t below(std::uint64_t n) {
    SORA_CHECK(n > 0, "Rng::below: n must be positive");
    return static_cast<std::uint64_t>(uniform() * static_cast<double>(n)) % n;
  }

  double normal(double mean = 0.0, double stddev = 1.0) {
    if (state_.has_spare_normal) {
      state_.has_spare_normal = false;
      return mean + stddev * state_.spare_normal;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();  // log(0) guard
    const double u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    state_.spare_normal = radius * std::sin(angle);
    state_.has_spare_normal = true;
    return mean + stddev * radius * std::cos(angle);
  }

  template <class Derived>
  void fill_uniform(Eigen::DenseBase<Derived>& out, double lo, double hi) {
    using T = typename Derived::Scalar;
    for (Index i = 0; i < out.rows(); ++i)
      for (Index j = 0; j < out.cols(); ++j) out(i, j) = static_cast<T>(uniform(lo, hi));
  }

  template <class Derived>
  void fill_normal(Eigen::DenseBase<Derived>& out, double mean = 0.0, double stddev = 1.0) {
    using T = typename Derived::Scalar;
    for (Index i = 0; i < out.rows(); ++i)
      for (Index j = 0; j < out.cols(); ++j) out(i, j) = static_cast<T>(normal(mean, stddev));
  }

  // Kaiming-uniform as PyTorch's nn.Linear / LoRA's A use it (a = sqrt(5)):
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  template <class Derived>
  void fill_kaiming_uniform(Eigen::DenseBase<Derived>& out, Index fan_in) {
    SORA_CHECK(fan_in > 0, "kaiming_uniform: fan_in must be positive, got ", fan_in);
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    fill_uniform(out, -bound, bound);
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  State state_;
};

}  // namespace sora
