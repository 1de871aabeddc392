// The CUDA backend against its CPU twins: every proximal operator (elementwise, group,
// triplet, top-k; in place, into, out of place; weighted; float, double, bf16; contiguous,
// strided and unaligned views; boundary values, zero groups, NaN, ±inf), the fused optimizer
// steps against optim/ over several steps, GateBatch against per-module steps, error paths.
//
// Without a GPU (no driver, or no device) the program prints why and exits with 77, which
// CTest reports as skipped (SKIP_RETURN_CODE), so the suite stays green on CI machines.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "sora/cuda.cuh"
#include "sora/optim/adamw.hpp"
#include "sora/optim/sparse_adamw.hpp"
#include "sora/prox.hpp"
#include "support.cuh"

namespace cu = sora::cuda;
namespace cp = sora::cuda::prox;
namespace hp = sora::prox;
using sora::Index;
using sora::Matrix;
using sora::cuda::testing::random_matrix;

namespace {

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double rel = 2e-6;
};
template <>
struct Tol<double> {
  static constexpr double rel = 1e-13;
};

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Equal up to `rel` (relative), with NaN == NaN, ±inf equal only to itself, and exact zeros
// required where the reference is exactly zero (thresholds must cut the same elements).
template <class T>
bool close(const Matrix<T>& got, const Matrix<T>& want, double rel, std::string* why = nullptr,
           double abs_tol = 0.0) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) {
    if (why) *why = "shape";
    return false;
  }
  for (Index i = 0; i < got.size(); ++i) {
    const double a = static_cast<double>(got.data()[i]);
    const double b = static_cast<double>(want.data()[i]);
    bool ok;
    if (std::isnan(b)) {
      ok = std::isnan(a);
    } else if (std::isinf(b)) {
      ok = a == b;
    } else if (b == 0.0) {
      ok = a == 0.0;
    } else {
      ok = (abs_tol > 0.0 || a != 0.0) &&
           std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b)) + abs_tol;
    }
    if (!ok) {
      if (why) *why = sora::detail::concat("element ", i, ": got ", a, ", want ", b);
      return false;
    }
  }
  return true;
}

#define CHECK_CLOSE(got, want, rel)                      \
  do {                                                   \
    std::string why_;                                    \
    const bool ok_ = close((got), (want), (rel), &why_); \
    INFO(why_);                                          \
    CHECK(ok_);                                          \
  } while (false)

// The optimizer comparisons: FMA contraction differs between host and device code, so a
// value that cancels to near zero is compared with an absolute floor too.
#define CHECK_NEAR_ABS(got, want, rel, abs_tol)                     \
  do {                                                              \
    std::string why_;                                               \
    const bool ok_ = close((got), (want), (rel), &why_, (abs_tol)); \
    INFO(why_);                                                     \
    CHECK(ok_);                                                     \
  } while (false)

// Random data with boundary values planted: ±tau exactly, zeros, NaN, ±inf.
template <class T>
Matrix<T> planted(Index r, Index c, unsigned seed, T tau) {
  Matrix<T> m = random_matrix<T>(r, c, seed);
  const Index n = m.size();
  if (n > 8) {
    m.data()[0] = tau;
    m.data()[1] = -tau;
    m.data()[2] = T(0);
    m.data()[3] = T(kNaN);
    m.data()[4] = T(kInf);
    m.data()[5] = T(-kInf);
    m.data()[n - 1] = tau;
    m.data()[n / 2] = -tau;
  }
  return m;
}

template <class T>
Matrix<T> roundtrip(const Matrix<T>& m) {
  return cu::DeviceTensor<T>::from_host(m).to_host();
}

// The elementwise cases: one host operator, one device operator, the same arguments.
template <class T, class HostOp, class DevOp>
void check_elementwise(const char* name, HostOp host, DevOp dev, T tau, Index r, Index c) {
  INFO(name, " rows=", r, " cols=", c);
  const Matrix<T> x = planted<T>(r, c, 7u + static_cast<unsigned>(r * 31 + c), tau);
  Matrix<T> want = x;
  host(want);
  // In place on a whole tensor (the packed path).
  auto d = cu::DeviceTensor<T>::from_host(x);
  dev(d.view());
  CHECK_CLOSE(d.to_host(), want, Tol<T>::rel);
  // In place on a strided block of a wider tensor (the strided path).
  Matrix<T> big = random_matrix<T>(r, c + 3, 99);
  big.block(0, 1, r, c) = x;
  auto db = cu::DeviceTensor<T>::from_host(big);
  dev(db.view().block(0, 1, r, c));
  const Matrix<T> got_big = db.to_host();
  CHECK_CLOSE(Matrix<T>(got_big.block(0, 1, r, c)), want, Tol<T>::rel);
  CHECK(got_big.col(0) == big.col(0));  // nothing outside the block is touched
  CHECK(got_big.rightCols(2) == big.rightCols(2));
}

}  // namespace

