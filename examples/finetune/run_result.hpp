#pragma once
// One fine-tuning run's result (a method and a seed) and its JSON form: summary.json's "runs",
// and the finished runs a checkpoint carries (run_from_json reads back what run_json wrote).

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora_finetune {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using sora::Index;

struct RunResult {
  std::string method;
  std::uint64_t seed = 0;
  double best_val = 0.0;
  double metric = 0.0;  // on the test split when there is one, else the best validation
  long steps = 0;
  double epochs = 0.0;
  double train_seconds = 0.0;  // training only, evaluations excluded
  Index trainable = 0;
  Index nonzero = 0;
  Index after_pruning = 0;
  Index adapter_after_pruning = 0;  // the adapters' share of after_pruning
  std::size_t train_state_bytes = 0;
  std::vector<std::pair<std::string, Index>> ranks;  // adapted module -> kept rank
  std::vector<long> eval_steps;
  std::vector<double> eval_metrics;
  std::vector<double> eval_losses;  // mean training loss since the previous evaluation
  fs::path adapter_dir;
  std::string adapter_not_exported;  // why adapter_dir is empty when an adapter was asked for
  double time_per_epoch() const { return epochs > 0 ? train_seconds / epochs : 0.0; }
};

inline json run_json(const RunResult& r) {
  json j;
  j["method"] = r.method;
  j["seed"] = r.seed;
  j["metric"] = r.metric;
  j["best_validation"] = r.best_val;
  j["steps"] = r.steps;
  j["epochs"] = r.epochs;
  j["train_seconds"] = r.train_seconds;
  j["time_per_epoch_s"] = r.time_per_epoch();
  j["trainable_params"] = r.trainable;
  j["nonzero_params"] = r.nonzero;
  j["params_after_pruning"] = r.after_pruning;
  j["adapter_params_after_pruning"] = r.adapter_after_pruning;
  j["train_state_bytes"] = r.train_state_bytes;
  json ranks = json::object();
  for (const auto& [module, rank] : r.ranks) ranks[module] = rank;
  j["ranks"] = ranks;
  j["adapter_dir"] =
      r.adapter_dir.empty() ? json(nullptr) : json(r.adapter_dir.filename().string());
  if (!r.adapter_not_exported.empty()) j["adapter_not_exported"] = r.adapter_not_exported;
  j["eval_steps"] = r.eval_steps;
  j["eval_metrics"] = r.eval_metrics;
  j["eval_losses"] = r.eval_losses;
  return j;
}

// A NaN is written as null (JSON has no NaN): read null back as NaN.
inline double json_number(const json& j) {
  return j.is_null() ? std::nan("") : j.get<double>();
}

inline std::vector<double> json_numbers(const json& j) {
  std::vector<double> out;
  for (const json& v : j) out.push_back(json_number(v));
  return out;
}

// The inverse of run_json for what a summary needs (the adapter folder is named relative to
// `out`). A malformed entry is a sora::Error naming the field.
inline RunResult run_from_json(const json& j, const fs::path& out) {
  RunResult r;
  try {
    r.method = j.at("method").get<std::string>();
    r.seed = j.at("seed").get<std::uint64_t>();
    r.metric = json_number(j.at("metric"));
    r.best_val = json_number(j.at("best_validation"));
    r.steps = j.at("steps").get<long>();
    r.epochs = j.at("epochs").get<double>();
    r.train_seconds = j.at("train_seconds").get<double>();
    r.trainable = j.at("trainable_params").get<Index>();
    r.nonzero = j.at("nonzero_params").get<Index>();
    r.after_pruning = j.at("params_after_pruning").get<Index>();
    r.adapter_after_pruning = j.at("adapter_params_after_pruning").get<Index>();
    r.train_state_bytes = j.at("train_state_bytes").get<std::size_t>();
    for (const auto& [module, rank] : j.at("ranks").items())
      r.ranks.emplace_back(module, rank.get<Index>());
    if (!j.at("adapter_dir").is_null())
      r.adapter_dir = out / j.at("adapter_dir").get<std::string>();
    if (j.contains("adapter_not_exported"))
      r.adapter_not_exported = j.at("adapter_not_exported").get<std::string>();
    r.eval_steps = j.at("eval_steps").get<std::vector<long>>();
    r.eval_metrics = json_numbers(j.at("eval_metrics"));
    r.eval_losses = json_numbers(j.at("eval_losses"));
  } catch (const json::exception& e) {
    sora::detail::throw_error("a finished run's record is malformed: ", e.what());
  }
  return r;
}

}  // namespace sora_finetune
