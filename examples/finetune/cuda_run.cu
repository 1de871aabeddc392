// sora-finetune's GPU runs (device.hpp): the CPU model mirrored on the GPU, trained there by
// train::fit with the device optimizers (or by the sparsity schedule's hooks), evaluated from the
// GPU's logits, copied back.
#include <string>

#include "device.hpp"
#include "sora/cuda/adalora.cuh"
#include "sora/cuda/fine_tune.cuh"
#include "sora/cuda/model.cuh"

namespace sora_finetune {

namespace {

using DeviceModel = sora::cuda::DeviceTransformer<float>;

sora::cuda::Math parse_math(const std::string& name) {
  if (name == "exact") return sora::cuda::Math::exact;
  if (name == "tf32") return sora::cuda::Math::tf32;
  if (name == "bf16") return sora::cuda::Math::bf16;
  sora::detail::throw_error("--cuda-math: '", name, "' is not exact, tf32 or bf16");
}

// Sets the context's GEMM math for the life of a run, then puts the previous one back.
class MathScope {
 public:
  explicit MathScope(sora::cuda::Math math) : previous_(sora::cuda::context().math()) {
    sora::cuda::context().set_math(math);
  }
  ~MathScope() { sora::cuda::context().set_math(previous_); }
  MathScope(const MathScope&) = delete;
  MathScope& operator=(const MathScope&) = delete;

 private:
  sora::cuda::Math previous_;
};

template <class Optimizer>
sora::train::TrainResult train_on(DeviceModel& gpu, Model& cpu, Optimizer& optimizer,
                                  const CudaRun& run, const LogitsFn& logits) {
  std::function<double()> evaluate;
  if (run.evaluate) {
    evaluate = [&] {
      sora::cuda::copy_model(cpu, gpu);  // once per evaluation: counts read the CPU model
      return run.evaluate(logits);
    };
  }
  sora::train::TrainerOptions options = run.trainer;
  if (!run.evaluate) options.eval_every = 0;
  return sora::train::fit(gpu, optimizer, run.next_batch, evaluate, options);
}

// The GPU's logits of a batch, downloaded into `host` (which must outlive the function).
LogitsFn device_logits(DeviceModel& gpu, sora::Matrix<float>& host) {
  return [&gpu, &host](const sora::model::Batch& batch) -> const sora::Matrix<float>& {
    host = gpu.forward_logits(batch).to_host(sora::cuda::context().stream());
    return host;
  };
}

}  // namespace

std::string cuda_device_name() {
  const int count = sora::cuda::device_count();
  SORA_CHECK(count > 0,
             "--device cuda: no CUDA device is available (cudaGetDeviceCount reports none); "
             "use --device cpu");
  cudaDeviceProp prop{};
  SORA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop.name;
}

CudaOutcome fit_on_cuda(Model& model, const CudaRun& run) {
  CudaOutcome out;
  out.device_name = cuda_device_name();
  const MathScope math(parse_math(run.math));
  DeviceModel gpu(model.config());
  sora::cuda::copy_model(gpu, model);

  sora::Matrix<float> host_logits;  // (B, K) or (B T, V): the last evaluated batch
  const LogitsFn logits = device_logits(gpu, host_logits);
  if (run.method == sora::model::Method::adalora) {
    sora::cuda::DeviceAdaLoraOptimizer<float> optimizer(gpu, run.adalora_adamw, run.adalora);
    out.result = train_on(gpu, model, optimizer, run, logits);
    out.optimizer_state_bytes = optimizer.state_bytes();
  } else {
    sora::cuda::DeviceFineTuneOptimizer<float> optimizer(gpu, run.finetune);
    out.result = train_on(gpu, model, optimizer, run, logits);
    out.optimizer_state_bytes = optimizer.state_bytes();
  }
  if (run.after) {
    gpu.eval();
    run.after(logits);
    gpu.train();
  }
  sora::cuda::copy_model(model, gpu);
  return out;
}

sora::train::SparsityResult sparsity_on_cuda(Model& model, const CudaSparsityRun& run) {
  cuda_device_name();
  const MathScope math(parse_math(run.math));
  DeviceModel gpu(model.config());
  sora::cuda::copy_model(gpu, model);
  sora::Matrix<float> host_logits;  // (B, K) or (B T, V): the last evaluated batch
  const LogitsFn logits = device_logits(gpu, host_logits);
  sora::cuda::DeviceFineTuneOptimizer<float> optimizer(gpu, run.finetune);
  sora::train::SparsityHooks hooks = sora::train::make_sparsity_hooks(
      gpu, optimizer, run.next_batch, [&] { return run.evaluate_train_subset(logits); },
      [&] { return run.evaluate_validation(logits); }, run.max_grad_norm);
  sora::train::SparsityResult result = run.walk(hooks);
  sora::cuda::copy_model(model, gpu);
  return result;
}

}  // namespace sora_finetune
