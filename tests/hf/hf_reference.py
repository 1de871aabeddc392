#!/usr/bin/env python3
"""transformers (and PEFT) reference for sora's Hugging Face model tests (tests/hf_test.cpp).

Usage: hf_reference.py OUT_DIR [MINILM_DIR]

For each case, builds a random tiny model with transformers itself (no download), saves it with
save_pretrained into OUT_DIR/<case>/model, and writes OUT_DIR/<case>/reference.safetensors:

  input_ids, attention_mask, token_type_ids, labels     the batch, as F64 (exact integers)
  f32.hidden, f32.logits, f32.loss                       float32 forward, eval mode
  f64.hidden, f64.logits, f64.loss                       the same model in float64
  grad.<name>                                            float64 gradient of every trainable
                                                         parameter (names as sora names them)
  init.<name>                                            adapter values set before the forward
  final.<name>                                           float64 trainable parameters after five
                                                         AdamW steps (adapter cases)

Cases: full fine-tuning of BERT (classification, exact GELU, token types, padding) and RoBERTa
(regression, tanh GELU, its position offset); LoRA through PEFT's own injection on BERT; SoRA
(LoRA with a gate between A and B, built on PEFT's LoRA layers) on RoBERTa. With MINILM_DIR, also
the real all-MiniLM-L6-v2: OUT_DIR/minilm.safetensors with the ids of real sentences (tokenized
by its own tokenizer) and its last hidden states.
"""

import json
import os
import sys

try:
    import torch
    import transformers
    import peft
    from safetensors.torch import save_file
except ImportError as error:
    sys.stderr.write(f"hf_reference.py: cannot import the reference stack ({error})\n")
    sys.exit(3)

torch.manual_seed(0)
transformers.logging.set_verbosity_error()

B, T = 3, 9
STEPS = 5
LR = 1e-2
WEIGHT_DECAY = 0.1


def batch(vocab, pad_id, type_vocab, num_labels, generator):
    ids = torch.randint(low=0, high=vocab, size=(B, T), generator=generator)
    ids[ids == pad_id] = (pad_id + 1) % vocab  # real tokens are never the pad id
    mask = torch.ones(B, T, dtype=torch.long)
    for b, length in enumerate([T, T - 3, 4]):  # right padding
        mask[b, length:] = 0
        ids[b, length:] = pad_id
    types = torch.zeros(B, T, dtype=torch.long)
    if type_vocab > 1:
        types[:, T // 2:] = 1
    if num_labels == 1:
        labels = torch.randn(B, generator=generator)
    else:
        labels = torch.randint(0, num_labels, (B,), generator=generator)
    return ids, mask, types, labels


def sora_name(name):
    """PEFT's parameter names -> sora's (the checkpoint's own, adapters as <module>.lora_A)."""
    name = name.removeprefix("base_model.model.")
    name = name.replace(".modules_to_save.default", "")
    name = name.replace(".lora_A.default.gate", ".lora_gate")
    for part in ("lora_A", "lora_B"):
        name = name.replace(f".{part}.default.weight", f".{part}")
    return name


class GatedA(torch.nn.Linear):
    """LoRA's A followed by SoRA's gate: x -> (A x) * g. A Linear still (PEFT reads .weight)."""

    def __init__(self, a):
        super().__init__(a.in_features, a.out_features, bias=False)
        with torch.no_grad():
            self.weight.copy_(a.weight)
        self.gate = torch.nn.Parameter(torch.randn(a.out_features))

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight) * self.gate


def add_gates(model):
    """Turns every PEFT LoRA layer into a SoRA layer, so that PEFT's own forward computes
    B((A x) * g) * scaling."""
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.lora_A["default"] = GatedA(module.lora_A["default"])


def conv1d_weights(model):
    """Names of GPT-2's Conv1D weights, which transformers stores (in, out)."""
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, transformers.pytorch_utils.Conv1D)}


