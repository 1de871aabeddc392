#pragma once
// from_pretrained: a Hugging Face folder (config.json + safetensors weights) into a sora model,
// as transformers' AutoModel / AutoModelForSequenceClassification would build it.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <utility>

#include "sora/model/hf/bert.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/hf/gpt2.hpp"
#include "sora/model/hf/llama.hpp"
#include "sora/model/hf/weights.hpp"

namespace sora::model::hf {

struct LoadOptions {
  Task task = Task::none;
  Index num_labels = 0;    // > 0: replaces the config's (a new task's head), as num_labels= does
  std::uint64_t seed = 0;  // initialisation of what the checkpoint lacks (a new head)
};

// from_pretrained with the folder's config.json already read (and possibly adjusted).
template <class Model>
std::unique_ptr<Model> from_pretrained(const std::filesystem::path& dir, HfConfig config,
                                       const LoadOptions& options = {},
                                       WeightsReport* report = nullptr) {
  SORA_CHECK(options.num_labels >= 0, "from_pretrained: num_labels must be >= 0, got ",
             options.num_labels);
  if (options.num_labels > 0) config.num_labels = options.num_labels;
  auto model = std::make_unique<Model>(config, options.task, options.seed, Init::for_loading);
  WeightsReport loaded = load_weights(*model, dir);
  // What the checkpoint lacked (a new task head) is drawn as transformers draws it.
  model->visit_linears([&](const std::string& name, typename Model::Linear& lin) {
    if (std::find(loaded.initialised.begin(), loaded.initialised.end(), name + ".weight") !=
        loaded.initialised.end())
      model->init_linear(lin, name);
  });
  if (report != nullptr) *report = std::move(loaded);
  return model;
}

// The model of the folder `dir` as a given type (BertModel<T>, Gpt2Model<T>, LlamaModel<T>),
// its weights loaded (see weights.hpp for what is checked). Returned by pointer: its layers
// point into each other and never move.
template <class Model>
std::unique_ptr<Model> from_pretrained(const std::filesystem::path& dir,
                                       const LoadOptions& options = {},
                                       WeightsReport* report = nullptr) {
  return from_pretrained<Model>(dir, read_config(dir), options, report);
}

// Loads whatever family the folder holds and calls fn(model) with it (BertModel<T>,
// Gpt2Model<T> or LlamaModel<T>), returning what fn returns: code written once for every family.
template <class T, class Fn>
decltype(auto) with_pretrained(const std::filesystem::path& dir, const LoadOptions& options,
                               Fn&& fn, WeightsReport* report = nullptr) {
  HfConfig config = read_config(dir);  // read once: the family, then the model
  const Family family = config.family;
  if (family == Family::gpt2)
    return fn(*from_pretrained<Gpt2Model<T>>(dir, std::move(config), options, report));
  if (family == Family::llama)
    return fn(*from_pretrained<LlamaModel<T>>(dir, std::move(config), options, report));
  SORA_CHECK(options.task != Task::causal_lm, dir.string(), ": a ", family_name(family),
             " model is an encoder; it has no causal LM head");
  return fn(*from_pretrained<BertModel<T>>(dir, std::move(config), options, report));
}

}  // namespace sora::model::hf
