// dist/: data-parallel training over MPI, run by CTest under
// `mpirun --allow-run-as-root --oversubscribe -np 2` (tests/CMakeLists.txt).
//
// Without arguments: the doctest cases. Each trains a tiny transformer twice on every rank:
// once data-parallel over MPI (each rank on its shard of every global batch) and once in this
// process alone (dist::Single) on the whole global batch, and checks that both end with the
// same parameters, losses, evaluations and sparsity decisions.
//
// With `--fail throw|nan|diverge`: a failure on rank 1 of a data-parallel fit, which must end
// every rank with rank 1's message and a non-zero status (CTest matches the message; its
// TIMEOUT turns a hang into a failure).
//
// Built with -DSORA_TEST_NCCL (sora::nccl, where NCCL exists): dist::Nccl's collectives on
// device buffers instead.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "sora/dist/mpi.hpp"

#ifdef SORA_TEST_NCCL
#include <cuda_runtime_api.h>

#include "sora/dist/nccl.hpp"
#else
#include "sora/core/rng.hpp"
#include "sora/dist/gather_outputs.hpp"
#include "sora/model/peft.hpp"
#include "sora/model/transformer.hpp"
#include "sora/optim/adalora.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/train/trainer.hpp"
#endif

using namespace sora;

// Made in main(), before any test case; named outside this file for the device-model cases
// of sora_test_nccl (cuda/nccl_fit_test.cu).
namespace sora_dist_test {
dist::Mpi* world = nullptr;
}  // namespace sora_dist_test
using sora_dist_test::world;

