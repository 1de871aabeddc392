#pragma once
// core/: tensors, parameters and their roles, the model protocol (concepts), errors, random
// numbers, threading, bf16 storage.
#include "sora/core/bf16.hpp"
#include "sora/core/concepts.hpp"
#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/parameters.hpp"
#include "sora/core/rng.hpp"
#include "sora/core/tensor.hpp"
#include "sora/core/threading.hpp"
