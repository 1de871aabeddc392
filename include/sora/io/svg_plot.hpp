#pragma once
// Small SVG plots written directly (no plotting dependency): line plots of training curves
// and of the sparsity scheduler's memorization / generalization against parameter count,
// and heat maps such as the final rank of every adapted module (layers x module kind).
// Each plot renders to a self-contained SVG string; save it with io::write_file_atomic.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "sora/core/error.hpp"

namespace sora::io {

namespace svg_detail {

inline std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

inline std::string number(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", v);
  return buffer;
}

// A tick label: short, in scientific notation only where it must be.
inline std::string tick_label(double v) {
  char buffer[32];
  const double a = std::fabs(v);
  if (v == 0) return "0";
  if (a >= 1e5 || a < 1e-3) {
    std::snprintf(buffer, sizeof buffer, "%.1e", v);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.4g", v);
  }
  return buffer;
}

// About `count` "nice" tick values (1, 2, 5 x 10^k steps) covering [lo, hi].
inline std::vector<double> nice_ticks(double lo, double hi, int count = 6) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / count;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

// A short label for a tick of a count axis: 500, 1k, 20k, 1.5M, 2G; below 1000 the %g form
// (0.02, 2.5). Three significant digits at most, so 15849 reads 15.8k.
inline std::string short_label(double v) {
  char buffer[32];
  const double a = std::fabs(v);
  if (v == 0) return "0";
  const char* suffix = "";
  double scaled = v;
  if (a >= 1e9) {
    scaled = v / 1e9, suffix = "G";
  } else if (a >= 1e6) {
    scaled = v / 1e6, suffix = "M";
  } else if (a >= 1e3) {
    scaled = v / 1e3, suffix = "k";
  }
  std::snprintf(buffer, sizeof buffer, "%.3g%s", scaled, suffix);
  return buffer;
}

// Ticks for a log-scale axis over [10^lo_exp, 10^hi_exp], as values (not exponents): the
// sparsest of powers of ten, 1-2-5 steps, or every digit (1..9 x 10^k) that puts at least two
// ticks on the axis, thinned to at most max_count by keeping every n-th power of ten when the
// range spans many decades. A range too narrow for even that (inside one digit step) gets
// linear nice ticks.
inline std::vector<double> log_ticks(double lo_exp, double hi_exp, std::size_t max_count = 10) {
  if (!(hi_exp > lo_exp)) return {std::pow(10.0, lo_exp)};
  const double lo = std::pow(10.0, lo_exp) * (1 - 1e-9), hi = std::pow(10.0, hi_exp) * (1 + 1e-9);
  const std::vector<std::vector<double>> mantissas = {{1}, {1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
  for (const auto& ms : mantissas) {
    std::vector<double> ticks;
    for (int k = static_cast<int>(std::floor(lo_exp)); k <= static_cast<int>(std::ceil(hi_exp));
         ++k)
      for (double m : ms) {
        const double v = m * std::pow(10.0, k);
        if (v >= lo && v <= hi) ticks.push_back(v);
      }
    if (ticks.size() < 2) continue;
    if (ticks.size() > max_count) {  // only powers of ten get here: keep every n-th decade
      const std::size_t every = (ticks.size() + max_count - 1) / max_count;
      std::vector<double> thinned;
      for (std::size_t i = 0; i < ticks.size(); i += every) thinned.push_back(ticks[i]);
      ticks = thinned;
    }
    return ticks;
  }
  return nice_ticks(std::pow(10.0, lo_exp), std::pow(10.0, hi_exp), 4);
}

// Colour-blind-safe palette (Okabe-Ito).
inline const char* series_colour(std::size_t i) {
  static const char* colours[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                  "#E69F00", "#56B4E9", "#000000", "#F0E442"};
  return colours[i % 8];
}

}  // namespace svg_detail

struct Series {
  std::string name;
  std::vector<double> x, y;
  bool markers = true;
};

// A vertical mark at x across the plot area (dashed), labelled at the top: a stage boundary,
// an event.
struct XMark {
  double x = 0;
  std::string label;
};

struct LinePlot {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  std::vector<XMark> marks;
  bool log_x = false;  // log-scale x: 1-2-5 ticks with short labels (10k, 20k)
  int width = 720, height = 440;

  LinePlot& add(Series s) {
    SORA_CHECK(s.x.size() == s.y.size(), "plot series '", s.name, "': ", s.x.size(),
               " x values but ", s.y.size(), " y values");
    series.push_back(std::move(s));
    return *this;
  }

  std::string svg() const {
    using namespace svg_detail;
    const double left = 80, right = 170, top = 40, bottom = 60;
    const double pw = width - left - right, ph = height - top - bottom;
    double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
    double y_lo = x_lo, y_hi = -x_lo;
    auto fx = [&](double x) { return log_x ? std::log10(x) : x; };
    for (const auto& s : series)
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        if (!std::isfinite(s.y[i]) || !std::isfinite(s.x[i]) || (log_x && s.x[i] <= 0)) continue;
        x_lo = std::min(x_lo, fx(s.x[i]));
        x_hi = std::max(x_hi, fx(s.x[i]));
        y_lo = std::min(y_lo, s.y[i]);
        y_hi = std::max(y_hi, s.y[i]);
      }
    if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
    if (x_hi == x_lo) x_lo -= 0.5, x_hi += 0.5;
    if (y_hi == y_lo) y_lo -= 0.5, y_hi += 0.5;
    const double y_pad = 0.05 * (y_hi - y_lo);
    y_lo -= y_pad;
    y_hi += y_pad;
    auto px = [&](double x) { return left + (fx(x) - x_lo) / (x_hi - x_lo) * pw; };
    auto py = [&](double y) { return top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * ph; };

    std::string out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) +
                      "\" height=\"" + std::to_string(height) +
                      "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    out += "<text x=\"" + number(left + pw / 2) + "\" y=\"22\" text-anchor=\"middle\" " +
           "font-size=\"15\">" + escape(title) + "</text>\n";
    // Grid and ticks.
    for (double t : nice_ticks(y_lo, y_hi)) {
      out += "<line x1=\"" + number(left) + "\" x2=\"" + number(left + pw) + "\" y1=\"" +
             number(py(t)) + "\" y2=\"" + number(py(t)) + "\" stroke=\"#e5e5e5\"/>\n";
      out += "<text x=\"" + number(left - 6) + "\" y=\"" + number(py(t) + 4) +
             "\" text-anchor=\"end\">" + tick_label(t) + "</text>\n";
    }
    for (double value : log_x ? log_ticks(x_lo, x_hi) : nice_ticks(x_lo, x_hi)) {
      const double x = px(value);
      out += "<line x1=\"" + number(x) + "\" x2=\"" + number(x) + "\" y1=\"" + number(top) +
             "\" y2=\"" + number(top + ph) + "\" stroke=\"#e5e5e5\"/>\n";
      out += "<text x=\"" + number(x) + "\" y=\"" + number(top + ph + 18) +
             "\" text-anchor=\"middle\">" + (log_x ? short_label(value) : tick_label(value)) +
             "</text>\n";
    }
    for (const XMark& m : marks) {
      if (!std::isfinite(m.x) || (log_x && m.x <= 0)) continue;
      const double x = px(m.x);
      out += "<line class=\"mark\" x1=\"" + number(x) + "\" x2=\"" + number(x) + "\" y1=\"" +
             number(top) + "\" y2=\"" + number(top + ph) +
             "\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n";
      out += "<text x=\"" + number(x + 3) + "\" y=\"" + number(top + 12) +
             "\" font-size=\"10\" fill=\"#555\">" + escape(m.label) + "</text>\n";
    }
    out += "<rect x=\"" + number(left) + "\" y=\"" + number(top) + "\" width=\"" + number(pw) +
           "\" height=\"" + number(ph) + "\" fill=\"none\" stroke=\"#333\"/>\n";
    out += "<text x=\"" + number(left + pw / 2) + "\" y=\"" + number(height - 15) +
           "\" text-anchor=\"middle\">" + escape(x_label) + (log_x ? " (log scale)" : "") +
           "</text>\n";
    out += "<text transform=\"translate(18," + number(top + ph / 2) +
           ") rotate(-90)\" text-anchor=\"middle\">" + escape(y_label) + "</text>\n";
    // Series: a polyline per run of finite points, markers, and a legend entry.
    for (std::size_t k = 0; k < series.size(); ++k) {
      const auto& s = series[k];
      const char* colour = series_colour(k);
      std::string points;
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        if (!std::isfinite(s.y[i]) || (log_x && s.x[i] <= 0)) continue;
        points += number(px(s.x[i])) + "," + number(py(s.y[i])) + " ";
        if (s.markers)
          out += "<circle cx=\"" + number(px(s.x[i])) + "\" cy=\"" + number(py(s.y[i])) +
                 "\" r=\"3\" fill=\"" + colour + "\"/>\n";
      }
      out += "<polyline fill=\"none\" stroke=\"" + std::string(colour) +
             "\" stroke-width=\"2\" points=\"" + points + "\"/>\n";
      const double ly = top + 14 + 20.0 * static_cast<double>(k);
      out += "<line x1=\"" + number(left + pw + 12) + "\" x2=\"" + number(left + pw + 32) +
             "\" y1=\"" + number(ly - 4) + "\" y2=\"" + number(ly - 4) + "\" stroke=\"" + colour +
             "\" stroke-width=\"2\"/>\n";
      out += "<text x=\"" + number(left + pw + 38) + "\" y=\"" + number(ly) + "\">" +
             escape(s.name) + "</text>\n";
    }
    out += "</svg>\n";
    return out;
  }
};

