#!/usr/bin/env python3
"""PyTorch reference for sora's transformer parity test (tests/parity_test.cpp).

Usage: torch_reference.py IN.safetensors OUT.safetensors

IN holds every parameter of a sora Transformer under its dotted name (float32), the batch
("input.tokens" (B, T), "input.mask" (B, T), "input.targets") and, in "__metadata__", the
configuration: model sizes, the fine-tuning method, which parameters are trainable and the
optimizer settings. This script rebuilds the same model independently, in PyTorch autograd
(no sora code), and writes OUT with

  "logits"              the logits of the first forward pass
  "loss"                its loss, shape (1,)
  "grad.<name>"         the gradient of every trainable parameter after the first backward
  "losses"              the loss before each of the `steps` optimizer steps, shape (steps,)
  "final.<name>"        every trainable parameter after `steps` optimizer steps

One optimizer step is: zero the gradients, forward, backward, clip the global gradient norm
over all trainable parameters, then AdamW (decoupled weight decay, bias correction) on every
trainable parameter except the SoRA gates, and on the gates an AdamW step without weight
decay followed by the proximal step g <- sign(g) max(|g| - thr, 0) (docs/design.md section 4),
thr = xi, or xi * lr when the threshold is lr-scaled. Weight decay applies to matrices only:
biases, LayerNorm parameters and gates get none. The grouping is derived here from the names,
independently of sora's own grouping, so that the test also checks that.

safetensors is read and written by hand (an 8-byte little-endian header length, a JSON header,
raw little-endian data) so that only python3-torch is needed, not the safetensors package.
"""

import json
import math
import struct
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError as error:  # the C++ test reports this exit code with a clear message
    sys.stderr.write(f"torch_reference.py: cannot import torch ({error}); "
                     "install Debian's python3-torch (scripts/test does)\n")
    sys.exit(3)

DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8)}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        dtype, width = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        flat = torch.frombuffer(raw, dtype=dtype) if end > begin else torch.zeros(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors, meta


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().to(torch.float32).contiguous().cpu()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


class Model:
    """The pre-LayerNorm transformer of docs/design.md section 7, written functionally over a dict
    of named tensors so that the names are exactly sora's."""

    def __init__(self, params, meta):
        self.p = params
        self.L = int(meta["layers"])
        self.H = int(meta["heads"])
        self.causal = meta["causal"] == "1"
        self.gelu = meta["gelu"]
        self.tied = meta["tied"] == "1"
        self.head = meta["head"]
        self.pooling = meta["pooling"]
        self.scale = float(meta["scale"])
        self.eps = float(meta["ln_eps"])

    def linear(self, x, name):
        """Base linear plus, when the module has one, its adapter:
        y = x W^T + b + s ((x A^T) * g) B^T (LoRA: g = 1)."""
        p = self.p
        y = x @ p[name + ".weight"].t()
        if name + ".bias" in p:
            y = y + p[name + ".bias"]
        if name + ".lora_A" in p:
            h = x @ p[name + ".lora_A"].t()
            if name + ".lora_gate" in p:
                h = h * p[name + ".lora_gate"]
            y = y + self.scale * (h @ p[name + ".lora_B"].t())
        return y

    def layernorm(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self.p[name + ".weight"], self.p[name + ".bias"],
                            self.eps)

    def attention(self, x, name, key_mask):
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q = self.linear(x, name + ".q").view(B, T, H, D).transpose(1, 2)
        k = self.linear(x, name + ".k").view(B, T, H, D).transpose(1, 2)
        v = self.linear(x, name + ".v").view(B, T, H, D).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
        visible = key_mask.bool()[:, None, None, :].expand(B, H, T, T)
        if self.causal:
            visible = visible & torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.linear(y, name + ".o")

    def mlp(self, x, name):
        h = self.linear(x, name + ".fc")
        h = F.gelu(h, approximate="tanh") if self.gelu == "tanh" else F.gelu(h)
        return self.linear(h, name + ".proj")

    def logits(self, tokens, key_mask):
        p = self.p
        B, T = tokens.shape
        x = p["wte.weight"][tokens] + p["wpe.weight"][:T]
        for l in range(self.L):
            pre = f"blocks.{l}"
            x = x + self.attention(self.layernorm(x, pre + ".ln1"), pre + ".attn", key_mask)
            x = x + self.mlp(self.layernorm(x, pre + ".ln2"), pre + ".mlp")
        x = self.layernorm(x, "ln_f")
        if self.head == "lm":
            w = p["wte.weight"] if self.tied else p["lm_head.weight"]
            return (x @ w.t()).reshape(B * T, -1)
        if self.pooling == "first":
            index = torch.zeros(B, dtype=torch.long)
        else:  # the last real token of each sequence
            positions = torch.arange(T).expand(B, T)
            index = torch.where(key_mask > 0, positions, torch.full_like(positions, -1)).amax(1)
        pooled = x[torch.arange(B), index]  # (B, C)
        h = torch.tanh(self.linear(pooled, "head.dense"))
        return self.linear(h, "head.out")

    def loss(self, logits, targets):
        if self.head == "regression":
            return F.mse_loss(logits, targets.reshape(logits.shape))
        return F.cross_entropy(logits, targets.reshape(-1).long(), ignore_index=-100)


def is_gate(name):
    return name.endswith(".lora_gate")


def decays(name):
    # Matrices decay; biases, LayerNorm scales and shifts and gates do not.
    last = name.split(".")
    return not (name.endswith(".bias") or last[-2].startswith("ln") or is_gate(name))


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tensors, meta = read_safetensors(sys.argv[1])
    tokens = tensors.pop("input.tokens").long()
    key_mask = tensors.pop("input.mask")
    targets = tensors.pop("input.targets")
    trainable = [n for n in meta["trainable"].split(",") if n]
    params = {name: t.to(torch.float32) for name, t in tensors.items()}
    for name in trainable:
        params[name].requires_grad_(True)
    model = Model(params, meta)

    out = {}
    logits = model.logits(tokens, key_mask)
    loss = model.loss(logits, targets)
    loss.backward()
    out["logits"] = logits
    out["loss"] = loss.reshape(1)
    for name in trainable:
        out["grad." + name] = params[name].grad.clone()

    lr = float(meta["lr"])
    betas = (float(meta["beta1"]), float(meta["beta2"]))
    eps = float(meta["eps"])
    wd = float(meta["weight_decay"])
    xi = float(meta["xi"])
    threshold = xi * lr if meta["xi_lr_scaled"] == "1" else xi
    gates = [params[n] for n in trainable if is_gate(n)]
    decay = [params[n] for n in trainable if not is_gate(n) and decays(n)]
    no_decay = [params[n] for n in trainable if not is_gate(n) and not decays(n)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": wd})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    gate_opt = torch.optim.AdamW(gates, lr=lr, betas=betas, eps=eps, weight_decay=0.0) \
        if gates else None
    everything = [params[n] for n in trainable]
    losses = []
    for _ in range(int(meta["steps"])):
        for t in everything:
            t.grad = None
        step_loss = model.loss(model.logits(tokens, key_mask), targets)
        step_loss.backward()
        losses.append(step_loss.item())
        max_norm = float(meta["max_grad_norm"])
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(everything, max_norm)
        adamw.step()
        if gate_opt is not None:
            gate_opt.step()
            with torch.no_grad():
                for g in gates:  # the proximal step of the L1 penalty: soft threshold
                    g.copy_(torch.sign(g) * torch.clamp(g.abs() - threshold, min=0.0))
    out["losses"] = torch.tensor(losses)
    for name in trainable:
        out["final." + name] = params[name]
    write_safetensors(sys.argv[2], out)


if __name__ == "__main__":
    main()