TEST_CASE("device tensors: round trips, views, bf16 rounding, shape errors") {
  const Matrix<float> m = random_matrix<float>(5, 7, 1);
  CHECK(roundtrip(m) == m);
  const Matrix<double> md = random_matrix<double>(3, 2, 2);
  CHECK(roundtrip(md) == md);
  auto t = cu::DeviceTensor<float>::from_host(m);
  CHECK(cu::download(t.view().block(1, 2, 3, 4)) == m.block(1, 2, 3, 4));
  CHECK(cu::download(t.view().row(4)) == m.row(4));
  auto z = cu::DeviceTensor<float>::zeros(2, 3);
  CHECK(z.to_host().isZero());
  // bf16 stores round to nearest even; widening back is exact.
  auto tb = cu::DeviceTensor<cu::bf16>::from_host(m);
  const Matrix<float> back = tb.to_host();
  for (Index i = 0; i < m.size(); ++i) {
    CHECK(back.data()[i] == __bfloat162float(__float2bfloat16(m.data()[i])));
  }
  Matrix<float> wrong(2, 2);
  CHECK_THROWS_AS(cu::upload(t.view(), wrong), sora::Error);
  CHECK_THROWS_AS((void)t.view().block(4, 0, 2, 1), sora::Error);
  cu::DeviceTensor<float> moved = std::move(t);
  CHECK(t.size() == 0);
  CHECK(moved.rows() == 5);
  cu::DeviceTensor<float> empty(0, 4);
  CHECK(empty.to_host().rows() == 0);
}

TEST_CASE("device tensors: resize reuses the allocation for any shape that fits, frees at 0") {
  cu::DeviceTensor<float> t(8, 16);  // a training batch's activations
  const float* first = t.data();
  t.resize(3, 16);  // the short last batch of an epoch
  CHECK(t.data() == first);
  CHECK(t.rows() == 3);
  CHECK(t.capacity() == 128);
  t.resize(16, 8);  // same count, another shape
  CHECK(t.data() == first);
  const Matrix<float> m = random_matrix<float>(16, 8, 3);
  cu::Cuda::upload(t, m);
  CHECK(t.to_host() == m);
  t.resize(9, 16);  // larger: a new allocation
  CHECK(t.capacity() == 144);
  CHECK(t.rows() == 9);
  t.resize(0, 0);  // what freezing does to a gradient: no memory kept
  CHECK(t.data() == nullptr);
  CHECK(t.capacity() == 0);
  cu::DeviceTensor<float> moved(4, 4);
  moved.resize(2, 2);
  cu::DeviceTensor<float> into = std::move(moved);
  CHECK(into.capacity() == 16);
  CHECK(moved.capacity() == 0);
}

TEST_CASE("SORA_CUDA_CHECK and SORA_CUBLAS_CHECK turn failures into sora::Error naming the call") {
  void* p = nullptr;
  bool threw = false;
  try {
    SORA_CUDA_CHECK(cudaMalloc(&p, std::size_t(1) << 62));
  } catch (const sora::Error& e) {
    threw = true;
    const std::string msg = e.what();
    CHECK(msg.find("cudaMalloc") != std::string::npos);
    CHECK(msg.find("cudaErrorMemoryAllocation") != std::string::npos);
  }
  CHECK(threw);
  CHECK_THROWS_AS(SORA_CUBLAS_CHECK(cublasSetStream(nullptr, nullptr)), sora::Error);
  cu::Stream s;
  cu::CublasHandle h(s);
  CHECK(h.get() != nullptr);
  cu::Event a, b;
  a.record(s);
  b.record(s);
  b.synchronize();
  CHECK(b.elapsed_ms_since(a) >= 0.0f);
}

