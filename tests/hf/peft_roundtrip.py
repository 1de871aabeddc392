#!/usr/bin/env python3
"""Real PEFT on the other side of sora's adapter files (tests/hf_test.cpp drives it).

  peft_roundtrip.py load  MODEL_DIR ADAPTER_DIR BATCH OUT
      AutoModelForSequenceClassification.from_pretrained(MODEL_DIR) + PeftModel.from_pretrained
      (ADAPTER_DIR, an adapter sora exported): OUT gets "logits" on BATCH, and "merged_logits"
      after merge_and_unload().
  peft_roundtrip.py train MODEL_DIR ADAPTER_DIR BATCH TARGETS OUT
      PEFT's own LoRA (r 4, alpha 8, TARGETS comma-separated, task SEQ_CLS) trained for three
      AdamW steps on BATCH's labels, saved to ADAPTER_DIR for sora to import; OUT gets "logits".

BATCH holds input_ids, attention_mask, token_type_ids and labels (float64, exact integers);
token types are passed to the BERT family only. Float32, eval mode.
"""
import sys

import torch
import transformers
import peft
from safetensors.torch import load_file, save_file

transformers.logging.set_verbosity_error()


def batch(path):
    b = load_file(path)
    inputs = {"input_ids": b["input_ids"].long(), "attention_mask": b["attention_mask"].long()}
    return inputs, b["token_type_ids"].long(), b["labels"]


def base(model_dir):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.config._attn_implementation = "eager"
    return model


def main():
    mode, model_dir, adapter_dir, batch_path = sys.argv[1:5]
    out = sys.argv[-1]
    inputs, types, labels = batch(batch_path)
    torch.manual_seed(0)
    model = base(model_dir)
    if model.config.model_type in ("bert", "roberta"):
        inputs["token_type_ids"] = types
    if mode == "load":
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
        with torch.no_grad():
            logits = model(**inputs).logits
            merged = model.merge_and_unload()(**inputs).logits
        save_file({"logits": logits.contiguous(), "merged_logits": merged.contiguous()}, out)
        return
    targets = sys.argv[5].split(",")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                             task_type=peft.TaskType.SEQ_CLS,
                             fan_in_fan_out=model.config.model_type == "gpt2")
    model = peft.get_peft_model(model, config).eval()
    labels = labels.float() if model.config.num_labels == 1 else labels.long()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        opt.step()
    model.save_pretrained(adapter_dir)
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({"logits": logits.contiguous()}, out)


if __name__ == "__main__":
    main()
