#pragma once
// Where sora-finetune's training steps run: --device cpu (always there) or --device cuda.
//
// The CPU model stays the reference on both devices: it is built, loaded and given its
// adapters on the host, and after training it holds the trained parameters again, so that
// pruning, counting, PEFT export and checkpoints work on it unchanged. With --device cuda,
// fit_on_cuda (cuda_run.cu, compiled by nvcc into the program when the CUDA backend is built)
// mirrors it on the GPU (cuda::copy_model), trains there with train::fit and the device
// optimizers, evaluates from the GPU's logits, and copies the result back.
//
// This header is plain C++: the program's other translation units, and the tests that include
// finetune.hpp, never see CUDA. Without the CUDA backend, asking for the GPU is a sora::Error
// that says so.

#include <cstddef>
#include <functional>
#include <string>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"
#include "sora/model/transformer.hpp"
#include "sora/optim/adalora.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/train/sparsity_scheduler.hpp"
#include "sora/train/trainer.hpp"

namespace sora_finetune {

using Model = sora::model::Transformer<float>;

// The logits of a batch as a host matrix (B, K) or (B T, V), from whichever device computed
// them; valid until the next call.
using LogitsFn = std::function<const sora::Matrix<float>&(const sora::model::Batch&)>;

// One training run on the GPU: the model to train is the CPU model passed beside it.
struct CudaRun {
  sora::model::Method method = sora::model::Method::full;
  sora::optim::FineTuneOptions finetune;    // full, LoRA, SoRA (pretraining: full)
  sora::optim::AdamWOptions adalora_adamw;  // AdaLoRA
  sora::optim::AdaLoraOptions adalora;      // AdaLoRA
  std::string math = "exact";               // --cuda-math
  sora::train::TrainerOptions trainer;
  std::function<const sora::model::Batch&(long)> next_batch;
  // At each evaluation (eval mode; the CPU model was brought up to date first, so counts read
  // from it are current): the validation metric, from the GPU's logits. May be empty.
  std::function<double(const LogitsFn&)> evaluate;
  // Once after training, with the best parameters in place: e.g. the test split's metric.
  std::function<void(const LogitsFn&)> after;
};

struct CudaOutcome {
  sora::train::TrainResult result;
  std::size_t optimizer_state_bytes = 0;  // moments (and AdaLoRA's importance statistics)
  std::string device_name;                // e.g. "NVIDIA H100 80GB HBM3"
};

// The sparsity schedule (--sparsity-schedule) on the GPU: SoRA's optimizer on the device
// model, the hooks of train::make_sparsity_hooks over it; `walk` runs the scheduler over them
// (the caller's options and progress bar). The CPU model holds the final parameters after.
struct CudaSparsityRun {
  sora::optim::FineTuneOptions finetune;
  std::string math = "exact";  // --cuda-math
  double max_grad_norm = 0.0;
  std::function<const sora::model::Batch&(long)> next_batch;
  std::function<double(const LogitsFn&)> evaluate_train_subset;  // memorization
  std::function<double(const LogitsFn&)> evaluate_validation;    // generalization
  std::function<sora::train::SparsityResult(sora::train::SparsityHooks&)> walk;
};

#ifdef SORA_FINETUNE_CUDA
// cuda_run.cu. Throws sora::Error when no GPU can be used (the reason from the CUDA runtime).
std::string cuda_device_name();
CudaOutcome fit_on_cuda(Model& model, const CudaRun& run);
sora::train::SparsityResult sparsity_on_cuda(Model& model, const CudaSparsityRun& run);
#else
inline std::string cuda_device_name() {
  sora::detail::throw_error(
      "--device cuda: this sora-finetune was built without the CUDA backend (no nvcc when it "
      "was configured, or -DSORA_ENABLE_CUDA=OFF); rebuild where nvcc is found, or use "
      "--device cpu");
}
inline CudaOutcome fit_on_cuda(Model&, const CudaRun&) {
  cuda_device_name();
  return {};
}
inline sora::train::SparsityResult sparsity_on_cuda(Model&, const CudaSparsityRun&) {
  cuda_device_name();
  return {};
}
#endif

}  // namespace sora_finetune
