#pragma once
// PEFT-format LoRA adapters (docs/design.md section 8): a folder holding
//   adapter_config.json         peft_type "LORA", r, lora_alpha, target_modules, rank_pattern,
//                               alpha_pattern, ...
//   adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in)
//                               base_model.model.<module>.lora_B.weight (out, r)
// that Hugging Face PEFT loads with PeftModel.from_pretrained onto the same base weights.
//
// Export prunes on the way out (prune::to_lora): a SoRA or AdaLoRA module keeps the ranks with
// a non-zero gate and folds the gate into B; a module left with no rank is not written at all
// (PEFT never sees a zero-sized tensor); a LoRA module is written whole. A model pruned to
// nothing has no adapter to write (PEFT refuses an empty target_modules): export throws
// NothingToExport and writes nothing.
//
// The folder is written as one transaction (AtomicDirWriter): the config and the weights are
// written into a temporary sibling folder that then replaces the old one, so a crash or a
// failed write never leaves a config that describes other weights. Weights that are not
// finite (a diverged run) are refused before anything is written.
//
// The scale. PEFT computes scaling = alpha_m / r_m per module, with r_m from rank_pattern and
// alpha_m from alpha_pattern (else r and lora_alpha). Ours is s = alpha / r_max, fixed for the
// module's life, so a SoRA module pruned to r' ranks does not have PEFT's alpha / r'. The
// choice here: fold s into B as well (B_file = s B diag(g)) and make PEFT's scaling exactly 1
// by writing alpha_pattern[m] = rank_pattern[m] = r_m, and lora_alpha = r = the largest rank.
// alpha_m / r_m = 1 is exact in floating point, so PEFT's update B_file A is ours to the
// rounding of one product; no reader has to know what r_max was. (Setting alpha_pattern to
// alpha r_m / r_max instead would put an inexact quotient into every module's scale.) sora's
// own alpha and r_max go into the safetensors metadata, for the record.
//
// Import reads any PEFT LoRA adapter (not only sora's): each module becomes a LoRA adapter
// with scale alpha_m / r_m (alpha_m / sqrt(r_m) under use_rslora), replacing every adapter the
// model had. Every problem in the files (unknown module, misshapen tensor, a rank that the
// config contradicts, tensors that are not LoRA weights) is reported at once, before the model
// is touched.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sora/core/concepts.hpp"
#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/atomic_dir.hpp"
#include "sora/io/atomic_file.hpp"
#include "sora/io/input_file.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/model/peft.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/prune/prune.hpp"

namespace sora::io {

inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftKeyPrefix = "base_model.model.";

struct PeftExportOptions {
  std::string base_model_name_or_path;  // written as null when empty
  std::string task_type;                // e.g. "SEQ_CLS"; null when empty
  // PEFT's modules_to_save: modules trained whole beside the adapters (a task head, trained
  // LayerNorms). The trainable parameters under each are written as base_model.model.<name>,
  // as PEFT saves them, so that a PEFT user gets the trained head, not a fresh one.
  std::vector<std::string> modules_to_save;
  bool fan_in_fan_out = false;  // the base layers are Conv1D (GPT-2): PEFT's flag for them
  Dtype dtype = Dtype::F32;
  std::map<std::string, std::string> metadata;  // extra safetensors metadata
};

struct PeftModuleInfo {
  std::string module;  // dotted module path, e.g. "blocks.0.attn.q"
  Index rank = 0;      // ranks written (0: pruned away, not in the files)
  Index in = 0, out = 0;
};

// Every adapted module was pruned to rank 0: there is nothing PEFT could load.
class NothingToExport : public Error {
 public:
  using Error::Error;
};

struct PeftExportReport {
  std::vector<PeftModuleInfo> modules;  // every adapted module, in model order, rank 0 included
  Index max_rank = 0;                   // the config's r
  Index parameters = 0;                 // scalars written: sum of r (in + out)
  Index exported_modules() const {
    return static_cast<Index>(std::count_if(modules.begin(), modules.end(),
                                            [](const PeftModuleInfo& m) { return m.rank > 0; }));
  }
};

namespace peft_detail {

inline std::string key(const std::string& module, const char* which) {
  return std::string(kPeftKeyPrefix) + module + "." + which + ".weight";
}

inline nlohmann::json read_json(const std::filesystem::path& path) {
  constexpr std::uint64_t kMaxConfigBytes = 64 << 20;  // a PEFT config is a few KiB
  const std::string text = read_input_file(path, kMaxConfigBytes);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::throw_error(path.string(), ": not valid JSON: ", e.what());
  }
}

// PEFT's pattern rule for rank_pattern / alpha_pattern keys: the key names the module exactly
// or as a dotted suffix (PEFT matches the regex "(.*\.)?<key>$"; for dotted module names
// without regex metacharacters these agree).
inline const nlohmann::json* pattern_value(const nlohmann::json& config, const char* field,
                                           const std::string& module) {
  if (!config.contains(field) || !config[field].is_object()) return nullptr;
  for (const auto& [pattern, value] : config[field].items())
    if (model::matches_target(module, pattern)) return &value;
  return nullptr;
}

}  // namespace peft_detail