#ifndef SORA_TEST_NCCL
namespace {

// ---- the tiny model and its data -----------------------------------------------------------

// Which head a case trains: the language model head on padded sequences (the shards hold
// different numbers of labelled tokens, so the shares w_r = n_r / N differ), classification,
// or regression.
model::TransformerConfig tiny(model::Head head) {
  model::TransformerConfig c;
  c.vocab_size = 16;
  c.width = 16;
  c.heads = 2;
  c.layers = 2;
  c.ffn_width = 32;
  c.max_len = 8;
  c.causal = head == model::Head::lm;
  c.dropout = 0.0;  // dropout masks differ by rank on purpose: no equality through them
  c.head = head;
  c.num_labels = head == model::Head::regression ? 1 : 2;
  c.seed = 11;
  return c;
}

// `count` global batches of `rows` sequences (T = 8). LM batches are right-padded to lengths
// that vary by row, so each shard's labelled-token count differs.
std::vector<model::Batch> make_batches(model::Head head, int count, Index rows,
                                       std::uint64_t seed) {
  Rng rng(seed, 0);
  const Index T = 8;
  std::vector<model::Batch> batches(static_cast<std::size_t>(count));
  for (auto& b : batches) {
    b.batch = rows;
    b.seq = T;
    for (Index i = 0; i < rows * T; ++i) b.tokens.push_back(static_cast<int>(rng.below(16)));
    if (head == model::Head::lm) {
      b.mask.assign(static_cast<std::size_t>(rows * T), 0.0f);
      for (Index r = 0; r < rows; ++r) {
        const Index length = 2 + static_cast<Index>(rng.below(T - 1));  // 2 .. T
        for (Index t = 0; t < length; ++t) b.mask[static_cast<std::size_t>(r * T + t)] = 1.0f;
      }
      model::set_next_token_labels(b);
    } else if (head == model::Head::classification) {
      for (Index r = 0; r < rows; ++r) b.labels.push_back(static_cast<int>(rng.below(2)));
    } else {
      for (Index r = 0; r < rows; ++r) b.values.push_back(rng.uniform(-1.0, 1.0));
    }
  }
  return batches;
}

// One case: a method on a head, trained in scalar type T.
struct Case {
  model::Method method;
  model::Head head;
};

// What a run ends with: every trainable value (in visiting order) and the trainer's record.
struct Outcome {
  std::vector<std::string> names;
  std::vector<std::vector<double>> values;
  train::TrainResult result;
};

constexpr long kSteps = 10;
// AdamW divides by sqrt(v) + eps: a gradient entry of 1e-9 whose last bits differ between one
// batch's GEMM and two half-batches' moves its parameter by up to lr either way. In float the
// rounding of a gradient is ~1e-7 of its row sums, so entries that small are rounding noise;
// an eps of 1e-6 keeps such noise from being normalised up to a full step.
template <class T>
constexpr double kAdamEps = sizeof(T) == sizeof(float) ? 1e-6 : 1e-8;
constexpr Index kPerRank = 2;  // b: sequences per rank per step

// Trains a fresh model on `batches` (global) over `comm`, with clipping, evaluation every 3
// steps (sharded with dist::gather_outputs), early stopping with patience 2 and restore_best.
template <class T, class Comm>
Outcome train_case(const Case& c, const std::vector<model::Batch>& batches,
                   const std::vector<model::Batch>& val, Comm& comm) {
  model::Transformer<T> m(tiny(c.head));
  model::PeftConfig peft;
  peft.method = c.method;
  peft.rank = 4;
  peft.alpha = 8.0;
  m.apply_peft(peft);

  train::TrainerOptions to;
  to.max_steps = kSteps;
  to.eval_every = 3;
  to.patience = 2;
  to.higher_is_better = true;
  to.restore_best = true;
  to.max_grad_norm = 0.5;  // the summed gradient must be clipped, not each rank's share
  to.gate_l1 = c.method == model::Method::sora ? 0.05 : 0.0;
  to.check_every = 2;
  to.schedule = optim::LrSchedule(optim::LrScheduleKind::warmup_linear, 1.0, 2, kSteps);

  // The metric: minus the mean loss of the validation sequences, each rank computing its
  // block of them.
  auto evaluate = [&]() {
    const std::vector<double> losses = dist::gather_outputs(
        comm, val.size(), 1, [&](std::size_t first, std::size_t count, std::span<double> out) {
          for (std::size_t i = 0; i < count; ++i)
            out[i] = static_cast<double>(m.forward(val[first + i]));
        });
    double sum = 0.0;
    for (const double l : losses) sum += l;
    return -sum / static_cast<double>(losses.size());
  };
  auto next = [&](long step) -> const model::Batch& {
    return batches[static_cast<std::size_t>(step) % batches.size()];
  };

  Outcome o;
  if (c.method == model::Method::adalora) {
    optim::AdamWOptions a;
    a.lr = 2e-2;
    a.eps = kAdamEps<T>;
    optim::AdaLoraOptions ao;
    ao.total_steps = kSteps;
    ao.t_init = 1;
    ao.t_final = 4;
    ao.delta_t = 1;
    ao.target_rank = 2;
    optim::AdaLoraOptimizer<T> opt(m, a, ao);
    o.result = train::fit<model::Transformer<T>>(m, opt, next, evaluate, to, comm);
  } else {
    optim::FineTuneOptions fo;
    fo.lr = c.method == model::Method::full ? 5e-3 : 1e-2;
    fo.eps = kAdamEps<T>;
    fo.xi = c.method == model::Method::sora ? 0.12 : 0.0;  // zeroes some gates in 10 steps
    auto opt = optim::FineTuneOptimizer<T>::for_model(m, fo);
    o.result = train::fit<model::Transformer<T>>(m, opt, next, evaluate, to, comm);
  }
  m.visit_params([&](Param<T>& p) {
    if (!p.trainable()) return;
    o.names.push_back(p.name);
    o.values.emplace_back(p.value.data(), p.value.data() + p.value.size());
  });
  return o;
}

// Zero entries of the parameters whose name ends with `suffix` (SoRA's gates, AdaLoRA's E),
// as one pattern string.
std::string zero_pattern(const Outcome& o, const std::string& suffix) {
  std::string pattern;
  for (std::size_t i = 0; i < o.names.size(); ++i) {
    if (!o.names[i].ends_with(suffix)) continue;
    for (const double v : o.values[i]) pattern += v == 0.0 ? '0' : '1';
    pattern += '|';
  }
  return pattern;
}

// P ranks x b against 1 process x P b, to `tolerance` on every value.
template <class T>
void check_same_training(const Case& c, double tolerance) {
  REQUIRE(world != nullptr);
  // A world of one would compare dist::Single with itself: the test must run under mpirun.
  REQUIRE_MESSAGE(world->size() >= 2, "run under mpirun -np 2 (CTest does)");
  const Index global = kPerRank * world->size();
  auto batches = make_batches(c.head, 3, global, 21);
  // Uneven shards: one row more than the world (the first rank takes two), and a batch of
  // one row, which leaves the other ranks none (an epoch's last batch can be that small).
  batches.push_back(make_batches(c.head, 1, global + 1, 23)[0]);
  batches.push_back(make_batches(c.head, 1, 1, 24)[0]);
  const auto val = make_batches(c.head, 5, 1, 22);  // 5 sequences: ranks get 3 and 2

  const Outcome parallel = train_case<T>(c, batches, val, *world);
  dist::Single single;
  const Outcome alone = train_case<T>(c, batches, val, single);

  REQUIRE(parallel.names == alone.names);
  double worst = 0.0;
  for (std::size_t i = 0; i < alone.values.size(); ++i)
    for (std::size_t k = 0; k < alone.values[i].size(); ++k)
      worst = std::max(worst, std::abs(parallel.values[i][k] - alone.values[i][k]));
  INFO("method ", static_cast<int>(c.method), ", largest parameter difference ", worst);
  CHECK(worst <= tolerance);
  // Training moved the parameters (a run that did nothing would compare equal, too).
  CHECK(alone.result.steps > 0);
  REQUIRE(parallel.result.losses.size() == alone.result.losses.size());
  for (std::size_t s = 0; s < alone.result.losses.size(); ++s)
    CHECK(std::abs(parallel.result.losses[s] - alone.result.losses[s]) <=
          tolerance * (1.0 + std::abs(alone.result.losses[s])));
  REQUIRE(parallel.result.eval_metrics.size() == alone.result.eval_metrics.size());
  CHECK(alone.result.eval_metrics.size() >= 2);
  for (std::size_t e = 0; e < alone.result.eval_metrics.size(); ++e)
    CHECK(std::abs(parallel.result.eval_metrics[e] - alone.result.eval_metrics[e]) <=
          tolerance * (1.0 + std::abs(alone.result.eval_metrics[e])));
  CHECK(parallel.result.best_step == alone.result.best_step);
  CHECK(parallel.result.stopped_early == alone.result.stopped_early);

  if (c.method == model::Method::sora) {
    const std::string gates = zero_pattern(alone, ".lora_gate");
    CHECK(gates.find('0') != std::string::npos);  // some gates were pruned ...
    CHECK(gates.find('1') != std::string::npos);  // ... and not all
    CHECK(zero_pattern(parallel, ".lora_gate") == gates);
  }
  if (c.method == model::Method::adalora) {
    const std::string ranks = zero_pattern(alone, ".lora_E");
    CHECK(ranks.find('0') != std::string::npos);  // AdaLoRA masked ranks by now
    CHECK(zero_pattern(parallel, ".lora_E") == ranks);
  }
}

}  // namespace

