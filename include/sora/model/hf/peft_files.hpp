#pragma once
// A Hugging Face model's adapter as PEFT writes it, so that PeftModel.from_pretrained on
// transformers' Auto class of the same task loads it and computes what sora computes:
// task_type (SEQ_CLS, CAUSAL_LM, FEATURE_EXTRACTION), fan_in_fan_out for GPT-2's Conv1D layers,
// and modules_to_save for every module trained whole beside the adapters: the task head under
// the name PEFT's task model gives it ("classifier" for the BERT family, "score" for the
// decoders), and trained norms under their own names.

#include <algorithm>
#include <string>
#include <vector>

#include "sora/io/peft_adapter.hpp"
#include "sora/model/hf/config.hpp"

namespace sora::model::hf {

template <class Model>
io::PeftExportOptions peft_export_options(Model& model, const std::string& base_model = "") {
  using T = typename Model::Scalar;
  io::PeftExportOptions options;
  options.base_model_name_or_path = base_model;
  options.task_type = model.task() == Task::sequence_classification ? "SEQ_CLS"
                      : model.task() == Task::causal_lm             ? "CAUSAL_LM"
                                                                    : "FEATURE_EXTRACTION";
  options.fan_in_fan_out = model.config().family == Family::gpt2;
  model.visit_params([&](Param<T>& p) {
    if (!p.trainable() || is_adapter_role(p.role)) return;
    std::string module = p.name.substr(0, p.name.rfind('.'));
    // The head is one module for PEFT's task models (RoBERTa's classifier.dense and
    // classifier.out_proj are both "classifier").
    if (p.role == ParamRole::head) module = module.substr(0, module.find('.'));
    if (std::find(options.modules_to_save.begin(), options.modules_to_save.end(), module) ==
        options.modules_to_save.end())
      options.modules_to_save.push_back(module);
  });
  return options;
}

}  // namespace sora::model::hf
