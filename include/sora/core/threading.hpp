#pragma once
// Threading: one policy for every parallel region, sora's own loops and Eigen's GEMMs.
//
// sora parallelises with OpenMP when the build has it (the CMake target links OpenMP when
// found) and runs serially otherwise. A region gets
//
//   min(requested, free cores, work / minimum work per thread)
//
// threads, at least one:
// - requested: set_num_threads(n); n == 0 (and the start-up default) is SORA_NUM_THREADS when
//   set, else every core the process may run on.
// - free cores: the cores not taken by other processes' runnable threads, from the
//   instantaneous "running" count of /proc/loadavg (not the load averages, which trail by
//   minutes), read again at most every kLoadRecheckNs. A thread whose core is busy with
//   another process is descheduled for whole time slices, and every other thread of the
//   region waits for it at the join: two threads on one free core ran a training step several
//   times slower than one thread.
// - work: a region splits only when each thread gets at least the minimum below; smaller
//   regions cost more to wake and join a second thread than the thread saves.
//
// Eigen's GEMMs follow the policy through GemmThreads (a scoped thread count around one
// product); elsewhere Eigen runs single-threaded, so a product nested in a parallel region, or
// a small one somewhere else, never starts threads of its own.
//
// How the thresholds were set (bench/threads_bench.cpp measures both inputs; the README's
// performance section has the runs): a split must repay waking and joining a sleeping second
// thread, a few microseconds at best under passive waiting (BM_WakeJoin: 2.6 us minimum, tens
// of microseconds typical on a busy machine). A region splits when each thread's share is tens
// of microseconds of work, 10-20x that cost: 4e6 multiply-adds of a GEMM (about 60 us on one
// AVX-512 core) or 3e4 row elements of a row-wise op (about 30 us of GELU). Where the machine
// is idle, BM_Gemm and BM_RowLoop show the break-even directly (threads:2 against threads:1).

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <unistd.h>
#endif

namespace sora {

inline bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

namespace detail {

// Multiply-adds per thread below which a GEMM stays on one thread.
inline constexpr double kGemmMinMacsPerThread = 4e6;
// Row elements per thread below which a row-wise loop (layer norm, GELU, ...) stays on one.
inline constexpr double kLoopMinElementsPerThread = 3e4;
// How often the free-core count is read again.
inline constexpr std::int64_t kLoadRecheckNs = 20'000'000;

inline int hardware_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_num_procs());  // the cores of this process's affinity mask
#else
  return 1;
#endif
}

// SORA_NUM_THREADS as a count >= 1, or 0 when unset; anything else is an error naming it.
inline int env_threads() {
  const char* text = std::getenv("SORA_NUM_THREADS");
  if (text == nullptr || *text == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(text, &end, 10);
  SORA_CHECK(*end == '\0' && n >= 1 && n <= 4096,
             "SORA_NUM_THREADS must be a thread count >= 1, got '", text, "'");
  return static_cast<int>(n);
}

struct ThreadState {
  std::atomic<int> requested{1};
  std::atomic<int> free_cores{1};
  std::atomic<std::int64_t> checked_at{-1};  // steady-clock ns of the last free-core read
};

inline ThreadState& thread_state() {
  static ThreadState state;
  return state;
}

// Other processes' runnable threads: /proc/loadavg's fourth field is "running/total"; the
// running count includes the calling thread, which is ours. -1 where the file is missing.
inline int others_running() {
#if defined(__linux__)
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return -1;
  double a1, a5, a15;
  int running = 0, total = 0;
  const int got = std::fscanf(f, "%lf %lf %lf %d/%d", &a1, &a5, &a15, &running, &total);
  std::fclose(f);
  return got == 5 ? std::max(0, running - 1) : -1;
#else
  return -1;
#endif
}

inline int free_cores() {
  ThreadState& s = thread_state();
  const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::steady_clock::now().time_since_epoch())
                               .count();
  const std::int64_t last = s.checked_at.load(std::memory_order_relaxed);
  if (last < 0 || now - last > kLoadRecheckNs) {
    const int cores = hardware_threads();
    const int others = others_running();
    s.free_cores.store(others < 0 ? cores : std::max(1, cores - others), std::memory_order_relaxed);
    s.checked_at.store(now, std::memory_order_relaxed);
  }
  return s.free_cores.load(std::memory_order_relaxed);
}