def as_sora(t, transposed):
    """A tensor in sora's layout: vectors (1, n), Conv1D weights (out, in)."""
    t = t.detach().clone()
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.t() if transposed else t


def run(model, ids, mask, types, labels):
    kwargs = {} if types is None else {"token_type_ids": types}
    return model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True,
                 **kwargs)


def write_case(out_dir, name, make_model, config, method, rank=4, alpha=8.0, targets=("query", "value"),
               lm=False):
    case_dir = os.path.join(out_dir, name)
    generator = torch.Generator().manual_seed(len(name))
    base = make_model(config)
    base.save_pretrained(os.path.join(case_dir, "model"))
    num_labels = config.num_labels
    type_vocab = getattr(config, "type_vocab_size", 1)
    ids, mask, types, labels = batch(config.vocab_size, config.pad_token_id, type_vocab,
                                     num_labels, generator)
    ref = {"input_ids": ids.double(), "attention_mask": mask.double(),
           "token_type_ids": types.double()}
    if config.model_type != "bert" and config.model_type != "roberta":
        types = None  # GPT-2 would add wte[token_type_ids]: sora's GPT-2 has no token types
    if lm:
        # transformers shifts the labels inside the model; sora takes the shifted targets.
        labels = ids.clone()
        labels[mask == 0] = -100
        shifted = torch.full_like(labels, -100)
        shifted[:, :-1] = labels[:, 1:]
        ref["lm_labels"] = shifted.double()
    else:
        ref["labels"] = labels.double()
    meta = {"method": method, "rank": str(rank), "alpha": str(alpha), "steps": str(STEPS),
            "lr": str(LR), "weight_decay": str(WEIGHT_DECAY), "targets": ",".join(targets),
            "task": "causal_lm" if lm else "sequence_classification"}

    base.eval()
    with torch.no_grad():
        out = run(base, ids, mask, types, labels)
    ref["f32.hidden"] = out.hidden_states[-1].reshape(B * T, -1).double()
    ref["f32.logits"] = out.logits.reshape(-1, out.logits.shape[-1]).double()
    ref["f32.loss"] = out.loss.double().reshape(1)

    model = make_model(config)
    model.load_state_dict(base.state_dict())
    model = model.double()
    if method != "full":
        lcfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                               lora_dropout=0.0, task_type=peft.TaskType.SEQ_CLS,
                               fan_in_fan_out=config.model_type == "gpt2")
        model = peft.get_peft_model(model, lcfg)
        if method == "sora":
            add_gates(model)
        model = model.double()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.3)
                    ref["init." + sora_name(pname)] = p.detach().clone().reshape(
                        (1, -1) if p.dim() == 1 else p.shape)
    model.eval()
    out = run(model, ids, mask, types, labels)
    ref["f64.hidden"] = out.hidden_states[-1].reshape(B * T, -1).detach()
    ref["f64.logits"] = out.logits.reshape(-1, out.logits.shape[-1]).detach()
    ref["f64.loss"] = out.loss.detach().reshape(1)
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    conv1d = conv1d_weights(model)
    for pname, p in trainable:
        ref["grad." + sora_name(pname)] = as_sora(p.grad, pname in conv1d)

    if method != "full":
        # Five AdamW steps: weight decay on matrices only (sora's rule), none on vectors (gates).
        decay = [p for n, p in trainable if p.dim() == 2]
        no_decay = [p for n, p in trainable if p.dim() != 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=1e-8)
        for _ in range(STEPS):
            opt.zero_grad()
            run(model, ids, mask, types, labels).loss.backward()
            opt.step()
        for pname, p in trainable:
            ref["final." + sora_name(pname)] = as_sora(p, pname in conv1d)

    ref = {k: v.contiguous().double() for k, v in ref.items()}
    save_file(ref, os.path.join(case_dir, "reference.safetensors"), metadata=meta)


