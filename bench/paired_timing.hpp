#pragma once
// Paired timing for ratios that must resolve a few percent on a shared, noisy machine.
// Separate benchmark runs drift by more than that, so run_paired alternates the two
// contenders iteration by iteration (ABBA order, so neither always runs on a warm cache),
// times each with the thread's CPU clock (time spent descheduled does not count), and
// reports the ratio of the per-contender minima and the median of the per-pair ratios.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <ctime>
#include <string>
#include <vector>

namespace sora::bench {

inline double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Seconds of thread CPU time that one call of `work` takes.
template <class Work>
double time_once(Work&& work) {
  const double t0 = thread_seconds();
  work();
  benchmark::ClobberMemory();
  return thread_seconds() - t0;
}

// Runs `numerator` and `denominator` once each per benchmark iteration (after one untimed
// warm-up call each, which sizes every buffer) and sets the counters
// <name>_min, <name>_median (numerator / denominator) and <num_label>_ms_min,
// <den_label>_ms_min.
template <class Numerator, class Denominator>
void run_paired(benchmark::State& state, const std::string& name, const std::string& num_label,
                Numerator&& numerator, const std::string& den_label, Denominator&& denominator) {
  time_once(numerator);
  time_once(denominator);
  std::vector<double> ratios;
  double best_num = 1e30, best_den = 1e30;
  bool denominator_first = true;
  for (auto _ : state) {
    double t_num, t_den;
    if (denominator_first) {
      t_den = time_once(denominator);
      t_num = time_once(numerator);
    } else {
      t_num = time_once(numerator);
      t_den = time_once(denominator);
    }
    denominator_first = !denominator_first;
    best_num = std::min(best_num, t_num);
    best_den = std::min(best_den, t_den);
    ratios.push_back(t_num / t_den);
  }
  std::sort(ratios.begin(), ratios.end());
  state.counters[name + "_min"] = best_num / best_den;
  state.counters[name + "_median"] = ratios.empty() ? 0.0 : ratios[ratios.size() / 2];
  state.counters[num_label + "_ms_min"] = 1e3 * best_num;
  state.counters[den_label + "_ms_min"] = 1e3 * best_den;
}

}  // namespace sora::bench
