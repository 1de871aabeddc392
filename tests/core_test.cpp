// core/: errors, parameters, random streams, threading.
#include <doctest/doctest.h>

#include <cmath>
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
