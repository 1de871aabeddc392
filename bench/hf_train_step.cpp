// sora's side of the pre-trained-model benchmark (bench/torch/hf_compare.py runs both sides):
// one training step of a Hugging Face model folder (MiniLM by default) with a sequence
// classification head, full fine-tuning or an adapter on the family's default targets.
//
//   sora_bench_hf --model DIR --method lora|sora|full|forward --batch 32 --seq 128
//                 --threads 1 --steps 10 --frozen-base fp32|bf16
//
// A step: zero grads, forward, cross-entropy, backward, AdamW (SoRA: and the gates' prox);
// `forward` times the forward pass alone. Dropout is off (see below). Random token ids (no
// tokenizer is involved), the same for every step. Prints one JSON line: the median and the best
// step time in ms, the load time, the peak resident memory and the bytes of the frozen
// parameters (--frozen-base bf16: an adapter's frozen linear weights stored in bf16,
// model/frozen_base.hpp).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sora/core/threading.hpp>
#include <sora/model/hf.hpp>
#include <sora/optim/param_groups.hpp>
#include <string>
#include <vector>

namespace hf = sora::model::hf;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  sora::use_passive_wait(argv);
  std::string model_dir, method = "lora", frozen_base = "fp32";
  long batch = 32, seq = 128, steps = 10;
  int threads = 0;  // all cores (SORA_NUM_THREADS overrides)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model")
      model_dir = value;
    else if (flag == "--method")
      method = value;
    else if (flag == "--batch")
      batch = std::stol(value);
    else if (flag == "--seq")
      seq = std::stol(value);
    else if (flag == "--steps")
      steps = std::stol(value);
    else if (flag == "--threads")
      threads = std::stoi(value);
    else if (flag == "--frozen-base")
      frozen_base = value;
  }
  if (model_dir.empty()) {
    std::fprintf(stderr,
                 "usage: sora_bench_hf --model DIR [--method lora|sora|full|forward] "
                 "[--batch B] [--seq T] [--threads N] [--steps S] [--frozen-base fp32|bf16]\n");
    return 2;
  }
  try {
    sora::set_num_threads(threads);
    const auto load_start = Clock::now();
    hf::WeightsReport report;
    auto model = hf::from_pretrained<hf::BertModel<float>>(
        model_dir, {hf::Task::sequence_classification, 2, 1}, &report);
    const double load_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - load_start).count();
    sora::model::PeftConfig peft;
    peft.method = method == "full" || method == "forward" ? sora::model::Method::full
                                                          : sora::model::parse_method(method);
    peft.target_modules = hf::default_targets(model->config().family);
    peft.train_layernorms = false;  // PEFT's defaults: adapters and the classifier
    model->apply_peft(peft);
    if (frozen_base == "bf16") sora::model::store_frozen_base(*model, sora::Precision::bf16);

    sora::model::Batch b;
    b.batch = batch;
    b.seq = seq;
    sora::Rng rng(5);
    for (long i = 0; i < batch * seq; ++i) {
      b.tokens.push_back(1000 + static_cast<int>(rng.below(20000)));
      b.mask.push_back(1.0f);
      b.token_types.push_back(0);
    }
    for (long i = 0; i < batch; ++i) b.labels.push_back(static_cast<int>(i % 2));

    auto optimizer = sora::optim::FineTuneOptimizer<float>::for_model(*model, {});
    const bool train = method != "forward";
    // Dropout off on both sides (evaluation mode, gradients still flow): sora has no
    // attention-probability dropout, and the comparison should time the same work.
    model->eval();
    std::vector<double> times;
    for (long s = 0; s < steps + 1; ++s) {  // the first step sizes every buffer: not timed
      const auto start = Clock::now();
      if (train) {
        model->zero_grad();
        model->forward(b);
        model->backward();
        optimizer.step();
      } else {
        model->forward_logits(b);
      }
      if (s > 0)
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    std::printf(
        "{\"side\": \"sora\", \"method\": \"%s\", \"threads\": %d, \"median_ms\": %.3f, "
        "\"best_ms\": %.3f, \"load_ms\": %.1f, \"peak_rss_mib\": %.1f, \"frozen_base\": "
        "\"%s\", \"frozen_mib\": %.1f}\n",
        method.c_str(), sora::num_threads(), times[times.size() / 2], times.front(), load_ms,
        static_cast<double>(usage.ru_maxrss) / 1024.0, frozen_base.c_str(),
        static_cast<double>(sora::model::frozen_bytes(*model)) / (1024.0 * 1024.0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sora_bench_hf: %s\n", e.what());
    return 1;
  }
  return 0;
}
