// optim/ schedules and clipping, train/ metrics.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <sora/optim/clip.hpp>
#include <sora/optim/lr_schedule.hpp>
#include <sora/optim/xi_schedule.hpp>
#include <sora/train/metrics.hpp>
#include <vector>

using namespace sora;
using namespace sora::optim;
using namespace sora::train;

TEST_CASE("learning-rate schedules follow their closed forms") {
  const LrSchedule constant(LrScheduleKind::constant, 0.1, 0, 0);
  CHECK(constant.lr(0) == 0.1);
  CHECK(constant.lr(12345) == 0.1);

  const LrSchedule linear(LrScheduleKind::warmup_linear, 2.0, 4, 20);
  CHECK(linear.lr(0) == doctest::Approx(0.5).epsilon(1e-12));   // 1/4 of the way through warmup
  CHECK(linear.lr(3) == doctest::Approx(2.0).epsilon(1e-12));   // warmup ends at the full rate
  CHECK(linear.lr(4) == doctest::Approx(2.0).epsilon(1e-12));   // decay starts at 1
  CHECK(linear.lr(12) == doctest::Approx(1.0).epsilon(1e-12));  // half way through the decay
  CHECK(linear.lr(20) == 0.0);
  CHECK(linear.lr(100) == 0.0);
  for (long s = 4; s < 20; ++s) CHECK(linear.lr(s + 1) < linear.lr(s));

  const LrSchedule cosine(LrScheduleKind::warmup_cosine, 1.0, 0, 10);
  for (long s = 0; s < 10; ++s)
    CHECK(cosine.lr(s) ==
          doctest::Approx(0.5 * (1 + std::cos(std::numbers::pi * s / 10.0))).epsilon(1e-12));

  const auto ratio = LrSchedule::with_warmup_ratio(LrScheduleKind::warmup_linear, 1.0, 0.06, 100);
  CHECK(ratio.warmup() == 6);
  CHECK_THROWS_WITH_AS(LrSchedule(LrScheduleKind::warmup_linear, 1.0, 30, 20),
                       doctest::Contains("warmup (30)"), Error);
  CHECK_THROWS_WITH_AS(LrSchedule(LrScheduleKind::constant, -1.0, 0, 0),
                       doctest::Contains("learning rate"), Error);
  CHECK_THROWS_WITH_AS(parse_lr_schedule("step"), doctest::Contains("'step'"), Error);
  CHECK(parse_lr_schedule("cosine") == LrScheduleKind::warmup_cosine);
}

TEST_CASE("a schedule built without a rate is the multiplier fit applies") {
  const LrSchedule s(LrScheduleKind::warmup_linear, 4, 20);
  for (const long step : {0L, 3L, 12L, 25L}) CHECK(s.lr(step) == s.multiplier(step));
  CHECK(s.multiplier(1) == doctest::Approx(0.5));
  CHECK(s.base_lr() == 1.0);
  const auto r = LrSchedule::with_warmup_ratio(LrScheduleKind::warmup_cosine, 0.1, 50);
  CHECK(r.warmup() == 5);
  CHECK(r.total() == 50);
  CHECK(r.lr(10) == r.multiplier(10));
  CHECK_THROWS_AS(LrSchedule(LrScheduleKind::warmup_linear, 30, 20), Error);
}

TEST_CASE("xi schedules match their closed forms and end points") {
  const double xi0 = 1e-5, xi_max = 1e-3;
  const int K = 6;
  const auto lin = xi_schedule(XiScheduleKind::linear, xi0, xi_max, K);
  const auto log = xi_schedule(XiScheduleKind::log_linear, xi0, xi_max, K);
  const auto exp = xi_schedule(XiScheduleKind::exp_linear, xi0, xi_max, K, 10.0);
  REQUIRE(lin.size() == 6);
  for (int k = 0; k < K; ++k) {
    const double u = k / 5.0;
    CHECK(lin[k] == doctest::Approx(xi0 + (xi_max - xi0) * u).epsilon(1e-12));
    // log-linear: equal ratios, here (1e-3 / 1e-5)^(1/5) = 10^(2/5)
    CHECK(log[k] == doctest::Approx(xi0 * std::pow(10.0, 2.0 * u)).epsilon(1e-12));
    CHECK(exp[k] ==
          doctest::Approx(xi0 + (xi_max - xi0) * (std::pow(10.0, u) - 1) / 9.0).epsilon(1e-12));
  }
  for (const auto* s : {&lin, &log, &exp}) {
    CHECK(s->front() == xi0);
    CHECK(s->back() == xi_max);
    for (int k = 0; k + 1 < K; ++k) CHECK((*s)[k] < (*s)[k + 1]);
  }
  // log-linear: constant ratio between neighbours; exp-linear: growing increments.
  for (int k = 0; k + 2 < K; ++k) {
    CHECK(log[k + 1] / log[k] == doctest::Approx(log[k + 2] / log[k + 1]).epsilon(1e-12));
    CHECK(exp[k + 2] - exp[k + 1] > exp[k + 1] - exp[k]);
  }
  CHECK(xi_schedule(XiScheduleKind::linear, 0.0, 0.5, 1) == std::vector<double>{0.5});
  CHECK_THROWS_WITH_AS(xi_schedule(XiScheduleKind::log_linear, 0.0, 1e-3, 4),
                       doctest::Contains("xi0 > 0"), Error);
  CHECK_THROWS_WITH_AS(xi_schedule(XiScheduleKind::linear, 1e-3, 1e-4, 4),
                       doctest::Contains("xi0 <= xi_max"), Error);
  CHECK_THROWS_AS(xi_schedule(XiScheduleKind::linear, 0.0, 1.0, 0), Error);
  CHECK(parse_xi_schedule("exp-linear") == XiScheduleKind::exp_linear);
  CHECK_THROWS_AS(parse_xi_schedule("cubic"), Error);
}