// Double: the one all-reduce sums in rank order, so the only differences are the rounding of
// one batch's GEMMs against two half-batches' (1e-16 relative per operation).
TEST_CASE("2 ranks x b == 1 rank x 2b in double: full fine-tuning, LM head with padding") {
  check_same_training<double>({model::Method::full, model::Head::lm}, 1e-12);
}
TEST_CASE("2 ranks x b == 1 rank x 2b in double: LoRA, classification") {
  check_same_training<double>({model::Method::lora, model::Head::classification}, 1e-12);
}
TEST_CASE("2 ranks x b == 1 rank x 2b in double: SoRA, regression, same gates zeroed") {
  check_same_training<double>({model::Method::sora, model::Head::regression}, 1e-12);
}
TEST_CASE("2 ranks x b == 1 rank x 2b in double: AdaLoRA, classification, same rank pattern") {
  check_same_training<double>({model::Method::adalora, model::Head::classification}, 1e-12);
}
TEST_CASE("2 ranks x b == 1 rank x 2b in float: full, LoRA, SoRA, AdaLoRA") {
  check_same_training<float>({model::Method::full, model::Head::lm}, 1e-5);
  check_same_training<float>({model::Method::lora, model::Head::classification}, 1e-5);
  check_same_training<float>({model::Method::sora, model::Head::regression}, 1e-5);
  check_same_training<float>({model::Method::adalora, model::Head::classification}, 1e-5);
}

