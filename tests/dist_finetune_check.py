"""sora-finetune under mpirun -np 2 against the same run in one process (Python's standard
library only): every number of the two summary.json files (metrics, evaluation curves,
parameter counts) must agree to a relative 1e-4 (float training: the two runs round the
gradient's sums differently), except the ones that measure the machine or name the folder.

Usage: dist_finetune_check.py <single-process --out> <mpirun --out>
"""
import json
import math
import sys

# Times, memory, identities and paths: they describe the run, not what it trained.
SKIP = {"run_id", "wall_seconds", "peak_rss_bytes", "time_per_epoch_s", "train_seconds",
        "adapter_dir", "out", "cache_dir", "path", "distributed", "hyperparameters", "table",
        "date", "pretrained", "cache"}


def walk(a, b, where, problems, counted):
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            problems.append(f"{where}: keys {sorted(set(a) ^ set(b))} in one summary only")
        for key in set(a) & set(b):
            if key in SKIP or "seconds" in key or "time" in key:
                continue
            walk(a[key], b[key], f"{where}.{key}", problems, counted)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{where}: {len(a)} entries against {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{where}[{i}]", problems, counted)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        counted[0] += 1
        if not (math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)):
            problems.append(f"{where}: {a} (one process) against {b} (2 ranks)")
    elif a != b:
        problems.append(f"{where}: {a!r} against {b!r}")


def main():
    one, two = (json.load(open(f"{d}/summary.json")) for d in sys.argv[1:3])
    problems, counted = [], [0]
    walk(one, two, "summary", problems, counted)
    if counted[0] < 5:
        problems.append(f"only {counted[0]} numbers compared: the summaries are not runs")
    for p in problems:
        print("MISMATCH", p)
    if problems:
        sys.exit(1)
    print(f"OK: {counted[0]} numbers agree between one process and 2 ranks")


if __name__ == "__main__":
    main()
