#pragma once
// sora-finetune --model DIR: a pre-trained Hugging Face folder instead of sora's own pretrained
// transformer. The task's texts are encoded by the folder's own tokenizer (truncated to
// --max-length, padded per batch by fill_batch), so that the model sees the ids it was trained
// on; the BERT family also gets each token's segment id.

#include <filesystem>
#include <string>
#include <vector>

#include "data.hpp"
#include "options.hpp"
#include "sora/model/hf.hpp"
#ifdef SORA_FINETUNE_TEXT
#include "sora/text/tokenizer.hpp"
#endif

namespace sora_finetune {

namespace hf = sora::model::hf;

// What the run records about the folder (summary.json "model", the log).
struct PretrainedInfo {
  std::filesystem::path dir;
  hf::HfConfig config;
  std::size_t tokenizer_vocab = 0;
  int max_length = 128;
};

// Replaces every example's tokens by the tokenizer's ids of its text (and second text), types
// by its type ids (BERT family only), and the task's vocabulary and padding by the model's.
inline PretrainedInfo tokenize_for_model(TaskData& data, const std::filesystem::path& dir,
                                         int max_length) {
  PretrainedInfo info;
  info.dir = dir;
  info.config = hf::read_config(dir);
  info.max_length = max_length;
  const hf::HfConfig& c = info.config;
#ifndef SORA_FINETUNE_TEXT
  sora::detail::throw_error(
      "--model: this build has no tokenizer (sora::text needs ICU and PCRE2); rebuild with them");
#else
  sora::text::Tokenizer tokenizer = [&] {
    try {
      return sora::text::Tokenizer::from_file(dir.string());
    } catch (const sora::Error& e) {
      sora::detail::throw_error("--model: ", dir.string(), ": no usable tokenizer (", e.what(),
                                ")");
    }
  }();
  info.tokenizer_vocab = tokenizer.vocab_size();
  // Our batches pad themselves (fill_batch); the folder's own padding would pad every example
  // to a fixed length. Truncation is --max-length, as transformers' truncation=True with
  // max_length does.
  tokenizer.padding.reset();
  sora::text::Truncation truncation;
  truncation.max_length = static_cast<std::size_t>(max_length);
  tokenizer.truncation = truncation;
  // Absolute positions bound the length: RoBERTa's start at pad_token_id + 1.
  SORA_CHECK(c.family == hf::Family::llama ||
                 max_length + c.position_offset() <= c.max_position_embeddings,
             "--max-length ", max_length, " exceeds the model's ", c.max_position_embeddings,
             " positions");
  const bool bert = c.family == hf::Family::bert || c.family == hf::Family::roberta;
  data.token_types = c.family == hf::Family::bert;
  data.vocab_size = static_cast<int>(c.vocab_size);
  // Padding is masked; RoBERTa also gives it its own position, so it must be the config's.
  data.pad_token = c.pad_token_id >= 0 ? c.pad_token_id : 0;
  for (auto* split : {&data.train, &data.val, &data.test}) {
    for (Example& e : *split) {
      SORA_CHECK(!e.text_a.empty(), "--model: the task's examples carry no text");
      const sora::text::Encoding enc =
          e.text_b.empty() ? tokenizer.encode(e.text_a) : tokenizer.encode_pair(e.text_a, e.text_b);
      e.tokens.assign(enc.ids.begin(), enc.ids.end());
      for (const int id : e.tokens)
        SORA_CHECK(id >= 0 && id < c.vocab_size, "--model: the tokenizer gives id ", id,
                   ", outside the model's vocabulary of ", c.vocab_size);
      if (bert && data.token_types)
        e.types.assign(enc.type_ids.begin(), enc.type_ids.end());
      else
        e.types.clear();
    }
  }
  return info;
#endif
}

// The adapted modules: --target-modules, or PEFT's default for the family.
inline std::vector<std::string> pretrained_targets(const std::string& flag, hf::Family family) {
  const std::vector<std::string> given = split_target_list(flag);
  return given.empty() ? hf::default_targets(family) : given;
}

}  // namespace sora_finetune