TEST_CASE_TEMPLATE("elementwise operators match the CPU (in place, packed and strided)", T, float,
                   double) {
  const T tau = T(0.5);
  for (auto [r, c] : {std::pair<Index, Index>{1, 1}, {3, 5}, {17, 33}, {64, 256}, {1, 4099}}) {
    check_elementwise<T>(
        "soft", [&](Matrix<T>& m) { hp::soft_threshold_inplace(m, tau); },
        [&](cu::DeviceView<T> v) { cp::soft_threshold_inplace(v, tau); }, tau, r, c);
    check_elementwise<T>(
        "hard", [&](Matrix<T>& m) { hp::hard_threshold_inplace(m, tau); },
        [&](cu::DeviceView<T> v) { cp::hard_threshold_inplace(v, tau); }, tau, r, c);
    check_elementwise<T>(
        "l1", [&](Matrix<T>& m) { hp::l1_prox_inplace(m, T(0.25), T(2)); },
        [&](cu::DeviceView<T> v) { cp::l1_prox_inplace(v, T(0.25), T(2)); }, tau, r, c);
    check_elementwise<T>(
        "l0", [&](Matrix<T>& m) { hp::l0_prox_inplace(m, T(0.125), T(1)); },
        [&](cu::DeviceView<T> v) { cp::l0_prox_inplace(v, T(0.125), T(1)); }, tau, r, c);
    check_elementwise<T>(
        "elastic", [&](Matrix<T>& m) { hp::elastic_net_prox_inplace(m, T(0.5), T(1), T(0.3)); },
        [&](cu::DeviceView<T> v) { cp::elastic_net_prox_inplace(v, T(0.5), T(1), T(0.3)); }, tau, r,
        c);
    check_elementwise<T>(
        "nonneg", [&](Matrix<T>& m) { hp::nonneg_soft_threshold_inplace(m, tau); },
        [&](cu::DeviceView<T> v) { cp::nonneg_soft_threshold_inplace(v, tau); }, tau, r, c);
    check_elementwise<T>(
        "firm convex", [&](Matrix<T>& m) { hp::firm_threshold_inplace(m, T(0.5), T(1), T(3)); },
        [&](cu::DeviceView<T> v) { cp::firm_threshold_inplace(v, T(0.5), T(1), T(3)); }, tau, r, c);
    check_elementwise<T>(
        "firm hard", [&](Matrix<T>& m) { hp::firm_threshold_inplace(m, T(4), T(0.2), T(2)); },
        [&](cu::DeviceView<T> v) { cp::firm_threshold_inplace(v, T(4), T(0.2), T(2)); }, tau, r, c);
    check_elementwise<T>(
        "box", [&](Matrix<T>& m) { hp::box_project_inplace(m, T(-0.3), T(0.7)); },
        [&](cu::DeviceView<T> v) { cp::box_project_inplace(v, T(-0.3), T(0.7)); }, tau, r, c);
  }
}

TEST_CASE_TEMPLATE("weighted elementwise operators, into and out-of-place forms", T, float,
                   double) {
  const T tau = T(0.5);
  for (auto [r, c] : {std::pair<Index, Index>{3, 5}, {32, 64}, {7, 1031}}) {
    const Matrix<T> x = planted<T>(r, c, 11, tau);
    Matrix<T> w = random_matrix<T>(r, c, 12).cwiseAbs();
    w(0, 0) = T(1);  // keeps the planted |x| == tau exactly on the threshold
    w(0, 2 % c) = T(0);
    const auto dx = cu::DeviceTensor<T>::from_host(x);
    const auto dw = cu::DeviceTensor<T>::from_host(w);
    CHECK_CLOSE(cp::soft_threshold(dx, tau, dw).to_host(), hp::soft_threshold(x, tau, w),
                Tol<T>::rel);
    CHECK_CLOSE(cp::hard_threshold(dx, tau, dw).to_host(), hp::hard_threshold(x, tau, w),
                Tol<T>::rel);
    CHECK_CLOSE(cp::l1_prox(dx, T(0.5), T(1), dw).to_host(), hp::l1_prox(x, T(0.5), T(1), w),
                Tol<T>::rel);
    CHECK_CLOSE(cp::l0_prox(dx, T(0.5), T(0.5), dw).to_host(), hp::l0_prox(x, T(0.5), T(0.5), w),
                Tol<T>::rel);
    // Unweighted out-of-place forms leave x alone.
    CHECK_CLOSE(cp::soft_threshold(dx, tau).to_host(), hp::soft_threshold(x, tau), Tol<T>::rel);
    CHECK_CLOSE(cp::hard_threshold(dx, tau).to_host(), hp::hard_threshold(x, tau), Tol<T>::rel);
    CHECK_CLOSE(cp::l1_prox(dx, T(1), tau).to_host(), hp::l1_prox(x, T(1), tau), Tol<T>::rel);
    CHECK_CLOSE(cp::l0_prox(dx, T(1), tau).to_host(), hp::l0_prox(x, T(1), tau), Tol<T>::rel);
    CHECK_CLOSE(cp::elastic_net_prox(dx, T(1), tau, T(2)).to_host(),
                hp::elastic_net_prox(x, T(1), tau, T(2)), Tol<T>::rel);
    CHECK_CLOSE(cp::nonneg_soft_threshold(dx, tau).to_host(), hp::nonneg_soft_threshold(x, tau),
                Tol<T>::rel);
    CHECK_CLOSE(cp::firm_threshold(dx, T(1), tau, T(3)).to_host(),
                hp::firm_threshold(x, T(1), tau, T(3)), Tol<T>::rel);
    CHECK_CLOSE(cp::box_project(dx, T(-1), T(1)).to_host(), hp::box_project(x, T(-1), T(1)),
                Tol<T>::rel);
    CHECK_CLOSE(dx.to_host(), x, 0.0);
    // into: a separate output, then aliasing an unaligned view (offset by one element).
    cu::DeviceTensor<T> y(r, c);
    cp::soft_threshold_into(y, dx, tau, dw);
    CHECK_CLOSE(y.to_host(), hp::soft_threshold(x, tau, w), Tol<T>::rel);
    cu::DeviceTensor<T> flat(1, r * c + 1);
    Matrix<T> xrow(1, r * c + 1);
    xrow(0, 0) = T(9);
    for (Index i = 0; i < r * c; ++i) xrow(0, i + 1) = x.data()[i];
    cu::upload(flat.view(), xrow);
    auto tail = flat.view().block(0, 1, 1, r * c);
    cp::hard_threshold_inplace(tail, tau);
    Matrix<T> want = xrow;
    hp::hard_threshold_inplace(want.rightCols(r * c), tau);
    CHECK_CLOSE(flat.to_host(), want, Tol<T>::rel);
  }
}