TEST_CASE("gradient clipping scales all trainable gradients by one global factor") {
  Param<double> a("a", MatrixD::Zero(2, 2), true), b("b", MatrixD::Zero(1, 3), true, true);
  Param<double> frozen("frozen", MatrixD::Ones(5, 5), false);
  a.gradient() << 3, 0, 0, 0;
  b.gradient() << 0, 4, 0;  // global norm 5
  std::vector<Param<double>*> params{&a, &b, &frozen};
  CHECK(global_grad_norm(params) == doctest::Approx(5.0).epsilon(1e-12));
  CHECK(clip_grad_norm(params, 10.0) == doctest::Approx(5.0).epsilon(1e-12));
  CHECK(a.gradient()(0, 0) == 3.0);  // below the bound: untouched
  CHECK(clip_grad_norm(params, 1.0) == doctest::Approx(5.0).epsilon(1e-12));
  CHECK(a.gradient()(0, 0) == doctest::Approx(0.6).epsilon(1e-6));
  CHECK(b.gradient()(0, 1) == doctest::Approx(0.8).epsilon(1e-6));
  CHECK(global_grad_norm(params) == doctest::Approx(1.0).epsilon(1e-6));
  CHECK_FALSE(frozen.has_grad());
}

TEST_CASE("classification metrics against hand-computed confusion matrices") {
  // tp = 3, fn = 1, fp = 2, tn = 4
  const std::vector<int> label{1, 1, 1, 1, 0, 0, 0, 0, 0, 0};
  const std::vector<int> pred{1, 1, 1, 0, 1, 1, 0, 0, 0, 0};
  CHECK(accuracy(pred, label) == doctest::Approx(0.7).epsilon(1e-12));
  CHECK(f1_score(pred, label) == doctest::Approx(6.0 / 9.0).epsilon(1e-12));
  CHECK(matthews_corrcoef(pred, label) ==
        doctest::Approx((3.0 * 4 - 2.0 * 1) / std::sqrt(5.0 * 4 * 6 * 5)).epsilon(1e-12));
  CHECK(matthews_corrcoef(label, label) == doctest::Approx(1.0).epsilon(1e-12));
  const std::vector<int> all_zero(10, 0);
  CHECK(matthews_corrcoef(all_zero, label) == 0.0);
  CHECK(f1_score(all_zero, label) == 0.0);
  const std::vector<int> three{0, 1, 2};
  CHECK(accuracy(three, std::vector<int>{0, 2, 2}) == doctest::Approx(2.0 / 3.0).epsilon(1e-12));
  CHECK_THROWS_WITH_AS(f1_score(three, std::vector<int>{0, 1, 1}), doctest::Contains("binary"),
                       Error);
  CHECK_THROWS_WITH_AS(accuracy(three, label), doctest::Contains("3 predictions but 10 labels"),
                       Error);
}