// The LoRA tensors of a PEFT adapter file grouped by module:
// base_model.model.<module>.lora_A.weight and .lora_B.weight (either may be missing in a
// broken file). The names of tensors that are not LoRA weights are appended to `others`.
struct PeftModuleTensors {
  const TensorInfo* A = nullptr;
  const TensorInfo* B = nullptr;
};

inline std::map<std::string, PeftModuleTensors> group_peft_tensors(
    const SafetensorsFile& file, std::vector<std::string>* others = nullptr) {
  std::map<std::string, PeftModuleTensors> modules;
  const std::string prefix = kPeftKeyPrefix;
  for (const TensorInfo& t : file.tensors()) {
    bool matched = false;
    for (const std::string suffix : {".lora_A.weight", ".lora_B.weight"}) {
      if (t.name.size() > prefix.size() + suffix.size() && t.name.starts_with(prefix) &&
          t.name.ends_with(suffix)) {
        const std::string module =
            t.name.substr(prefix.size(), t.name.size() - prefix.size() - suffix.size());
        (suffix == ".lora_A.weight" ? modules[module].A : modules[module].B) = &t;
        matched = true;
      }
    }
    if (!matched && others != nullptr) others->push_back(t.name);
  }
  return modules;
}

// PEFT's modules_to_save for a model: every module (a parameter's dotted path without its last
// part) that holds a trainable parameter which is not an adapter's, in visiting order: the
// trained head, LayerNorms, embeddings. Read from the parameters' roles, so it holds for a model
// of one's own as for model::Transformer.
template <class Model>
std::vector<std::string> trained_modules(Model& model) {
  SORA_REQUIRE_TRAINABLE(Model, "io::trained_modules");
  using P = Param<typename Model::Scalar, typename backend_of<Model>::type>;
  std::vector<std::string> modules;
  model.visit_params([&](P& p) {
    if (!p.trainable() || is_adapter_role(p.role)) return;
    const auto dot = p.name.rfind('.');
    SORA_CHECK(dot != std::string::npos, "io::trained_modules: parameter '", p.name,
               "' has no module path (visit the model with a prefix)");
    std::string module = p.name.substr(0, dot);
    if (std::find(modules.begin(), modules.end(), module) == modules.end())
      modules.push_back(std::move(module));
  });
  return modules;
}

