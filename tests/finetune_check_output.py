#!/usr/bin/env python3
"""Checks the output folder of a sora-finetune --compare --sparsity-schedule run with nothing
but Python's standard library: summary.json and metrics.csv agree with each other, every PEFT
adapter folder has PEFT's key names, shapes and config fields, and its ranks are the ones the
summary reports. An independent reader, so that the program cannot agree with itself on a
mistake.

usage: finetune_check_output.py OUT_DIR [DEVICE]   (DEVICE: cpu or cuda, the run's --device)"""

import csv
import json
import os
import struct
import sys

FAILURES = []


def check(cond, message):
    if not cond:
        FAILURES.append(message)
    return cond


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    body = len(data) - 8 - n
    metadata = header.pop("__metadata__", {})
    covered = 0
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = t["data_offsets"]
        count = 1
        for d in t["shape"]:
            count *= d
        check(begin == covered, "%s: tensor %s does not start where the previous ended" % (path, name))
        check(end - begin == count * {"F32": 4, "F64": 8, "F16": 2, "BF16": 2}[t["dtype"]],
              "%s: tensor %s has the wrong byte count" % (path, name))
        covered = end
    check(covered == body, "%s: the tensors do not tile the data section" % path)
    return header, metadata


def check_adapter(folder, run, model_width, run_id):
    config = json.load(open(os.path.join(folder, "adapter_config.json")))
    header, metadata = read_safetensors(os.path.join(folder, "adapter_model.safetensors"))
    check(metadata.get("sora.run_id") == run_id,
          "%s: made by run %r, the summary is run %r" % (folder, metadata.get("sora.run_id"), run_id))
    check(config.get("peft_type") == "LORA", "%s: peft_type is not LORA" % folder)
    for field in ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                  "lora_dropout", "bias", "fan_in_fan_out"):
        check(field in config, "%s: adapter_config.json lacks %s" % (folder, field))
    check(config["bias"] == "none" and config["fan_in_fan_out"] is False,
          "%s: bias / fan_in_fan_out are not PEFT's plain LoRA values" % folder)
    check(metadata.get("format") == "pt", "%s: safetensors metadata format is not pt" % folder)
    prefix = "base_model.model."
    modules = {}
    for key, t in header.items():
        ok = key.startswith(prefix) and (key.endswith(".lora_A.weight") or key.endswith(".lora_B.weight"))
        if not check(ok, "%s: key %s is not a PEFT LoRA key" % (folder, key)):
            continue
        module = key[len(prefix) : -len(".lora_A.weight")]
        modules.setdefault(module, {})[key[-len("lora_A.weight"):-len(".weight")]] = t
        check(t["dtype"] == "F32", "%s: %s is not F32" % (folder, key))
    expected = {m: r for m, r in run["ranks"].items() if r > 0}
    check(set(modules) == set(expected),
          "%s: modules %s in the file, the summary has non-zero ranks for %s"
          % (folder, sorted(modules), sorted(expected)))
    check(sorted(config["target_modules"]) == sorted(modules),
          "%s: target_modules differ from the modules in the file" % folder)
    max_rank = 0
    for module, pair in modules.items():
        if not check("lora_A" in pair and "lora_B" in pair, "%s: %s lacks A or B" % (folder, module)):
            continue
        a, b = pair["lora_A"]["shape"], pair["lora_B"]["shape"]
        r = a[0]
        max_rank = max(max_rank, r)
        check(len(a) == 2 and len(b) == 2 and b[1] == r, "%s: %s A %s / B %s are not (r, in) / (out, r)"
              % (folder, module, a, b))
        if ".attn." in module:  # attention projections are (C, C)
            check(a[1] == model_width and b[0] == model_width,
                  "%s: %s shapes %s %s do not match width %d" % (folder, module, a, b, model_width))
        check(config["rank_pattern"].get(module) == r,
              "%s: rank_pattern[%s] = %s but the file has rank %d"
              % (folder, module, config["rank_pattern"].get(module), r))
        check(r == expected.get(module), "%s: %s has rank %d, the summary says %s"
              % (folder, module, r, expected.get(module)))
        # PEFT's scaling lora_alpha / r per module must be exactly 1 (the scale is in lora_B).
        check(config["alpha_pattern"].get(module) == r, "%s: alpha_pattern[%s] != rank" % (folder, module))
    check(config["r"] == max(max_rank, 1) and config["lora_alpha"] == config["r"],
          "%s: r / lora_alpha are %s / %s, expected the largest rank %d"
          % (folder, config["r"], config["lora_alpha"], max_rank))


