#pragma once
// dist::Mpi: the communicator over MPI (Open MPI from Debian's libopenmpi-dev), one process
// per rank, host memory. Link the sora::mpi target (it exists where CMake's FindMPI found MPI).
//
// Construct one Mpi per program, early in main: it initialises MPI (unless the program already
// had) and finalises it when destroyed. Run under `mpirun -np N program ...`; started without
// mpirun, the program is a world of one (started_by_mpi_launcher() tells which).
//
// all_reduce_sum reduces in rank order, (((x0 + x1) + x2) + ...), on rank 0 and broadcasts
// the result: every rank gets the same bits, and the same world size gives the same sum run
// after run. MPI_Allreduce with MPI_SUM promises neither (its algorithm may group the terms
// differently on each rank, and ranks that disagree in the last bit drift apart).

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/dist/communicator.hpp"

namespace sora::dist {

namespace detail {

inline void mpi_check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  sora::detail::throw_error("dist::Mpi: ", what, " failed: ", std::string(text, length));
}

// in_out[i] = in[i] + in_out[i]: MPI hands a user operation the lower ranks' partial result
// as `in`, so with commute = false the sum runs in rank order.
template <class T>
void ordered_sum(void* in, void* in_out, int* length, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(in_out);
  for (int i = 0; i < *length; ++i) b[i] = a[i] + b[i];
}

template <class T>
MPI_Datatype mpi_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "dist::Mpi: spans of float or double");
  return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
}

// MPI counts are int: longer spans go in chunks.
inline constexpr std::size_t kMaxChunk = std::size_t{1} << 30;

}  // namespace detail

class Mpi {
 public:
  // argc/argv may be null (MPI then reads the launcher's environment).
  explicit Mpi(int* argc = nullptr, char*** argv = nullptr) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init");
      owns_mpi_ = true;
    }
    // Errors come back as codes (turned into sora::Error) instead of MPI's default of
    // aborting without saying which call failed.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    detail::mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    detail::mpi_check(MPI_Op_create(&detail::ordered_sum<float>, 0, &sum_float_), "MPI_Op_create");
    detail::mpi_check(MPI_Op_create(&detail::ordered_sum<double>, 0, &sum_double_),
                      "MPI_Op_create");
  }
  Mpi(const Mpi&) = delete;
  Mpi& operator=(const Mpi&) = delete;
  ~Mpi() {
    MPI_Op_free(&sum_float_);
    MPI_Op_free(&sum_double_);
    MPI_Comm_free(&comm_);
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (owns_mpi_ && !finalised) MPI_Finalize();
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }

  template <class T>
  void all_reduce_sum(std::span<T> data) {
    if (size_ == 1) return;
    MPI_Op op = std::is_same_v<T, float> ? sum_float_ : sum_double_;
    for (std::size_t first = 0; first < data.size(); first += detail::kMaxChunk) {
      const int count = static_cast<int>(std::min(detail::kMaxChunk, data.size() - first));
      T* chunk = data.data() + first;
      detail::mpi_check(MPI_Reduce(rank_ == 0 ? MPI_IN_PLACE : chunk, chunk, count,
                                   detail::mpi_type<T>(), op, 0, comm_),
                        "MPI_Reduce");
      detail::mpi_check(MPI_Bcast(chunk, count, detail::mpi_type<T>(), 0, comm_), "MPI_Bcast");
    }
  }

  template <class T>
  void broadcast(std::span<T> data, int root) {
    SORA_CHECK(root >= 0 && root < size_, "dist::Mpi::broadcast: root ", root,
               " is not a rank of a world of ", size_);
    for (std::size_t first = 0; first < data.size(); first += detail::kMaxChunk) {
      const int count = static_cast<int>(std::min(detail::kMaxChunk, data.size() - first));
      detail::mpi_check(MPI_Bcast(data.data() + first, count, detail::mpi_type<T>(), root, comm_),
                        "MPI_Bcast");
    }
  }

  std::vector<std::uint64_t> all_gather(std::uint64_t value) {
    std::vector<std::uint64_t> all(static_cast<std::size_t>(size_));
    detail::mpi_check(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_),
                      "MPI_Allgather");
    return all;
  }

  void barrier() { detail::mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }

  // Prints "sora: rank r of N: message" and ends every rank (MPI_Abort makes mpirun kill the
  // others, which may be blocked in a collective): exit status non-zero everywhere.
  [[noreturn]] void abort(const std::string& message) {
    std::fprintf(stderr, "sora: rank %d of %d: %s\n", rank_, size_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this line keeps [[noreturn]] honest
  }

 private:
  bool owns_mpi_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  MPI_Op sum_float_ = MPI_OP_NULL;
  MPI_Op sum_double_ = MPI_OP_NULL;
};
static_assert(Communicator<Mpi>);

}  // namespace sora::dist