// A heat map of values (rows x cols) with labelled rows and columns, e.g. the final rank of
// each adapted module: rows = layers, columns = module kinds. Each cell shows its value.
struct Heatmap {
  std::string title, value_label;
  std::vector<std::string> row_labels, col_labels;
  std::vector<std::vector<double>> values;  // values[row][col]; NaN = not present

  std::string svg() const {
    using namespace svg_detail;
    SORA_CHECK(values.size() == row_labels.size(), "heatmap: ", values.size(),
               " rows of values but ", row_labels.size(), " row labels");
    for (const auto& row : values)
      SORA_CHECK(row.size() == col_labels.size(), "heatmap: a row has ", row.size(),
                 " values but there are ", col_labels.size(), " column labels");
    const double cell_w = 64, cell_h = 28, left = 90, top = 60;
    const double width = left + cell_w * static_cast<double>(col_labels.size()) + 100;
    const double height = top + cell_h * static_cast<double>(row_labels.size()) + 30;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& row : values)
      for (double v : row)
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi == lo) hi = lo + 1;
    // White (low) to deep blue (high); dark cells get white text.
    auto colour = [&](double v, bool& dark) {
      const double t = (v - lo) / (hi - lo);
      dark = t > 0.55;
      char buffer[16];
      std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", static_cast<int>(247 - 239 * t),
                    static_cast<int>(251 - 203 * t), static_cast<int>(255 - 148 * t));
      return std::string(buffer);
    };
    std::string out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + number(width) +
                      "\" height=\"" + number(height) +
                      "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    out += "<text x=\"" + number(width / 2) + "\" y=\"22\" text-anchor=\"middle\" " +
           "font-size=\"15\">" + escape(title) + "</text>\n";
    for (std::size_t c = 0; c < col_labels.size(); ++c)
      out += "<text x=\"" + number(left + cell_w * (static_cast<double>(c) + 0.5)) + "\" y=\"" +
             number(top - 8) + "\" text-anchor=\"middle\">" + escape(col_labels[c]) + "</text>\n";
    for (std::size_t r = 0; r < row_labels.size(); ++r) {
      const double y = top + cell_h * static_cast<double>(r);
      out += "<text x=\"" + number(left - 8) + "\" y=\"" + number(y + cell_h / 2 + 4) +
             "\" text-anchor=\"end\">" + escape(row_labels[r]) + "</text>\n";
      for (std::size_t c = 0; c < col_labels.size(); ++c) {
        const double x = left + cell_w * static_cast<double>(c);
        const double v = values[r][c];
        bool dark = false;
        const std::string fill = std::isfinite(v) ? colour(v, dark) : "#dddddd";
        out += "<rect x=\"" + number(x) + "\" y=\"" + number(y) + "\" width=\"" +
               number(cell_w - 2) + "\" height=\"" + number(cell_h - 2) + "\" fill=\"" + fill +
               "\"/>\n";
        out += "<text x=\"" + number(x + cell_w / 2 - 1) + "\" y=\"" + number(y + cell_h / 2 + 4) +
               "\" text-anchor=\"middle\" fill=\"" + (dark ? "white" : "black") + "\">" +
               (std::isfinite(v) ? tick_label(v) : "-") + "</text>\n";
      }
    }
    out += "<text x=\"" + number(width - 90) + "\" y=\"" + number(top + 12) + "\">" +
           escape(value_label) + "</text>\n";
    out += "</svg>\n";
    return out;
  }
};

}  // namespace sora::io