TEST_CASE("elementwise operators on bf16 storage equal the float result rounded once") {
  const Matrix<float> x0 = planted<float>(9, 37, 5, 0.5f);
  const Matrix<float> x = cu::DeviceTensor<cu::bf16>::from_host(x0).to_host();  // bf16 values
  auto round_bf16 = [](Matrix<float> m) {
    for (Index i = 0; i < m.size(); ++i)
      m.data()[i] = __bfloat162float(__float2bfloat16(m.data()[i]));
    return m;
  };
  auto d = cu::DeviceTensor<cu::bf16>::from_host(x);
  cp::soft_threshold_inplace(d, 0.5f);
  CHECK_CLOSE(d.to_host(), round_bf16(hp::soft_threshold(x, 0.5f)), 0.0);
  auto e = cu::DeviceTensor<cu::bf16>::from_host(x);
  cp::firm_threshold_inplace(e, 0.5f, 1.0f, 3.0f);
  CHECK_CLOSE(e.to_host(), round_bf16(hp::firm_threshold(x, 0.5f, 1.0f, 3.0f)), 0.0);
  auto g = cu::DeviceTensor<cu::bf16>::from_host(x);
  cp::group_soft_threshold_inplace(g, hp::Groups::rows(), 1.0f);
  CHECK_CLOSE(g.to_host(), round_bf16(hp::group_soft_threshold(x, hp::Groups::rows(), 1.0f)), 1e-2);
}

TEST_CASE("elementwise errors: bad shapes, bad weights and bad parameters throw sora::Error") {
  auto x = cu::DeviceTensor<float>::from_host(random_matrix<float>(4, 4, 3));
  const Matrix<float> before = x.to_host();
  cu::DeviceTensor<float> y(4, 5);
  CHECK_THROWS_AS(cp::soft_threshold_into(y, x, 0.1f), sora::Error);
  auto w_bad_shape = cu::DeviceTensor<float>::zeros(4, 3);
  CHECK_THROWS_AS(cp::soft_threshold_inplace(x, 0.1f, w_bad_shape), sora::Error);
  Matrix<float> wn = Matrix<float>::Ones(4, 4);
  wn(2, 1) = -1.0f;
  auto w_neg = cu::DeviceTensor<float>::from_host(wn);
  CHECK_THROWS_AS(cp::hard_threshold_inplace(x, 0.1f, w_neg), sora::Error);
  wn(2, 1) = kNaN;
  auto w_nan = cu::DeviceTensor<float>::from_host(wn);
  CHECK_THROWS_AS(cp::l0_prox_inplace(x, 1.0f, 0.1f, w_nan), sora::Error);
  CHECK_THROWS_AS(cp::soft_threshold_inplace(x, -1.0f), sora::Error);
  CHECK_THROWS_AS(cp::l0_prox_inplace(x, 0.0f, 1.0f), sora::Error);
  CHECK_THROWS_AS(cp::firm_threshold_inplace(x, 1.0f, 1.0f, 1.0f), sora::Error);
  CHECK_THROWS_AS(cp::box_project_inplace(x, 1.0f, -1.0f), sora::Error);
  CHECK(x.to_host() == before);  // a rejected call writes nothing
}

