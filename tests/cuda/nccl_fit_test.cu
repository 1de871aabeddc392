// dist::Nccl inside train::fit for a device model (compiled into sora_test_nccl where the CUDA
// backend is built; the program skips without one GPU per rank). Each rank trains a tiny SoRA
// transformer on its shard of every global batch on its own GPU, through the device bucket
// (pack on the model's stream, ncclAllReduce, unpack), and compares with dist::Single training
// the same model on the whole global batch on the same GPU: the same losses, evaluations, best
// step, gates zeroed and parameters. CTest runs it as a world of one (one GPU: the same code
// path, NCCL included) and under mpirun -np 2 (two GPUs).

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "sora/cuda/fine_tune.cuh"
#include "sora/cuda/model.cuh"
#include "sora/dist/nccl.hpp"
#include "sora/train/trainer.hpp"
#include "tiny_model.cuh"

namespace sora_dist_test {
extern sora::dist::Mpi* world;  // dist_test.cpp's main()
}  // namespace sora_dist_test

namespace {

namespace cu = sora::cuda;
using sora::Index;
using sora::Matrix;
using Gpu = cu::DeviceTransformer<double>;

template <class Comm>
sora::train::TrainResult fit_on(Gpu& model, cu::DeviceFineTuneOptimizer<double>& optimizer,
                                const std::vector<sora::model::Batch>& batches,
                                const sora::model::Batch& eval_batch, Comm& comm) {
  sora::train::TrainerOptions to;
  to.max_steps = 6;
  to.eval_every = 2;
  to.max_grad_norm = 0.5;
  to.gate_l1 = 0.1;
  to.restore_best = true;
  to.check_every = 2;
  to.schedule = sora::optim::LrSchedule::with_warmup_ratio(
      sora::optim::LrScheduleKind::warmup_linear, 1.0, 0.3, to.max_steps);
  return sora::train::fit(
      model, optimizer,
      [&](long step) -> const sora::model::Batch& { return batches[step % batches.size()]; },
      [&] { return -static_cast<double>(model.forward(eval_batch)); }, to, comm);
}

std::map<std::string, Matrix<double>> values_of(Gpu& model) {
  std::map<std::string, Matrix<double>> out;
  model.visit_params([&](sora::Param<double, cu::Cuda>& p) {
    if (p.trainable()) out[p.name] = cu::Cuda::to_host(p.value);
  });
  return out;
}

}  // namespace

TEST_CASE("Nccl inside train::fit: a device model's shards == one process on the global batch") {
  REQUIRE(sora_dist_test::world != nullptr);
  sora::dist::Nccl nccl(*sora_dist_test::world);  // selects this rank's GPU first
  const auto config = cu::testing::tiny_config(sora::model::Head::classification, false);
  sora::model::Transformer<double> cpu(config);
  sora::model::PeftConfig peft;
  peft.method = sora::model::Method::sora;
  peft.rank = 4;
  cpu.apply_peft(peft);
  cu::testing::randomize_adapters(cpu, 300);
  Gpu sharded(config), whole(config);
  cu::copy_model(sharded, cpu);
  cu::copy_model(whole, cpu);
  std::vector<sora::model::Batch> batches;
  for (unsigned s = 0; s < 3; ++s) batches.push_back(cu::testing::tiny_batch(config, 80 + s));
  const sora::model::Batch eval_batch = cu::testing::tiny_batch(config, 99);

  sora::optim::FineTuneOptions o;
  o.lr = 3e-3;
  o.xi = 2e-3;
  cu::DeviceFineTuneOptimizer<double> sharded_opt(sharded, o), whole_opt(whole, o);
  sora::dist::Single single;
  const auto want = fit_on(whole, whole_opt, batches, eval_batch, single);
  const auto got = fit_on(sharded, sharded_opt, batches, eval_batch, nccl);

  // Double: the shards' gradients summed by NCCL differ from the whole batch's by rounding.
  constexpr double tol = 1e-10;
  REQUIRE(got.steps == want.steps);
  REQUIRE(got.losses.size() == want.losses.size());
  for (std::size_t i = 0; i < want.losses.size(); ++i) {
    INFO("step ", i);
    CHECK(std::abs(got.losses[i] - want.losses[i]) <=
          tol * std::max(1.0, std::abs(want.losses[i])));
  }
  CHECK(got.eval_steps == want.eval_steps);
  REQUIRE(got.eval_metrics.size() == want.eval_metrics.size());
  for (std::size_t i = 0; i < want.eval_metrics.size(); ++i)
    CHECK(std::abs(got.eval_metrics[i] - want.eval_metrics[i]) <= tol);
  CHECK(got.best_step == want.best_step);

  const auto got_values = values_of(sharded), want_values = values_of(whole);
  REQUIRE(got_values.size() == want_values.size());
  Index zero_gates = 0;
  for (const auto& [name, want_value] : want_values) {
    INFO("parameter ", name);
    REQUIRE(got_values.count(name) == 1);
    const Matrix<double>& got_value = got_values.at(name);
    REQUIRE(got_value.rows() == want_value.rows());
    REQUIRE(got_value.cols() == want_value.cols());
    const double scale = std::max(0.1, want_value.cwiseAbs().maxCoeff());
    CHECK((got_value - want_value).cwiseAbs().maxCoeff() <= tol * scale);
    if (name.ends_with(".lora_gate")) {
      // The proximal step's zeros decide the same on both sides.
      for (Index i = 0; i < want_value.size(); ++i) {
        CHECK((got_value.data()[i] == 0.0) == (want_value.data()[i] == 0.0));
        zero_gates += want_value.data()[i] == 0.0;
      }
    }
  }
  MESSAGE("world of ", nccl.size(), ": ", zero_gates, " gates zeroed on both sides");
}
