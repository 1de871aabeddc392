// sora-inspect: what is in a safetensors file or a PEFT adapter folder.
//
//   sora-inspect model.safetensors   each tensor's dtype, shape and statistics; the metadata
//   sora-inspect adapter/            adapter_config.json (r, lora_alpha, target_modules,
//                                    rank_pattern), each adapted module's rank and shapes,
//                                    then the tensors as above
//
//   sora-inspect --model DIR         a Hugging Face model folder: its architecture, parameter
//                                    counts per module kind, and which modules adapters would
//                                    target (--target-modules, PEFT's syntax; the family's
//                                    default otherwise)
//
// A malformed file prints the reader's error and exits with status 1, so the program doubles
// as a validator in scripts.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sora/io/peft_adapter.hpp>
#include <sora/io/safetensors.hpp>
#include <sora/model/hf.hpp>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using sora::io::SafetensorsFile;
using sora::io::TensorInfo;

namespace {

struct Stats {
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  double mean = 0;
  double m2 = 0;  // sum of squared deviations (Welford: stable for large tensors)
  std::uint64_t finite = 0, zeros = 0, nans = 0, infs = 0, count = 0;
};

// Streams through the tensor in chunks, so a multi-gigabyte tensor needs no copy of itself.
Stats statistics(const SafetensorsFile& file, const TensorInfo& t) {
  Stats s;
  const std::uint64_t n = t.numel();
  const std::size_t width = sora::io::dtype_size(t.dtype);
  std::vector<double> chunk(1 << 16);
  for (std::uint64_t first = 0; first < n; first += chunk.size()) {
    const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), n - first));
    sora::io::decode_values<double>(t.dtype, file.raw(t).data() + first * width, chunk.data(), len);
    for (std::size_t i = 0; i < len; ++i) {
      const double v = chunk[i];
      ++s.count;
      if (std::isnan(v)) {
        ++s.nans;
        continue;
      }
      s.min = std::min(s.min, v);
      s.max = std::max(s.max, v);
      if (v == 0) ++s.zeros;
      if (std::isinf(v)) {
        ++s.infs;
        continue;
      }
      ++s.finite;
      const double delta = v - s.mean;
      s.mean += delta / static_cast<double>(s.finite);
      s.m2 += delta * (v - s.mean);
    }
  }
  return s;
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void print_tensors(const SafetensorsFile& file, bool stats) {
  std::size_t name_width = 4, shape_width = 5;
  for (const TensorInfo& t : file.tensors()) {
    name_width = std::max(name_width, t.name.size());
    shape_width = std::max(shape_width, sora::io::shape_string(t.shape).size());
  }
  std::printf("%-*s  %-5s  %-*s  %s\n", static_cast<int>(name_width), "name", "dtype",
              static_cast<int>(shape_width), "shape", stats ? "statistics" : "bytes");
  for (const TensorInfo& t : file.tensors()) {
    std::printf("%-*s  %-5s  %-*s  ", static_cast<int>(name_width), t.name.c_str(),
                std::string(sora::io::dtype_name(t.dtype)).c_str(), static_cast<int>(shape_width),
                sora::io::shape_string(t.shape).c_str());
    if (!stats || !sora::io::is_floating(t.dtype)) {  // integer buffers: size only
      std::printf("%llu\n", static_cast<unsigned long long>(t.nbytes()));
      continue;
    }
    const Stats s = statistics(file, t);
    if (s.count == 0) {
      std::printf("(empty)\n");
      continue;
    }
    const double std_dev = s.finite > 0 ? std::sqrt(s.m2 / static_cast<double>(s.finite)) : NAN;
    std::printf("min %s  max %s  mean %s  std %s  zeros %.2f%%", number(s.min).c_str(),
                number(s.max).c_str(), number(s.mean).c_str(), number(std_dev).c_str(),
                100.0 * static_cast<double>(s.zeros) / static_cast<double>(s.count));
    if (s.nans > 0) std::printf("  nan %llu", static_cast<unsigned long long>(s.nans));
    if (s.infs > 0) std::printf("  inf %llu", static_cast<unsigned long long>(s.infs));
    std::printf("\n");
  }
}

void print_file(const SafetensorsFile& file, bool stats) {
  std::printf("%s: %zu bytes, header %zu bytes, %zu tensors\n", file.source().c_str(),
              file.file_size(), file.data_offset() - 8, file.tensors().size());
  print_tensors(file, stats);
  if (!file.metadata().empty()) {
    std::printf("metadata:\n");
    for (const auto& [key, value] : file.metadata()) {
      std::printf("  %s = %s\n", key.c_str(), value.c_str());
    }
  }
}

