#pragma once
// Checkpoints that resume a run bit for bit (docs/design.md section 8): one safetensors file with
//   model.<param>                         every parameter, frozen base included, so the file
//                                         alone restores the model (adapters at their
//                                         current, possibly pruned, ranks)
//   optim.<part>.<param>.exp_avg|exp_avg_sq
//                                         AdamW moments; part is "adamw" (AdamW, and the
//                                         dense half of FineTuneOptimizer / AdaLoRA) or
//                                         "gates" (SparseAdamW)
//   adalora.<module>.<A|B|E>.sensitivity|uncertainty
//                                         the rank allocator's Ī and Ū
// in the model's own scalar type, and in `__metadata__` everything that is not a tensor:
// steps, learning rates, ξ, the schedule, RNG states, the rank pattern, a descriptor of each
// adapter, and the caller's metadata. safetensors has no U64 dtype sora reads, and decimal
// text would round a double, so integer words are hexadecimal and doubles are written with
// %a (hexadecimal floating point), which strtod reads back exactly.
//
// The file is written through SafetensorsWriter::write (temporary file, fsync, rename): a
// crash or a failed save leaves the earlier checkpoint as it was, and so does a model or
// optimizer state holding a NaN or an infinity: such a save is refused before any file exists.
//
// Loading validates everything first (the reader's checks, then every tensor's presence and
// shape, every metadata field, the optimizer kind, the adapters) and throws one sora::Error
// listing every problem before changing anything. The model and optimizer must be built the
// same way as the saved ones (same architecture, method, pruning); hyperparameters that are
// configuration (betas, weight decay, AdaLoRA's budget options) come from the new optimizer,
// state (moments, steps, current learning rates, ξ) from the file.

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sora/core/concepts.hpp"
#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/rng.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/named_tensors.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/nn/adapter.hpp"
#include "sora/optim/adalora.hpp"
#include "sora/optim/adamw.hpp"
#include "sora/optim/lr_schedule.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/optim/sparse_adamw.hpp"

namespace sora::io {

inline constexpr std::string_view kCheckpointFormat = "sora.checkpoint";
inline constexpr std::string_view kCheckpointVersion = "1";

// The run's state outside the model and the optimizer: what the caller's loop needs to go on.
struct TrainingState {
  long step = 0;                                // optimizer steps taken so far
  optim::LrSchedule schedule;                   // the learning-rate schedule of the run
  double xi = 0.0;                              // SoRA's current ξ (e.g. a scheduler stage)
  std::map<std::string, Rng::State> rngs;       // the caller's own streams (data order, ...)
  std::map<std::string, std::string> metadata;  // anything else, returned unchanged
};

namespace ckpt_detail {

inline std::string hex_u64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

inline std::string hex_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", v);
  return buf;
}

inline std::optional<std::uint64_t> parse_u64(const std::string& s, int base) {
  if (s.empty() || s[0] == '-' || s[0] == '+' || s[0] == ' ') return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, base);
  if (errno != 0 || end != s.c_str() + s.size()) return std::nullopt;
  return static_cast<std::uint64_t>(v);
}

inline std::optional<double> parse_double(const std::string& s) {
  if (s.empty() || s[0] == ' ') return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return v;
}

inline std::optional<long> parse_long(const std::string& s) {
  const std::optional<std::uint64_t> v = parse_u64(s, 10);
  if (!v || *v > static_cast<std::uint64_t>(std::numeric_limits<long>::max())) return std::nullopt;
  return static_cast<long>(*v);
}

