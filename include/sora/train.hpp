#pragma once
// train/: the training loop, metrics, the sparsity scheduler (Algorithm 1), a progress bar.
#include "sora/train/metrics.hpp"
#include "sora/train/progress.hpp"
#include "sora/train/sparsity_scheduler.hpp"
#include "sora/train/trainer.hpp"
