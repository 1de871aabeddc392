#pragma once
// sora-finetune under `mpirun -np N` (--distributed auto, the default): the fine-tuning runs
// are data-parallel over MPI (train::fit with dist::Mpi), every rank reading the same global
// batches and training on its shard of each. Rank 0 prints and writes --out; the other ranks
// print nothing and write into a scratch folder of their own (removed at the end), so the
// program's outputs are those of a single-process run. Any error on any rank ends every rank
// with its message (dist::Mpi::abort), never a hang.
//
// What stays single-process: pretraining (each rank pretrains, or rank 0 reads the cache:
// the result is the same bits, which fit's parameter hash checks before the first step), and
// evaluation (every rank evaluates the whole split, so all take the same decisions). Not
// distributed, and refused with more than one rank: --device cuda, --grad-accum > 1,
// --sparsity-schedule.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include <unistd.h>  // getpid

#include "options.hpp"
#include "sora/core/error.hpp"
#include "sora/dist/communicator.hpp"
#include "sora/train/trainer.hpp"
#ifdef SORA_FINETUNE_MPI
#include "sora/dist/mpi.hpp"
#endif

namespace sora_finetune {

struct World {
#ifdef SORA_FINETUNE_MPI
  std::unique_ptr<sora::dist::Mpi> mpi;
#endif
  int rank = 0;
  int size = 1;
  std::filesystem::path scratch;  // a non-root rank's --out and cache folder
};

inline World& world() {
  static World w;
  return w;
}
inline bool is_root_rank() {
  return world().rank == 0;
}

// Joins the MPI world when an MPI launcher started the program and --distributed is auto;
// a non-root rank's --out and --cache-dir move to its scratch folder.
inline void join_world(Options& o, int* argc, char*** argv) {
  if (o.distributed == "off" || !sora::dist::started_by_mpi_launcher()) return;
#ifdef SORA_FINETUNE_MPI
  World& w = world();
  w.mpi = std::make_unique<sora::dist::Mpi>(argc, argv);
  w.rank = w.mpi->rank();
  w.size = w.mpi->size();
  if (w.size == 1) return;
  SORA_CHECK(o.device == "cpu",
             "--distributed: data-parallel runs train on the CPU; run "
             "--device cuda as one process (or pass --distributed off)");
  SORA_CHECK(o.grad_accum == 1, "--distributed: --grad-accum ", o.grad_accum,
             " is not supported with ", w.size, " ranks; a larger --batch-size does the same");
  SORA_CHECK(!o.sparsity_schedule, "--distributed: --sparsity-schedule runs as one process");
  if (w.rank != 0) {
    w.scratch = std::filesystem::temp_directory_path() /
                ("sora-finetune-rank-" + std::to_string(w.rank) + "-" +
                 std::to_string(static_cast<long>(::getpid())));
    o.out = (w.scratch / "out").string();
    o.cache_dir = (w.scratch / "cache").string();
  }
#else
  (void)argc;
  (void)argv;
  sora::detail::throw_error(
      "--distributed auto: started by an MPI launcher, but this "
      "sora-finetune was built without MPI (apt-get install "
      "libopenmpi-dev openmpi-bin, then rebuild), or pass --distributed off");
#endif
}

// Ends the world: a non-root rank's scratch folder goes, MPI finalises.
inline void leave_world() {
  World& w = world();
  if (!w.scratch.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(w.scratch, ec);
  }
#ifdef SORA_FINETUNE_MPI
  w.mpi.reset();
#endif
}

// An error that ends one rank must end them all (the others may wait in a collective).
inline void abort_world_if_parallel(const std::string& message) {
#ifdef SORA_FINETUNE_MPI
  if (world().size > 1) world().mpi->abort("sora-finetune: " + message);
#else
  (void)message;
#endif
}

// Where a non-root rank's progress bars and log go.
inline std::FILE* null_file() {
  static std::FILE* f = std::fopen("/dev/null", "w");
  return f;
}
inline std::ostream& null_stream() {
  struct NullBuffer : std::streambuf {
    int overflow(int c) override { return c; }
  };
  static NullBuffer buffer;
  static std::ostream stream(&buffer);
  return stream;
}

// train::fit over the world: data-parallel with more than one rank.
template <class M, class Optimizer>
sora::train::TrainResult fit_in_world(
    M& model, Optimizer& optimizer, const std::function<const typename M::Batch&(long)>& next_batch,
    const std::function<double()>& evaluate, const sora::train::TrainerOptions& to,
    sora::train::FitState<typename M::Scalar>* state = nullptr) {
#ifdef SORA_FINETUNE_MPI
  if (world().size > 1)
    return sora::train::fit(model, optimizer, next_batch, evaluate, to, *world().mpi, state);
#endif
  return sora::train::fit(model, optimizer, next_batch, evaluate, to, state);
}

}  // namespace sora_finetune