// The rank PEFT uses for `module`: a rank_pattern entry naming it exactly or as a dotted
// suffix, else the config's r.
// The rank the config gives a module: its rank_pattern entry (PEFT's matching rule), else r.
// A rank as the config writes it: a positive integer that fits an int, else -1.
int rank_value(const nlohmann::json* value) {
  if (value == nullptr || !value->is_number_integer()) return -1;
  const auto rank = value->get<long long>();
  return rank > 0 && rank <= 1 << 30 ? static_cast<int>(rank) : -1;
}

int configured_rank(const nlohmann::json& config, const std::string& module) {
  const nlohmann::json* rank = sora::io::peft_detail::pattern_value(config, "rank_pattern", module);
  if (rank != nullptr && rank->is_number_integer()) return rank_value(rank);
  return rank_value(config.contains("r") ? &config["r"] : nullptr);
}

// What PEFT would refuse in the config itself: r missing, a string, zero or overflowing; an
// empty target_modules (PEFT: "target modules not found"); rank_pattern entries that are not
// ranks. One line each.
std::vector<std::string> config_problems(const nlohmann::json& config) {
  std::vector<std::string> problems;
  if (rank_value(config.contains("r") ? &config["r"] : nullptr) < 0)
    problems.push_back("'r' must be a positive integer, got " +
                       (config.contains("r") ? config["r"].dump() : std::string("nothing")));
  const auto targets = config.find("target_modules");
  if (targets == config.end() || targets->empty() ||
      (targets->is_string() && targets->get<std::string>().empty()))
    problems.push_back("target_modules is empty: PEFT cannot load an adapter of no module");
  const auto pattern = config.find("rank_pattern");
  if (pattern != config.end() && pattern->is_object())
    for (const auto& [module, rank] : pattern->items())
      if (rank_value(&rank) < 0)
        problems.push_back("rank_pattern['" + module + "'] is not a rank: " + rank.dump());
  return problems;
}

// Returns false when the adapter is inconsistent (shapes or ranks that PEFT would reject).
bool print_adapter(const fs::path& dir, bool stats) {
  const fs::path config_path = dir / "adapter_config.json";
  const fs::path weights_path = dir / "adapter_model.safetensors";
  // A regular file only (a FIFO would hang the read); a config is a few KiB.
  const std::string text = sora::io::read_input_file(config_path, std::uint64_t{64} << 20);
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw sora::Error(config_path.string() + ": not valid JSON: " + e.what());
  }
  if (!config.is_object()) throw sora::Error(config_path.string() + ": not a JSON object");
  std::printf("%s:\n", config_path.string().c_str());
  for (const char* key : {"peft_type", "r", "lora_alpha", "target_modules", "rank_pattern",
                          "alpha_pattern", "base_model_name_or_path"}) {
    if (config.contains(key)) std::printf("  %-24s = %s\n", key, config[key].dump().c_str());
  }
  bool consistent = true;
  for (const std::string& problem : config_problems(config)) {
    std::printf("  INCONSISTENT: %s\n", problem.c_str());
    consistent = false;
  }

  if (!fs::exists(weights_path)) {
    throw sora::Error("cannot open '" + weights_path.string() +
                      "' (only safetensors adapters can be inspected)");
  }
  const SafetensorsFile file = SafetensorsFile::open(weights_path);
  // base_model.model.<module>.lora_A.weight (r, in) and .lora_B.weight (out, r).
  const auto modules = group_peft_tensors(file);
  std::size_t width = 6;
  for (const auto& [name, m] : modules) width = std::max(width, name.size());
  std::printf("%zu adapted modules:\n", modules.size());
  std::uint64_t total = 0;
  for (const auto& [name, m] : modules) {
    std::printf("  %-*s  ", static_cast<int>(width), name.c_str());
    if (m.A == nullptr || m.B == nullptr || m.A->shape.size() != 2 || m.B->shape.size() != 2) {
      std::printf("INCONSISTENT: needs a 2-D lora_A and a 2-D lora_B\n");
      consistent = false;
      continue;
    }
    const std::uint64_t rank = m.A->shape[0], in = m.A->shape[1], out = m.B->shape[0];
    std::uint64_t params = 0;
    if (in + out < in || __builtin_mul_overflow(rank, in + out, &params) ||
        total + params < total) {
      std::printf("INCONSISTENT: rank %llu x (in %llu + out %llu) overflows\n",
                  static_cast<unsigned long long>(rank), static_cast<unsigned long long>(in),
                  static_cast<unsigned long long>(out));
      consistent = false;
      continue;
    }
    total += params;
    std::printf("rank %llu  in %llu  out %llu  params %llu", static_cast<unsigned long long>(rank),
                static_cast<unsigned long long>(in), static_cast<unsigned long long>(out),
                static_cast<unsigned long long>(params));
    if (m.B->shape[1] != rank) {
      std::printf("  INCONSISTENT: lora_B has rank %llu",
                  static_cast<unsigned long long>(m.B->shape[1]));
      consistent = false;
    }
    const int expected = configured_rank(config, name);
    if (expected >= 0 && static_cast<std::uint64_t>(expected) != rank) {
      std::printf("  INCONSISTENT: the config gives rank %d", expected);
      consistent = false;
    }
    std::printf("\n");
  }
  std::printf("adapter parameters: %llu\n\n", static_cast<unsigned long long>(total));
  print_file(file, stats);
  return consistent;
}

