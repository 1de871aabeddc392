#pragma once
// Hugging Face checkpoints (config.json + safetensors): the BERT family, GPT-2 and
// the LLaMA family (LLaMA, Mistral, Qwen2) as transformers computes them, with the checkpoint's own
// parameter names. Needs nlohmann/json (target sora::io).
#include "sora/model/hf/bert.hpp"
#include "sora/model/hf/common.hpp"
#include "sora/model/hf/config.hpp"
#include "sora/model/hf/decoder.hpp"
#include "sora/model/hf/gpt2.hpp"
#include "sora/model/hf/llama.hpp"
#include "sora/model/hf/load.hpp"
#include "sora/model/hf/peft_files.hpp"
#include "sora/model/hf/post_ln_layer.hpp"
#include "sora/model/hf/weights.hpp"
