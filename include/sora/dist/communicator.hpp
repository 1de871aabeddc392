#pragma once
// The communicator concept of data-parallel training (docs/design.md, "Data-parallel
// training"), and Single, the world of one process that every caller gets by default.
//
// A communicator connects `size()` processes (ranks 0 .. size - 1) that run the same program
// on different shards of the data. train::fit needs six operations of it:
//   all_reduce_sum(span)   every rank's span becomes the element-wise sum over ranks. The sum
//                          must be the same bits on every rank (the ranks then take the same
//                          optimizer step), so implementations reduce in a fixed order.
//   broadcast(span, root)  every rank's span becomes root's.
//   all_gather(hash)       the vector of every rank's value, indexed by rank.
//   barrier()              returns once every rank has called it.
//   abort(message)         prints the message and ends every rank with a non-zero status;
//                          never returns. An exception on one rank must not leave the
//                          others waiting forever in the next collective.
// Spans are of float or double; where they live (host or device memory) is the
// implementation's contract (Single, Mpi: host; Nccl: device).

#include <concepts>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

namespace sora::dist {

template <class C>
concept Communicator = requires(C& c, const C& cc, std::span<float> f, std::span<double> d,
                                std::uint64_t value, const std::string& message) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  c.all_reduce_sum(f);
  c.all_reduce_sum(d);
  c.broadcast(f, 0);
  c.broadcast(d, 0);
  { c.all_gather(value) } -> std::same_as<std::vector<std::uint64_t>>;
  c.barrier();
  c.abort(message);
};

// A communicator whose spans live in device memory (dist::Nccl: `static constexpr bool
// device_memory = true`). train::fit all-reduces a device model's gradients through it in
// place on the device, and refuses a host communicator for a device model.
template <class C>
concept DeviceCommunicator = Communicator<C> && requires {
  requires C::device_memory;
};

// True when an MPI launcher (mpirun / mpiexec / srun) started this process: what a program's
// `--distributed auto` asks before joining an MPI world (no MPI header needed to ask).
inline bool started_by_mpi_launcher() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

// One process: every collective is the identity. abort still ends the process (the contract
// is the same for every communicator), but train::fit only aborts when size() > 1: with one
// process an exception simply propagates to the caller.
class Single {
 public:
  int rank() const { return 0; }
  int size() const { return 1; }
  template <class T>
  void all_reduce_sum(std::span<T>) {}
  template <class T>
  void broadcast(std::span<T>, int) {}
  std::vector<std::uint64_t> all_gather(std::uint64_t value) { return {value}; }
  void barrier() {}
  [[noreturn]] void abort(const std::string& message) {
    std::fprintf(stderr, "sora: %s\n", message.c_str());
    std::fflush(stderr);
    std::exit(1);
  }
};
static_assert(Communicator<Single>);

}  // namespace sora::dist