// Dropout in a data-parallel run: a run stopped after 4 steps and resumed (fit called again
// from start_step 4, with the model's generators scrambled as a checkpoint written by rank 0
// would leave them on the other ranks) ends with exactly the uninterrupted run's parameters,
// because each step reseeds every rank's streams from (seed, step, rank). The ranks draw
// different masks: their dropped shards differ from a dropout-free run by different amounts.
TEST_CASE("with dropout, a data-parallel run resumed mid-way equals the uninterrupted one") {
  REQUIRE(world != nullptr);
  REQUIRE_MESSAGE(world->size() >= 2, "run under mpirun -np 2 (CTest does)");
  model::TransformerConfig config = tiny(model::Head::classification);
  config.dropout = 0.2;
  const auto batches = make_batches(model::Head::classification, 4, kPerRank * world->size(), 31);
  struct Run {
    std::vector<double> losses, values;
    std::uint64_t generator = 0;  // the model's dropout generator at the end, a word of it
  };
  auto run = [&](long stop_at, std::uint64_t seed) {
    model::Transformer<double> m(config);
    model::PeftConfig peft;
    peft.method = model::Method::lora;
    peft.rank = 4;
    peft.dropout = 0.1;
    m.apply_peft(peft);
    optim::FineTuneOptions fo;
    fo.lr = 1e-2;
    auto opt = optim::FineTuneOptimizer<double>::for_model(m, fo);
    train::TrainerOptions to;
    to.max_steps = 8;
    to.eval_every = 0;
    to.check_every = 1;
    to.dropout_seed = seed;
    auto next = [&](long step) -> const model::Batch& {
      return batches[static_cast<std::size_t>(step) % batches.size()];
    };
    auto evaluate = [] { return 0.0; };
    Run r;
    if (stop_at > 0) {
      to.max_steps = stop_at;
      r.losses = train::fit<model::Transformer<double>>(m, opt, next, evaluate, to, *world).losses;
      m.reseed_dropout(12345);  // a restored generator holds some other state
      to.start_step = stop_at;
      to.max_steps = 8;
    }
    const auto rest = train::fit<model::Transformer<double>>(m, opt, next, evaluate, to, *world);
    r.losses.insert(r.losses.end(), rest.losses.begin(), rest.losses.end());
    for (const auto* p : trainable_parameters(m))
      r.values.insert(r.values.end(), p->value.data(), p->value.data() + p->value.size());
    r.generator = m.dropout_rng().state().s[0];
    return r;
  };
  const Run whole = run(0, 3), resumed = run(4, 3), other_seed = run(0, 4);
  CHECK(whole.losses.size() == 8);
  CHECK(resumed.losses == whole.losses);
  CHECK(resumed.values == whole.values);
  CHECK(other_seed.losses != whole.losses);  // the masks are drawn, and they matter
  // Each rank's streams are its own.
  const std::vector<std::uint64_t> generators = world->all_gather(whole.generator);
  CHECK(generators[0] != generators[1]);
}

TEST_CASE("Mpi collectives: rank-order sum, broadcast, all_gather") {
  REQUIRE(world != nullptr);
  const int P = world->size(), r = world->rank();
  std::vector<double> d = {1.0 + r, 0.5 * r};
  world->all_reduce_sum(std::span<double>(d));
  CHECK(d[0] == P + P * (P - 1) / 2.0);
  CHECK(d[1] == 0.25 * P * (P - 1));
  std::vector<float> f = {static_cast<float>(r + 7)};
  world->broadcast(std::span<float>(f), P - 1);
  CHECK(f[0] == static_cast<float>(P - 1 + 7));
  const std::vector<std::uint64_t> all = world->all_gather(static_cast<std::uint64_t>(r * 10));
  REQUIRE(all.size() == static_cast<std::size_t>(P));
  for (int k = 0; k < P; ++k)
    CHECK(all[static_cast<std::size_t>(k)] == static_cast<std::uint64_t>(k * 10));
  CHECK_THROWS_WITH_AS(world->broadcast(std::span<double>(d), P), doctest::Contains("root"), Error);
}

TEST_CASE("shard_batch: rows split by rank, B mod P extra rows first, labels per token or not") {
  model::Batch g;
  g.batch = 5;
  g.seq = 2;
  for (int i = 0; i < 10; ++i) g.tokens.push_back(i);
  g.labels = {0, 1, 0, 1, 1};
  model::Batch s;
  dist::shard_batch(s, g, 1, 2);  // rank 0: rows 0-2, rank 1: rows 3-4
  CHECK(s.batch == 2);
  CHECK(s.tokens == std::vector<int>{6, 7, 8, 9});
  CHECK(s.labels == std::vector<int>{1, 1});
  CHECK(dist::loss_terms(s) == 2);
  dist::shard_batch(s, g, 5, 6);  // 5 rows for 6 ranks: the last takes none
  CHECK(s.batch == 0);
  CHECK(s.tokens.empty());
  CHECK(dist::loss_terms(s) == 0);
  dist::shard_batch(s, g, 4, 6);
  CHECK(s.tokens == std::vector<int>{8, 9});
  g.labels = {0, 1};
  CHECK_THROWS_WITH_AS(dist::shard_batch(s, g, 0, 2), doctest::Contains("2 labels"), Error);
}

