#pragma once
// The weights of a Hugging Face folder: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (its "weight_map": tensor name -> shard file), each opened
// through io/'s memory-mapped reader, so that loading costs one pass over the bytes the model
// keeps. F32, F16, BF16 and F64 are converted to the model's scalar.
//
// Names: the model's parameter names are the checkpoint's own. A checkpoint saved from the bare
// model lacks the task model's base prefix ("bert.", "roberta.") and one saved from a task model
// has it; both load either way, as transformers loads them.
//
// One sora::Error lists every problem (missing, misshapen or unexpected tensors, shards that
// do not exist or lack what the index promises) before any parameter is written, so a failed
// load leaves the model as it was. Tensors a task model does not use (the pretraining heads
// cls.* and lm_head.*, the pooler under a head without one, integer buffers such as
// position_ids) are skipped and listed; a task head the checkpoint lacks keeps its fresh
// initialisation and is listed, as transformers' "newly initialized" warning lists it.

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/io/input_file.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/model/hf/gpt2.hpp"

namespace sora::model::hf {

namespace fs = std::filesystem;

// Every tensor of a checkpoint, across its shards.
class CheckpointTensors {
 public:
  struct Entry {
    const io::SafetensorsFile* file = nullptr;
    const io::TensorInfo* info = nullptr;
  };

  // Opens DIR/model.safetensors, else DIR/model.safetensors.index.json and its shards.
  static CheckpointTensors open(const fs::path& dir) {
    CheckpointTensors c;
    const fs::path single = dir / "model.safetensors";
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(single)) {
      c.add(io::SafetensorsFile::open(single));
      c.source_ = single.string();
      return c;
    }
    SORA_CHECK(fs::exists(index), dir.string(),
               ": no model.safetensors or model.safetensors.index.json (sora reads safetensors "
               "checkpoints; convert a pytorch_model.bin with transformers' save_pretrained)");
    c.source_ = index.string();
    nlohmann::json j;
    constexpr std::uint64_t kMaxIndexBytes = 64 << 20;  // an index is a few hundred KiB
    const std::string text = io::read_input_file(index, kMaxIndexBytes);
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      detail::throw_error(index.string(), ": not valid JSON (", e.what(), ")");
    }
    const auto map = j.find("weight_map");
    SORA_CHECK(j.is_object() && map != j.end() && map->is_object(), index.string(),
               ": no \"weight_map\" object");
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [name, shard] : map->items()) {
      SORA_CHECK(shard.is_string(), index.string(), ": weight_map[\"", name,
                 "\"] must be a file name, found ", shard.dump());
      by_shard[shard.get<std::string>()].push_back(name);
    }
    std::vector<std::string> problems;
    for (const auto& [shard, names] : by_shard) {
      const fs::path file = dir / shard;
      if (shard.find('/') != std::string::npos || shard.starts_with("..") || !fs::exists(file)) {
        problems.push_back(detail::concat("shard '", shard, "' (", names.size(),
                                          " tensors) is not a file of the folder"));
        continue;
      }
      const io::SafetensorsFile& f = c.add(io::SafetensorsFile::open(file));
      for (const std::string& name : names)
        if (!f.contains(name))
          problems.push_back(detail::concat("shard '", shard, "' lacks tensor '", name,
                                            "' that the index places there"));
    }
    if (!problems.empty()) {
      std::string message = detail::concat(index.string(), ": ", problems.size(),
                                           problems.size() == 1 ? " problem:" : " problems:");
      for (const std::string& p : problems) message += "\n  " + p;
      throw Error(message);
    }
    return c;
  }

  const std::string& source() const { return source_; }
  const std::map<std::string, Entry, std::less<>>& entries() const { return entries_; }
  const Entry* find(std::string_view name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }

 private:
  const io::SafetensorsFile& add(io::SafetensorsFile file) {
    files_.push_back(std::make_unique<io::SafetensorsFile>(std::move(file)));
    const io::SafetensorsFile& f = *files_.back();
    for (const io::TensorInfo& t : f.tensors()) {
      // A later shard never silently replaces an earlier one's tensor.
      SORA_CHECK(entries_.count(t.name) == 0, f.source(), ": tensor '", t.name,
                 "' is also in another shard");
      entries_.emplace(t.name, Entry{&f, &t});
    }
    return f;
  }

  std::vector<std::unique_ptr<io::SafetensorsFile>> files_;  // stable addresses for entries_
  std::map<std::string, Entry, std::less<>> entries_;
  std::string source_;
};

struct WeightsReport {
  std::vector<std::string> loaded;       // parameter names, in visiting order
  std::vector<std::string> initialised;  // head parameters the checkpoint lacks
  std::vector<std::string> skipped;      // checkpoint tensors the model does not use
};