namespace {

// Plants a zero group, a group of norm exactly 5 (3, 4, 0...) and a NaN group into x's rows.
template <class T>
Matrix<T> group_data(Index r, Index c, unsigned seed) {
  Matrix<T> x = random_matrix<T>(r, c, seed);
  if (r >= 4 && c >= 2) {
    x.row(0).setZero();
    x.row(1).setZero();
    x(1, 0) = T(3);
    x(1, 1) = T(4);
    x(2, 0) = T(kNaN);
  }
  return x;
}

template <class T>
void check_groups(const hp::Groups& groups, const Matrix<T>& x, T tau, const char* what) {
  INFO(what, " shape (", x.rows(), ", ", x.cols(), ")");
  const cp::DeviceGroups dg(groups);
  const Index G = groups.count(x.rows(), x.cols());
  Matrix<T> w = random_matrix<T>(1, G, 4).cwiseAbs();
  if (G > 1) w(0, 1) = T(1);
  const auto dw = cu::DeviceTensor<T>::from_host(w);
  const T rel = T(std::is_same_v<T, float> ? 1e-5 : 1e-12);
  {
    auto d = cu::DeviceTensor<T>::from_host(x);
    cp::group_soft_threshold_inplace(d, dg, tau);
    CHECK_CLOSE(d.to_host(), hp::group_soft_threshold(x, groups, tau), rel);
  }
  {
    auto d = cu::DeviceTensor<T>::from_host(x);
    cp::group_soft_threshold_inplace(d, dg, tau, dw);
    CHECK_CLOSE(d.to_host(), hp::group_soft_threshold(x, groups, tau, w), rel);
  }
  {
    const auto d = cu::DeviceTensor<T>::from_host(x);
    CHECK_CLOSE(cp::group_hard_threshold(d, dg, tau).to_host(),
                hp::group_hard_threshold(x, groups, tau), rel);
    CHECK_CLOSE(cp::group_hard_threshold(d, dg, tau, dw).to_host(),
                hp::group_hard_threshold(x, groups, tau, w), rel);
    CHECK_CLOSE(cp::group_l0_prox(d, dg, T(1), tau).to_host(),
                hp::group_l0_prox(x, groups, T(1), tau), rel);
    CHECK_CLOSE(cp::group_l0_prox(d, dg, T(1), tau, dw).to_host(),
                hp::group_l0_prox(x, groups, T(1), tau, w), rel);
    CHECK_CLOSE(d.to_host(), x, 0.0);
  }
  {
    auto d = cu::DeviceTensor<T>::from_host(x);
    cp::group_l21_prox_inplace(d, dg, T(0.5), T(2) * tau);
    Matrix<T> want = x;
    hp::group_l21_prox_inplace(want, groups, T(0.5), T(2) * tau);
    CHECK_CLOSE(d.to_host(), want, rel);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("group operators match the CPU for rows, cols, blocks and partitions", T, float,
                   double) {
  // Row lengths chosen to take every path of the line kernel: 8-lane and 32-lane sub-warps,
  // a block with the line in registers, a block re-reading a long line, unaligned lengths.
  for (auto [r, c] :
       {std::pair<Index, Index>{6, 4}, {9, 64}, {5, 300}, {7, 2048}, {4, 5001}, {40, 17}}) {
    const Matrix<T> x = group_data<T>(r, c, static_cast<unsigned>(r * 100 + c));
    const T tau = T(5);  // row 1 has norm exactly 5: on the threshold, so it becomes 0
    check_groups<T>(hp::Groups::rows(), x, tau, "rows");
    check_groups<T>(hp::Groups::cols(), x, T(2), "cols");
    if (c % 4 == 0) check_groups<T>(hp::Groups::blocks(4), x, T(1), "blocks of 4");
    check_groups<T>(hp::Groups::blocks(c), x, tau, "blocks of a row");
  }
  // Partition: interleaved groups of different sizes and an empty group.
  const Index r = 6, c = 10;
  std::vector<std::vector<Index>> parts(4);
  for (Index i = 0; i < r * c; ++i) parts[static_cast<std::size_t>((i * 7) % 3)].push_back(i);
  const Matrix<T> x = group_data<T>(r, c, 3);
  check_groups<T>(hp::Groups::partition(parts, r * c), x, T(3), "partition");
  // A single-row tensor with column groups and blocks over a strided view.
  check_groups<T>(hp::Groups::cols(), Matrix<T>(random_matrix<T>(1, 9, 8)), T(0.5), "1-row cols");
  {
    Matrix<T> big = random_matrix<T>(6, 12, 77);
    auto d = cu::DeviceTensor<T>::from_host(big);
    auto v = d.view().block(1, 2, 4, 6);
    cp::group_soft_threshold_inplace(v, hp::Groups::blocks(3), T(1));
    hp::group_soft_threshold_inplace(big.block(1, 2, 4, 6), hp::Groups::blocks(3), T(1));
    CHECK_CLOSE(d.to_host(), big, T(std::is_same_v<T, float> ? 1e-5 : 1e-12));
    cp::group_hard_threshold_inplace(v, hp::Groups::cols(), T(1.5));
    hp::group_hard_threshold_inplace(big.block(1, 2, 4, 6), hp::Groups::cols(), T(1.5));
    CHECK_CLOSE(d.to_host(), big, T(std::is_same_v<T, float> ? 1e-5 : 1e-12));
  }
}

TEST_CASE("column group norms are summed in a fixed order: repeated runs give the same bits") {
  // 65536 rows: 1024 chunks of 64 rows per column. Added with atomics in scheduling order, the
  // float sums (and so the scaled values) differed in their last bits between runs.
  const Index r = 65536, c = 8;
  const Matrix<float> x = random_matrix<float>(r, c, 4242);
  const Matrix<float> want = [&] {
    Matrix<float> y = x;
    hp::group_soft_threshold_inplace(y, hp::Groups::cols(), 200.0f);
    return y;
  }();
  Matrix<float> first;
  for (int run = 0; run < 5; ++run) {
    auto d = cu::DeviceTensor<float>::from_host(x);
    cp::group_soft_threshold_inplace(d.view(), hp::Groups::cols(), 200.0f);
    const Matrix<float> got = d.to_host();
    if (run == 0) first = got;
    CHECK(std::memcmp(got.data(), first.data(),
                      sizeof(float) * static_cast<std::size_t>(got.size())) == 0);
  }
  CHECK_CLOSE(first, want, 1e-5);
}

TEST_CASE("set_stream: a non-blocking stream waits for the work queued on the old one") {
  // Uploads and a zeroing queued on the legacy stream, then the operator on a non-blocking
  // stream (which does not synchronise with the legacy stream by itself): it must see them.
  const Matrix<float> x = random_matrix<float>(2048, 512, 99);
  Matrix<float> want = x;
  hp::soft_threshold_inplace(want, 0.5f);
  cu::Stream s;
  cudaStream_t old = cu::context().stream();
  auto d = cu::DeviceTensor<float>::zeros(2048, 512);
  cu::upload(d.view(), x);
  const cp::DeviceGroups groups(hp::Groups::partition({{0, 1}, {2}}, 3));  // a table upload
  cu::context().set_stream(s);
  CHECK(cu::context().stream() == s.get());
  cp::soft_threshold_inplace(d.view(), 0.5f);  // on s by default now
  CHECK_CLOSE(d.to_host(), want, 1e-6);
  auto g = cu::DeviceTensor<float>::from_host(Matrix<float>(Matrix<float>::Constant(1, 3, 4.0f)));
  cp::group_hard_threshold_inplace(g.view(), groups, 5.0f);  // {0, 1}: norm sqrt(32) > 5, kept
  const Matrix<float> gh = g.to_host();
  CHECK(gh(0, 0) == 4.0f);
  CHECK(gh(0, 2) == 0.0f);
  cu::context().set_stream(old);
  CHECK(cu::context().stream() == old);
}

TEST_CASE("group operator errors throw sora::Error") {
  auto x = cu::DeviceTensor<float>::from_host(random_matrix<float>(4, 6, 1));
  CHECK_THROWS_AS(cp::group_soft_threshold_inplace(x, hp::Groups::blocks(5), 1.0f), sora::Error);
  auto w = cu::DeviceTensor<float>::zeros(1, 3);
  CHECK_THROWS_AS(cp::group_soft_threshold_inplace(x, hp::Groups::rows(), 1.0f, w), sora::Error);
  std::vector<std::vector<Index>> parts{{0, 1}, {2}};
  CHECK_THROWS_AS(cp::group_hard_threshold_inplace(x, hp::Groups::partition(parts, 3), 1.0f),
                  sora::Error);
  auto a = cu::DeviceTensor<float>::zeros(3, 5);
  auto b = cu::DeviceTensor<float>::zeros(7, 4);
  auto g = cu::DeviceTensor<float>::zeros(1, 3);
  CHECK_THROWS_AS(cp::group_soft_threshold_triplets_inplace(a, b, g, 1.0f), sora::Error);
}

TEST_CASE_TEMPLATE("rank-triplet operators match the CPU", T, float, double) {
  const Index R = 8, in = 37, out = 24;
  Matrix<T> A = random_matrix<T>(R, in, 1, 0.3);
  Matrix<T> B = random_matrix<T>(out, R, 2, 0.3);
  Matrix<T> g = random_matrix<T>(1, R, 3);
  A.row(2).setZero();  // a dead rank: zero everywhere
  B.col(2).setZero();
  g(0, 2) = T(0);
  Matrix<T> w = random_matrix<T>(1, R, 4).cwiseAbs();
  const T rel = T(std::is_same_v<T, float> ? 1e-5 : 1e-12);
  auto run = [&](auto dev, auto host) {
    auto dA = cu::DeviceTensor<T>::from_host(A);
    auto dB = cu::DeviceTensor<T>::from_host(B);
    auto dg = cu::DeviceTensor<T>::from_host(g);
    dev(dA, dB, dg);
    Matrix<T> hA = A, hB = B, hg = g;
    host(hA, hB, hg);
    CHECK_CLOSE(dA.to_host(), hA, rel);
    CHECK_CLOSE(dB.to_host(), hB, rel);
    CHECK_CLOSE(dg.to_host(), hg, rel);
  };
  const auto dw = cu::DeviceTensor<T>::from_host(w);
  for (T tau : {T(0.5), T(2), T(3)}) {
    run([&](auto& a, auto& b,
            auto& gg) { cp::group_soft_threshold_triplets_inplace(a, b, gg, tau); },
        [&](auto& a, auto& b, auto& gg) {
          hp::group_soft_threshold_triplets_inplace(a, b, gg, tau);
        });
    run([&](auto& a, auto& b,
            auto& gg) { cp::group_soft_threshold_triplets_inplace(a, b, gg, tau, dw); },
        [&](auto& a, auto& b, auto& gg) {
          hp::group_soft_threshold_triplets_inplace(a, b, gg, tau, w);
        });
    run([&](auto& a, auto& b,
            auto& gg) { cp::group_hard_threshold_triplets_inplace(a, b, gg, tau); },
        [&](auto& a, auto& b, auto& gg) {
          hp::group_hard_threshold_triplets_inplace(a, b, gg, tau);
        });
    run([&](auto& a, auto& b,
            auto& gg) { cp::group_hard_threshold_triplets_inplace(a, b, gg, tau, dw); },
        [&](auto& a, auto& b, auto& gg) {
          hp::group_hard_threshold_triplets_inplace(a, b, gg, tau, w);
        });
    run([&](auto& a, auto& b,
            auto& gg) { cp::group_l0_prox_triplets_inplace(a, b, gg, T(1), tau); },
        [&](auto& a, auto& b, auto& gg) {
          hp::group_l0_prox_triplets_inplace(a, b, gg, T(1), tau);
        });
    run([&](auto& a, auto& b,
            auto& gg) { cp::group_l0_prox_triplets_inplace(a, b, gg, T(1), tau, dw); },
        [&](auto& a, auto& b, auto& gg) {
          hp::group_l0_prox_triplets_inplace(a, b, gg, T(1), tau, w);
        });
  }
}

TEST_CASE_TEMPLATE("top-k projection matches the CPU, ties broken by position", T, float, double) {
  for (auto [r, c] : {std::pair<Index, Index>{1, 10}, {7, 13}, {64, 300}}) {
    // Few distinct magnitudes, so the k-th value is tied many times.
    Matrix<T> x = random_matrix<T>(r, c, static_cast<unsigned>(r + c));
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = std::round(x.data()[i] * T(2)) / T(2);
    for (Index k : {Index(0), Index(1), x.size() / 3, x.size() / 2, x.size() - 1, x.size()}) {
      INFO("k = ", k, " shape (", r, ", ", c, ")");
      const auto d = cu::DeviceTensor<T>::from_host(x);
      CHECK_CLOSE(cp::topk_project(d, k).to_host(), hp::topk_project(x, k), 0.0);
    }
  }
  Matrix<T> bad = random_matrix<T>(3, 3, 1);
  bad(1, 1) = T(kNaN);
  auto db = cu::DeviceTensor<T>::from_host(bad);
  CHECK_THROWS_AS(cp::topk_project_inplace(db, 2), sora::Error);
  CHECK_THROWS_AS(cp::topk_project_inplace(db, 10), sora::Error);
}

TEST_CASE_TEMPLATE("fused AdamW matches the CPU AdamW over several steps", T, float, double) {
  const double rel = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (Index n : {Index(1), Index(7), Index(1000)}) {
    sora::Param<T> w("w", random_matrix<T>(1, n, 1), true);
    sora::optim::AdamWOptions o;
    o.lr = 1e-2;
    o.weight_decay = 0.1;
    sora::optim::AdamW<T> cpu({&w}, o);
    auto p = cu::DeviceTensor<T>::from_host(w.value);
    auto m = cu::DeviceTensor<T>::zeros(1, n);
    auto v = cu::DeviceTensor<T>::zeros(1, n);
    for (long t = 1; t <= 6; ++t) {
      w.gradient() = random_matrix<T>(1, n, 10 + static_cast<unsigned>(t));
      const auto g = cu::DeviceTensor<T>::from_host(w.gradient());
      cpu.step();
      cu::optim::adamw_step(p, g, m, v, sora::optim::adamw_scalars(o, t), 0.1);
    }
    CHECK_NEAR_ABS(p.to_host(), w.value, rel, rel);
    CHECK_NEAR_ABS(m.to_host(), cpu.state()[0].m, rel, rel);
    CHECK_NEAR_ABS(v.to_host(), cpu.state()[0].v, rel, rel);
  }
  auto p = cu::DeviceTensor<T>::zeros(2, 3);
  auto g = cu::DeviceTensor<T>::zeros(3, 2);
  auto m = cu::DeviceTensor<T>::zeros(2, 3);
  auto v = cu::DeviceTensor<T>::zeros(2, 3);
  CHECK_THROWS_AS(cu::optim::adamw_step(p, g, m, v, {}, 0.0), sora::Error);
}

TEST_CASE("fused SparseAdamW matches the CPU: default, lr-scaled and official_compat") {
  for (int mode = 0; mode < 3; ++mode) {
    INFO("mode ", mode);
    sora::optim::SparseAdamWOptions o;
    o.lr = 5e-2;
    o.xi = mode == 1 ? 2.0 : 0.02;
    o.scale_xi_by_lr = mode == 1;
    o.official_compat = mode == 2;
    sora::Param<float> gate("gate", random_matrix<float>(1, 67, 5, 0.1), true, true);
    sora::optim::SparseAdamW<float> cpu({&gate}, o);
    auto p = cu::DeviceTensor<float>::from_host(gate.value);
    auto m = cu::DeviceTensor<float>::zeros(1, 67);
    auto v = cu::DeviceTensor<float>::zeros(1, 67);
    sora::optim::AdamWOptions ao;
    ao.lr = o.lr;
    for (long t = 1; t <= 8; ++t) {
      gate.gradient() = random_matrix<float>(1, 67, 40 + static_cast<unsigned>(t));
      const auto g = cu::DeviceTensor<float>::from_host(gate.gradient());
      cpu.step();
      cu::optim::sparse_adamw_step(p, g, m, v, sora::optim::adamw_scalars(ao, t), cpu.threshold(),
                                   o.official_compat);
    }
    // Zeros must match exactly (the prox cut the same gates); the rest to rounding.
    CHECK_NEAR_ABS(p.to_host(), gate.value, 1e-4, 1e-6);
  }
}

TEST_CASE("GateBatch: one launch for every gate equals one step per module") {
  const std::vector<Index> ranks{8, 8, 3, 1, 8, 64, 5};
  struct Module {
    cu::DeviceTensor<float> p, g, m, v;
  };
  std::vector<Module> batched, single;
  std::vector<cu::optim::GateBatch<float>::Entry> entries;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    const Index r = ranks[i];
    const Matrix<float> p0 = random_matrix<float>(1, r, static_cast<unsigned>(i), 0.05);
    for (auto* list : {&batched, &single}) {
      list->push_back(Module{cu::DeviceTensor<float>::from_host(p0), cu::DeviceTensor<float>(1, r),
                             cu::DeviceTensor<float>::zeros(1, r),
                             cu::DeviceTensor<float>::zeros(1, r)});
    }
  }
  for (auto& mod : batched)
    entries.push_back({mod.p.view(), mod.g.view(), mod.m.view(), mod.v.view()});
  const cu::optim::GateBatch<float> batch(entries);
  CHECK(batch.tensors() == static_cast<Index>(ranks.size()));
  sora::optim::AdamWOptions ao;
  ao.lr = 1e-2;
  for (bool official : {false, true}) {
    for (long t = 1; t <= 5; ++t) {
      for (std::size_t i = 0; i < ranks.size(); ++i) {
        const Matrix<float> g =
            random_matrix<float>(1, ranks[i], 100 + static_cast<unsigned>(t * 10 + i));
        cu::upload(batched[i].g.view(), g);
        cu::upload(single[i].g.view(), g);
      }
      const auto s = sora::optim::adamw_scalars(ao, t);
      batch.step(s, 3e-3, official);
      for (auto& mod : single)
        cu::optim::sparse_adamw_step(mod.p, mod.g, mod.m, mod.v, s, 3e-3, official);
    }
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      CHECK_CLOSE(batched[i].p.to_host(), single[i].p.to_host(), 1e-6);
      CHECK_NEAR_ABS(batched[i].v.to_host(), single[i].v.to_host(), 1e-6, 1e-12);
    }
  }
  std::vector<cu::optim::GateBatch<float>::Entry> bad{
      {batched[0].p.view(), batched[1].g.view(), batched[2].m.view(), batched[0].v.view()}};
  CHECK_THROWS_AS(cu::optim::GateBatch<float>{bad}, sora::Error);
}

int main(int argc, char** argv) {
  const int devices = cu::device_count();
  if (devices == 0) {
    std::printf(
        "sora_test_cuda: SKIPPED: no CUDA device available (cudaGetDeviceCount reports none)\n");
    return 77;  // CTest SKIP_RETURN_CODE
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    std::printf("sora_test_cuda: running on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