namespace {

// ---- failures: one rank fails, every rank must end with its message ------------------------

int run_failure(const std::string& kind) {
  dist::Mpi& comm = *world;
  const model::Head head = kind == "nan" ? model::Head::regression : model::Head::classification;
  model::Transformer<float> m(tiny(head));
  model::PeftConfig peft;
  peft.method = model::Method::lora;
  peft.rank = 4;
  peft.alpha = 8.0;
  m.apply_peft(peft);
  auto batches = make_batches(head, 4, 2 * comm.size(), 5);
  if (kind == "nan") batches[2].values.back() = std::nan("");  // the last rank's rows
  optim::FineTuneOptions fo;
  fo.lr = 1e-2;
  auto opt = optim::FineTuneOptimizer<float>::for_model(m, fo);
  train::TrainerOptions to;
  to.max_steps = 20;
  to.check_every = 4;
  const int last = comm.size() - 1;
  auto next = [&](long step) -> const model::Batch& {
    if (kind == "throw" && comm.rank() == last && step == 3)
      detail::throw_error("injected failure in rank ", last, "'s data at step ", step);
    if (kind == "diverge" && comm.rank() == last && step == 5) {
      // A bug that lets one rank decide differently: its parameters drift from the others'.
      m.visit_params([](Param<float>& p) {
        if (p.trainable() && p.name.ends_with(".lora_A")) p.value(0, 0) += 1e-3f;
      });
    }
    return batches[static_cast<std::size_t>(step) % batches.size()];
  };
  train::fit<model::Transformer<float>>(m, opt, next, {}, to, comm);
  std::printf("rank %d: fit returned without the failure it was given\n", comm.rank());
  return 0;
}

}  // namespace
#else  // SORA_TEST_NCCL

TEST_CASE("Nccl collectives on device buffers: sum, broadcast, all_gather") {
  REQUIRE(world != nullptr);
  dist::Nccl nccl(*world);
  const int P = nccl.size(), r = nccl.rank();
  std::vector<double> host = {1.0 + r, -2.0 * r};
  double* device = nullptr;
  REQUIRE(cudaMalloc(&device, host.size() * sizeof(double)) == cudaSuccess);
  cudaMemcpy(device, host.data(), host.size() * sizeof(double), cudaMemcpyHostToDevice);
  nccl.all_reduce_sum(std::span<double>(device, host.size()));
  cudaMemcpy(host.data(), device, host.size() * sizeof(double), cudaMemcpyDeviceToHost);
  CHECK(host[0] == P + P * (P - 1) / 2.0);
  CHECK(host[1] == -1.0 * P * (P - 1));
  host = {static_cast<double>(r + 3), 0.0};
  cudaMemcpy(device, host.data(), host.size() * sizeof(double), cudaMemcpyHostToDevice);
  nccl.broadcast(std::span<double>(device, host.size()), P - 1);
  cudaMemcpy(host.data(), device, host.size() * sizeof(double), cudaMemcpyDeviceToHost);
  CHECK(host[0] == static_cast<double>(P - 1 + 3));
  cudaFree(device);
  CHECK(nccl.all_gather(7).size() == static_cast<std::size_t>(P));
}

#endif

int main(int argc, char** argv) {
  dist::Mpi mpi(&argc, &argv);
  world = &mpi;
#ifdef SORA_TEST_NCCL
  // One GPU per rank: fewer GPUs than ranks is a skip (exit 77), not a failure.
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  if (devices < mpi.size()) {
    if (mpi.rank() == 0)
      std::printf("SORA_TEST_SKIPPED: %d GPU(s) for %d rank(s); dist::Nccl needs one per rank\n",
                  devices, mpi.size());
    return 77;
  }
#else
  if (argc == 3 && std::strcmp(argv[1], "--fail") == 0) return run_failure(argv[2]);
#endif
  doctest::Context context(argc, argv);
  return context.run();
}
