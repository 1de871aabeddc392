#pragma once
// A Hugging Face `config.json`, read into the one struct every supported family builds from.
//
// Supported `model_type`s: bert and roberta (the BERT family: post-LayerNorm encoders, MiniLM
// included), gpt2 (pre-LayerNorm decoder, fused c_attn, Conv1D weights), and llama, mistral and
// qwen2 (the LLaMA family: RMSNorm, rotary positions, SwiGLU, grouped-query attention). The reader
// collects every problem of a file (an unsupported model_type, a missing or mistyped field, a value
// out of range) and throws them together in one sora::Error that names the file, so a user fixing a
// hand-written config sees all of it at once.
//
// Fields follow `transformers`' names and defaults (BertConfig, RobertaConfig); a field the
// family does not need is ignored, as transformers ignores it.

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/tensor.hpp"
#include "sora/io/input_file.hpp"
#include "sora/ops/activation.hpp"
#include "sora/ops/rope.hpp"

namespace sora::model::hf {

enum class Family { bert, roberta, gpt2, llama };

inline const char* family_name(Family f) {
  switch (f) {
    case Family::bert:
      return "bert";
    case Family::roberta:
      return "roberta";
    case Family::gpt2:
      return "gpt2";
    case Family::llama:
      return "llama";
  }
  return "?";
}

// What sits on top of the encoder, as the `transformers` class that would load the folder:
//   none                      AutoModel: the last hidden states, no loss
//   sequence_classification   AutoModelForSequenceClassification: num_labels logits per
//                             sequence; cross-entropy, or mean squared error when num_labels == 1
//   causal_lm                 AutoModelForCausalLM (decoders): logits over the vocabulary at
//                             every token; cross-entropy on next-token labels
enum class Task { none, sequence_classification, causal_lm };

struct HfConfig {
  Family family = Family::bert;
  std::string model_type;  // as written in the file
  Index vocab_size = 0;
  Index hidden_size = 0;
  Index num_layers = 0;
  Index num_heads = 0;
  Index intermediate_size = 0;
  Index max_position_embeddings = 512;
  Index type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  double hidden_dropout = 0.1;
  double attention_dropout = 0.1;
  double embedding_dropout = -1.0;   // < 0: hidden_dropout (GPT-2 has embd_pdrop of its own)
  double classifier_dropout = -1.0;  // < 0: hidden_dropout (transformers' `None`)
  double initializer_range = 0.02;
  ops::Gelu gelu = ops::Gelu::exact;
  int pad_token_id = 0;             // -1: none (GPT-2's default)
  bool causal = false;              // decoder (GPT-2) or encoder (BERT) attention
  bool tie_word_embeddings = true;  // a causal LM head that reuses the token embedding
  // The LLaMA family.
  Index num_kv_heads = 0;  // grouped-query attention: key/value heads (0: num_heads)
  Index head_dim = 0;      // per head (0: hidden_size / num_heads)
  double rope_theta = 10000.0;
  bool attention_bias = false;  // q, k, v (and o) biases: Qwen2 has q, k, v ones
  bool o_bias = false;
  bool mlp_bias = false;
  Index sliding_window = 0;  // Mistral: longer sequences are refused (0: none)
  // rope_scaling {"rope_type": "llama3", ...} (LLaMA 3.1 and later); absent: plain RoPE.
  std::optional<ops::RopeLlama3Scaling> rope_llama3;
  Index kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
  Index dim_per_head() const { return head_dim > 0 ? head_dim : hidden_size / num_heads; }
  Index num_labels = 2;  // from id2label when present, as transformers counts them
  // RoBERTa numbers positions from pad_token_id + 1 (position_ids of padding are
  // pad_token_id); BERT from 0.
  Index position_offset() const { return family == Family::roberta ? pad_token_id + 1 : 0; }
  double embeddings_dropout() const {
    return embedding_dropout >= 0.0 ? embedding_dropout : hidden_dropout;
  }
  double head_dropout() const {
    return classifier_dropout >= 0.0 ? classifier_dropout : hidden_dropout;
  }
};

// How a model's weights start: drawn as transformers initialises a fresh model, or left for a
// checkpoint to fill (zero embeddings and no second pass over the linear layers: loading MiniLM
// spent a third of its time drawing random numbers it then overwrote).
enum class Init { random, for_loading };

// An embedding table (nn::Embedding or nn::PositionEmbedding) of rows x cols.
template <class Emb, class T>
Emb make_embedding(Init init, Index rows, Index cols, bool trainable, std::uint64_t seed,
                   double stddev) {
  if (init == Init::random) return Emb(rows, cols, trainable, seed, stddev);
  Emb e;
  e.weight = decltype(e.weight)("weight", Matrix<T>::Zero(rows, cols), trainable, false,
                                ParamRole::embedding);
  return e;
}

namespace config_detail {

// Reads typed fields out of one JSON object, remembering every problem instead of stopping at
// the first.
class FieldReader {
 public:
  explicit FieldReader(const nlohmann::json& object) : j_(object) {}

