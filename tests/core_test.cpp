// core/: errors, parameters, random streams, threading, bf16 storage.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <set>
#include <sora/core.hpp>
#include <string>

using namespace sora;

TEST_CASE("SORA_CHECK throws sora::Error with the formatted message only on failure") {
  CHECK_NOTHROW(SORA_CHECK(1 + 1 == 2, "never formatted"));
  try {
    SORA_CHECK(2 < 1, "shape ", shape_of(MatrixF(3, 4)), " vs ", 7);
    FAIL("SORA_CHECK did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "shape (3, 4) vs 7");
  }
}

TEST_CASE("error messages show control bytes escaped, so a NUL cannot cut them short") {
  const std::string label("po\0s\x1b[31m", 9);
  try {
    SORA_CHECK(false, "label '", label, "' is not a class\n  and a second line");
    FAIL("SORA_CHECK did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "label 'po\\x00s\\x1b[31m' is not a class\n  and a second line");
  }
}

TEST_CASE("a frozen Param owns no gradient, a trainable one owns a zeroed one") {
  Param<float> frozen("blocks.0.attn.q.weight", MatrixF::Ones(4, 3), /*trainable=*/false);
  CHECK_FALSE(frozen.trainable());
  CHECK_FALSE(frozen.has_grad());
  CHECK(frozen.grad_bytes() == 0);
  CHECK_THROWS_WITH_AS(frozen.gradient(), doctest::Contains("blocks.0.attn.q.weight"), Error);

  Param<double> gate("blocks.0.attn.q.lora_gate", MatrixD::Ones(1, 8), true, /*vector=*/true);
  REQUIRE(gate.trainable());
  CHECK(gate.gradient().rows() == 1);
  CHECK(gate.gradient().cols() == 8);
  CHECK(gate.gradient().isZero(0.0));
  gate.gradient().setConstant(2.0);
  gate.zero_grad();
  CHECK(gate.gradient().isZero(0.0));
  gate.set_trainable(false);
  CHECK_FALSE(gate.has_grad());
  CHECK(gate.grad_bytes() == 0);
  gate.set_trainable(true);
  CHECK(gate.grad_bytes() == 8 * sizeof(double));
  CHECK(gate.gradient().isZero(0.0));
}

TEST_CASE("Rng streams are reproducible, independent and resumable") {
  Rng a(42), b(42), c(42, /*stream=*/1), d(43);
  std::set<std::uint64_t> firsts;
  for (int i = 0; i < 100; ++i) {
    const auto va = a.next_u64();
    CHECK(va == b.next_u64());
    firsts.insert(va);
  }
  CHECK(firsts.size() == 100);
  Rng a2(42);
  CHECK(c.next_u64() != a2.next_u64());
  Rng a3(42);
  CHECK(d.next_u64() != a3.next_u64());

  // State save / restore continues the same stream, including a pending Box-Muller value.
  Rng r(7);
  (void)r.normal();
  const Rng::State saved = r.state();
  const double n1 = r.normal(), n2 = r.normal(), u = r.uniform();
  r.set_state(saved);
  CHECK(r.normal() == n1);
  CHECK(r.normal() == n2);
  CHECK(r.uniform() == u);
}

TEST_CASE("Rng distributions have the right moments and ranges") {
  Rng rng(2024);
  const int n = 200000;
  double sum = 0, sum_sq = 0, lo = 1, hi = 0;
  for (int i = 0; i < n; ++i) {
    const double x = rng.normal(1.5, 2.0);
    sum += x;
    sum_sq += x * x;
    const double u = rng.uniform();
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  // Standard errors: 2/sqrt(n) ~ 0.0045 for the mean; the variance's is ~0.013.
  CHECK(mean == doctest::Approx(1.5).epsilon(0.02));
  CHECK(var == doctest::Approx(4.0).epsilon(0.02));
  CHECK(lo >= 0.0);
  CHECK(hi < 1.0);

  MatrixF w(64, 100);
  rng.fill_kaiming_uniform(w, 100);
  CHECK(w.maxCoeff() <= 0.1f);
  CHECK(w.minCoeff() >= -0.1f);
  CHECK(w.maxCoeff() > 0.09f);  // the bound is actually reached, not a narrower range
  CHECK_THROWS_AS(rng.fill_kaiming_uniform(w, 0), Error);
}

TEST_CASE("threading controls") {
  CHECK(num_threads() >= 1);
  CHECK_THROWS_AS(set_num_threads(-1), Error);
  set_num_threads(1);
  CHECK(num_threads() == 1);
  std::vector<int> hits(1000, 0);
  set_num_threads(2);
  parallel_for(0, 1000, [&](Index i) { hits[static_cast<std::size_t>(i)] += 1; });
  for (int h : hits) CHECK(h == 1);
  set_num_threads(0);
  CHECK(num_threads() >= 1);  // 0 restores the default: at least one thread, OpenMP or not
}

TEST_CASE("threading policy: a region splits only when its size pays and threads are asked for") {
  set_num_threads(2);
  // Below the minimum work per thread a region stays on one thread, whatever was asked for.
  CHECK(threads_for(1.0, 1000.0) == 1);
  CHECK(threads_for(1999.0, 1000.0) == 1);
  // Large work gets at most the requested count (fewer only when other processes hold cores).
  const int big = threads_for(1e12, 1000.0);
  CHECK(big >= 1);
  CHECK(big <= (has_openmp() ? 2 : 1));
  set_num_threads(1);
  CHECK(threads_for(1e12, 1000.0) == 1);
  // GemmThreads leaves products single-threaded once its scope ends.
  set_num_threads(2);
  {
    GemmThreads threads(4096, 4096, 4096);
    CHECK(Eigen::nbThreads() >= 1);
  }
  CHECK(Eigen::nbThreads() == 1);
  // Every index runs exactly once, split or not.
  for (double item_work : {1.0, 1e9}) {
    std::vector<int> hits(777, 0);
    parallel_for(
        0, 777, [&](Index i) { hits[static_cast<std::size_t>(i)] += 1; }, item_work);
    CHECK(std::count(hits.begin(), hits.end(), 1) == 777);
  }
  set_num_threads(0);
}

TEST_CASE("threading policy: SORA_NUM_THREADS sets the default, and a bad value is an error") {
  if (!has_openmp()) return;  // without OpenMP the count is always 1
  const char* before = std::getenv("SORA_NUM_THREADS");
  const std::string saved = before ? before : "";
  ::setenv("SORA_NUM_THREADS", "3", 1);
  set_num_threads(0);
  CHECK(num_threads() == 3);
  set_num_threads(1);  // an explicit count wins over the variable
  CHECK(num_threads() == 1);
  for (const char* bad : {"0", "-2", "two", "4x"}) {
    ::setenv("SORA_NUM_THREADS", bad, 1);
    CHECK_THROWS_WITH_AS(set_num_threads(0), doctest::Contains("SORA_NUM_THREADS"), Error);
  }
  if (before) {
    ::setenv("SORA_NUM_THREADS", saved.c_str(), 1);
  } else {
    ::unsetenv("SORA_NUM_THREADS");
  }
  set_num_threads(0);
}

// ---- bf16 storage (core/bf16.hpp) ------------------------------------------------------------

namespace {

// Round-to-nearest-even to bf16 the slow way, as an oracle independent of the bit trick: the two
// bf16 neighbours of a finite x (its bits cut to the top half, and the next bf16 away from zero),
// compared by distance in double; on a tie the one whose last kept bit is 0.
float bf16_oracle(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
  const double dx = x, dlo = std::bit_cast<float>(lo), dhi = std::bit_cast<float>(hi);
  const double to_lo = std::abs(dx - dlo), to_hi = std::abs(dhi - dx);
  if (to_lo < to_hi) return std::bit_cast<float>(lo);
  if (to_hi < to_lo) return std::bit_cast<float>(hi);
  return std::bit_cast<float>(((lo >> 16) & 1u) == 0 ? lo : hi);
}

}  // namespace

TEST_CASE("bf16: every bf16 value converts to float and back unchanged; NaN stays NaN") {
  int nans = 0;
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = bf16_to_float(bits);
    CHECK(std::bit_cast<std::uint32_t>(f) == (b << 16));  // widening is the top half
    if (std::isnan(f)) {
      ++nans;
      CHECK(std::isnan(bf16_to_float(float_to_bf16(f))));
      CHECK(std::signbit(bf16_to_float(float_to_bf16(f))) == std::signbit(f));
    } else if (float_to_bf16(f) != bits) {
      FAIL_CHECK("bf16 ", b, " does not survive a round trip");
    }
  }
  CHECK(nans == 2 * 127);  // exponent all ones, 127 non-zero mantissas, two signs
}

TEST_CASE("bf16: float to bf16 rounds to nearest, ties to even, as the oracle") {
  // Ties, both ways: 1 + 2^-8 lies halfway between 1 (even) and 1 + 2^-7 (odd); 1 + 3 2^-8
  // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  const float tie_down = 1.0f + std::ldexp(1.0f, -8), tie_up = 1.0f + 3 * std::ldexp(1.0f, -8);
  CHECK(round_to_bf16(tie_down) == 1.0f);
  CHECK(round_to_bf16(tie_up) == 1.0f + std::ldexp(1.0f, -6));
  CHECK(round_to_bf16(-tie_up) == -(1.0f + std::ldexp(1.0f, -6)));
  // Just off the tie, the nearest wins.
  CHECK(round_to_bf16(std::nextafter(tie_down, 2.0f)) == 1.0f + std::ldexp(1.0f, -7));
  CHECK(round_to_bf16(std::nextafter(tie_up, 0.0f)) == 1.0f + std::ldexp(1.0f, -7));

  // Random bit patterns (every exponent: subnormals to huge), and exact ties built from them.
  Rng rng(41);
  for (int i = 0; i < 200000; ++i) {
    auto u = static_cast<std::uint32_t>(rng.next_u64() >> 32);
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // a tie
    const float x = std::bit_cast<float>(u);
    if (!std::isfinite(x) || std::abs(x) > 3.3e38f) continue;  // the oracle's hi overflows there
    const float want = bf16_oracle(x), got = round_to_bf16(x);
    if (std::bit_cast<std::uint32_t>(want) != std::bit_cast<std::uint32_t>(got))
      FAIL_CHECK("x bits ", u, ": got ", got, ", want ", want);
  }
}

TEST_CASE("bf16: infinities stay, overflow rounds to infinity, a NaN never becomes infinity") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(round_to_bf16(inf) == inf);
  CHECK(round_to_bf16(-inf) == -inf);
  CHECK(round_to_bf16(std::numeric_limits<float>::max()) == inf);
  const float largest = bf16_to_float(0x7f7f);  // bf16's largest finite value
  CHECK(round_to_bf16(largest) == largest);
  CHECK(round_to_bf16(-largest) == -largest);
  // NaNs whose payload lies only in the dropped bits: cutting them would read as infinity.
  for (std::uint32_t u : {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7f80ffffu}) {
    CAPTURE(u);
    CHECK(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(u)))));
  }
  CHECK(round_to_bf16(0.0f) == 0.0f);
  CHECK(std::signbit(round_to_bf16(-0.0f)));
}

