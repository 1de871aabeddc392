#pragma once
// io/: tensor files (safetensors, memory-mapped), loading weights by name, atomic writes,
// GLUE task files with byte-level tokenization, PEFT adapter folders, checkpoints, whole-model
// folders (save_model / load_model, and model::from_config), SVG plots.
// Needs nlohmann/json: link sora::io rather than sora::sora. (Not in sora/sora.hpp, which
// needs only Eigen.)
#include "sora/io/atomic_file.hpp"
#include "sora/io/checkpoint.hpp"
#include "sora/io/dtype.hpp"
#include "sora/io/glue_tsv.hpp"
#include "sora/io/mapped_file.hpp"
#include "sora/io/model_file.hpp"
#include "sora/io/named_tensors.hpp"
#include "sora/io/peft_adapter.hpp"
#include "sora/io/safetensors.hpp"
#include "sora/io/svg_plot.hpp"
