"""Checks a GGUF LoRA file written by sora (model/hf/gguf_lora.hpp) with PyPI's gguf package,
llama.cpp's own reader, against the PEFT adapter sora exported from the same model.

usage: check_gguf_lora.py FILE.gguf PEFT_DIR ARCH HEADS KV_HEADS PERMUTE(0|1)

What llama.cpp computes from the file, per module: (alpha / r) B A, with alpha the file's
adapter.lora.alpha and r = B's column count. PEFT's update for the same module is
scaling B A (scaling from adapter_config.json). The two must agree, after the row reordering
llama.cpp's convert_hf_to_gguf.py applies to q_proj and k_proj of LLaMA-architecture models.
Prints "OK: <n> modules" or fails naming what differs.
"""
import json
import os
import re
import sys

import numpy as np

try:
    import gguf
    from safetensors.numpy import load_file
except ImportError as e:  # the reference stack is missing: say how to install it
    sys.exit("FAIL: %s (run scripts/test once: it installs the tests' Python stack)" % e)


def fail(message):
    sys.exit("FAIL: " + message)


def field_value(reader, key):
    field = reader.get_field(key)
    if field is None:
        fail("the file has no '%s'" % key)
    return field.contents()


def llama_cpp_rows(w, heads):
    """llama.cpp's q/k conversion: within each head, row 2i + j takes row j d/2 + i."""
    out, cols = w.shape
    return w.reshape(heads, 2, out // heads // 2, cols).swapaxes(1, 2).reshape(out, cols)


SLOTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def main():
    path, peft_dir, arch = sys.argv[1], sys.argv[2], sys.argv[3]
    heads, kv_heads, permute = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
    reader = gguf.GGUFReader(path)
    for key, want in (("general.architecture", arch), ("general.type", "adapter"),
                      ("adapter.type", "lora")):
        got = field_value(reader, key)
        if got != want:
            fail("%s is %r, not %r" % (key, got, want))
    alpha = float(field_value(reader, "adapter.lora.alpha"))
    tensors = {}
    for t in reader.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            fail("%s is not F32" % t.name)
        tensors[t.name] = np.array(t.data, dtype=np.float64)

    with open(os.path.join(peft_dir, "adapter_config.json")) as f:
        config = json.load(f)
    peft = load_file(os.path.join(peft_dir, "adapter_model.safetensors"))
    checked = 0
    for key in sorted(peft):
        m = re.fullmatch(r"base_model\.model\.(.*)\.lora_A\.weight", key)
        if not m:
            continue
        module = m.group(1)
        A = peft[key].astype(np.float64)
        B = peft[key.replace("lora_A", "lora_B")].astype(np.float64)
        r = A.shape[0]
        short = module.split(".")[-1]
        scaling = config["alpha_pattern"].get(module, config["lora_alpha"]) / \
            config["rank_pattern"].get(module, config["r"])
        want = scaling * B @ A
        lm = re.search(r"layers\.(\d+)\.(.*)$", module)
        if not lm or lm.group(2) not in SLOTS:
            fail("PEFT module %s has no llama.cpp slot" % module)
        name = "blk.%s.%s.weight" % (lm.group(1), SLOTS[lm.group(2)])
        if name + ".lora_a" not in tensors or name + ".lora_b" not in tensors:
            fail("%s (%s) is not in the GGUF file; it has %s" % (name, module, sorted(tensors)))
        a, b = tensors.pop(name + ".lora_a"), tensors.pop(name + ".lora_b")
        if a.shape != A.shape or b.shape != B.shape:
            fail("%s: shapes %s, %s against PEFT's %s, %s" % (name, a.shape, b.shape, A.shape,
                                                              B.shape))
        if permute and short in ("q_proj", "k_proj"):
            want = llama_cpp_rows(want, heads if short == "q_proj" else kv_heads)
        got = alpha / b.shape[1] * b @ a
        err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
        if not err < 1e-6:
            fail("%s: llama.cpp's update differs from PEFT's by %.3g (relative)" % (name, err))
        checked += 1
    if tensors:
        fail("tensors without a PEFT module: %s" % sorted(tensors))
    if checked == 0:
        fail("no module to check")
    print("OK: %d modules" % checked)


if __name__ == "__main__":
    main()
