#pragma once
// Rank pruning (SoRA -> LoRA, AdaLoRA masking -> LoRA), merging an adapter into its base
// weight and back, and honest parameter counting (docs/design.md 4).
//
// A gated adapter computes y += s B ((A x) ⊙ g) = s sum_i B[:, i] g_i (A[i, :] x). A rank with
// g_i = 0 contributes exactly nothing, so dropping it and folding g into B,
//   keep = {i : g_i != 0},  A' = A[keep, :],  B' = B[:, keep] diag(g[keep]),
// gives an ungated LoRA module with the same outputs (to rounding). The scale s stays
// alpha / r_max: it was fixed for the module's life and B' already carries the gates. A module
// whose gates are all zero has no update left; it disappears (no adapter, so nothing to export).

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sora/nn/adapter.hpp"

namespace sora::prune {

// Indices of the ranks that carry an update: g_i != 0 (every rank of an ungated module).
template <class T, class Backend>
std::vector<Index> kept_ranks(const nn::LowRankAdapter<T, Backend>& adapter) {
  std::vector<Index> keep;
  for (Index i = 0; i < adapter.rank(); ++i)
    if (!adapter.gated() || adapter.gate.value(0, i) != T(0)) keep.push_back(i);
  return keep;
}

// The equivalent LoRA module: ranks with a zero gate (SoRA's g or AdaLoRA's masked E) dropped,
// the gate folded into B, scale and dropout kept. std::nullopt when no rank is left.
template <class T, class Backend>
std::optional<nn::LowRankAdapter<T, Backend>> to_lora(
    const nn::LowRankAdapter<T, Backend>& adapter) {
  const std::vector<Index> keep = kept_ranks(adapter);
  if (keep.empty()) return std::nullopt;
  const Index K = static_cast<Index>(keep.size());
  Matrix<T> A(K, adapter.in_features());   // (K, C)
  Matrix<T> B(adapter.out_features(), K);  // (OC, K)
  for (Index j = 0; j < K; ++j) {
    const Index i = keep[static_cast<std::size_t>(j)];
    A.row(j) = adapter.lora_A.value.row(i);
    B.col(j) = adapter.lora_B.value.col(i);
    if (adapter.gated()) B.col(j) *= adapter.gate.value(0, i);
  }
  return nn::LowRankAdapter<T, Backend>::from_weights(nn::AdapterKind::lora, std::move(A),
                                                      std::move(B), Matrix<T>(), adapter.scale(),
                                                      adapter.r_max(), adapter.dropout());
}

// AdaLoRA's masked SVD form P diag(E) Q to LoRA form: E plays the gate's role exactly.
template <class T, class Backend>
std::optional<nn::LowRankAdapter<T, Backend>> adalora_to_lora(
    const nn::LowRankAdapter<T, Backend>& adapter) {
  SORA_CHECK(adapter.kind() == nn::AdapterKind::adalora,
             "adalora_to_lora: the adapter is not an AdaLoRA (SVD-form) adapter");
  return to_lora(adapter);
}

// Prunes a layer's adapter in place (to LoRA form, or removes it when no rank is left).
// Returns the rank kept. A merged layer must be unmerged first.
template <class T, class Backend>
Index prune(nn::AdaptedLinear<T, Backend>& layer) {
  if (!layer.adapter) return 0;
  SORA_CHECK(!layer.merged(), "prune: unmerge the layer before pruning its adapter");
  auto pruned = to_lora(*layer.adapter);
  if (!pruned) {
    layer.detach();
    return 0;
  }
  const Index kept = pruned->rank();
  layer.attach(std::move(*pruned));
  return kept;
}

// The adapter's weight update s B diag(g) A, (OC, C).
template <class T, class Backend>
Matrix<T> delta_weight(const nn::LowRankAdapter<T, Backend>& adapter) {
  Matrix<T> scaled_B = adapter.lora_B.value * adapter.scale();  // (OC, R)
  if (adapter.gated()) scaled_B *= adapter.gate.value.row(0).asDiagonal();
  Matrix<T> delta(adapter.out_features(), adapter.in_features());
  delta.noalias() = scaled_B * adapter.lora_A.value;
  return delta;
}

// W = W0 + s B diag(g) A; the layer's forward is then the base layer's alone (no adapter
// cost at inference). Returns false (and does nothing) for a layer without adapter.
template <class T, class Backend>
bool merge(nn::AdaptedLinear<T, Backend>& layer) {
  if (!layer.adapter) return false;
  SORA_CHECK(!layer.merged(), "merge: the layer's adapter is already merged");
  layer.base.weight.require_fp32("merge");  // the update would be rounded away in bf16
  layer.base.weight.value += delta_weight(*layer.adapter);
  layer.set_merged(true);
  return true;
}

// W = W - s B diag(g) A with the same (unchanged) adapter: W0 back to rounding.
template <class T, class Backend>
bool unmerge(nn::AdaptedLinear<T, Backend>& layer) {
  if (!layer.adapter) return false;
  SORA_CHECK(layer.merged(), "unmerge: the layer's adapter is not merged");
  layer.base.weight.require_fp32("unmerge");
  layer.base.weight.value -= delta_weight(*layer.adapter);
  layer.set_merged(false);
  return true;
}

// ---- parameter counting ---------------------------------------------------------------------

// Counts for one module (the parameters sharing a dotted prefix, e.g. "blocks.0.attn.q").
//   trainable      scalars that are trained (own a gradient): r (in + out) (+ r gates)
//   nonzero        parameters alive now: an adapter rank with a non-zero gate costs
//                  in + out + 1 while gated (in + out ungated), a zero-gated rank costs 0;
//                  for other trainable tensors, their non-zero entries
//   after_pruning  what the pruned model keeps: kept ranks x (in + out), gates folded into B;
//                  other trainable tensors whole. A module pruned to rank 0 costs 0.
struct ModuleCount {
  std::string module;
  Index rank = 0;       // adapter rank (0 without adapter)
  Index kept_rank = 0;  // ranks with a non-zero gate (all of them for LoRA)
  Index trainable = 0;
  Index nonzero = 0;
  Index after_pruning = 0;
};

struct ParamCounts {
  std::vector<ModuleCount> modules;  // in visiting order; modules with nothing trainable omitted
  Index trainable = 0;
  Index nonzero = 0;
  Index after_pruning = 0;
};

namespace detail {
// A parameter's values where the host can read them: the value itself on the CPU, a download
// (Backend::to_host) on a device backend.
template <class T, class Backend>
decltype(auto) host_value(const Param<T, Backend>& p) {
  return Backend::to_host(p.value);
}
}  // namespace detail

// Counts every module of anything with visit_params (a layer or a whole model), on any
// backend: a device model's gates and trainable dense tensors are downloaded to be counted.
template <class Model>
ParamCounts count_parameters(Model& model, std::string_view prefix = "") {
  struct Group {
    std::string module;
    Index dense_trainable = 0, dense_nonzero = 0;
    Index rank = 0, in = 0, out = 0, kept = -1;
    bool has_adapter = false, gated = false, adapter_trainable = false;
  };
  std::vector<Group> groups;
  std::map<std::string, std::size_t> index;
  model.visit_params(prefix, [&](auto& p) {
    const std::string& name = p.name;
    const auto dot = name.rfind('.');
    const std::string module = dot == std::string::npos ? std::string() : name.substr(0, dot);
    auto [it, inserted] = index.try_emplace(module, groups.size());
    if (inserted) {
      groups.emplace_back();
      groups.back().module = module;
    }
    Group& g = groups[it->second];
    // What a parameter is comes from its role; which module it belongs to, from its path.
    if (p.role == ParamRole::adapter_A) {
      g.has_adapter = true;
      g.rank = p.value.rows();
      g.in = p.value.cols();
      g.adapter_trainable = g.adapter_trainable || p.trainable();
    } else if (p.role == ParamRole::adapter_B) {
      g.out = p.value.rows();
    } else if (p.role == ParamRole::gate || p.role == ParamRole::singular_value) {
      g.gated = true;
      g.kept = 0;
      const auto& value = detail::host_value(p);
      for (Index i = 0; i < value.size(); ++i) g.kept += value(0, i) != 0;
    } else if (p.trainable()) {
      g.dense_trainable += p.value.size();
      const auto& value = detail::host_value(p);
      for (Index i = 0; i < value.rows(); ++i)
        for (Index j = 0; j < value.cols(); ++j) g.dense_nonzero += value(i, j) != 0;
    }
  });
  ParamCounts counts;
  for (const Group& g : groups) {
    ModuleCount m;
    m.module = g.module;
    m.trainable = m.after_pruning = g.dense_trainable;
    m.nonzero = g.dense_nonzero;
    if (g.has_adapter) {
      const Index per_rank = g.in + g.out;
      m.rank = g.rank;
      m.kept_rank = g.gated ? g.kept : g.rank;
      if (g.adapter_trainable) m.trainable += g.rank * per_rank + (g.gated ? g.rank : 0);
      m.nonzero += m.kept_rank * (per_rank + (g.gated ? 1 : 0));
      m.after_pruning += m.kept_rank * per_rank;
    }
    if (m.trainable == 0 && m.after_pruning == 0) continue;
    counts.trainable += m.trainable;
    counts.nonzero += m.nonzero;
    counts.after_pruning += m.after_pruning;
    counts.modules.push_back(std::move(m));
  }
  return counts;
}

}  // namespace sora::prune