// The module kind of a Hugging Face model's parameter, for the counts: what it is from its role
// (set by its layer), where it sits from its name.
std::string module_kind(const sora::Param<float>& p) {
  if (p.role == sora::ParamRole::norm) return "norm";
  if (p.role == sora::ParamRole::embedding) return "embeddings";
  if (p.role == sora::ParamRole::head) return "head";
  const std::string& name = p.name;
  auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  if (has("attention") || has(".attn.") || has("self_attn")) return "attention";
  if (has("intermediate") || has("output.dense") || has(".mlp.")) return "mlp";
  return "head";
}

// The architecture of a Hugging Face folder, what it holds and what adapters would target.
void print_model(const fs::path& dir, std::vector<std::string> targets) {
  namespace hf = sora::model::hf;
  hf::WeightsReport report;
  hf::with_pretrained<float>(
      dir, {hf::Task::none, 0, 0},
      [&](auto& model) {
        const hf::HfConfig& c = model.config();
        std::printf(
            "%s: %s (%s family), %lld layers, width %lld, %lld heads, feed-forward %lld, "
            "vocabulary %lld, %lld positions\n",
            dir.string().c_str(), c.model_type.c_str(), hf::family_name(c.family),
            static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
            static_cast<long long>(c.num_heads), static_cast<long long>(c.intermediate_size),
            static_cast<long long>(c.vocab_size),
            static_cast<long long>(c.max_position_embeddings));
        std::map<std::string, long long> kinds;
        long long total = 0;
        model.visit_params([&](sora::Param<float>& p) {
          kinds[module_kind(p)] += p.size();
          total += p.size();
        });
        for (const auto& [kind, count] : kinds)
          std::printf("  %-12s %12lld\n", kind.c_str(), count);
        std::printf("  %-12s %12lld\n", "total", total);
        std::printf("loaded %zu tensors; skipped %zu unused by the bare model\n",
                    report.loaded.size(), report.skipped.size());
        if (targets.empty()) targets = hf::default_targets(c.family);
        sora::model::PeftConfig peft;
        peft.method = sora::model::Method::lora;
        peft.target_modules = targets;
        const long long adapted = model.apply_peft(peft);
        std::string joined;
        for (const std::string& t : targets) joined += (joined.empty() ? "" : ",") + t;
        std::printf("adapters (--target-modules %s): %lld modules, for example\n", joined.c_str(),
                    adapted);
        int shown = 0;
        model.visit_linears([&](const std::string& name, sora::nn::AdaptedLinear<float>& lin) {
          if (lin.adapter && shown++ < 6)
            std::printf("  %s (%lld -> %lld)\n", name.c_str(),
                        static_cast<long long>(lin.in_features()),
                        static_cast<long long>(lin.out_features()));
        });
      },
      &report);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print the tensors of a safetensors file, or a PEFT adapter folder"};
  std::string path;
  bool no_stats = false;
  std::string model_dir;
  std::vector<std::string> targets;
  app.add_option("path", path, "a .safetensors file or a PEFT adapter folder");
  app.add_option("--model", model_dir, "a Hugging Face model folder (config.json + safetensors)");
  app.add_option("--target-modules", targets, "adapter targets to show for --model (PEFT's syntax)")
      ->delimiter(',');
  app.add_flag("--no-stats", no_stats, "skip the statistics (reads only the header)");
  CLI11_PARSE(app, argc, argv);
  if (path.empty() == model_dir.empty()) {
    std::fprintf(stderr, "sora-inspect: give a file or adapter folder, or --model DIR\n");
    return 2;
  }
  try {
    if (!model_dir.empty()) {
      print_model(model_dir, targets);
    } else if (fs::is_directory(path)) {
      if (!print_adapter(path, !no_stats)) {
        std::fprintf(stderr, "sora-inspect: %s: the adapter is inconsistent\n", path.c_str());
        return 1;
      }
    } else {
      print_file(SafetensorsFile::open(path), !no_stats);
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "sora-inspect: %s\n", e.what());
    return 1;
  }
  return 0;
}
