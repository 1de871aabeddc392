// One transformer training step (zero grads, forward, backward, clipping, optimizer step) for
// full fine-tuning, LoRA and SoRA at a GEMM-bound shape, next to a plain GEMM doing the same
// number of FLOPs as the full step, in the same run (docs/design.md section 10, issue 4).
//
// Reported per benchmark: FLOP/s (the method's own multiply-adds x 2 per second), and for the
// steps the bytes of parameters, gradients and optimizer state. Before the benchmarks run, the
// binary re-executes itself once per method (`--probe-memory <method>`: build, two steps,
// report getrusage's peak RSS) so that each method's peak memory is measured in a fresh
// process; the figures appear in the benchmark context (lora-bf16: LoRA with the frozen base
// stored in bf16). BM_TrainStepFrozenBase times LoRA with an fp32 and a bf16 frozen base.
//
// `--skip-memory` (first argument) leaves the memory probes out. `--seq-sweep` instead times a LoRA
// step at T = 128, 512, 1024 and 2048 (batch 1) with dense and with blocked attention, each in a
// fresh process that also reports its peak RSS.
//
// Read the results as: full step FLOP/s / GEMM FLOP/s (target >= 0.60), LoRA time / full time
// (target <= 0.70), SoRA time / LoRA time (target <= 1.05).
//
// Shape (default): width C = 512, L = 4 layers, H = 8 heads, FFN 4C, batch B = 8 of T = 128
// tokens (N = 1024), byte vocabulary V = 256 with a tied LM head, rank r = 8 on q, k, v, o, fc,
// proj. Dropout is 0: the step measured is the arithmetic, not the random number generator.

#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sora/model.hpp>
#include <sora/optim/clip.hpp>
#include <sora/optim/param_groups.hpp>
#include <string>
#include <vector>

#include "step_shape.hpp"

using namespace sora;
using model::Method;

namespace {

constexpr Index kWidth = 512, kLayers = 4, kHeads = 8, kBatch = 8, kSeq = 128, kVocab = 256;
constexpr Index kRank = 8;

constexpr bench::StepShape kShape{kWidth, kLayers, kHeads, kBatch, kSeq, kVocab, kRank};

model::TransformerConfig bench_config() {
  return kShape.config();
}
model::Batch bench_batch() {
  return kShape.make_batch();
}
double step_flops(Method method) {
  return kShape.step_flops(method);
}

// A model set up for one method, with its optimizer, ready to step.
struct Run {
  model::Transformer<float> m{bench_config()};
  model::Batch batch = bench_batch();
  std::unique_ptr<optim::FineTuneOptimizer<float>> opt;
  std::vector<Param<float>*> params;

  explicit Run(Method method, Precision frozen_base = Precision::fp32) {
    model::PeftConfig peft;
    peft.method = method;
    peft.rank = kRank;
    peft.alpha = 16.0;
    m.apply_peft(peft);
    model::store_frozen_base(m, frozen_base);
    optim::FineTuneOptions o = optim::sora_official_options();
    if (method != Method::sora) o.xi = 0.0;
    opt = std::make_unique<optim::FineTuneOptimizer<float>>(optim::group_parameters<float>(m), o);
    params = m.trainable_parameters();
  }

  void step() {
    m.zero_grad();
    benchmark::DoNotOptimize(m.forward(batch));
    m.backward();
    optim::clip_grad_norm(params, 0.1);
    opt->step();
  }

