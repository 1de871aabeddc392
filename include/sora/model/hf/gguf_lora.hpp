#pragma once
// A LLaMA-family model's adapters as a GGUF LoRA file that llama.cpp loads (`--lora FILE`)
// onto the same base model converted by llama.cpp's convert_hf_to_gguf.py.
//
// What llama.cpp expects of an adapter file, and what is written:
//   general.architecture  "llama" (LLaMA, Mistral) or "qwen2"
//   general.type          "adapter";  adapter.type "lora";  adapter.lora.alpha  float32
//   blk.<l>.<module>.weight.lora_a  A (r, in)     attn_q attn_k attn_v attn_output
//   blk.<l>.<module>.weight.lora_b  B (out, r)    ffn_gate ffn_up ffn_down
// llama.cpp adds (alpha / r) B A x to each module's output, r being that module's own rank
// (B's column count) and alpha one value for the file.
//
// The scale. sora's update is s B diag(g) A with s = alpha / r_max fixed per module; pruning
// (prune::to_lora) folds the gate into B and keeps the r_m ranks with a non-zero gate. So
// B_file = (s r_m / alpha_file) B diag(g), with alpha_file = the largest exported rank: a module
// at that rank gets a scale of exactly 1, the others one rounding of that factor.
//
// The rows of q and k. llama.cpp's conversion reorders the rows of q_proj and k_proj within each
// head (its RoPE kernel pairs dimension 2i with 2i + 1, transformers' pairs i with i + d/2):
// row h d + 2i + j of the converted weight is row h d + j d/2 + i of the original, per head h
// (k_proj with the key/value heads). The same reordering is applied to B's rows here, so that
// B A matches the converted weight. Qwen2's conversion keeps the order (its kernel pairs i with
// i + d/2), and so does this export.

#include <filesystem>
#include <string>
#include <string_view>

#include "sora/io/gguf_writer.hpp"
#include "sora/model/hf/llama.hpp"
#include "sora/prune/prune.hpp"

namespace sora::model::hf {

struct GgufLoraReport {
  Index modules = 0;     // modules written (a module pruned to rank 0 is left out)
  Index max_rank = 0;    // also the file's adapter.lora.alpha
  Index parameters = 0;  // sum of r (in + out)
};

namespace gguf_detail {

// transformers' module name (".layers.<l>.self_attn.q_proj") as llama.cpp's tensor name
// ("blk.<l>.attn_q.weight"); empty for a module llama.cpp has no adapter slot for here.
inline std::string gguf_tensor_name(const std::string& name) {
  const std::size_t at = name.find("layers.");
  if (at == std::string::npos || (at > 0 && name[at - 1] != '.')) return {};
  const std::size_t dot = name.find('.', at + 7);
  if (dot == std::string::npos) return {};
  const std::string layer = name.substr(at + 7, dot - at - 7);
  if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos) return {};
  const std::string_view module = std::string_view(name).substr(dot + 1);
  static constexpr std::pair<std::string_view, std::string_view> kSlots[] = {
      {"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"}, {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},  {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  for (const auto& [hf, gguf] : kSlots)
    if (module == hf) return "blk." + layer + "." + std::string(gguf) + ".weight";
  return {};
}

// Rows of a (heads d, r) matrix in llama.cpp's per-head order (see the header comment).
template <class T>
Matrix<T> rope_row_order(const Matrix<T>& b, Index heads) {
  const Index d = b.rows() / heads, half = d / 2;
  Matrix<T> out(b.rows(), b.cols());
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < half; ++i)
      for (Index j = 0; j < 2; ++j) out.row(h * d + 2 * i + j) = b.row(h * d + j * half + i);
  return out;
}

}  // namespace gguf_detail

// Writes the model's adapters, pruned, to `path` (replaced atomically). Throws when an adapted
// module has no llama.cpp slot (an adapter on the LM head, say), when an adapter is merged,
// and when every rank was pruned (there is nothing to load).
template <class T>
GgufLoraReport export_gguf_lora(LlamaModel<T>& model, const std::filesystem::path& path) {
  const HfConfig& c = model.config();
  const bool neox_rope = c.model_type == "qwen2";
  const std::string arch = c.model_type == "qwen2" ? "qwen2" : "llama";
  SORA_CHECK(c.dim_per_head() % 2 == 0, "export_gguf_lora: head size ", c.dim_per_head(),
             " is odd");
  struct Module {
    std::string tensor;
    Matrix<T> A, B;  // (r, in), (out, r): B = s B diag(g)
    bool rope_rows = false;
    Index heads = 0;
  };
  std::vector<Module> modules;
  GgufLoraReport report;
  model.visit_linears([&](const std::string& name, nn::AdaptedLinear<T>& lin) {
    if (!lin.adapter) return;
    SORA_CHECK(!lin.merged(), "export_gguf_lora: module '", name,
               "' has its adapter merged into the base weight; unmerge it first");
    const std::string tensor = gguf_detail::gguf_tensor_name(name);
    SORA_CHECK(!tensor.empty(), "export_gguf_lora: module '", name,
               "' has no LoRA slot in llama.cpp (the attention and MLP projections of a layer)");
    const auto lora = prune::to_lora(*lin.adapter);
    if (!lora) return;
    Module m;
    m.tensor = tensor;
    m.A = lora->lora_A.value;
    m.B = lora->lora_B.value * lora->scale();
    const bool q = name.ends_with("q_proj"), k = name.ends_with("k_proj");
    m.rope_rows = !neox_rope && (q || k);
    m.heads = q ? c.num_heads : c.kv_heads();
    report.max_rank = std::max(report.max_rank, m.A.rows());
    report.parameters += m.A.rows() * (m.A.cols() + m.B.rows());
    modules.push_back(std::move(m));
  });
  SORA_CHECK(!modules.empty(), "export_gguf_lora: the model has no adapter with a rank left; '",
             path.string(), "' is not written");
  const T alpha = static_cast<T>(report.max_rank);
  io::GgufWriter writer;
  writer.add_string("general.architecture", arch);
  writer.add_string("general.type", "adapter");
  writer.add_string("general.name", "sora adapter");
  writer.add_string("adapter.type", "lora");
  writer.add_float32("adapter.lora.alpha", static_cast<float>(alpha));
  for (Module& m : modules) {
    // llama.cpp multiplies by alpha / r_m: undo it.
    const T fold = static_cast<T>(m.A.rows()) / alpha;
    Matrix<T> B = m.B * fold;
    if (m.rope_rows) B = gguf_detail::rope_row_order(B, m.heads);
    writer.add_matrix(m.tensor + ".lora_a", m.A);
    writer.add_matrix(m.tensor + ".lora_b", B);
  }
  report.modules = static_cast<Index>(modules.size());
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  writer.write(path);
  return report;
}

}  // namespace sora::model::hf
