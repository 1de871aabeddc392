#pragma once
// core/: tensors, parameters, errors, random numbers, threading.
#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/rng.hpp"
#include "sora/core/tensor.hpp"
#include "sora/core/threading.hpp"
