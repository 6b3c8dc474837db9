#!/usr/bin/env python3
"""Reference numbers for kedit's Gemma 3 support, from Hugging Face transformers.

    python3 scripts/reference/gemma3_reference.py            # both parts (~2 min on 2 cores)
    python3 scripts/reference/gemma3_reference.py --only real|tiny

Needs torch, transformers (5.x), gguf and accelerate (`pip install torch transformers gguf
accelerate`) and, for `real`, the GGUF from `scripts/fetch-model gemma3`. Writes into
crates/kedit/tests/fixtures/gemma3/:

real.json   transformers on gemma-3-270m-q4_k_m.gguf (its GGUF loader dequantises every
            tensor to f32 and subtracts the 1 that llama.cpp folded into the norm weights):
            - tokenizer: ids of the 47 strings of ../shared/fixtures/smollm2/tokenizer_cases.json,
              no BOS (add_special_tokens=False), with transformers' own GGUF tokenizer;
            - logits: for each string, BOS + ids, the last position's logits: the top 20
              (ids and values), the values at 100 fixed ids (`probe_ids`), logsumexp and argmax;
            - greedy: 24 greedy tokens after BOS + "The capital of France is".
tiny/       a tiny random Gemma3ForCausalLM (save_pretrained: config.json, model.safetensors)
            and reference.safetensors / reference.json in the format of
            ../shared/fixtures/tiny/<arch> (README section B): right-padded batch, hidden states
            after each block (before the final norm), attention output (o_proj, before the
            post-attention norm), MLP key (input of down_proj), MLP output (down_proj, before the
            post-feedforward norm), logits, loss and the gradient of the last layer's down_proj.

float32, eval mode, attn_implementation="eager".
"""

import argparse
import json
import math
import pathlib
import platform

import torch
import transformers
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/kedit/tests/fixtures/gemma3"
GGUF_DIR = ROOT / "models"
GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
CASES = ROOT / "../shared/fixtures/smollm2/tokenizer_cases.json"
TOP_K = 20
N_PROBES = 100
GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 24


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def probe_ids(vocab):
    """100 ids spread over the vocabulary (fixed, so tests can compare exact positions)."""
    return [int(i * (vocab - 1) / (N_PROBES - 1)) for i in range(N_PROBES)]


def real():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    bos = tok.bos_token_id
    vocab = model.config.vocab_size
    probes = probe_ids(vocab)
    cases = json.loads(CASES.read_text())["cases"]
    out_cases = []
    with torch.no_grad():
        for case in cases:
            text = case["text"]
            ids = tok(text, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([[bos] + ids])).logits[0, -1]
            top = torch.topk(logits, TOP_K)
            out_cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "top_ids": top.indices.tolist(),
                    "top_logits": [round(x, 6) for x in top.values.tolist()],
                    "probe_logits": [round(x, 6) for x in logits[probes].tolist()],
                    "logsumexp": round(torch.logsumexp(logits, 0).item(), 6),
                    "argmax": int(logits.argmax()),
                }
            )
        prompt = [bos] + tok(GREEDY_PROMPT, add_special_tokens=False)["input_ids"]
        gen = model.generate(
            torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, do_sample=False
        )[0, len(prompt):].tolist()
    result = {
        "source": f"{GGUF_FILE} (scripts/fetch-model gemma3)",
        "made_by": "scripts/reference/gemma3_reference.py",
        "versions": versions(),
        "bos_id": bos,
        "input": "BOS + ids of the text (the ids below are without BOS)",
        "probe_ids": probes,
        "cases": out_cases,
        "greedy": {
            "prompt": GREEDY_PROMPT,
            "prompt_ids": prompt,
            "new_ids": gen,
            "text": tok.decode(gen),
        },
    }
    (OUT / "real.json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    print("greedy:", repr(result["greedy"]["text"]))


def tiny():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        # Unlike the real model, every setting differs from its default so that it matters.
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                # Zero-centred: the effective weight is 1 + w.
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    tiny_dir = OUT / "tiny"
    model.save_pretrained(tiny_dir)

    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 256, (2, 12), generator=g)
    input_ids[1, 8:] = 0
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    labels = input_ids.clone()
    labels[mask == 0] = -100
    position_ids = torch.arange(12).unsqueeze(0).repeat(2, 1)

    caught = {}
    hooks = []
    layers = model.model.layers
    for l, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, l=l: caught.__setitem__(f"resid{l}", o[0] if isinstance(o, tuple) else o)))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, i, o, l=l: caught.__setitem__(f"attn_out.layer{l}", o[0])))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, i, l=l: caught.__setitem__(f"mlp_key.layer{l}", i[0])))
        hooks.append(layer.mlp.register_forward_hook(
            lambda m, i, o, l=l: caught.__setitem__(f"mlp_out.layer{l}", o)))
    hooks.append(model.model.embed_tokens.register_forward_hook(
        lambda m, i, o: caught.__setitem__("embed", o)))
    hooks.append(model.model.norm.register_forward_hook(
        lambda m, i, o: caught.__setitem__("final_norm", o)))
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
    logits = out.logits
    shift = logits[:, :-1].reshape(-1, 256)
    loss = torch.nn.functional.cross_entropy(shift, labels[:, 1:].reshape(-1), ignore_index=-100)
    last = len(layers) - 1
    weight = layers[last].mlp.down_proj.weight
    (grad,) = torch.autograd.grad(loss, weight)
    for h in hooks:
        h.remove()
    hidden = torch.stack([caught["embed"]] + [caught[f"resid{l}"] for l in range(len(layers))])
    tensors = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "labels": labels,
        "logits": logits,
        "hidden_states": hidden,
        "final_norm": caught["final_norm"],
        "loss": loss.reshape(1),
        f"grad.mlp_down_weight.layer{last}": grad,
    }
    for l in range(len(layers)):
        for k in ("attn_out", "mlp_key", "mlp_out"):
            tensors[f"{k}.layer{l}"] = caught[f"{k}.layer{l}"]
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, tiny_dir / "reference.safetensors")
    (tiny_dir / "reference.json").write_text(json.dumps({
        "made_by": "scripts/reference/gemma3_reference.py",
        "versions": versions(),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        "loss": loss.item(),
    }, indent=1) + "\n")
    print("tiny loss", loss.item())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["real", "tiny"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "tiny"):
        tiny()
    if args.only in (None, "real"):
        real()


if __name__ == "__main__":
    main()
