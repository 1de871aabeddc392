#pragma once
// dist::Nccl: the communicator over NCCL (from the CUDA toolkit), one GPU per rank, for spans
// in DEVICE memory. Link sora::nccl. The ranks are MPI's (dist::Mpi): rank 0 makes NCCL's
// unique id and MPI broadcasts it; host-side collectives (all_gather of a hash, barrier, abort)
// go through MPI too.
//
// all_reduce_sum is ncclAllReduce(ncclSum): its ring reduces each chunk once and passes the
// result around, so every rank gets the same bits; the order is fixed by the topology, so a
// rerun on the same machines gives the same sum. Each call synchronises its stream: the
// caller may read the result at once.

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/dist/communicator.hpp"
#include "sora/dist/mpi.hpp"

namespace sora::dist {

namespace detail {

inline void nccl_check(ncclResult_t code, const char* what) {
  if (code != ncclSuccess)
    sora::detail::throw_error("dist::Nccl: ", what, " failed: ", ncclGetErrorString(code));
}
inline void cuda_check(cudaError_t code, const char* what) {
  if (code != cudaSuccess)
    sora::detail::throw_error("dist::Nccl: ", what, " failed: ", cudaGetErrorString(code));
}

template <class T>
ncclDataType_t nccl_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "dist::Nccl: spans of float or double");
  return std::is_same_v<T, float> ? ncclFloat32 : ncclFloat64;
}

}  // namespace detail

class Nccl {
 public:
  static constexpr bool device_memory = true;  // spans are device memory (DeviceCommunicator)

  // device < 0: the rank's place among the ranks of its machine (Open MPI's local rank), so
  // that N ranks on a machine with N GPUs use one each.
  explicit Nccl(Mpi& mpi, int device = -1) : mpi_(mpi) {
    int devices = 0;
    detail::cuda_check(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    SORA_CHECK(devices > 0, "dist::Nccl: no GPU is visible to rank ", mpi.rank());
    if (device < 0) device = local_rank();
    SORA_CHECK(device < devices, "dist::Nccl: rank ", mpi.rank(), " wants GPU ", device,
               " but this machine has ", devices, "; start at most one rank per GPU");
    device_ = device;
    detail::cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    ncclUniqueId id{};
    if (mpi.rank() == 0) detail::nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    detail::mpi_check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi.handle()), "MPI_Bcast");
    detail::nccl_check(ncclCommInitRank(&comm_, mpi.size(), id, mpi.rank()), "ncclCommInitRank");
    detail::cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                       "cudaStreamCreate");
    active_ = stream_;
  }
  Nccl(const Nccl&) = delete;
  Nccl& operator=(const Nccl&) = delete;
  ~Nccl() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }

  int rank() const { return mpi_.rank(); }
  int size() const { return mpi_.size(); }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // Runs the collectives on `stream` from now on (0, the legacy default stream, included):
  // train::fit passes the device model's stream, so the all-reduce is ordered after the kernels
  // that wrote the gradients and before those that read them, with no other synchronisation.
  // use_own_stream() goes back to the communicator's own stream.
  void set_stream(cudaStream_t stream) { active_ = stream; }
  void use_own_stream() { active_ = stream_; }

  // `data` is device memory on this rank's GPU.
  template <class T>
  void all_reduce_sum(std::span<T> data) {
    if (data.empty()) return;
    detail::nccl_check(ncclAllReduce(data.data(), data.data(), data.size(), detail::nccl_type<T>(),
                                     ncclSum, comm_, active_),
                       "ncclAllReduce");
    detail::cuda_check(cudaStreamSynchronize(active_), "cudaStreamSynchronize");
  }

  template <class T>
  void broadcast(std::span<T> data, int root) {
    SORA_CHECK(root >= 0 && root < size(), "dist::Nccl::broadcast: root ", root,
               " is not a rank of a world of ", size());
    if (data.empty()) return;
    detail::nccl_check(ncclBroadcast(data.data(), data.data(), data.size(), detail::nccl_type<T>(),
                                     root, comm_, active_),
                       "ncclBroadcast");
    detail::cuda_check(cudaStreamSynchronize(active_), "cudaStreamSynchronize");
  }

  std::vector<std::uint64_t> all_gather(std::uint64_t value) { return mpi_.all_gather(value); }
  void barrier() { mpi_.barrier(); }

  // NCCL's operations in flight are abandoned (a peer that died would block them forever),
  // then MPI ends every rank.
  [[noreturn]] void abort(const std::string& message) {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    mpi_.abort(message);
  }

 private:
  static int local_rank() {
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
      if (const char* v = std::getenv(name)) return std::atoi(v);
    return 0;
  }

  Mpi& mpi_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;  // owned
  cudaStream_t active_ = nullptr;  // where the collectives run: stream_ or set_stream's
};
static_assert(Communicator<Nccl>);

}  // namespace sora::dist