TEST_CASE("correlations: Pearson and Spearman with ties") {
  const std::vector<double> x{1, 2, 3, 4, 5};
  const std::vector<double> y{2, 4, 6, 8, 10};
  CHECK(pearson(x, y) == doctest::Approx(1.0).epsilon(1e-12));
  const std::vector<double> cubed{1, 8, 27, 64, 125};
  CHECK(spearman(x, cubed) == doctest::Approx(1.0).epsilon(1e-12));  // monotone: rank correlation 1
  CHECK(pearson(x, cubed) < 0.99);                                   // but not linear
  // Ties: ranks of {1, 2, 2, 3} are {1, 2.5, 2.5, 4}; against {1, 2, 3, 4}:
  const std::vector<double> tied{1, 2, 2, 3}, plain{1, 2, 3, 4};
  const std::vector<double> r_tied{1, 2.5, 2.5, 4};
  CHECK(spearman(tied, plain) == doctest::Approx(pearson(r_tied, plain)).epsilon(1e-12));
  CHECK(spearman(tied, plain) == doctest::Approx(4.5 / std::sqrt(4.5 * 5.0)).epsilon(1e-12));
  const std::vector<double> constant{3, 3, 3, 3, 3};
  CHECK(pearson(x, constant) == 0.0);
}

#include <cstdio>
#include <sora/io/svg_plot.hpp>
#include <sora/train/progress.hpp>
#include <string>

namespace {
std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string text;
  char buffer[256];
  while (std::fgets(buffer, sizeof buffer, f)) text += buffer;
  return text;
}
}  // namespace

TEST_CASE("progress bar: plain periodic lines when the output is not a terminal") {
  std::FILE* log = std::tmpfile();
  REQUIRE(log != nullptr);
  {
    train::ProgressBar bar("finetune", 20, {.log_every = 5, .force_plain = false, .stream = log});
    CHECK_FALSE(bar.interactive());  // a temporary file is no terminal
    for (long s = 1; s <= 20; ++s) bar.update(s, "loss " + std::to_string(100 - s));
  }
  const std::string text = read_all(log);
  std::fclose(log);
  // Lines at 5, 10, 15 and 20 only, each with the count, the share and the status.
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);
  CHECK(text.find("finetune  5/20   25%  loss 95") != std::string::npos);
  CHECK(text.find("20/20  100%  loss 80") != std::string::npos);
  CHECK(text.find("took") != std::string::npos);
  CHECK(text.find('\r') == std::string::npos);
  CHECK(train::format_duration(75) == "01:15");
  CHECK(train::format_duration(3725) == "1:02:05");
  CHECK(train::format_duration(-1) == "--:--");
}

TEST_CASE("line plot: points land where their values say") {
  io::LinePlot plot;
  plot.title = "memorization & generalization";
  plot.x_label = "params";
  plot.y_label = "%";
  plot.add({"train", {0, 10}, {0, 100}, true});
  plot.add({"valid <dev>", {0, 5, 10}, {50, 60, 70}, true});
  const std::string svg = plot.svg();
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("memorization &amp; generalization") != std::string::npos);  // escaped
  CHECK(svg.find("valid &lt;dev&gt;") != std::string::npos);
  // The points="..." of every polyline (no std::regex: g++ 12 warns falsely inside it
  // under the sanitizer build's -O1).
  std::vector<std::string> lines;
  for (std::size_t at = svg.find("<polyline"); at != std::string::npos;
       at = svg.find("<polyline", at + 1)) {
    const std::size_t begin = svg.find("points=\"", at) + 8;
    lines.push_back(svg.substr(begin, svg.find('"', begin) - begin));
  }
  REQUIRE(lines.size() == 2);
  // Plot area: x in [80, 720 - 170], y in [40, 440 - 60]; y range padded by 5% of 100.
  // (0, 0) -> (80, 40 + 340 * (1 - 5/110)); (10, 100) -> (550, 40 + 340 * (5/110)).
  CHECK(lines[0].find("80.00,364.55") != std::string::npos);
  CHECK(lines[0].find("550.00,55.45") != std::string::npos);
  CHECK_THROWS_AS(plot.add({"bad", {1, 2}, {1}, true}), Error);
}

TEST_CASE("heat map: one cell per value, missing cells marked") {
  io::Heatmap map;
  map.title = "final rank";
  map.value_label = "rank";
  map.row_labels = {"layer 0", "layer 1"};
  map.col_labels = {"q", "v"};
  map.values = {{8, 3}, {0, std::nan("")}};
  const std::string svg = map.svg();
  std::size_t cells = 0;
  for (std::size_t at = svg.find("<rect x="); at != std::string::npos;
       at = svg.find("<rect x=", at + 1))
    ++cells;
  CHECK(cells == 4);
  CHECK(svg.find(">8</text>") != std::string::npos);
  CHECK(svg.find(">-</text>") != std::string::npos);
  CHECK(svg.find("#dddddd") != std::string::npos);
  map.values.pop_back();
  CHECK_THROWS_WITH_AS(map.svg(), doctest::Contains("1 rows of values but 2 row labels"), Error);
}

