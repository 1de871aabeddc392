#pragma once
// TransformerConfig as JSON, and a model built from a config file: model::from_config(path).
//
// The JSON object has one key per TransformerConfig field, named as the field (vocab_size,
// width, heads, layers, ffn_width, max_len, causal, dropout, tied_lm_head, gelu, bias, ln_eps,
// head, num_labels, pooling, seed); enums are strings ("tanh" | "exact", "lm" |
// "classification" | "regression", "automatic" | "first" | "last"). A missing key keeps the
// field's default; an unknown key or a value of the wrong type is an error naming it (a typo
// such as "layer": 4 must not silently build a 2-layer model). Needs nlohmann/json (sora::io).

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/io/input_file.hpp"
#include "sora/model/config.hpp"
#include "sora/model/transformer.hpp"

namespace sora::model {

inline const char* gelu_name(ops::Gelu gelu) {
  return gelu == ops::Gelu::exact ? "exact" : "tanh";
}

inline const char* pooling_name(Pooling pooling) {
  switch (pooling) {
    case Pooling::automatic:
      return "automatic";
    case Pooling::first:
      return "first";
    case Pooling::last:
      return "last";
  }
  return "?";
}

inline nlohmann::ordered_json to_json(const TransformerConfig& c) {
  nlohmann::ordered_json j;
  j["vocab_size"] = c.vocab_size;
  j["width"] = c.width;
  j["heads"] = c.heads;
  j["layers"] = c.layers;
  j["ffn_width"] = c.ffn_width;
  j["max_len"] = c.max_len;
  j["causal"] = c.causal;
  j["dropout"] = c.dropout;
  j["tied_lm_head"] = c.tied_lm_head;
  j["gelu"] = gelu_name(c.gelu);
  j["bias"] = c.bias;
  j["ln_eps"] = c.ln_eps;
  j["head"] = head_name(c.head);
  j["num_labels"] = c.num_labels;
  j["pooling"] = pooling_name(c.pooling);
  j["seed"] = c.seed;
  return j;
}

namespace config_file_detail {

// Reads the fields it is asked for, collecting every problem; unknown() lists the keys no
// field asked for.
class Fields {
 public:
  Fields(const nlohmann::json& j, std::vector<std::string>& problems)
      : j_(j), problems_(problems) {}

  void integer(const char* key, Index& out) {
    if (const nlohmann::json* v = find(key)) {
      if (v->is_number_integer()) {
        out = v->get<Index>();
      } else {
        wrong(key, "an integer", *v);
      }
    }
  }
  void unsigned_integer(const char* key, std::uint64_t& out) {
    if (const nlohmann::json* v = find(key)) {
      if (v->is_number_unsigned()) {
        out = v->get<std::uint64_t>();
      } else {
        wrong(key, "an integer >= 0", *v);
      }
    }
  }
  void number(const char* key, double& out) {
    if (const nlohmann::json* v = find(key)) {
      if (v->is_number()) {
        out = v->get<double>();
      } else {
        wrong(key, "a number", *v);
      }
    }
  }
  void boolean(const char* key, bool& out) {
    if (const nlohmann::json* v = find(key)) {
      if (v->is_boolean()) {
        out = v->get<bool>();
      } else {
        wrong(key, "true or false", *v);
      }
    }
  }
  // A string among `choices`; returns its index, or -1 when absent or invalid.
  int choice(const char* key, std::initializer_list<const char*> choices) {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return -1;
    std::string expected;
    for (const char* c : choices)
      expected += (expected.empty() ? "\"" : " | \"") + std::string(c) + "\"";
    if (!v->is_string()) {
      wrong(key, expected.c_str(), *v);
      return -1;
    }
    int i = 0;
    for (const char* c : choices) {
      if (v->get<std::string>() == c) return i;
      ++i;
    }
    wrong(key, expected.c_str(), *v);
    return -1;
  }
  void report_unknown() {
    for (const auto& [key, value] : j_.items())
      if (std::find(seen_.begin(), seen_.end(), key) == seen_.end())
        problems_.push_back(detail::concat("unknown key \"", key, "\""));
  }

 private:
  const nlohmann::json* find(const char* key) {
    seen_.emplace_back(key);
    const auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  void wrong(const char* key, const char* expected, const nlohmann::json& v) {
    problems_.push_back(detail::concat("\"", key, "\" must be ", expected, ", got ", v.dump()));
  }

  const nlohmann::json& j_;
  std::vector<std::string>& problems_;
  std::vector<std::string> seen_;
};

}  // namespace config_file_detail

// The config a JSON object describes (`source` names it in errors). Throws one sora::Error
// listing every unknown key and mistyped value, then validates the result.
inline TransformerConfig transformer_config_from_json(const nlohmann::json& j,
                                                      const std::string& source) {
  SORA_CHECK(j.is_object(), source, ": a transformer config must be a JSON object, got ",
             j.type_name());
  TransformerConfig c;
  std::vector<std::string> problems;
  config_file_detail::Fields f(j, problems);
  f.integer("vocab_size", c.vocab_size);
  f.integer("width", c.width);
  f.integer("heads", c.heads);
  f.integer("layers", c.layers);
  f.integer("ffn_width", c.ffn_width);
  f.integer("max_len", c.max_len);
  f.boolean("causal", c.causal);
  f.number("dropout", c.dropout);
  f.boolean("tied_lm_head", c.tied_lm_head);
  if (const int g = f.choice("gelu", {"tanh", "exact"}); g >= 0)
    c.gelu = g == 0 ? ops::Gelu::tanh : ops::Gelu::exact;
  f.boolean("bias", c.bias);
  f.number("ln_eps", c.ln_eps);
  if (const int h = f.choice("head", {"lm", "classification", "regression"}); h >= 0)
    c.head = static_cast<Head>(h);
  f.integer("num_labels", c.num_labels);
  if (const int p = f.choice("pooling", {"automatic", "first", "last"}); p >= 0)
    c.pooling = static_cast<Pooling>(p);
  f.unsigned_integer("seed", c.seed);
  f.report_unknown();
  if (!problems.empty()) {
    std::string message = detail::concat(source, ": not a valid transformer config:");
    for (const std::string& p : problems) message += "\n  " + p;
    throw Error(message);
  }
  try {
    c.validate();
  } catch (const Error& e) {
    detail::throw_error(source, ": ", e.what());
  }
  return c;
}

// The config in a JSON file: a config object, or a file of io::save_model (whose "config"
// member holds it).
inline TransformerConfig read_transformer_config(const std::filesystem::path& path) {
  constexpr std::uint64_t kMaxConfigBytes = 1 << 20;  // a config is a few hundred bytes
  const std::string text = io::read_input_file(path, kMaxConfigBytes);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::throw_error(path.string(), ": not valid JSON: ", e.what());
  }
  if (j.is_object() && j.contains("format") && j.contains("config"))
    return transformer_config_from_json(j["config"], path.string() + " (config)");
  return transformer_config_from_json(j, path.string());
}

// A freshly initialised model of the config in `path` (the Transformer neither copies nor
// moves: its layers point into each other's buffers).
template <class T>
std::unique_ptr<Transformer<T>> from_config(const std::filesystem::path& path) {
  return std::make_unique<Transformer<T>>(read_transformer_config(path));
}

}  // namespace sora::model