  template <class T>
  void optional(const char* key, T& out) {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return;
    take(key, *it, out);
  }
  template <class T>
  void required(const char* key, T& out) {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      problems.push_back(detail::concat("missing field '", key, "'"));
      return;
    }
    take(key, *it, out);
  }

  std::vector<std::string> problems;

 private:
  void take(const char* key, const nlohmann::json& v, Index& out) {
    if (!v.is_number_integer()) {
      problems.push_back(detail::concat("field '", key, "' must be an integer, found ", v.dump()));
      return;
    }
    out = v.get<Index>();
  }
  void take(const char* key, const nlohmann::json& v, int& out) {
    Index wide = 0;
    take(key, v, wide);
    out = static_cast<int>(wide);
  }
  void take(const char* key, const nlohmann::json& v, double& out) {
    if (!v.is_number()) {
      problems.push_back(detail::concat("field '", key, "' must be a number, found ", v.dump()));
      return;
    }
    out = v.get<double>();
  }
  void take(const char* key, const nlohmann::json& v, std::string& out) {
    if (!v.is_string()) {
      problems.push_back(detail::concat("field '", key, "' must be a string, found ", v.dump()));
      return;
    }
    out = v.get<std::string>();
  }

  const nlohmann::json& j_;
};

inline void check_positive(std::vector<std::string>& problems, const char* key, Index v) {
  if (v <= 0) problems.push_back(detail::concat("field '", key, "' must be positive, got ", v));
}
inline void check_probability(std::vector<std::string>& problems, const char* key, double v) {
  if (!(v >= 0.0 && v < 1.0))
    problems.push_back(detail::concat("field '", key, "' must be in [0, 1), got ", v));
}

}  // namespace config_detail