TEST_CASE("log-scale axes: 1-2-5 ticks with short labels") {
  using io::svg_detail::log_ticks;
  using io::svg_detail::short_label;
  CHECK(short_label(500) == "500");
  CHECK(short_label(10000) == "10k");
  CHECK(short_label(20000) == "20k");
  CHECK(short_label(15849) == "15.8k");
  CHECK(short_label(1500000) == "1.5M");
  CHECK(short_label(2e9) == "2G");
  CHECK(short_label(0.02) == "0.02");
  // 12k .. 95k: no power of ten inside, so 1-2-5 steps; 1 .. 1e6: powers of ten.
  CHECK(log_ticks(std::log10(12000.0), std::log10(95000.0)) == std::vector<double>{20000, 50000});
  CHECK(log_ticks(0.0, 6.0) == std::vector<double>{1, 10, 100, 1e3, 1e4, 1e5, 1e6});
  // 31k .. 68k: only every digit puts two ticks on the axis; 31k .. 48k has one digit step
  // inside, so linear nice ticks.
  CHECK(log_ticks(std::log10(31000.0), std::log10(68000.0)) ==
        std::vector<double>{40000, 50000, 60000});
  CHECK(log_ticks(std::log10(31000.0), std::log10(48000.0)) ==
        std::vector<double>{35000, 40000, 45000});
  // 31 powers of ten: thinned to every fourth (at most 10 ticks).
  const auto wide = log_ticks(0.0, 30.0);
  CHECK(wide.size() == 8);
  CHECK(wide[1] == 1e4);

  io::LinePlot plot;
  plot.log_x = true;
  plot.add({"params", {12000, 15849, 95000}, {1, 2, 3}, true});
  const std::string svg = plot.svg();
  CHECK(svg.find(">20k</text>") != std::string::npos);
  CHECK(svg.find(">50k</text>") != std::string::npos);
  CHECK(svg.find("e+0") == std::string::npos);  // no 1.585e+04-style labels
}

#include <sora/train/sparsity_scheduler.hpp>

TEST_CASE("sparsity plot: one point per parameter count in a stage, stages marked") {
  std::vector<train::SparsityRow> rows;
  const auto row = [&](int stage, double xi, Index nonzero, double mem, double gen) {
    train::SparsityRow r;
    r.stage = stage;
    r.xi = xi;
    r.nonzero = nonzero;
    r.memorization = mem;
    r.generalization = gen;
    rows.push_back(r);
  };
  // The dense phase evaluates 3 times at one count; stage 1 twice at one count, then lower.
  row(0, 0.0, 40000, 80, 70);
  row(0, 0.0, 40000, 90, 85);
  row(0, 0.0, 40000, 100, 100);
  row(1, 1e-3, 30000, 99, 98);
  row(1, 1e-3, 30000, 98, 97);
  row(1, 1e-3, 20000, 96, 95);
  row(2, 4e-3, 10000, 70, 75);
  const std::string svg = train::sparsity_svg(rows, "t");
  std::vector<std::string> lines;
  for (std::size_t at = svg.find("<polyline"); at != std::string::npos;
       at = svg.find("<polyline", at + 1)) {
    const std::size_t begin = svg.find("points=\"", at) + 8;
    lines.push_back(svg.substr(begin, svg.find('"', begin) - begin));
  }
  REQUIRE(lines.size() == 2);
  // Points are "x,y " pairs: no two share an x (no vertical line), 4 counts in all.
  for (const std::string& points : lines) {
    std::vector<std::string> xs;
    for (std::size_t at = 0; at < points.size();) {
      const std::size_t comma = points.find(',', at), space = points.find(' ', at);
      if (comma == std::string::npos) break;
      xs.push_back(points.substr(at, comma - at));
      at = space + 1;
    }
    CHECK(xs.size() == 4);
    std::sort(xs.begin(), xs.end());
    CHECK(std::adjacent_find(xs.begin(), xs.end()) == xs.end());
  }
  CHECK(svg.find("class=\"mark\"") != std::string::npos);
  std::size_t marks = 0;
  for (std::size_t at = svg.find("class=\"mark\""); at != std::string::npos;
       at = svg.find("class=\"mark\"", at + 1))
    ++marks;
  CHECK(marks == 3);
  CHECK(svg.find(">dense</text>") != std::string::npos);
  CHECK(svg.find(">xi 0.001</text>") != std::string::npos);
  CHECK(svg.find(">xi 0.004</text>") != std::string::npos);
  CHECK(svg.find(">40k</text>") == std::string::npos);  // 10k .. 40k: 1-2-5 ticks 10k, 20k
  CHECK(svg.find(">10k</text>") != std::string::npos);
  CHECK(svg.find(">20k</text>") != std::string::npos);
}