def main(out, device):
    summary = json.load(open(os.path.join(out, "summary.json")))
    check(not os.path.exists(os.path.join(out, "INCOMPLETE")),
          "a finished run left its INCOMPLETE marker")
    check(bool(summary.get("run_id")), "summary.json has no run_id")
    check(summary.get("device", "").split(" ")[0] == device,
          "summary.json says device %r, the run asked for %s" % (summary.get("device"), device))
    methods = [m["method"] for m in summary["methods"]]
    check(methods == ["full", "lora", "sora", "adalora"], "methods are %s" % methods)
    width = summary["model"]["width"]
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    check(rows, "metrics.csv has no rows")
    adapters = 0
    exporting = set()
    for run in summary["runs"]:
        mine = [r for r in rows if r["method"] == run["method"] and int(r["seed"]) == run["seed"]]
        check(mine, "metrics.csv has no rows for %s seed %d" % (run["method"], run["seed"]))
        if mine:
            best = max(float(r["val_metric"]) for r in mine)
            check(abs(best - run["best_validation"]) < 1e-5,
                  "%s: best val_metric in metrics.csv %.6f != summary %.6f"
                  % (run["method"], best, run["best_validation"]))
            check(int(mine[-1]["step"]) == run["steps"], "%s: last evaluation is not at the last step" % run["method"])
        check(0.0 <= run["metric"] <= 1.0, "%s: metric %s out of [0, 1]" % (run["method"], run["metric"]))
        check(run["params_after_pruning"] <= run["trainable_params"] + 1,
              "%s: more parameters after pruning than trainable" % run["method"])
        if run["method"] == "lora":
            check(all(r == summary["hyperparameters"]["rank"] for r in run["ranks"].values()),
                  "lora ranks are not all the configured rank")
        first_seed = run["method"] not in exporting
        exporting.add(run["method"])
        if run["method"] != "full":
            # The first seed of each method exports its adapter, skipped only for a stated
            # reason (every rank pruned; LoRA never prunes, so it always has one). Later seeds
            # export none.
            has = bool(run.get("adapter_dir"))
            if first_seed:
                check(has or (run["method"] != "lora" and run.get("adapter_not_exported")),
                      "%s seed %d: no adapter_dir and no adapter_not_exported reason"
                      % (run["method"], run["seed"]))
            if has:
                check_adapter(os.path.join(out, run["adapter_dir"]), run, width, summary.get("run_id"))
                adapters += 1
    for name in ("curves.svg", "loss.svg", "ranks_sora.svg", "ranks_adalora.svg"):
        path = os.path.join(out, name)
        check(os.path.exists(path) and open(path).read().startswith("<svg"), "%s is not an SVG" % name)
    sp = summary.get("sparsity_schedule")
    if check(sp is not None, "summary.json has no sparsity_schedule"):
        srows = list(csv.DictReader(open(os.path.join(out, sp["csv"]))))
        check(len(srows) == sp["rows"], "sparsity.csv has %d rows, the summary %d" % (len(srows), sp["rows"]))
        check(srows and int(srows[0]["stage"]) == 0, "sparsity.csv does not start with the dense phase")
        check(open(os.path.join(out, sp["svg"])).read().startswith("<svg"), "sparsity.svg is not an SVG")
    if FAILURES:
        for f in FAILURES:
            print("FAIL:", f)
        return 1
    print("OK: %d runs, %d metric rows, %d adapters checked" % (len(summary["runs"]), len(rows), adapters))
    return 0


if __name__ == "__main__":
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    if device == "cuda" and not os.path.isdir(sys.argv[1]):
        # The GPU run reported itself skipped (no GPU here) and wrote nothing: skip too (77 is
        # CTest's SKIP_RETURN_CODE for this check); a GPU run that failed fails its own test.
        print("SKIPPED: no output folder %s (the GPU run did not run)" % sys.argv[1])
        sys.exit(77)
    sys.exit(main(sys.argv[1], device))
