#!/usr/bin/env python3
"""The PyTorch twin of bench/cuda_train_bench.cu's training step, for the issue's comparison
"faster than PyTorch eager with PEFT on the same GPU".

Same model (pre-LayerNorm GPT: token + learned position embeddings, L blocks of LN, causal
multi-head attention with q/k/v/o projections, LN, MLP fc -> GELU(tanh) -> proj, final LN, LM
head tied to the embedding), same shape (C 1024, L 8, H 16, B 16 x T 256, V 256), same step
(zero grads, forward, cross-entropy, backward, clip to norm 1, AdamW), eager mode.
--method lora wraps the model with PEFT's LoRA (r 8, alpha 16, q k v o fc proj); --method
full trains everything. Prints the median step time in milliseconds and tokens per second.

  python3 bench/torch/peft_train_step.py --method lora [--device cuda] [--tf32]

Needs torch (and peft for --method lora). Shape flags allow a quick run on a CPU.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(c)
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.ln2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        y = self.ln1(x)
        split = lambda z: z.view(b, t, self.h, c // self.h).transpose(1, 2)  # (B, H, T, D)
        q, k, v = split(self.q(y)), split(self.k(y)), split(self.v(y))
        # Eager attention written out (what sora computes: full T x T scores, causal mask).
        s = (q @ k.transpose(-1, -2)) / (c // self.h) ** 0.5
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        p = s.masked_fill(~mask, float("-inf")).softmax(-1)
        a = (p @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.o(a)
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, v, c, layers, h, t):
        super().__init__()
        self.wte = nn.Embedding(v, c)
        self.wpe = nn.Embedding(t, c)
        self.blocks = nn.ModuleList(Block(c, h) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.wte.weight.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["full", "lora"], default="lora")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    dev = torch.device(args.device)
    model = GPT(256, args.width, args.layers, args.heads, args.seq).to(dev)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                         target_modules=["q", "k", "v", "o", "fc", "proj"])
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=8e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 256, (args.batch, args.seq), generator=g).to(dev)
    labels = torch.roll(tokens, -1, dims=1)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = F.cross_entropy(logits.view(-1, 256), labels.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()  # read back, as sora's step does

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    print(f"torch {torch.__version__} {args.method} on {dev}: {ms:.2f} ms/step, "
          f"{args.batch * args.seq / (ms / 1e3):.0f} tokens/s")


if __name__ == "__main__":
    main()
