#pragma once
// sora: sparse low-rank adaptation. The umbrella header for everything CPU-side.
// (The CUDA backend lives in sora/cuda/ and is included from .cu files only.)
#include "sora/core.hpp"
#include "sora/dist.hpp"
#include "sora/model.hpp"
#include "sora/nn.hpp"
#include "sora/ops.hpp"
#include "sora/optim.hpp"
#include "sora/prox.hpp"
#include "sora/prune.hpp"
#include "sora/train.hpp"