// Parses config.json's text; `source` names it in errors.
inline HfConfig parse_config(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::throw_error(source, ": not valid JSON (", e.what(), ")");
  }
  SORA_CHECK(j.is_object(), source, ": a config must be a JSON object, found ", j.type_name());

  HfConfig c;
  config_detail::FieldReader f(j);
  f.required("model_type", c.model_type);
  if (c.model_type == "bert" || c.model_type == "roberta") {
    c.family = c.model_type == "bert" ? Family::bert : Family::roberta;
    if (c.family == Family::roberta) c.pad_token_id = 1;
    f.required("vocab_size", c.vocab_size);
    f.required("hidden_size", c.hidden_size);
    f.required("num_hidden_layers", c.num_layers);
    f.required("num_attention_heads", c.num_heads);
    f.required("intermediate_size", c.intermediate_size);
    f.optional("max_position_embeddings", c.max_position_embeddings);
    f.optional("type_vocab_size", c.type_vocab_size);
    f.optional("layer_norm_eps", c.layer_norm_eps);
    f.optional("hidden_dropout_prob", c.hidden_dropout);
    f.optional("attention_probs_dropout_prob", c.attention_dropout);
    f.optional("pad_token_id", c.pad_token_id);
  } else if (c.model_type == "gpt2") {
    // GPT2Config's names and defaults.
    c.family = Family::gpt2;
    c.causal = true;
    c.pad_token_id = -1;
    c.type_vocab_size = 1;
    c.layer_norm_eps = 1e-5;
    c.max_position_embeddings = 1024;
    f.required("vocab_size", c.vocab_size);
    f.required("n_embd", c.hidden_size);
    f.required("n_layer", c.num_layers);
    f.required("n_head", c.num_heads);
    f.optional("n_positions", c.max_position_embeddings);
    f.optional("n_inner", c.intermediate_size);
    if (c.intermediate_size == 0) c.intermediate_size = 4 * c.hidden_size;
    f.optional("layer_norm_epsilon", c.layer_norm_eps);
    f.optional("resid_pdrop", c.hidden_dropout);
    f.optional("attn_pdrop", c.attention_dropout);
    f.optional("embd_pdrop", c.embedding_dropout);
    f.optional("pad_token_id", c.pad_token_id);
    if (const auto it = j.find("scale_attn_by_inverse_layer_idx");
        it != j.end() && it->is_boolean() && it->get<bool>())
      f.problems.push_back("scale_attn_by_inverse_layer_idx = true is not supported");
  } else if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2") {
    // LlamaConfig / MistralConfig / Qwen2Config: the same structure, their own defaults.
    c.family = Family::llama;
    c.causal = true;
    c.pad_token_id = -1;
    c.type_vocab_size = 1;
    c.layer_norm_eps = 1e-6;
    c.hidden_dropout = 0.0;  // LLaMA has no residual or embedding dropout
    c.tie_word_embeddings = false;
    c.max_position_embeddings = 2048;
    f.required("vocab_size", c.vocab_size);
    f.required("hidden_size", c.hidden_size);
    f.required("intermediate_size", c.intermediate_size);
    f.required("num_hidden_layers", c.num_layers);
    f.required("num_attention_heads", c.num_heads);
    f.optional("num_key_value_heads", c.num_kv_heads);
    f.optional("head_dim", c.head_dim);
    f.optional("max_position_embeddings", c.max_position_embeddings);
    f.optional("rms_norm_eps", c.layer_norm_eps);
    f.optional("rope_theta", c.rope_theta);
    f.optional("attention_dropout", c.attention_dropout);
    f.optional("pad_token_id", c.pad_token_id);
    auto flag = [&](const char* key, bool& out) {
      if (const auto it = j.find(key); it != j.end() && !it->is_null()) {
        if (it->is_boolean())
          out = it->get<bool>();
        else
          f.problems.push_back(detail::concat("field '", key, "' must be true or false"));
      }
    };
    if (c.model_type == "qwen2") c.attention_bias = true;  // Qwen2: q, k, v biases, none on o
    flag("attention_bias", c.attention_bias);
    c.o_bias = c.model_type == "llama" && c.attention_bias;
    flag("mlp_bias", c.mlp_bias);
    if (c.model_type == "mistral") f.optional("sliding_window", c.sliding_window);
    bool sliding = false;
    flag("use_sliding_window", sliding);
    if (c.model_type == "qwen2" && sliding) f.optional("sliding_window", c.sliding_window);
    if (const auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
      std::string type;
      if (it->is_object()) {
        config_detail::FieldReader r(*it);
        r.optional("rope_type", type);
        if (type.empty()) r.optional("type", type);
        if (type == "llama3") {
          ops::RopeLlama3Scaling scaling;
          r.required("factor", scaling.factor);
          r.required("low_freq_factor", scaling.low_freq_factor);
          r.required("high_freq_factor", scaling.high_freq_factor);
          r.required("original_max_position_embeddings", scaling.original_max_position_embeddings);
          c.rope_llama3 = scaling;
        }
        for (const std::string& problem : r.problems)
          f.problems.push_back("rope_scaling: " + problem);
      }
      if (type != "llama3" && type != "default")
        f.problems.push_back(detail::concat("rope_scaling of type '", type,
                                            "' is not supported (sora has default and llama3)"));
    }
  } else if (!c.model_type.empty()) {
    f.problems.push_back(detail::concat("unsupported model_type '", c.model_type,
                                        "' (sora loads bert, roberta, gpt2, llama, mistral and "
                                        "qwen2)"));
  }
  if (const auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean())
    c.tie_word_embeddings = it->get<bool>();
  f.optional("classifier_dropout", c.classifier_dropout);
  f.optional("initializer_range", c.initializer_range);

  std::string act = c.family == Family::gpt2    ? "gelu_new"
                    : c.family == Family::llama ? "silu"
                                                : "gelu";
  f.optional(c.family == Family::gpt2 ? "activation_function" : "hidden_act", act);
  if (c.family == Family::llama) {
    if (act != "silu")
      f.problems.push_back(detail::concat("unsupported hidden_act '", act,
                                          "' (the LLaMA family's MLP is SwiGLU: silu)"));
  } else if (act == "gelu") {
    c.gelu = ops::Gelu::exact;
  } else if (act == "gelu_new" || act == "gelu_pytorch_tanh") {
    c.gelu = ops::Gelu::tanh;
  } else {
    f.problems.push_back(detail::concat("unsupported hidden_act '", act,
                                        "' (sora has gelu, gelu_new, gelu_pytorch_tanh)"));
  }
  std::string positions = "absolute";
  f.optional("position_embedding_type", positions);
  if (positions != "absolute")
    f.problems.push_back(detail::concat("unsupported position_embedding_type '", positions,
                                        "' (sora has absolute)"));

  if (const auto it = j.find("id2label"); it != j.end() && it->is_object() && !it->empty()) {
    c.num_labels = static_cast<Index>(it->size());
  } else {
    f.optional("num_labels", c.num_labels);
  }

  auto& p = f.problems;
  using config_detail::check_positive;
  check_positive(p, "vocab_size", c.vocab_size);
  check_positive(p, "hidden_size", c.hidden_size);
  check_positive(p, "num_hidden_layers", c.num_layers);
  check_positive(p, "num_attention_heads", c.num_heads);
  check_positive(p, "intermediate_size", c.intermediate_size);
  check_positive(p, "max_position_embeddings", c.max_position_embeddings);
  check_positive(p, "type_vocab_size", c.type_vocab_size);
  check_positive(p, "num_labels", c.num_labels);
  if (c.family == Family::llama) {
    if (c.num_kv_heads < 0 || (c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads != 0))
      p.push_back(detail::concat("num_attention_heads ", c.num_heads,
                                 " is not a multiple of num_key_value_heads ", c.num_kv_heads));
    if (c.head_dim < 0 || (c.num_heads > 0 && c.dim_per_head() % 2 != 0))
      p.push_back(
          detail::concat("the head dimension must be positive and even for rotary "
                         "positions, got ",
                         c.num_heads > 0 ? c.dim_per_head() : 0));
    if (!(c.rope_theta > 0.0))
      p.push_back(detail::concat("field 'rope_theta' must be positive, got ", c.rope_theta));
  }
  if (c.head_dim == 0 && c.num_heads > 0 && c.hidden_size > 0 && c.hidden_size % c.num_heads != 0)
    p.push_back(detail::concat("hidden_size ", c.hidden_size, " does not split into ", c.num_heads,
                               " attention heads"));
  if (!(c.layer_norm_eps > 0.0))
    p.push_back(detail::concat("field 'layer_norm_eps' must be positive, got ", c.layer_norm_eps));
  config_detail::check_probability(p, "hidden_dropout_prob / resid_pdrop", c.hidden_dropout);
  config_detail::check_probability(p, "attention_probs_dropout_prob / attn_pdrop",
                                   c.attention_dropout);
  if (c.embedding_dropout >= 0.0)
    config_detail::check_probability(p, "embd_pdrop", c.embedding_dropout);
  if (c.classifier_dropout >= 0.0)
    config_detail::check_probability(p, "classifier_dropout", c.classifier_dropout);
  if (c.family == Family::roberta && c.max_position_embeddings <= c.position_offset())
    p.push_back(detail::concat("max_position_embeddings ", c.max_position_embeddings,
                               " leaves no position after RoBERTa's offset ", c.position_offset()));
  if (c.pad_token_id < (c.causal ? -1 : 0) || (c.vocab_size > 0 && c.pad_token_id >= c.vocab_size))
    p.push_back(detail::concat("pad_token_id ", c.pad_token_id, " is not a token of the ",
                               c.vocab_size, "-token vocabulary"));

  if (!p.empty()) {
    std::string message =
        detail::concat(source, ": ", p.size(), p.size() == 1 ? " problem:" : " problems:");
    for (const std::string& line : p) message += "\n  " + line;
    throw Error(message);
  }
  return c;
}

// Reads DIR/config.json (or the file itself when given a file).
inline HfConfig read_config(const std::filesystem::path& path) {
  const std::filesystem::path file =
      std::filesystem::is_directory(path) ? path / "config.json" : path;
  SORA_CHECK(std::filesystem::exists(file), file.string(),
             ": cannot open (a Hugging Face model folder has config.json)");
  // Through io's reader: a FIFO, a device or a directory is an error, never a hang.
  constexpr std::uint64_t kMaxConfigBytes = 64 << 20;  // a config.json is a few KiB
  return parse_config(io::read_input_file(file, kMaxConfigBytes), file.string());
}

}  // namespace sora::model::hf
