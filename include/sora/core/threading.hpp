#pragma once
// Threading controls. sora parallelises with OpenMP when the build has it (the CMake target
// links OpenMP when found) and runs serially otherwise; Eigen's own GEMM threading follows
// the same setting so that a user sets one number.

#include <Eigen/Core>
#include <algorithm>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sora {

inline bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// Number of threads sora's parallel loops and Eigen's GEMMs use.
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// n >= 1 sets the count; n == 0 restores the hardware default.
inline void set_num_threads(int n) {
  SORA_CHECK(n >= 0, "set_num_threads: thread count must be >= 0, got ", n);
#ifdef _OPENMP
  const int count = n == 0 ? omp_get_num_procs() : n;
  omp_set_num_threads(count);
  Eigen::setNbThreads(count);
#else
  (void)n;
#endif
}

// Calls body(i) for i in [begin, end), in parallel when OpenMP is on and the range is worth
// splitting. body must be safe to run concurrently for different i.
template <class Body>
void parallel_for(Index begin, Index end, Body&& body, Index min_parallel = 2) {
#ifdef _OPENMP
  if (end - begin >= min_parallel && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Index i = begin; i < end; ++i) body(i);
    return;
  }
#else
  (void)min_parallel;
#endif
  for (Index i = begin; i < end; ++i) body(i);
}

}  // namespace sora