// Writes the model's adapters, pruned, as a PEFT LoRA adapter folder `dir` (its parent created
// if needed; the folder replaced as a whole). The model must offer
// visit_linears(fn(name, layer)) (sora::HasAdapters, core/concepts.hpp). The model itself is not
// changed.
template <class Model>
PeftExportReport export_peft_adapter(Model& model, const std::filesystem::path& dir,
                                     const PeftExportOptions& options = {}) {
  SORA_REQUIRE_HAS_ADAPTERS(Model, "io::export_peft_adapter");
  using Linear = typename Model::Linear;
  using T = typename Model::Scalar;
  PeftExportReport report;
  SafetensorsWriter writer;
  writer.require_finite();
  nlohmann::ordered_json targets = nlohmann::ordered_json::array();
  nlohmann::ordered_json ranks = nlohmann::ordered_json::object();
  double alpha = 0.0, dropout = 0.0;
  Index r_max = 0;
  bool any = false;
  model.visit_linears([&](const std::string& name, Linear& lin) {
    if (!lin.adapter) return;
    SORA_CHECK(!lin.merged(), "export_peft_adapter: module '", name,
               "' has its adapter merged into the base weight; unmerge it first");
    const auto& adapter = *lin.adapter;
    if (!any) {
      // The configured alpha of the run, for the metadata: s r_max undoes s = alpha / r_max.
      alpha = static_cast<double>(adapter.scale()) * static_cast<double>(adapter.r_max());
      r_max = adapter.r_max();
      dropout = static_cast<double>(adapter.dropout());
      any = true;
    }
    PeftModuleInfo info{name, 0, adapter.in_features(), adapter.out_features()};
    const std::optional<typename Linear::Adapter> lora = prune::to_lora(adapter);
    if (lora) {
      info.rank = lora->rank();
      const Matrix<T> B = lora->lora_B.value * lora->scale();  // (OC, R): s B diag(g)
      writer.add(peft_detail::key(name, "lora_A"), lora->lora_A.value, options.dtype);
      writer.add(peft_detail::key(name, "lora_B"), B, options.dtype);
      targets.push_back(name);
      ranks[name] = info.rank;
      report.max_rank = std::max(report.max_rank, info.rank);
      report.parameters += info.rank * (info.in + info.out);
    }
    report.modules.push_back(std::move(info));
  });
  SORA_CHECK(any, "export_peft_adapter: the model has no adapter to export");
  nlohmann::ordered_json saved_modules = nlohmann::ordered_json::array();
  for (const std::string& module : options.modules_to_save) {
    Index written = 0;
    model.visit_params([&](Param<T>& p) {
      if (!p.trainable() || is_adapter_role(p.role)) return;
      if (p.name.size() <= module.size() || !p.name.starts_with(module) ||
          p.name[module.size()] != '.')
        return;
      if (p.is_vector) {
        writer.add_vector(std::string(kPeftKeyPrefix) + p.name, p.value, options.dtype);
      } else {
        writer.add(std::string(kPeftKeyPrefix) + p.name, p.value, options.dtype);
      }
      ++written;
    });
    SORA_CHECK(written > 0, "export_peft_adapter: modules_to_save names '", module,
               "', which has no trainable parameter");
    saved_modules.push_back(module);
  }
  if (report.max_rank == 0) {
    throw NothingToExport(detail::concat(
        "export_peft_adapter: every rank of all ", report.modules.size(),
        " adapted modules was pruned; PEFT cannot load an adapter without target modules, so '",
        dir.string(), "' is not written"));
  }

  nlohmann::ordered_json config;
  config["peft_type"] = "LORA";
  config["task_type"] = options.task_type.empty() ? nlohmann::ordered_json(nullptr)
                                                  : nlohmann::ordered_json(options.task_type);
  config["base_model_name_or_path"] = options.base_model_name_or_path.empty()
                                          ? nlohmann::ordered_json(nullptr)
                                          : nlohmann::ordered_json(options.base_model_name_or_path);
  config["inference_mode"] = true;
  const Index r = report.max_rank;
  config["r"] = r;
  config["lora_alpha"] = r;  // scaling = lora_alpha / r = 1: s is folded into lora_B
  config["lora_dropout"] = dropout;
  config["target_modules"] = targets;
  config["rank_pattern"] = ranks;
  config["alpha_pattern"] = ranks;  // alpha_m = r_m: scaling 1 on every module
  config["fan_in_fan_out"] = options.fan_in_fan_out;
  config["bias"] = "none";
  config["use_rslora"] = false;
  config["use_dora"] = false;
  config["modules_to_save"] =
      saved_modules.empty() ? nlohmann::ordered_json(nullptr) : saved_modules;
  config["init_lora_weights"] = true;
  config["layers_to_transform"] = nullptr;
  config["layers_pattern"] = nullptr;
  config["revision"] = nullptr;

  writer.set_metadata("format", "pt");
  writer.set_metadata("sora.alpha", detail::concat(alpha));
  writer.set_metadata("sora.r_max", detail::concat(r_max));
  writer.set_metadata("sora.scale_folded_into_lora_B", "true");
  for (const auto& [k, v] : options.metadata) writer.set_metadata(k, v);

  std::string config_text;
  try {
    config_text = config.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    detail::throw_error("cannot write '", (dir / kPeftConfigFile).string(),
                        "': cannot encode the config: ", e.what());
  }
  if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path());
  AtomicDirWriter folder(dir);
  writer.write(folder.path() / kPeftWeightsFile);
  write_file_atomic(folder.path() / kPeftConfigFile, config_text);
  folder.commit();
  return report;
}

