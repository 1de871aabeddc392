// core/: errors, parameters, random streams, threading.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
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