inline void apply_requested(int n) {
  thread_state().requested.store(n, std::memory_order_relaxed);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  Eigen::setNbThreads(1);  // products thread only inside GemmThreads
}

// The start-up default, applied once per program by the inline variable below. A malformed
// SORA_NUM_THREADS cannot be reported here (before main, an exception would end the program):
// it falls back to all cores, and set_num_threads(0) reports it.
inline bool init_threads() {
  int env = 0;
  try {
    env = env_threads();
  } catch (const Error&) {
    env = 0;
  }
  apply_requested(env > 0 ? env : hardware_threads());
  return true;
}
inline const bool threads_initialised = init_threads();

}  // namespace detail

// The thread count regions may use at most (set_num_threads, SORA_NUM_THREADS or all cores).
inline int num_threads() {
  return detail::thread_state().requested.load(std::memory_order_relaxed);
}

// n >= 1 sets the count; n == 0 restores the default: SORA_NUM_THREADS, else all cores.
inline void set_num_threads(int n) {
  SORA_CHECK(n >= 0, "set_num_threads: thread count must be >= 0, got ", n);
#ifdef _OPENMP
  if (n == 0) {
    const int env = detail::env_threads();
    n = env > 0 ? env : detail::hardware_threads();
  }
  detail::apply_requested(n);
#else
  (void)n;
#endif
}

// Threads for a region of `work` units that splits profitably only at min_per_thread units a
// thread (see the policy above). 1 inside a parallel region: regions do not nest.
inline int threads_for(double work, double min_per_thread) {
#ifdef _OPENMP
  const int requested = num_threads();
  if (requested <= 1 || omp_in_parallel()) return 1;
  const double by_size = work / min_per_thread;
  if (by_size < 2.0) return 1;
  const int n = std::min(requested, detail::free_cores());
  return std::max(1, static_cast<int>(std::min<double>(n, by_size)));
#else
  (void)work;
  (void)min_per_thread;
  return 1;
#endif
}

// Eigen's thread count for the products written in this scope: those of an (M, K) x (K, N)
// GEMM's size. Restores single-threaded products on exit. Use it outside parallel regions.
class GemmThreads {
 public:
  GemmThreads(Index M, Index N, Index K) {
    const int n =
        threads_for(static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K),
                    detail::kGemmMinMacsPerThread);
    if (n > 1) {
      Eigen::setNbThreads(n);
      raised_ = true;
    }
  }
  ~GemmThreads() {
    if (raised_) Eigen::setNbThreads(1);
  }
  GemmThreads(const GemmThreads&) = delete;
  GemmThreads& operator=(const GemmThreads&) = delete;

 private:
  bool raised_ = false;
};

// Calls body(i) for i in [begin, end), in parallel when the policy gives the range more than
// one thread. item_work: the work of one index in row elements (a row-wise op passes its row
// length); omitted, the range always splits when threads are free. body must be safe to run
// concurrently for different i. Dynamic chunks of about a quarter of a thread's share: a thread
// that another process delays leaves its remaining chunks to the others.
template <class Body>
void parallel_for(Index begin, Index end, Body&& body, double item_work = -1.0) {
#ifdef _OPENMP
  const Index count = end - begin;
  if (count >= 2) {
    const double work = item_work < 0 ? 1e300 : item_work * static_cast<double>(count);
    const int n = threads_for(work, detail::kLoopMinElementsPerThread);
    if (n > 1) {
      const Index chunk = std::max<Index>(1, count / (4 * n));
#pragma omp parallel for num_threads(n) schedule(dynamic, chunk)
      for (Index i = begin; i < end; ++i) body(i);
      return;
    }
  }
#else
  (void)item_work;
#endif
  for (Index i = begin; i < end; ++i) body(i);
}

// Makes OpenMP's idle threads sleep instead of spinning (OMP_WAIT_POLICY=passive): a spinning
// thread burns a core another process needs, and under load it made steps several times slower.
// libgomp reads the variable once, when it is loaded, before main: setting it from inside the
// program changes nothing (checked: an idle worker kept spinning). So a program that wants it
// calls this first thing in main: unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is already set (the
// user's choice stands), it sets OMP_WAIT_POLICY=passive and executes itself again with the
// same arguments. If that fails, the program runs on with the default policy.
inline void use_passive_wait(char** argv) {
#if defined(_OPENMP) && defined(__linux__)
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  ::unsetenv("OMP_WAIT_POLICY");  // execv returned: it failed
#else
  (void)argv;
#endif
}

}  // namespace sora
