#pragma once
// nn/: layers, thin stateful wrappers over ops/.
#include "sora/nn/adapter.hpp"
#include "sora/nn/attention.hpp"
#include "sora/nn/common.hpp"
#include "sora/nn/embedding.hpp"
#include "sora/nn/layernorm.hpp"
#include "sora/nn/linear.hpp"
#include "sora/nn/mlp.hpp"
#include "sora/nn/rmsnorm.hpp"
#include "sora/nn/swiglu_mlp.hpp"