inline std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::size_t i = 0;
  while (i <= s.size()) {
    const std::size_t j = std::min(s.find(' ', i), s.size());
    parts.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

// "s0 s1 s2 s3 spare? spare": the four xoshiro words, then the cached Box-Muller normal.
inline std::string rng_string(const Rng::State& st) {
  std::string out;
  for (std::uint64_t w : st.s) out += hex_u64(w) + ' ';
  out += st.has_spare_normal ? "1 " : "0 ";
  out += hex_double(st.spare_normal);
  return out;
}

inline std::optional<Rng::State> parse_rng(const std::string& text) {
  const std::vector<std::string> parts = split(text);
  if (parts.size() != 6) return std::nullopt;
  Rng::State st;
  for (std::size_t i = 0; i < 4; ++i) {
    const auto w = parse_u64(parts[i], 16);
    if (!w) return std::nullopt;
    st.s[i] = *w;
  }
  if (parts[4] != "0" && parts[4] != "1") return std::nullopt;
  st.has_spare_normal = parts[4] == "1";
  const auto spare = parse_double(parts[5]);
  if (!spare) return std::nullopt;
  st.spare_normal = *spare;
  return st;
}

inline const char* schedule_kind_name(optim::LrScheduleKind kind) {
  switch (kind) {
    case optim::LrScheduleKind::constant:
      return "constant";
    case optim::LrScheduleKind::warmup_linear:
      return "warmup_linear";
    case optim::LrScheduleKind::warmup_cosine:
      return "warmup_cosine";
  }
  return "?";
}

// What an adapter must agree on beyond its tensors' shapes for a resume to be exact: the
// kind, r_max and scale (a pruned SoRA module keeps alpha / r_max), the dropout rate, and
// whether it is merged into the base weight.
template <class Adapter>
std::string adapter_descriptor(const Adapter& a, bool merged) {
  return detail::concat(nn::kind_name(a.kind()), " rank=", a.rank(), " r_max=", a.r_max(),
                        " scale=", hex_double(static_cast<double>(a.scale())),
                        " dropout=", hex_double(static_cast<double>(a.dropout())),
                        " merged=", merged ? 1 : 0);
}

// One optimizer's parts, whatever its type: its AdamW-like members by part name, and the
// AdaLoRA optimizer when there is one.
template <class T>
struct OptimizerParts {
  std::string kind;
  std::vector<std::pair<std::string, optim::AdamW<T>*>> adamws;
  optim::SparseAdamW<T>* gates = nullptr;
  optim::AdaLoraOptimizer<T>* adalora = nullptr;
};

template <class T>
OptimizerParts<T> parts_of(optim::AdamW<T>& o) {
  OptimizerParts<T> p;
  p.kind = "adamw";
  p.adamws.emplace_back("adamw", &o);
  return p;
}
template <class T>
OptimizerParts<T> parts_of(optim::SparseAdamW<T>& o) {
  OptimizerParts<T> p;
  p.kind = "sparse_adamw";
  p.adamws.emplace_back("gates", &o);
  p.gates = &o;
  return p;
}
template <class T>
OptimizerParts<T> parts_of(optim::FineTuneOptimizer<T>& o) {
  OptimizerParts<T> p;
  p.kind = "finetune";
  p.adamws.emplace_back("adamw", &o.adamw());
  p.adamws.emplace_back("gates", &o.gate_optimizer());
  p.gates = &o.gate_optimizer();
  return p;
}
template <class T>
OptimizerParts<T> parts_of(optim::AdaLoraOptimizer<T>& o) {
  OptimizerParts<T> p;
  p.kind = "adalora";
  p.adamws.emplace_back("adamw", &o.adamw());
  p.adalora = &o;
  return p;
}

// The tensors of a checkpoint as slots: model parameters point into the model, optimizer
// state into copies (`adam`, `alloc`) that are handed to load_state once all is read.
template <class T>
struct Layout {
  std::vector<TensorSlot<T>> slots;
  std::vector<std::vector<optim::AdamState<T>>> adam;  // parallel to OptimizerParts::adamws
  optim::RankAllocatorState<T> alloc;
};

template <class T, class Model>
Layout<T> layout_of(Model& model, const OptimizerParts<T>& parts) {
  Layout<T> l;
  model.visit_params([&](Param<T>& p) {
    p.require_fp32("checkpoint");  // WidenedBf16 saw to it
    l.slots.push_back(TensorSlot<T>{"model." + p.name, &p.value, p.is_vector});
  });
  l.adam.reserve(parts.adamws.size());
  for (const auto& [part, opt] : parts.adamws) l.adam.push_back(opt->state());
  for (std::size_t k = 0; k < parts.adamws.size(); ++k) {
    for (optim::AdamState<T>& st : l.adam[k]) {
      const std::string prefix = "optim." + parts.adamws[k].first + "." + st.name;
      l.slots.push_back(TensorSlot<T>{prefix + ".exp_avg", &st.m, false});
      l.slots.push_back(TensorSlot<T>{prefix + ".exp_avg_sq", &st.v, false});
    }
  }
  if (parts.adalora != nullptr) {
    const optim::RankAllocator<T>& alloc = parts.adalora->allocator();
    l.alloc = alloc.state();
    for (std::size_t k = 0; k < alloc.modules().size(); ++k) {
      const std::string prefix = "adalora." + alloc.modules()[k].name;
      optim::ModuleImportance<T>& mi = l.alloc.importance[k];
      const std::pair<const char*, optim::ImportanceStats<T>*> tensors[] = {
          {".A", &mi.A}, {".B", &mi.B}, {".E", &mi.E}};
      for (const auto& [local, stats] : tensors) {
        l.slots.push_back(
            TensorSlot<T>{prefix + local + ".sensitivity", &stats->sensitivity, false});
        l.slots.push_back(
            TensorSlot<T>{prefix + local + ".uncertainty", &stats->uncertainty, false});
      }
    }
  }
  return l;
}

inline std::string pattern_string(const std::vector<bool>& p) {
  std::string s;
  for (bool kept : p) s += kept ? '1' : '0';
  return s;
}

// Reads metadata fields, collecting every problem instead of stopping at the first.
class MetaReader {
 public:
  MetaReader(const std::map<std::string, std::string>& meta, std::vector<std::string>& problems)
      : meta_(meta), problems_(problems) {}

  const std::string* text(const std::string& key) {
    const auto it = meta_.find(key);
    if (it == meta_.end()) {
      problems_.push_back("missing metadata '" + key + "'");
      return nullptr;
    }
    return &it->second;
  }
  template <class Parse>
  auto get(const std::string& key, Parse&& parse, const char* what) -> decltype(parse("")) {
    const std::string* s = text(key);
    if (s == nullptr) return std::nullopt;
    auto v = parse(*s);
    if (!v) problems_.push_back("metadata '" + key + "' = '" + *s + "' is not " + what);
    return v;
  }
  std::optional<double> real(const std::string& key) { return get(key, parse_double, "a number"); }
  std::optional<long> count(const std::string& key) {
    return get(key, parse_long, "a non-negative integer");
  }
  std::optional<Rng::State> rng(const std::string& key) {
    return get(key, parse_rng, "an RNG state (4 hex words, 0|1, %a double)");
  }

 private:
  const std::map<std::string, std::string>& meta_;
  std::vector<std::string>& problems_;
};

// Whether a checkpoint tensor belongs to the adapter of one of `modules`
// ("model.blocks.0.attn.q.lora_A", "optim.adamw.blocks.0.attn.q.lora_B.exp_avg", ...).
inline bool in_adapter_of(std::string_view tensor, const std::set<std::string>& modules) {
  for (const std::string& m : modules) {
    if (tensor.find("." + m + ".lora_") != std::string_view::npos) return true;
  }
  return false;
}

// A checkpoint's model tensors are the fp32 matrices: a frozen base stored in bf16
// (model/frozen_base.hpp) is widened for as long as the checkpoint is written or read, and stored
// in bf16 again after, with the same bits (its values are bf16 values: rounding them again
// changes nothing). Costs the base's fp32 bytes for that time.
template <class T, class Model>
class WidenedBf16 {
 public:
  explicit WidenedBf16(Model& model) {
    model.visit_params([&](Param<T>& p) {
      if (p.storage() != Precision::bf16) return;
      p.store_as(Precision::fp32);
      widened_.push_back(&p);
    });
  }
  ~WidenedBf16() {
    for (Param<T>* p : widened_)
      if (!p->trainable()) p->store_as(Precision::bf16);  // only a frozen one can be (no throw)
  }
  WidenedBf16(const WidenedBf16&) = delete;
  WidenedBf16& operator=(const WidenedBf16&) = delete;

 private:
  std::vector<Param<T>*> widened_;
};

}  // namespace ckpt_detail

