#pragma once
// Whole models on disk, without an optimizer: save_model(dir, model) and load_model<T>(dir).
//
//   dir/config.json        {"format": "sora-model", "version": 1, "dtype": "F32",
//                           "config": {the TransformerConfig, model/config_file.hpp},
//                           "adapters": {"<module>": {"kind": "sora", "rank": 3, "r_max": 8,
//                                        "scale": 2.0, "dropout": 0.0, "merged": false}, ...},
//                           "trainable": ["<parameter name>", ...]}
//   dir/model.safetensors  every parameter under its dotted name: base weights, adapters'
//                          lora_A / lora_B and gates, in the model's scalar type
//
// A pruned adapter is saved at its pruned rank (r_max and the scale kept), so a loaded model
// computes what the saved one did. The folder is written through a temporary one that then
// replaces `dir` (io/atomic_dir.hpp): a crash leaves the old folder or the new one, never a mix.
// load_model checks the whole description and every tensor before it returns a model; every
// problem is listed in one sora::Error. For a fresh model from a config alone, see
// model::from_config (model/config_file.hpp), which reads this config.json too.

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "sora/core/concepts.hpp"
#include "sora/core/error.hpp"
#include "sora/io/atomic_dir.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/dtype.hpp"
#include "sora/io/input_file.hpp"
#include "sora/io/named_tensors.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/model/config_file.hpp"
#include "sora/model/transformer.hpp"
#include "sora/nn/adapter.hpp"

