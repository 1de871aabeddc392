#pragma once
// Evaluation metrics of the GLUE tasks: accuracy (SST-2, MNLI, QNLI, RTE), F1 of the
// positive class (MRPC, QQP), Matthews correlation (CoLA), Pearson and Spearman correlation
// (STS-B). Computed in double from predictions and labels of equal length.

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "sora/core/error.hpp"

namespace sora::train {

namespace detail {

inline void check_same_length(std::size_t a, std::size_t b, const char* metric) {
  SORA_CHECK(a == b, metric, ": ", a, " predictions but ", b, " labels");
  SORA_CHECK(a > 0, metric, ": no examples");
}

struct Confusion {
  double tp = 0, tn = 0, fp = 0, fn = 0;
};

inline Confusion binary_confusion(std::span<const int> pred, std::span<const int> label,
                                  const char* metric) {
  check_same_length(pred.size(), label.size(), metric);
  Confusion c;
  for (std::size_t i = 0; i < pred.size(); ++i) {
    SORA_CHECK((pred[i] == 0 || pred[i] == 1) && (label[i] == 0 || label[i] == 1), metric,
               " expects binary 0/1 classes; example ", i, " has prediction ", pred[i],
               " and label ", label[i]);
    const bool p = pred[i] == 1, l = label[i] == 1;
    c.tp += p && l;
    c.tn += !p && !l;
    c.fp += p && !l;
    c.fn += !p && l;
  }
  return c;
}

// Ranks 1..n with ties given the average of the ranks they span (as scipy's rankdata).
inline std::vector<double> average_ranks(std::span<const double> x) {
  std::vector<std::size_t> order(x.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
  std::vector<double> rank(x.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && x[order[j + 1]] == x[order[i]]) ++j;
    const double average = 0.5 * static_cast<double>(i + j) + 1.0;
    for (std::size_t k = i; k <= j; ++k) rank[order[k]] = average;
    i = j + 1;
  }
  return rank;
}

}  // namespace detail

inline double accuracy(std::span<const int> pred, std::span<const int> label) {
  detail::check_same_length(pred.size(), label.size(), "accuracy");
  std::size_t hits = 0;
  for (std::size_t i = 0; i < pred.size(); ++i) hits += pred[i] == label[i];
  return static_cast<double>(hits) / static_cast<double>(pred.size());
}

// F1 of class 1. Defined as 0 when there is no true positive (no precision or recall).
inline double f1_score(std::span<const int> pred, std::span<const int> label) {
  const auto c = detail::binary_confusion(pred, label, "f1");
  if (c.tp == 0) return 0.0;
  return 2.0 * c.tp / (2.0 * c.tp + c.fp + c.fn);
}

// Matthews correlation; 0 when a row or column of the confusion matrix is empty (the
// convention of scikit-learn, which GLUE's CoLA scoring uses).
inline double matthews_corrcoef(std::span<const int> pred, std::span<const int> label) {
  const auto c = detail::binary_confusion(pred, label, "matthews_corrcoef");
  const double denominator = (c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn);
  if (denominator == 0) return 0.0;
  return (c.tp * c.tn - c.fp * c.fn) / std::sqrt(denominator);
}

// Pearson correlation; 0 when either side is constant (the correlation is undefined).
inline double pearson(std::span<const double> x, std::span<const double> y) {
  detail::check_same_length(x.size(), y.size(), "pearson");
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / n;
  const double my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return 0.0;
  return sxy / std::sqrt(sxx * syy);
}

// Spearman rank correlation: Pearson of the average ranks (correct with ties).
inline double spearman(std::span<const double> x, std::span<const double> y) {
  detail::check_same_length(x.size(), y.size(), "spearman");
  const auto rx = detail::average_ranks(x), ry = detail::average_ranks(y);
  return pearson(rx, ry);
}

}  // namespace sora::train
