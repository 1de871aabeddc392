#pragma once
// ops/: differentiable ops as free functions, <op>_forward / <op>_backward.
#include "sora/ops/activation.hpp"
#include "sora/ops/attention.hpp"
#include "sora/ops/common.hpp"
#include "sora/ops/dropout.hpp"
#include "sora/ops/embedding.hpp"
#include "sora/ops/layernorm.hpp"
#include "sora/ops/linear.hpp"
#include "sora/ops/loss.hpp"
#include "sora/ops/pool.hpp"
#include "sora/ops/rmsnorm.hpp"
#include "sora/ops/rope.hpp"
#include "sora/ops/swiglu.hpp"