namespace sora::io {

inline constexpr const char* kModelFormat = "sora-model";
inline constexpr int kModelVersion = 1;
inline constexpr const char* kModelConfigFile = "config.json";
inline constexpr const char* kModelWeightsFile = "model.safetensors";

namespace model_file_detail {

// One adapter's description, checked; problems are appended, and false returned, when it does
// not describe an adapter.
inline bool read_adapter(const std::string& module, const nlohmann::json& a,
                         std::vector<std::string>& problems, nn::AdapterKind& kind, Index& rank,
                         Index& r_max, double& scale, double& dropout, bool& merged) {
  const std::string where = "adapter of '" + module + "'";
  if (!a.is_object()) {
    problems.push_back(where + " must be a JSON object");
    return false;
  }
  const std::size_t before = problems.size();
  const std::string k = a.value("kind", std::string());
  if (k == "lora") {
    kind = nn::AdapterKind::lora;
  } else if (k == "sora") {
    kind = nn::AdapterKind::sora;
  } else if (k == "adalora") {
    kind = nn::AdapterKind::adalora;
  } else {
    problems.push_back(where + ": \"kind\" must be \"lora\", \"sora\" or \"adalora\"");
  }
  auto positive_integer = [&](const char* key, Index& out) {
    if (a.contains(key) && a[key].is_number_integer() && a[key].get<Index>() > 0) {
      out = a[key].get<Index>();
    } else {
      problems.push_back(detail::concat(where, ": \"", key, "\" must be an integer > 0"));
    }
  };
  positive_integer("rank", rank);
  positive_integer("r_max", r_max);
  if (a.contains("scale") && a["scale"].is_number() && a["scale"].get<double>() > 0.0) {
    scale = a["scale"].get<double>();
  } else {
    problems.push_back(where + ": \"scale\" must be a number > 0");
  }
  if (a.contains("dropout") && a["dropout"].is_number() && a["dropout"].get<double>() >= 0.0 &&
      a["dropout"].get<double>() < 1.0) {
    dropout = a["dropout"].get<double>();
  } else {
    problems.push_back(where + ": \"dropout\" must be a number in [0, 1)");
  }
  if (a.contains("merged") && a["merged"].is_boolean()) {
    merged = a["merged"].get<bool>();
  } else {
    problems.push_back(where + ": \"merged\" must be true or false");
  }
  return problems.size() == before;
}

}  // namespace model_file_detail

// Writes the model (config, adapters, which parameters train, every value) as the folder `dir`.
template <class T>
void save_model(const std::filesystem::path& dir, model::Transformer<T>& net) {
  using Linear = typename model::Transformer<T>::Linear;
  nlohmann::ordered_json j;
  j["format"] = kModelFormat;
  j["version"] = kModelVersion;
  j["dtype"] = std::string(dtype_name(native_dtype<T>()));
  j["config"] = model::to_json(net.config());
  nlohmann::ordered_json adapters = nlohmann::ordered_json::object();
  net.visit_linears([&](const std::string& name, Linear& lin) {
    if (!lin.adapter) return;
    const auto& a = *lin.adapter;
    adapters[name] = {{"kind", nn::kind_name(a.kind())},
                      {"rank", a.rank()},
                      {"r_max", a.r_max()},
                      {"scale", static_cast<double>(a.scale())},
                      {"dropout", static_cast<double>(a.dropout())},
                      {"merged", lin.merged()}};
  });
  j["adapters"] = adapters;
  nlohmann::ordered_json trainable = nlohmann::ordered_json::array();
  net.visit_params([&](Param<T>& p) {
    if (p.trainable()) trainable.push_back(p.name);
  });
  j["trainable"] = trainable;

  AtomicDirWriter folder(dir);
  write_file_atomic(folder.path() / kModelConfigFile, j.dump(2) + "\n");
  save_tensors<T>(folder.path() / kModelWeightsFile,
                  slots_of<T>([&](auto&& fn) { net.visit_params(fn); }));
  folder.commit();
}

// The model saved in `dir`, with its adapters attached and the saved parameters trainable (the
// rest frozen), ready for inference or for a new optimizer. Values of another floating dtype
// are converted to T.
template <class T>
std::unique_ptr<model::Transformer<T>> load_model(const std::filesystem::path& dir) {
  using Linear = typename model::Transformer<T>::Linear;
  namespace md = model_file_detail;
  const std::filesystem::path config_path = dir / kModelConfigFile;
  constexpr std::uint64_t kMaxConfigBytes = 64 << 20;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_input_file(config_path, kMaxConfigBytes));
  } catch (const nlohmann::json::exception& e) {
    detail::throw_error(config_path.string(), ": not valid JSON: ", e.what());
  }
  SORA_CHECK(j.is_object() && j.value("format", std::string()) == kModelFormat,
             config_path.string(), ": not a sora model file (no \"format\": \"", kModelFormat,
             "\")");
  SORA_CHECK(j.contains("version") && j["version"] == kModelVersion, config_path.string(),
             ": model file version ", j.contains("version") ? j["version"].dump() : "absent",
             ", this build reads version ", kModelVersion);
  SORA_CHECK(j.contains("config"), config_path.string(), ": no \"config\"");
  auto net = std::make_unique<model::Transformer<T>>(
      model::transformer_config_from_json(j["config"], config_path.string() + " (config)"));

  std::vector<std::string> problems;
  const nlohmann::json adapters = j.value("adapters", nlohmann::json::object());
  const nlohmann::json trainable = j.value("trainable", nlohmann::json::array());
  if (!adapters.is_object()) problems.push_back("\"adapters\" must be a JSON object");
  if (!trainable.is_array()) problems.push_back("\"trainable\" must be a JSON array");
  std::set<std::string> attached;
  if (adapters.is_object()) {
    net->visit_linears([&](const std::string& name, Linear& lin) {
      lin.detach();
      const auto it = adapters.find(name);
      if (it == adapters.end()) return;
      attached.insert(name);
      nn::AdapterKind kind = nn::AdapterKind::lora;
      Index rank = 0, r_max = 0;
      double scale = 0.0, dropout = 0.0;
      bool merged = false;
      if (!md::read_adapter(name, *it, problems, kind, rank, r_max, scale, dropout, merged)) return;
      // Zeros of the saved shapes: the values come from the weights file below.
      Matrix<T> g = kind == nn::AdapterKind::lora ? Matrix<T>() : Matrix<T>::Zero(1, rank);
      lin.attach(nn::LowRankAdapter<T>::from_weights(
          kind, Matrix<T>::Zero(rank, lin.in_features()), Matrix<T>::Zero(lin.out_features(), rank),
          std::move(g), static_cast<T>(scale), r_max, static_cast<T>(dropout)));
      lin.set_merged(merged);
    });
    for (const auto& [name, value] : adapters.items())
      if (attached.count(name) == 0)
        problems.push_back(detail::concat("an adapter on '", name,
                                          "', which is not a linear layer of this model"));
  }
  if (trainable.is_array()) {
    std::set<std::string> names;
    for (const nlohmann::json& n : trainable) {
      if (n.is_string()) {
        names.insert(n.get<std::string>());
      } else {
        problems.push_back("\"trainable\" holds " + n.dump() + ", not a parameter name");
      }
    }
    std::set<std::string> found;
    net->visit_params([&](Param<T>& p) {
      const bool on = names.count(p.name) != 0;
      if (on) found.insert(p.name);
      p.set_trainable(on);
    });
    for (const std::string& n : names)
      if (found.count(n) == 0)
        problems.push_back("\"trainable\" names '" + n + "', which this model does not have");
  }
  if (!problems.empty()) {
    std::string message =
        detail::concat(config_path.string(), ": cannot load the model (", problems.size(),
                       problems.size() == 1 ? " problem):" : " problems):");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }
  const SafetensorsFile file = SafetensorsFile::open(dir / kModelWeightsFile);
  load_into<T>(file, slots_of<T>([&](auto&& fn) { net->visit_params(fn); }));
  net->eval();
  return net;
}

}  // namespace sora::io
