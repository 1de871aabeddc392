"""Loads every adapter a `sora-finetune --model FOLDER` run exported with PEFT on top of
transformers' AutoModelForSequenceClassification of the same folder, and checks that the
classifier is among modules_to_save and that the logits on the inputs sora recorded
(logits_<adapter>.json) equal sora's.

usage: check_peft_load.py MODEL_DIR OUT_DIR
"""

import json
import pathlib
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification


def main(model_dir, out):
    out = pathlib.Path(out)
    records = sorted(out.glob("logits_adapter*.json"))
    assert records, f"{out}: no logits_adapter*.json"
    for record in records:
        r = json.loads(record.read_text())
        adapter = out / r["adapter_dir"]
        config = json.loads((adapter / "adapter_config.json").read_text())
        # The task head, under the name PEFT's task model gives it.
        head = "classifier" if config["target_modules"][0].startswith(("bert.", "roberta.")) \
            else "score"
        assert head in config["modules_to_save"], config["modules_to_save"]
        inputs = dict(input_ids=torch.tensor(r["input_ids"]),
                      attention_mask=torch.tensor(r["attention_mask"]))
        base = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        # Only BERT has token types: GPT-2 would add its word embedding of id 0 for them.
        if base.config.model_type == "bert":
            inputs["token_type_ids"] = torch.tensor(r["token_type_ids"])
        with torch.no_grad():
            untrained = base(**inputs).logits.clone()
            model = PeftModel.from_pretrained(base, str(adapter)).eval()
            logits = model(**inputs).logits
        want = torch.tensor(r["logits"])
        # float32 on both sides; what differs is the order of the sums.
        tol = 1e-5 + 1e-4 * want.abs().max().item()
        err = (logits - want).abs().max().item()
        moved = (untrained - want).abs().max().item()
        assert err < tol, f"{adapter.name}: PEFT's logits differ from sora's by {err}"
        # Else the check would pass with an adapter that PEFT ignored.
        assert moved > 10 * tol, f"{adapter.name}: fine-tuning moved the logits by only {moved}"
        print(f"{adapter.name}: loads, logits match (max |diff| {err:.2e}; "
              f"fine-tuning moved them by {moved:.3f})")
    print(f"OK: {len(records)} adapters load in PEFT and compute sora's logits")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