struct PeftImportReport {
  std::vector<PeftModuleInfo> modules;     // in model order
  std::vector<std::string> saved_modules;  // parameters read from modules_to_save tensors
  Index parameters = 0;
};

// Reads a PEFT LoRA adapter folder into the model: every adapter the model had is detached,
// then each module in the files gets a LoRA adapter (base frozen, adapter trainable) with
// PEFT's scale. Throws one sora::Error listing every problem before changing the model.
template <class Model>
PeftImportReport import_peft_adapter(Model& model, const std::filesystem::path& dir) {
  using Linear = typename Model::Linear;
  using T = typename Model::Scalar;
  const std::filesystem::path config_path = dir / kPeftConfigFile;
  const nlohmann::json config = peft_detail::read_json(config_path);
  SORA_CHECK(config.is_object(), config_path.string(), ": not a JSON object");
  SORA_CHECK(config.value("peft_type", std::string()) == "LORA", config_path.string(),
             ": peft_type is ",
             config.contains("peft_type") ? config["peft_type"].dump() : "absent",
             ", only \"LORA\" adapters can be imported");
  SORA_CHECK(config.contains("r") && config["r"].is_number_integer() && config["r"].get<long>() > 0,
             config_path.string(), ": 'r' must be a positive integer");
  SORA_CHECK(config.contains("lora_alpha") && config["lora_alpha"].is_number(),
             config_path.string(), ": 'lora_alpha' must be a number");
  // fan_in_fan_out says the *base* layer stores its weight (in, out) (GPT-2's Conv1D); PEFT's
  // lora_A (r, in) and lora_B (out, r) are laid out the same either way, and sora's base layers
  // are (out, in) whatever the checkpoint stored, so the flag changes nothing here.
  const bool rslora = config.value("use_rslora", false);
  const Index default_r = config["r"].get<Index>();
  const double default_alpha = config["lora_alpha"].get<double>();

  const SafetensorsFile file = SafetensorsFile::open(dir / kPeftWeightsFile);
  std::vector<std::string> problems, others;
  const auto pairs = group_peft_tensors(file, &others);
  // The other tensors are modules_to_save: base_model.model.<parameter name> of the model.
  std::map<std::string, Param<T>*> params;
  model.visit_params([&](Param<T>& p) { params[p.name] = &p; });
  std::vector<std::pair<Param<T>*, const TensorInfo*>> saved;
  for (const std::string& name : others) {
    const std::string prefix = kPeftKeyPrefix;
    const auto it =
        name.starts_with(prefix) ? params.find(name.substr(prefix.size())) : params.end();
    if (it == params.end()) {
      problems.push_back(detail::concat("tensor '", name,
                                        "' is neither a LoRA weight nor a parameter of the model"));
      continue;
    }
    const Param<T>& p = *it->second;
    if (p.storage() != Precision::fp32) {
      problems.push_back(detail::concat("tensor '", name, "' would load into '", p.name,
                                        "', which is stored in bf16 (a frozen base)"));
      continue;
    }
    const Shape expected = p.is_vector ? Shape{static_cast<std::uint64_t>(p.value.size())}
                                       : Shape{static_cast<std::uint64_t>(p.value.rows()),
                                               static_cast<std::uint64_t>(p.value.cols())};
    const TensorInfo& t = file.info(name);
    if (t.shape != expected) {
      problems.push_back(detail::concat("tensor '", name, "' has shape ", shape_string(t.shape),
                                        ", the model's '", p.name, "' is ",
                                        shape_string(expected)));
      continue;
    }
    saved.emplace_back(it->second, &t);
  }

  std::map<std::string, Linear*> slots;
  model.visit_linears([&](const std::string& name, Linear& lin) { slots[name] = &lin; });
  struct Plan {
    Linear* layer = nullptr;
    const TensorInfo* A = nullptr;
    const TensorInfo* B = nullptr;
    Index rank = 0;
    double scale = 1.0;
  };
  std::vector<std::pair<std::string, Plan>> plans;
  for (const auto& [module, pair] : pairs) {
    const auto slot = slots.find(module);
    if (slot == slots.end()) {
      problems.push_back(detail::concat("module '", module, "' is not in the model"));
      continue;
    }
    if (pair.A == nullptr || pair.B == nullptr) {
      problems.push_back(
          detail::concat("module '", module, "' has only lora_", pair.A == nullptr ? "B" : "A"));
      continue;
    }
    const Linear& lin = *slot->second;
    const Shape& a = pair.A->shape;
    const Shape& b = pair.B->shape;
    const auto in = static_cast<std::uint64_t>(lin.in_features());
    const auto out = static_cast<std::uint64_t>(lin.out_features());
    if (a.size() != 2 || b.size() != 2 || a[0] == 0 || a[1] != in || b[0] != out || b[1] != a[0]) {
      problems.push_back(detail::concat("module '", module, "': lora_A ", shape_string(a),
                                        " and lora_B ", shape_string(b), " do not fit a (", out,
                                        ", ", in, ") weight as (r, ", in, ") and (", out, ", r)"));
      continue;
    }
    const auto rank = static_cast<Index>(a[0]);
    const nlohmann::json* pr = peft_detail::pattern_value(config, "rank_pattern", module);
    const Index configured =
        pr != nullptr && pr->is_number_integer() ? pr->get<Index>() : default_r;
    if (configured != rank) {
      problems.push_back(detail::concat("module '", module, "' has rank ", rank,
                                        " but the config gives ", configured));
      continue;
    }
    const nlohmann::json* pa = peft_detail::pattern_value(config, "alpha_pattern", module);
    const double alpha = pa != nullptr && pa->is_number() ? pa->get<double>() : default_alpha;
    const double scale =
        rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
    plans.push_back({module, Plan{slot->second, pair.A, pair.B, rank, scale}});
  }
  if (!problems.empty()) {
    std::string message =
        detail::concat(dir.string(), ": cannot import the adapter (", problems.size(),
                       problems.size() == 1 ? " problem):" : " problems):");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }

  model.visit_linears([](const std::string&, Linear& lin) { lin.detach(); });
  PeftImportReport report;
  for (auto& [param, info] : saved) {
    Matrix<T> value(param->value.rows(), param->value.cols());
    file.read<T>(*info, std::span<T>(value.data(), static_cast<std::size_t>(value.size())));
    param->value = std::move(value);
    report.saved_modules.push_back(param->name);
  }
  for (auto& [module, plan] : plans) {
    Matrix<T> A(plan.rank, plan.layer->in_features());
    Matrix<T> B(plan.layer->out_features(), plan.rank);
    file.read<T>(*plan.A, std::span<T>(A.data(), static_cast<std::size_t>(A.size())));
    file.read<T>(*plan.B, std::span<T>(B.data(), static_cast<std::size_t>(B.size())));
    plan.layer->attach(Linear::Adapter::from_weights(nn::AdapterKind::lora, std::move(A),
                                                     std::move(B), Matrix<T>(),
                                                     static_cast<T>(plan.scale), plan.rank));
    report.modules.push_back(
        PeftModuleInfo{module, plan.rank, plan.layer->in_features(), plan.layer->out_features()});
    report.parameters += plan.rank * (plan.layer->in_features() + plan.layer->out_features());
  }
  // Model order rather than the file's alphabetical order.
  std::vector<PeftModuleInfo> ordered;
  model.visit_linears([&](const std::string& name, Linear&) {
    for (const PeftModuleInfo& m : report.modules)
      if (m.module == name) ordered.push_back(m);
  });
  report.modules = std::move(ordered);
  return report;
}

}  // namespace sora::io
