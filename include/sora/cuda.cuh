#pragma once
// sora's optional CUDA backend (nvcc only; link sora::cuda):
//   cuda/common.cuh            SORA_CUDA_CHECK / SORA_CUBLAS_CHECK, Stream, Event, CublasHandle
//   cuda/context.cuh           the thread's stream, cuBLAS handle, GEMM math mode and scratch
//   cuda/tensor.cuh            DeviceTensor / DeviceView (float, double, bf16), host copies
//   cuda/gemm.cuh              row-major GEMMs through cuBLAS (exact, TF32 or bf16 math)
//   cuda/prox_elementwise.cuh  soft / hard / L1 / L0 / elastic net / nonneg / firm / box
//   cuda/prox_group.cuh        group soft / hard / L0 over rows, cols, blocks, partitions, triplets
//   cuda/prox_topk.cuh         projection onto the L0 ball
//   cuda/optim.cuh             fused AdamW / SparseAdamW steps, GateBatch (all gates, one launch)
//   cuda/clip.cuh              gradient-norm clipping on the device, nothing read back
//   cuda/adalora.cuh           DeviceAdaLoraOptimizer (AdamW + AdaLoRA's rank allocation)
//   cuda/ops/*.cuh             the op twins of ops/ (linear, attention, layernorm, ...)
//   cuda/model.cuh             DeviceTransformer, copy_model between CPU and GPU
//   cuda/fine_tune.cuh         DeviceFineTuneOptimizer (AdamW + SoRA's gates, clipping)
//   cuda/gate_l1.cuh           the L1 gate term of train::fit on device gates
#include "sora/cuda/adalora.cuh"
#include "sora/cuda/clip.cuh"
#include "sora/cuda/common.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/fine_tune.cuh"
#include "sora/cuda/gate_l1.cuh"
#include "sora/cuda/gemm.cuh"
#include "sora/cuda/model.cuh"
#include "sora/cuda/optim.cuh"
#include "sora/cuda/prox_elementwise.cuh"
#include "sora/cuda/prox_group.cuh"
#include "sora/cuda/prox_topk.cuh"
#include "sora/cuda/tensor.cuh"
