#pragma once
// from_pretrained: a Hugging Face folder (config.json + safetensors weights) into a sora model,
// as transformers' AutoModel / AutoModelForSequenceClassification would build it.

#include <cstdint>
#include <filesystem>
#include <memory>

#include "sora/model/hf/bert.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/hf/weights.hpp"

namespace sora::model::hf {

struct LoadOptions {
  Task task = Task::none;
  Index num_labels = 0;    // > 0: replaces the config's (a new task's head), as num_labels= does
  std::uint64_t seed = 0;  // initialisation of what the checkpoint lacks (a new head)
};

// The model of the folder `dir`, its weights loaded (see weights.hpp for what is checked).
// The model is returned by pointer: its layers point into each other and never move.
template <class T>
std::unique_ptr<BertModel<T>> from_pretrained(const std::filesystem::path& dir,
                                              const LoadOptions& options = {},
                                              WeightsReport* report = nullptr) {
  HfConfig config = read_config(dir);
  SORA_CHECK(options.num_labels >= 0, "from_pretrained: num_labels must be >= 0, got ",
             options.num_labels);
  if (options.num_labels > 0) config.num_labels = options.num_labels;
  auto model = std::make_unique<BertModel<T>>(config, options.task, options.seed);
  WeightsReport loaded = load_weights(*model, dir);
  if (report != nullptr) *report = std::move(loaded);
  return model;
}

}  // namespace sora::model::hf
