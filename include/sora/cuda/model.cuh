#pragma once
// The transformer of model/ on the GPU, and moving a model between backends.
//
//   cuda::DeviceTransformer<float> gpu(config);   model::Transformer<float, cuda::Cuda>: the
//                                                 same layer and model code as on the CPU,
//                                                 computing with the op twins of cuda/ops/
//   cuda::copy_model(gpu, cpu);                   mirror a CPU model on the GPU (adapters with
//   cuda::copy_model(cpu, gpu);                   their kinds, ranks and scales, merged flags,
//                                                 every value and trainable flag) or back
//
// Structural work (pruning, merging, PEFT export, checkpoints) stays on the CPU model, which
// is the reference: copy the GPU model back, prune or save it there, and copy it over again.
// copy_model is a handful of transfers per parameter, not something to do every step.
//
// This header must be included before any use of model::Transformer<T, Cuda>; it brings the
// op twins (found by argument-dependent lookup on device tensors) and the model together.

#include <string>
#include <utility>
#include <vector>

#include "sora/cuda/backend.cuh"
#include "sora/cuda/ops/activation.cuh"
#include "sora/cuda/ops/attention.cuh"
#include "sora/cuda/ops/dropout.cuh"
#include "sora/cuda/ops/embedding.cuh"
#include "sora/cuda/ops/layernorm.cuh"
#include "sora/cuda/ops/linear.cuh"
#include "sora/cuda/ops/loss.cuh"
#include "sora/cuda/ops/pool.cuh"
#include "sora/model/transformer.hpp"

namespace sora::cuda {

template <class T>
using DeviceTransformer = model::Transformer<T, Cuda>;

namespace detail {

// The values of a tensor of either backend as a host matrix.
template <class T>
Matrix<T> host_copy(const Matrix<T>& m) {
  return m;
}
template <class T>
Matrix<T> host_copy(const DeviceTensor<T>& t) {
  return t.to_host(context().stream());
}

template <class T, class B>
void assign_values(Param<T, B>& dst, const Matrix<T>& src) {
  B::upload(dst.value, src);
}

}  // namespace detail

// Makes dst a copy of src: the same adapters in the same slots (kind, rank, r_max, scale,
// dropout, merged), then every parameter's value and trainable flag, the training mode and the
// dropout streams' states. The two models must have been built from the same config (checked
// parameter by parameter: names and shapes). Returns the number of parameters copied.
template <class T, class BD, class BS>
Index copy_model(model::Transformer<T, BD>& dst, model::Transformer<T, BS>& src) {
  // 1. Structure: rebuild dst's adapters after src's.
  std::vector<nn::AdaptedLinear<T, BS>*> from;
  src.visit_linears(
      [&](const std::string&, nn::AdaptedLinear<T, BS>& lin) { from.push_back(&lin); });
  std::size_t i = 0;
  dst.visit_linears([&](const std::string& name, nn::AdaptedLinear<T, BD>& lin) {
    SORA_CHECK(i < from.size(), "copy_model: the destination has more linear slots (", name,
               ") than the source");
    nn::AdaptedLinear<T, BS>& s = *from[i++];
    SORA_CHECK(s.in_features() == lin.in_features() && s.out_features() == lin.out_features(),
               "copy_model: slot ", name, " is (", lin.out_features(), ", ", lin.in_features(),
               ") in the destination but (", s.out_features(), ", ", s.in_features(),
               ") in the source");
    if (!s.adapter) {
      lin.detach();
      return;
    }
    const auto& a = *s.adapter;
    Matrix<T> g = a.gated() ? detail::host_copy(a.gate.value) : Matrix<T>();
    lin.attach(nn::LowRankAdapter<T, BD>::from_weights(
        a.kind(), detail::host_copy(a.lora_A.value), detail::host_copy(a.lora_B.value),
        std::move(g), a.scale(), a.r_max(), a.dropout()));
    lin.adapter->dropout_rng().set_state(s.adapter->dropout_rng().state());
    lin.set_merged(s.merged());
  });
  SORA_CHECK(i == from.size(), "copy_model: the source has more linear slots than the destination");

  // 2. Values and trainable flags, parameter by parameter in visiting order.
  std::vector<Param<T, BS>*> sp;
  src.visit_params([&](Param<T, BS>& p) { sp.push_back(&p); });
  std::vector<Param<T, BD>*> dp;
  dst.visit_params([&](Param<T, BD>& p) { dp.push_back(&p); });
  SORA_CHECK(sp.size() == dp.size(), "copy_model: the source has ", sp.size(),
             " parameters, the destination ", dp.size());
  for (std::size_t k = 0; k < sp.size(); ++k) {
    Param<T, BS>& s = *sp[k];
    Param<T, BD>& d = *dp[k];
    s.require_fp32("copy_model (a device model holds fp32 weights)");
    SORA_CHECK(
        s.name == d.name && s.value.rows() == d.value.rows() && s.value.cols() == d.value.cols(),
        "copy_model: parameter ", k, " is '", d.name, "' (", d.value.rows(), ", ", d.value.cols(),
        ") in the destination but '", s.name, "' (", s.value.rows(), ", ", s.value.cols(),
        ") in the source");
    detail::assign_values(d, detail::host_copy(s.value));
    if (d.trainable() != s.trainable()) d.set_trainable(s.trainable());
  }
  dst.train(src.training());
  dst.dropout_rng().set_state(src.dropout_rng().state());
  if constexpr (std::is_same_v<BD, Cuda>) {
    SORA_CUDA_CHECK(cudaStreamSynchronize(context().stream()));
  }
  return static_cast<Index>(sp.size());
}

}  // namespace sora::cuda