// The checkpoint names a tensor a model calls `name` may have: its own, and the same without
// (or with) the base-model prefix.
inline std::vector<std::string> checkpoint_names(const std::string& name, const std::string& prefix,
                                                 const std::string& family) {
  std::vector<std::string> names{name};
  if (!prefix.empty() && name.starts_with(prefix + "."))
    names.push_back(name.substr(prefix.size() + 1));
  if (prefix.empty()) names.push_back(family + "." + name);
  return names;
}

// Tensors of a pretraining checkpoint that a task model has no use for.
// (GPT-2's attn.bias / attn.masked_bias are causal-mask buffers of older checkpoints.)
inline bool unused_by_design(const io::TensorInfo& t) {
  const std::string& n = t.name;
  return !io::is_floating(t.dtype) || n.ends_with("position_ids") || n.starts_with("cls.") ||
         n.starts_with("lm_head.") || n.find("pooler.") != std::string::npos ||
         n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias");
}

// Loads the weights of the folder `dir` into `model` (anything with visit_params(fn),
// prefix(), task(), is_head(name) and config().family; model::hf::BertModel).
template <class Model>
WeightsReport load_weights(Model& model, const fs::path& dir) {
  using T = typename Model::Scalar;
  const CheckpointTensors tensors = CheckpointTensors::open(dir);
  const std::string prefix = model.prefix();
  const std::string family = family_name(model.config().family);

  struct Planned {
    Param<T>* param;
    const CheckpointTensors::Entry* entry;
  };
  std::vector<Planned> plan;
  std::set<std::string, std::less<>> used;
  std::vector<std::string> problems;
  WeightsReport report;
  model.visit_params([&](Param<T>& p) {
    const CheckpointTensors::Entry* entry = nullptr;
    for (const std::string& candidate : checkpoint_names(p.name, prefix, family)) {
      entry = tensors.find(candidate);
      if (entry != nullptr) break;
    }
    p.require_fp32("loading weights");
    const auto rows = static_cast<std::uint64_t>(p.value.rows());
    const auto cols = static_cast<std::uint64_t>(p.value.cols());
    const bool transposed = is_conv1d(model.config().family, p.name);  // stored (in, out)
    const io::Shape expected = p.is_vector  ? io::Shape{static_cast<std::uint64_t>(p.value.size())}
                               : transposed ? io::Shape{cols, rows}
                                            : io::Shape{rows, cols};
    if (entry == nullptr) {
      if (p.role == ParamRole::head || p.name.find("pooler.") != std::string::npos) {
        report.initialised.push_back(p.name);
      } else {
        problems.push_back(
            detail::concat("missing tensor '", p.name, "' ", io::shape_string(expected)));
      }
      return;
    }
    used.insert(entry->info->name);
    if (entry->info->shape != expected) {
      problems.push_back(detail::concat("tensor '", entry->info->name, "' has shape ",
                                        io::shape_string(entry->info->shape), ", the model's '",
                                        p.name, "' is ", io::shape_string(expected)));
    } else if (!io::is_floating(entry->info->dtype)) {
      problems.push_back(detail::concat("tensor '", entry->info->name, "' is ",
                                        io::dtype_name(entry->info->dtype),
                                        ", not floating-point"));
    }
    plan.push_back(Planned{&p, entry});
  });
  for (const auto& [name, entry] : tensors.entries()) {
    if (used.count(name) != 0) continue;
    // The bare model (AutoModel) has no use for a task head either.
    const bool unused_head = model.task() == Task::none && model.is_head(name);
    if (unused_by_design(*entry.info) || unused_head) {
      report.skipped.push_back(name);
    } else {
      problems.push_back(
          detail::concat("unexpected tensor '", name, "' ", io::shape_string(entry.info->shape)));
    }
  }
  if (!problems.empty()) {
    std::string message =
        detail::concat(tensors.source(), ": cannot load a ", family, " model (", problems.size(),
                       problems.size() == 1 ? " problem):" : " problems):");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }
  for (const Planned& item : plan) {
    const bool transposed = is_conv1d(model.config().family, item.param->name);
    const Index rows = item.param->value.rows(), cols = item.param->value.cols();
    Matrix<T> host(transposed ? cols : rows, transposed ? rows : cols);
    item.entry->file->template read<T>(
        *item.entry->info, std::span<T>(host.data(), static_cast<std::size_t>(host.size())));
    if (transposed) {
      item.param->value = host.transpose();
    } else {
      item.param->value = std::move(host);
    }
    report.loaded.push_back(item.param->name);
  }
  return report;
}

}  // namespace sora::model::hf