TEST_CASE("a frozen Param stored in bf16 holds half the bytes and reads back rounded") {
  Rng rng(7);
  MatrixF w(5, 6);
  rng.fill_normal(w, 0.0, 1.0);
  Param<float> p("blocks.0.attn.q.weight", w, /*trainable=*/false);
  CHECK(p.value_bytes() == 5 * 6 * sizeof(float));
  p.store_as(Precision::bf16);
  CHECK(p.storage() == Precision::bf16);
  CHECK(p.value.size() == 0);  // the fp32 matrix is gone
  CHECK(p.value_bytes() == 5 * 6 * 2);
  CHECK((p.rows() == 5 && p.cols() == 6 && p.size() == 30));
  // Widened, in full and into a block of rows of a larger matrix.
  MatrixF full(5, 6), stacked = MatrixF::Constant(9, 6, 42.0f);
  p.copy_value_to(full);
  p.copy_value_to(stacked.middleRows(2, 5));
  for (Index i = 0; i < 5; ++i) {
    for (Index j = 0; j < 6; ++j) {
      CHECK(full(i, j) == round_to_bf16(w(i, j)));
      CHECK(stacked(i + 2, j) == full(i, j));
    }
  }
  CHECK((stacked.topRows(2).array() == 42.0f).all());
  CHECK((stacked.bottomRows(2).array() == 42.0f).all());
  CHECK_THROWS_WITH_AS(p.copy_value_to(MatrixF(6, 5)), doctest::Contains("(6, 5)"), Error);
  // Trainable again only after widening back; the values stay rounded.
  CHECK_THROWS_WITH_AS(p.set_trainable(true), doctest::Contains("blocks.0.attn.q.weight"), Error);
  CHECK_THROWS_WITH_AS(p.require_fp32("merge"), doctest::Contains("merge: parameter"), Error);
  p.store_as(Precision::fp32);
  CHECK(p.value == full);
  CHECK(p.value_bytes() == 5 * 6 * sizeof(float));
  p.set_trainable(true);
  CHECK(p.trainable());
  // Only a frozen parameter may be stored in bf16, only of a float model.
  CHECK_THROWS_WITH_AS(p.store_as(Precision::bf16), doctest::Contains("trainable"), Error);
  Param<double> d("d", MatrixD::Ones(2, 2), false);
  CHECK_THROWS_WITH_AS(d.store_as(Precision::bf16), doctest::Contains("float models"), Error);
}
