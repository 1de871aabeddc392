#pragma once
// optim/: AdamW, SGD, SparseAdamW (the SoRA gate step), AdaLoRA's rank allocator, parameter
// groups, gradient clipping, learning-rate and ξ schedules.
#include "sora/optim/adalora.hpp"
#include "sora/optim/adamw.hpp"
#include "sora/optim/clip.hpp"
#include "sora/optim/lr_schedule.hpp"
#include "sora/optim/param_groups.hpp"
#include "sora/optim/sgd.hpp"
#include "sora/optim/sparse_adamw.hpp"
#include "sora/optim/xi_schedule.hpp"
