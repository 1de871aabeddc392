#pragma once
// Which fine-tuning method, which modules get adapters and what else stays trainable.
//
// Module names are the dotted paths of the model's linear slots ("blocks.3.attn.q",
// "blocks.0.mlp.fc", "head.dense", "lm_head"). A target pattern selects a module as PEFT's
// `target_modules` list does: the pattern equals the whole name, or the name ends with
// "." + pattern (so "q" selects every "....attn.q" but "proj" never selects "....o_proj").

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/nn/adapter.hpp"

namespace sora::model {

enum class Method { full, lora, sora, adalora };

inline Method parse_method(const std::string& name) {
  if (name == "full") return Method::full;
  if (name == "lora") return Method::lora;
  if (name == "sora") return Method::sora;
  if (name == "adalora") return Method::adalora;
  ::sora::detail::throw_error("unknown fine-tuning method '", name,
                              "' (expected full, lora, sora or adalora)");
}

inline const char* method_name(Method method) {
  switch (method) {
    case Method::full:
      return "full";
    case Method::lora:
      return "lora";
    case Method::sora:
      return "sora";
    case Method::adalora:
      return "adalora";
  }
  return "?";
}

inline nn::AdapterKind adapter_kind(Method method) {
  SORA_CHECK(method != Method::full, "full fine-tuning has no adapter kind");
  if (method == Method::lora) return nn::AdapterKind::lora;
  if (method == Method::sora) return nn::AdapterKind::sora;
  return nn::AdapterKind::adalora;
}

// PEFT's rule: exact match, or a suffix match on a "." boundary.
inline bool matches_target(std::string_view module_name, std::string_view pattern) {
  if (pattern.empty()) return false;
  if (module_name == pattern) return true;
  return module_name.size() > pattern.size() && module_name.ends_with(pattern) &&
         module_name[module_name.size() - pattern.size() - 1] == '.';
}

inline bool matches_any(std::string_view module_name, const std::vector<std::string>& patterns) {
  for (const std::string& p : patterns)
    if (matches_target(module_name, p)) return true;
  return false;
}

// The paper's GLUE targets: q, k, v, attention output and both FFN matrices of every block.
inline std::vector<std::string> default_targets() {
  return {"q", "k", "v", "o", "fc", "proj"};
}

struct PeftConfig {
  Method method = Method::sora;
  Index rank = 8;  // r (r_max for SoRA, r_init for AdaLoRA)
  double alpha = 16.0;
  double dropout = 0.0;  // on each adapter's input
  nn::GateInit gate_init = nn::GateInit::normal;
  std::vector<std::string> target_modules = default_targets();
  // Besides the adapters (ignored by full fine-tuning, which trains everything):
  bool train_layernorms = true;
  bool train_head = true;  // the classification / regression head, or an untied LM head
  bool train_embeddings = false;
  std::uint64_t seed = 0;  // adapter initialisation; module i draws from seed + i
};

// The paper's official-code defaults for SoRA (docs/design.md section 4): r = 8, alpha = 16.
inline PeftConfig sora_preset() {
  PeftConfig config;
  config.method = Method::sora;
  config.rank = 8;
  config.alpha = 16.0;
  return config;
}

}  // namespace sora::model
