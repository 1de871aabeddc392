#pragma once
// prune/: rank pruning, SoRA -> LoRA, merge / unmerge, parameter counting.
#include "sora/prune/prune.hpp"