  // Parameters, gradients and optimizer state, in bytes.
  std::size_t param_bytes() {
    std::size_t bytes = 0;
    m.visit_params([&](Param<float>& p) { bytes += p.value_bytes(); });
    return bytes;
  }
  std::size_t grad_bytes() {
    std::size_t bytes = 0;
    m.visit_params([&](Param<float>& p) { bytes += p.grad_bytes(); });
    return bytes;
  }
};

Method method_of(std::int64_t i) {
  return static_cast<Method>(i);
}

void BM_TrainStep(benchmark::State& state) {
  const Method method = method_of(state.range(0));
  Run run(method);
  run.step();  // sizes every buffer: later steps allocate nothing
  for (auto _ : state) run.step();
  state.SetLabel(model::method_name(method));
  state.counters["FLOP/s"] =
      benchmark::Counter(step_flops(method), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/step"] = step_flops(method) / 1e9;
  state.counters["trainable"] = static_cast<double>(run.m.summary().back().trainable);
  state.counters["param_MB"] = static_cast<double>(run.param_bytes()) / 1e6;
  state.counters["grad_MB"] = static_cast<double>(run.grad_bytes()) / 1e6;
  state.counters["optstate_MB"] = static_cast<double>(run.opt->state_bytes()) / 1e6;
}
BENCHMARK(BM_TrainStep)
    ->ArgName("method")
    ->Arg(static_cast<int>(Method::full))
    ->Arg(static_cast<int>(Method::lora))
    ->Arg(static_cast<int>(Method::sora))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// A LoRA step with the frozen base in fp32 (0) and in bf16 (1, model/frozen_base.hpp): what
// widening each weight into the shared scratch before its products costs, and the bytes the
// frozen parameters hold (frozen_MB; the linear weights halve, embeddings and norms stay).
void BM_TrainStepFrozenBase(benchmark::State& state) {
  const Precision base = state.range(0) == 0 ? Precision::fp32 : Precision::bf16;
  Run run(Method::lora, base);
  run.step();
  for (auto _ : state) run.step();
  state.SetLabel(std::string("lora, ") + precision_name(base) + " base");
  state.counters["frozen_MB"] = static_cast<double>(model::frozen_bytes(run.m)) / 1e6;
  state.counters["param_MB"] = static_cast<double>(run.param_bytes()) / 1e6;
}
BENCHMARK(BM_TrainStepFrozenBase)
    ->ArgName("bf16")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// The yardstick: (N, C) x (C, 4C) GEMMs, the FFN's shape, repeated until they do the full
// step's FLOPs.
void BM_GemmSameFlops(benchmark::State& state) {
  const Index M = kBatch * kSeq, K = kWidth, Ncols = 4 * kWidth;
  MatrixF a = MatrixF::Random(M, K), b = MatrixF::Random(K, Ncols), c(M, Ncols);
  const double one = 2.0 * M * K * Ncols;
  const int repeats = static_cast<int>(std::lround(step_flops(Method::full) / one));
  for (auto _ : state) {
    for (int i = 0; i < repeats; ++i) {
      c.noalias() = a * b;
      benchmark::DoNotOptimize(c.data());
      benchmark::ClobberMemory();
    }
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(repeats * one, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GEMMs"] = repeats;
}
BENCHMARK(BM_GemmSameFlops)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

// ---- peak memory, one fresh process per method -----------------------------------------------

// name: a method, or "lora-bf16" (LoRA on a frozen base stored in bf16).
int probe_memory(const char* name) {
  const std::string method(name);
  const bool bf16 = method.ends_with("-bf16");
  Run run(model::parse_method(bf16 ? method.substr(0, method.size() - 5) : method),
          bf16 ? Precision::bf16 : Precision::fp32);
  run.step();
  run.step();
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("%ld\n", usage.ru_maxrss);  // KiB on Linux
  return 0;
}

// Peak RSS (MiB) of a fresh process running two steps of `method`; -1 if the probe failed.
double peak_rss_mib(const char* self, const char* method) {
  const std::string command = std::string("'") + self + "' --probe-memory " + method;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  long kib = -1;
  if (std::fscanf(pipe, "%ld", &kib) != 1) kib = -1;
  pclose(pipe);
  return kib < 0 ? -1.0 : static_cast<double>(kib) / 1024.0;
}

// ---- sequence-length sweep: dense against blocked attention --------------------------------

// One fresh process per (T, kernel): a LoRA step of the benchmark's model on one sequence of T
// tokens; prints the median wall time of 5 steps (after one that sizes the buffers) in ms, their
// mean process CPU time in ms (on one thread the work itself, whatever else the machine runs),
// and the peak RSS in MiB.
double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

int probe_seq(Index T, bool blocked) {
  bench::StepShape shape = kShape;
  shape.batch = 1;
  shape.seq = T;
  model::TransformerConfig config = shape.config();
  config.blocked_attention = blocked;
  model::Transformer<float> m(config);
  model::PeftConfig peft;
  peft.method = Method::lora;
  peft.rank = kRank;
  m.apply_peft(peft);
  optim::FineTuneOptions o = optim::sora_official_options();
  o.xi = 0.0;
  optim::FineTuneOptimizer<float> opt(optim::group_parameters<float>(m), o);
  auto params = m.trainable_parameters();
  const model::Batch batch = shape.make_batch();
  std::vector<double> ms;
  double cpu_start = 0;
  for (int i = 0; i < 6; ++i) {
    if (i == 1) cpu_start = cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    m.zero_grad();
    benchmark::DoNotOptimize(m.forward(batch));
    m.backward();
    optim::clip_grad_norm(params, 0.1);
    opt.step();
    const auto end = std::chrono::steady_clock::now();
    if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
  }
  const double cpu_ms = (cpu_seconds() - cpu_start) * 1e3 / static_cast<double>(ms.size());
  std::sort(ms.begin(), ms.end());
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("%.1f %.1f %.1f\n", ms[ms.size() / 2], cpu_ms,
              static_cast<double>(usage.ru_maxrss) / 1024.0);
  return 0;
}

int seq_sweep(const std::string& self) {
  std::printf("LoRA step, width %ld, %ld layers, %ld heads, batch 1, %d thread(s)\n",
              static_cast<long>(kWidth), static_cast<long>(kLayers), static_cast<long>(kHeads),
              num_threads());
  std::printf("%6s %10s %10s %10s %10s %11s %11s\n", "T", "dense ms", "blocked ms", "dense cpu",
              "blocked cpu", "dense MiB", "blocked MiB");
  for (const Index T : {128, 512, 1024, 2048}) {
    double ms[2] = {-1, -1}, cpu[2] = {-1, -1}, mib[2] = {-1, -1};
    for (int blocked = 0; blocked < 2; ++blocked) {
      const std::string command =
          "'" + self + "' --probe-seq " + std::to_string(T) + " " + std::to_string(blocked);
      FILE* pipe = popen(command.c_str(), "r");
      if (pipe == nullptr) return 1;
      if (std::fscanf(pipe, "%lf %lf %lf", &ms[blocked], &cpu[blocked], &mib[blocked]) != 3)
        ms[blocked] = -1;
      pclose(pipe);
    }
    std::printf("%6ld %10.1f %10.1f %10.1f %11.1f %11.1f %11.1f\n", static_cast<long>(T), ms[0],
                ms[1], cpu[0], cpu[1], mib[0], mib[1]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Every core by default (SORA_NUM_THREADS=n for n), idle threads sleeping (see
  // core/threading.hpp); each step's regions split only where their size pays.
  use_passive_wait(argv);
  if (argc == 3 && std::strcmp(argv[1], "--probe-memory") == 0) return probe_memory(argv[2]);
  if (argc == 4 && std::strcmp(argv[1], "--probe-seq") == 0)
    return probe_seq(std::atol(argv[2]), std::atoi(argv[3]) != 0);
  // popen runs a shell, in which /proc/self/exe would be the shell: resolve our path first.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  if (argc == 2 && std::strcmp(argv[1], "--seq-sweep") == 0) return seq_sweep(self);
  // --skip-memory (first argument): no probes, for repeated timing runs.
  const bool probes = !(argc > 1 && std::strcmp(argv[1], "--skip-memory") == 0);
  if (!probes) {
    argv[1] = argv[0];
    ++argv;
    --argc;
  }
  const double full = probes ? peak_rss_mib(self.c_str(), "full") : -1.0;
  for (const char* method : {"full", "lora", "sora", "lora-bf16"}) {
    if (!probes) break;
    const double rss = method == std::string("full") ? full : peak_rss_mib(self.c_str(), method);
    char text[96];
    std::snprintf(text, sizeof text, "%.1f MiB (%.2f of full)", rss, full > 0 ? rss / full : 0.0);
    benchmark::AddCustomContext(std::string("peak_rss_") + method, text);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