// Writes model, optimizer and `state` to `path` atomically. Optimizer: optim::AdamW,
// SparseAdamW, FineTuneOptimizer or AdaLoraOptimizer. Call it between steps (after step(),
// before the next forward).
template <class Model, class Optimizer>
void save_checkpoint(const std::filesystem::path& path, Model& model, Optimizer& optimizer,
                     const TrainingState& state) {
  SORA_REQUIRE_CHECKPOINTABLE(Model, "io::save_checkpoint");
  using T = typename Model::Scalar;
  namespace cd = ckpt_detail;
  const cd::WidenedBf16<T, Model> widened(model);
  const cd::OptimizerParts<T> parts = cd::parts_of(optimizer);
  cd::Layout<T> layout = cd::layout_of<T>(model, parts);

  SafetensorsWriter writer;
  writer.require_finite();  // a diverged run keeps its last good checkpoint
  writer.set_metadata("format", std::string(kCheckpointFormat));
  writer.set_metadata("version", std::string(kCheckpointVersion));
  writer.set_metadata("dtype", std::string(dtype_name(native_dtype<T>())));
  writer.set_metadata("optimizer", parts.kind);
  writer.set_metadata("step", std::to_string(state.step));
  writer.set_metadata("xi", cd::hex_double(state.xi));
  const optim::LrSchedule& s = state.schedule;
  writer.set_metadata(
      "schedule", detail::concat(cd::schedule_kind_name(s.kind()), ' ', cd::hex_double(s.base_lr()),
                                 ' ', s.warmup(), ' ', s.total()));
  for (const auto& [name, rng] : state.rngs)
    writer.set_metadata("rng.user." + name, cd::rng_string(rng));
  for (const auto& [key, value] : state.metadata) writer.set_metadata("user." + key, value);

  writer.set_metadata("rng.model.dropout", cd::rng_string(model.dropout_rng().state()));
  model.visit_linears([&](const std::string& name, auto& lin) {
    if (!lin.adapter) return;
    writer.set_metadata("adapter." + name, cd::adapter_descriptor(*lin.adapter, lin.merged()));
    writer.set_metadata("rng." + name + ".adapter_dropout",
                        cd::rng_string(lin.adapter->dropout_rng().state()));
  });

  for (const auto& [part, opt] : parts.adamws) {
    writer.set_metadata("optim." + part + ".step", std::to_string(opt->step_count()));
    writer.set_metadata("optim." + part + ".lr", cd::hex_double(opt->lr()));
  }
  if (parts.gates != nullptr)
    writer.set_metadata("optim.gates.xi", cd::hex_double(parts.gates->xi()));
  if (parts.adalora != nullptr) {
    const optim::RankAllocator<T>& alloc = parts.adalora->allocator();
    writer.set_metadata("adalora.finalized", alloc.finalized() ? "1" : "0");
    writer.set_metadata("adalora.budget", std::to_string(layout.alloc.budget));
    writer.set_metadata("adalora.orth_loss", cd::hex_double(parts.adalora->orth_loss()));
    for (std::size_t k = 0; k < alloc.modules().size(); ++k) {
      writer.set_metadata("adalora." + alloc.modules()[k].name + ".rank_pattern",
                          cd::pattern_string(layout.alloc.rank_pattern[k]));
    }
  }

  for (const TensorSlot<T>& slot : layout.slots) {
    if (slot.is_vector) {
      writer.add_vector(slot.name, *slot.value, native_dtype<T>());
    } else {
      writer.add(slot.name, *slot.value, native_dtype<T>());
    }
  }
  writer.write(path);
}