def minilm(out_dir, model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    sentences = ["The quick brown fox jumps over the lazy dog.",
                 "Sparse low-rank adaptation prunes the ranks it does not need.",
                 "A short one."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    b, t, c = hidden.shape
    save_file({"input_ids": enc["input_ids"].double().contiguous(),
               "attention_mask": enc["attention_mask"].double().contiguous(),
               "token_type_ids": enc["token_type_ids"].double().contiguous(),
               "hidden": hidden.reshape(b * t, c).double().contiguous()},
              os.path.join(out_dir, "minilm.safetensors"))


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    bert = transformers.BertConfig(vocab_size=53, hidden_size=24, num_hidden_layers=2,
                                   num_attention_heads=3, intermediate_size=37,
                                   max_position_embeddings=20, type_vocab_size=2,
                                   hidden_act="gelu", num_labels=3, layer_norm_eps=1e-12)
    roberta = transformers.RobertaConfig(vocab_size=41, hidden_size=20, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=33,
                                         max_position_embeddings=T + 2 + 3, type_vocab_size=1,
                                         hidden_act="gelu_new", num_labels=1, pad_token_id=1,
                                         layer_norm_eps=1e-5)
    bert_cls = transformers.BertForSequenceClassification
    roberta_cls = transformers.RobertaForSequenceClassification
    write_case(out_dir, "bert_full", bert_cls, bert, "full")
    write_case(out_dir, "roberta_full", roberta_cls, roberta, "full")
    write_case(out_dir, "bert_lora", bert_cls, bert, "lora")
    write_case(out_dir, "roberta_sora", roberta_cls, roberta, "sora")
    gpt2 = transformers.GPT2Config(vocab_size=47, n_positions=16, n_embd=24, n_layer=2, n_head=4,
                                   n_inner=40, activation_function="gelu_new", num_labels=3,
                                   pad_token_id=0)
    # The SDPA path builds its float32 causal mask from the default dtype, which overflows in
    # float64; eager attention is the same math.
    gpt2._attn_implementation = "eager"
    write_case(out_dir, "gpt2_full", transformers.GPT2ForSequenceClassification, gpt2, "full")
    write_case(out_dir, "gpt2_lora", transformers.GPT2ForSequenceClassification, gpt2, "lora",
               targets=("c_attn",))
    write_case(out_dir, "gpt2_lm", transformers.GPT2LMHeadModel, gpt2, "full", lm=True)
    # LLaMA with grouped-query attention (4 query heads over 2 key/value heads), Qwen2 with its
    # q/k/v biases, 3:1 grouping and tied embeddings, Mistral's own config class.
    llama = transformers.LlamaConfig(vocab_size=43, hidden_size=24, intermediate_size=36,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=32,
                                     rope_theta=500.0, rms_norm_eps=1e-6, num_labels=3,
                                     pad_token_id=0,
                                     rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                   "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8})
    llama._attn_implementation = "eager"
    write_case(out_dir, "llama_full", transformers.LlamaForSequenceClassification, llama, "full")
    write_case(out_dir, "llama_sora", transformers.LlamaForSequenceClassification, llama, "sora",
               targets=("q_proj", "v_proj"))
    qwen2 = transformers.Qwen2Config(vocab_size=37, hidden_size=36, intermediate_size=20,
                                     num_hidden_layers=2, num_attention_heads=6,
                                     num_key_value_heads=2, max_position_embeddings=32,
                                     tie_word_embeddings=True, pad_token_id=0)
    qwen2._attn_implementation = "eager"
    write_case(out_dir, "qwen2_lm", transformers.Qwen2ForCausalLM, qwen2, "full", lm=True)
    mistral = transformers.MistralConfig(vocab_size=29, hidden_size=16, intermediate_size=30,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=1, max_position_embeddings=32,
                                         num_labels=2, pad_token_id=0)
    mistral._attn_implementation = "eager"
    write_case(out_dir, "mistral_lora", transformers.MistralForSequenceClassification, mistral,
               "lora", targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    if len(sys.argv) > 2:
        minilm(out_dir, sys.argv[2])
    with open(os.path.join(out_dir, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__}, f)


if __name__ == "__main__":
    main()
