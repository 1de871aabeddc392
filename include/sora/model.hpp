#pragma once
// model/: the transformer's configuration, blocks, assembly and adapter injection.
#include "sora/model/block.hpp"
#include "sora/model/config.hpp"
#include "sora/model/frozen_base.hpp"
#include "sora/model/peft.hpp"
#include "sora/model/transformer.hpp"