// Restores model and optimizer from `path` and returns the run's state. Throws one
// sora::Error listing every mismatch (missing, unexpected and misshapen tensors, adapters of
// another kind or rank, another optimizer or scalar type) without changing anything; a file
// that is not valid safetensors gets the reader's error.
template <class Model, class Optimizer>
TrainingState load_checkpoint(const std::filesystem::path& path, Model& model,
                              Optimizer& optimizer) {
  SORA_REQUIRE_CHECKPOINTABLE(Model, "io::load_checkpoint");
  using T = typename Model::Scalar;
  namespace cd = ckpt_detail;
  const cd::WidenedBf16<T, Model> widened(model);
  const SafetensorsFile file = SafetensorsFile::open(path);
  const auto& meta = file.metadata();
  const auto format = meta.find("format");
  SORA_CHECK(format != meta.end() && format->second == kCheckpointFormat, path.string(),
             ": not a sora checkpoint (no __metadata__ format = ", kCheckpointFormat, ")");
  const auto version = meta.find("version");
  SORA_CHECK(version != meta.end() && version->second == kCheckpointVersion, path.string(),
             ": checkpoint version '", version == meta.end() ? "" : version->second,
             "', this build reads version ", kCheckpointVersion);

  std::vector<std::string> problems;
  cd::MetaReader read(meta, problems);
  cd::OptimizerParts<T> parts = cd::parts_of(optimizer);
  cd::Layout<T> layout = cd::layout_of<T>(model, parts);

  if (const std::string* dtype = read.text("dtype");
      dtype && *dtype != dtype_name(native_dtype<T>()))
    problems.push_back(detail::concat("the checkpoint holds ", *dtype, " values, the model is ",
                                      dtype_name(native_dtype<T>())));
  if (const std::string* kind = read.text("optimizer"); kind && *kind != parts.kind)
    problems.push_back(detail::concat("the checkpoint's optimizer is '", *kind, "', this one is '",
                                      parts.kind, "'"));

  // Adapters: kind, rank, scale, dropout, merged. A rank mismatch is reported once per
  // module, not once per lora_* tensor.
  std::set<std::string> adapters_here;
  std::set<std::string> rank_mismatch;
  std::vector<std::pair<Rng*, std::string>> rngs;  // stream -> metadata key
  rngs.emplace_back(&model.dropout_rng(), "rng.model.dropout");
  model.visit_linears([&](const std::string& name, auto& lin) {
    if (!lin.adapter) return;
    adapters_here.insert(name);
    rngs.emplace_back(&lin.adapter->dropout_rng(), "rng." + name + ".adapter_dropout");
    const auto it = meta.find("adapter." + name);
    const std::string here = cd::adapter_descriptor(*lin.adapter, lin.merged());
    if (it == meta.end()) {
      problems.push_back(detail::concat("module '", name, "' has an adapter (", here,
                                        "), the checkpoint has none there"));
      return;
    }
    if (it->second == here) return;
    const auto saved = cd::split(it->second);
    const auto mine = cd::split(here);
    if (saved.size() == mine.size() && saved[0] == mine[0] && saved[1] != mine[1]) {
      rank_mismatch.insert(name);
      problems.push_back(detail::concat("module '", name, "': adapter ", saved[1],
                                        " in the checkpoint, ", mine[1],
                                        " in the model (prune the model the same way first)"));
      if (std::equal(saved.begin() + 2, saved.end(), mine.begin() + 2)) return;
    }
    problems.push_back(detail::concat("module '", name, "': adapter '", it->second,
                                      "' in the checkpoint, '", here, "' in the model"));
  });
  for (const auto& [key, value] : meta) {
    if (key.starts_with("adapter.") && adapters_here.count(key.substr(8)) == 0)
      problems.push_back(detail::concat("the checkpoint has an adapter on module '", key.substr(8),
                                        "' (", value, "), the model has none there"));
  }

  // Tensors: every slot present with its shape, nothing else in the file.
  std::set<std::string, std::less<>> wanted;
  for (const TensorSlot<T>& s : layout.slots) {
    wanted.insert(s.name);
    const TensorInfo* t = file.find(s.name);
    if (t == nullptr) {
      problems.push_back(detail::concat("missing tensor '", s.name, "' (expected ",
                                        shape_string(s.file_shape()), ")"));
    } else if (t->shape != s.file_shape()) {
      if (cd::in_adapter_of(s.name, rank_mismatch)) continue;
      problems.push_back(detail::concat("tensor '", s.name, "' has shape ", shape_string(t->shape),
                                        ", expected ", shape_string(s.file_shape())));
    }
  }
  for (const TensorInfo& t : file.tensors()) {
    if (wanted.count(t.name) == 0)
      problems.push_back(
          detail::concat("unexpected tensor '", t.name, "' ", shape_string(t.shape)));
  }

  // Scalars and streams.
  TrainingState state;
  if (auto v = read.count("step")) state.step = *v;
  if (auto v = read.real("xi")) state.xi = *v;
  if (const std::string* s = read.text("schedule")) {
    const auto f = cd::split(*s);
    const auto base = f.size() == 4 ? cd::parse_double(f[1]) : std::nullopt;
    const auto warmup = f.size() == 4 ? cd::parse_long(f[2]) : std::nullopt;
    const auto total = f.size() == 4 ? cd::parse_long(f[3]) : std::nullopt;
    if (!base || !warmup || !total) {
      problems.push_back("metadata 'schedule' = '" + *s + "' is not 'kind base_lr warmup total'");
    } else {
      try {
        state.schedule = optim::LrSchedule(optim::parse_lr_schedule(f[0]), *base, *warmup, *total);
      } catch (const Error& e) {
        problems.push_back(detail::concat("metadata 'schedule': ", e.what()));
      }
    }
  }
  std::vector<std::optional<Rng::State>> rng_states;
  for (const auto& [rng, key] : rngs) rng_states.push_back(read.rng(key));
  for (const auto& [key, value] : meta) {
    if (key.starts_with("rng.user.")) {
      if (auto st = read.rng(key)) state.rngs.emplace(key.substr(9), *st);
    } else if (key.starts_with("user.")) {
      state.metadata.emplace(key.substr(5), value);
    }
  }
  std::vector<long> steps;
  std::vector<double> lrs;
  for (const auto& [part, opt] : parts.adamws) {
    steps.push_back(read.count("optim." + part + ".step").value_or(0));
    lrs.push_back(read.real("optim." + part + ".lr").value_or(0.0));
  }
  const double gate_xi = parts.gates != nullptr ? read.real("optim.gates.xi").value_or(0.0) : 0.0;
  double orth_loss = 0.0;
  if (parts.adalora != nullptr) {
    const auto& mods = parts.adalora->allocator().modules();
    if (const std::string* f = read.text("adalora.finalized")) {
      if (*f != "0" && *f != "1") problems.push_back("metadata 'adalora.finalized' is not 0 or 1");
      layout.alloc.finalized = *f == "1";
    }
    if (const std::string* b = read.text("adalora.budget")) {
      const auto v = *b == "-1" ? std::optional<long>(-1) : cd::parse_long(*b);
      if (!v) problems.push_back("metadata 'adalora.budget' = '" + *b + "' is not an integer");
      layout.alloc.budget = static_cast<Index>(v.value_or(-1));
    }
    orth_loss = read.real("adalora.orth_loss").value_or(0.0);
    for (std::size_t k = 0; k < mods.size(); ++k) {
      const std::string key = "adalora." + mods[k].name + ".rank_pattern";
      const std::string* p = read.text(key);
      if (p == nullptr) continue;
      if (static_cast<Index>(p->size()) != mods[k].rank() ||
          p->find_first_not_of("01") != std::string::npos) {
        if (rank_mismatch.count(mods[k].name) == 0)
          problems.push_back(detail::concat("metadata '", key, "' = '", *p, "' is not ",
                                            mods[k].rank(), " digits 0|1"));
        continue;
      }
      for (std::size_t i = 0; i < p->size(); ++i) layout.alloc.rank_pattern[k][i] = (*p)[i] == '1';
    }
  }

  if (!problems.empty()) {
    std::string message = detail::concat(path.string(), ": the checkpoint does not fit this ",
                                         "model and optimizer (", problems.size(),
                                         problems.size() == 1 ? " problem):" : " problems):");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }

  // Everything fits: read, then hand over. Nothing below can fail on a validated file.
  for (const TensorSlot<T>& s : layout.slots) {
    file.read<T>(file.info(s.name),
                 std::span<T>(s.value->data(), static_cast<std::size_t>(s.value->size())));
  }
  for (std::size_t k = 0; k < parts.adamws.size(); ++k) {
    optim::AdamW<T>* opt = parts.adamws[k].second;
    if (parts.adalora == nullptr) opt->load_state(steps[k], std::move(layout.adam[k]));
    opt->set_lr(lrs[k]);
  }
  if (parts.gates != nullptr) parts.gates->set_xi(gate_xi);
  if (parts.adalora != nullptr) {
    optim::AdaLoraOptimizerState<T> st;
    st.step = steps[0];
    st.adamw = std::move(layout.adam[0]);
    st.allocator = std::move(layout.alloc);
    st.orth_loss = orth_loss;
    parts.adalora->load_state(std::move(st));
    parts.adalora->adamw().set_lr(lrs[0]);
  }
  for (std::size_t i = 0; i < rngs.size(); ++i) rngs[i].first->set_state(*rng_states[i]);
  return state;
}

}  // namespace sora::io
