// Data-parallel step time on the width-512 benchmark model (bench/step_shape.hpp: C 512, 4
// layers, a global batch of 8 x 128 tokens): train::fit over dist::Mpi, the all-reduce timed
// on its own. Run by bench/dist_step.sh, which compares 2 ranks x 1 thread with 1 rank x 2
// threads in the same run:
//   mpirun -np 2 sora_bench_dist --method lora --threads 1
//   sora_bench_dist --method lora --threads 2
// Rank 0 prints one line: ranks, threads, ms per step (mean of the steps after the first),
// the all-reduce's share of it, and the bytes each rank all-reduces per step.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "sora/core/threading.hpp"
#include "sora/dist/mpi.hpp"
#include "sora/model/peft.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/train/trainer.hpp"
#include "step_shape.hpp"

using namespace sora;

namespace {

constexpr bench::StepShape kShape{512, 4, 8, 8, 128, 256, 8};

using Clock = std::chrono::steady_clock;

// dist::Mpi with the time and bytes of its all-reduces counted.
class TimedMpi {
 public:
  explicit TimedMpi(dist::Mpi& mpi) : mpi_(mpi) {}
  int rank() const { return mpi_.rank(); }
  int size() const { return mpi_.size(); }
  template <class T>
  void all_reduce_sum(std::span<T> data) {
    const auto t0 = Clock::now();
    mpi_.all_reduce_sum(data);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    bytes += data.size_bytes();
  }
  template <class T>
  void broadcast(std::span<T> data, int root) {
    mpi_.broadcast(data, root);
  }
  std::vector<std::uint64_t> all_gather(std::uint64_t v) { return mpi_.all_gather(v); }
  void barrier() { mpi_.barrier(); }
  [[noreturn]] void abort(const std::string& m) { mpi_.abort(m); }

  double seconds = 0.0;
  std::size_t bytes = 0;

 private:
  dist::Mpi& mpi_;
};
static_assert(dist::Communicator<TimedMpi>);

}  // namespace

int main(int argc, char** argv) {
  dist::Mpi mpi(&argc, &argv);
  std::string method_name = "lora";
  int threads = 1;
  long steps = 6;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--method") == 0) method_name = argv[i + 1];
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atol(argv[i + 1]);
  }
  set_num_threads(threads);
  model::Transformer<float> m(kShape.config());
  model::PeftConfig peft;
  peft.method = model::parse_method(method_name);
  peft.rank = kShape.rank;
  peft.alpha = 16.0;
  m.apply_peft(peft);
  optim::FineTuneOptions fo;
  fo.lr = 1e-4;
  fo.xi = peft.method == model::Method::sora ? 1e-4 : 0.0;
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, fo);
  const model::Batch batch = kShape.make_batch();  // the global batch: each rank takes its half

  TimedMpi comm(mpi);
  train::TrainerOptions to;
  to.max_steps = steps;
  to.max_grad_norm = 0.1;
  to.check_every = 0;  // before the first step and after the last only
  Clock::time_point first_done;
  double comm_after_first = 0.0;
  to.on_step = [&](long step, double) {
    if (step == 0) {
      first_done = Clock::now();  // the first step sizes every buffer: not timed
      comm_after_first = comm.seconds;
    }
  };
  std::size_t bytes_after_first = 0;
  auto next = [&](long step) -> const model::Batch& {
    if (step == 1) bytes_after_first = comm.bytes;
    return batch;
  };
  train::fit<model::Transformer<float>>(m, opt, next, {}, to, comm);
  const double per_step =
      std::chrono::duration<double>(Clock::now() - first_done).count() / double(steps - 1);
  const double comm_per_step = (comm.seconds - comm_after_first) / double(steps - 1);
  if (mpi.rank() == 0)
    std::printf(
        "method %s ranks %d threads %d: %.1f ms/step (all-reduce %.1f ms), %.3f MB "
        "all-reduced per step per rank\n",
        method_name.c_str(), mpi.size(), threads, per_step * 1e3, comm_per_step * 1e3,
        mpi.size() > 1 ? static_cast<double>(bytes_after_first) / 1e6 : 0.0);
  return 0;
}
