#!/usr/bin/env python3
"""kedit's GGUF export, checked with llama.cpp (through llama-cpp-python): it loads the
edited model's GGUF file, tokenizes the prompts as kedit does, gives kedit's logits, and
answers the edited fact in a greedy completion.

    python3 scripts/reference/llama_cpp_check.py --gguf edited.gguf \
        --logits edited-logits.json [--hf-edited DIR] [--out report.json]

Where llama-cpp-python is not installed (it compiles llama.cpp: `CMAKE_ARGS=-DGGML_NATIVE=ON
pip install llama-cpp-python`), the file is checked with the `gguf` package instead — the
reader llama.cpp's own tools are built on — and the script says so: the metadata llama.cpp
needs, every tensor's name, type and shape, and (with --hf-edited, the edited model kedit
saved as a Hugging Face directory) every tensor against the Hugging Face weights converted
the way llama.cpp's convert_hf_to_gguf.py converts them (its Q/K permutation included).
That check does not run llama.cpp; the report says which check ran.
"""

import argparse
import json
import sys

import numpy as np


def llama_cpp_check(args, kedit):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=args.gguf, n_ctx=512, logits_all=True, n_threads=2, verbose=False, seed=0
    )
    report = {"client": f"llama-cpp-python {llama_cpp.__version__}", "prompts": []}
    worst = 0.0
    for p in kedit["prompts"]:
        ids = llm.tokenize(p["text"].encode(), add_bos=False, special=True)
        same_ids = list(ids) == list(p["ids"])
        llm.reset()
        llm.eval(p["ids"])
        got = np.asarray(llm.scores[: len(p["ids"])], dtype=np.float64)
        want = np.asarray(p["logits"], dtype=np.float64)
        d = float(np.abs(got - want).max())
        worst = max(worst, d)
        top_l = [int(i) for i in np.argsort(-got[-1])[:5]]
        top_k = [int(i) for i in np.argsort(-want[-1])[:5]]
        llm.reset()
        out = llm.create_completion(
            p["text"], max_tokens=len(p["greedy_ids"]) or 8, temperature=0.0, top_k=1
        )
        text = out["choices"][0]["text"]
        report["prompts"].append(
            {
                "text": p["text"],
                "same_token_ids": same_ids,
                "max_abs_diff_logits": d,
                "top5_llama_cpp": top_l,
                "top5_kedit": top_k,
                "top1_logit_llama_cpp": float(got[-1][top_l[0]]),
                "top1_logit_kedit": float(want[-1][top_k[0]]),
                "greedy_llama_cpp": text,
                "greedy_kedit": p["greedy_text"],
            }
        )
        print(
            f"{p['text']!r}: ids equal {same_ids}; max |Δlogit| {d:.3e}; top-5 "
            f"llama.cpp {top_l} kedit {top_k}; greedy llama.cpp {text!r} / kedit "
            f"{p['greedy_text']!r}"
        )
    report["max_abs_diff_logits"] = worst
    ok = all(r["same_token_ids"] and r["top5_llama_cpp"][0] == r["top5_kedit"][0]
             for r in report["prompts"])
    if args.expect:
        first = report["prompts"][0]["greedy_llama_cpp"]
        ok &= args.expect in first
        print(f"edited fact: llama.cpp answers {first!r}; expected {args.expect!r} in it")
    return report, ok


# llama.cpp's convert_hf_to_gguf.py (LlamaModel): tensor names and the Q/K permutation.
def permute(w, n_head):
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(hf):
    table = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in table:
        return table[hf]
    parts = hf.split(".")
    layer, rest = parts[2], ".".join(parts[3:])
    blk = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }[rest]
    return f"blk.{layer}.{blk}"


def gguf_package_check(args, kedit):
    import gguf
    from safetensors.numpy import load_file

    r = gguf.GGUFReader(args.gguf)
    fields = {k: r.fields[k] for k in r.fields}

    def scalar(key):
        f = fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]

    arch = scalar("general.architecture")
    need = [f"{arch}.{k}" for k in (
        "context_length", "embedding_length", "block_count", "feed_forward_length",
        "attention.head_count", "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon", "rope.freq_base")] + [
        "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id"]
    missing = [k for k in need if k not in fields]
    n_head = scalar(f"{arch}.attention.head_count")
    n_kv = scalar(f"{arch}.attention.head_count_kv")
    tensors = {t.name: t for t in r.tensors}
    report = {
        "client": f"gguf {getattr(gguf, '__version__', '?')} (llama-cpp-python not installed: "
                  "llama.cpp itself did not run)",
        "architecture": arch,
        "missing_metadata": missing,
        "tensors": len(tensors),
        "types": sorted({t.tensor_type.name for t in r.tensors}),
    }
    ok = not missing
    worst = 0.0
    if args.hf_edited:
        hf = load_file(f"{args.hf_edited}/model.safetensors")
        for name, w in hf.items():
            w = w.astype(np.float32)
            if name.endswith("q_proj.weight"):
                w = permute(w, n_head)
            elif name.endswith("k_proj.weight"):
                w = permute(w, n_kv)
            t = tensors[gguf_name(name)]
            got = np.asarray(t.data, dtype=np.float32).reshape(w.shape)
            worst = max(worst, float(np.abs(got - w).max()))
        report["max_abs_diff_vs_hf_converted_like_llama_cpp"] = worst
        print(f"every tensor vs the edited HF weights converted as llama.cpp converts them: "
              f"max |Δ| {worst:.3e}")
        ok &= len(hf) == len(tensors)
    toks = fields["tokenizer.ggml.tokens"]
    n_tokens = len(toks.data)
    report["tokens"] = n_tokens
    print(f"{args.gguf}: {arch}, {len(tensors)} tensors {report['types']}, {n_tokens} tokens, "
          f"missing metadata: {missing or 'none'}")
    print("NOTE: llama-cpp-python is not installed; llama.cpp did not run. This checked the "
          "file with the gguf package only.")
    return report, ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--logits", required=True, help="kedit logits --edit ... --out FILE")
    ap.add_argument("--hf-edited", help="the edited model kedit saved as a HF directory")
    ap.add_argument("--expect", help="text the first prompt's greedy completion must hold")
    ap.add_argument("--out")
    args = ap.parse_args()
    kedit = json.load(open(args.logits))
    try:
        import llama_cpp  # noqa: F401

        report, ok = llama_cpp_check(args, kedit)
    except ImportError:
        report, ok = gguf_package_check(args, kedit)
    if args.out:
        json.dump(report, open(args.out, "w"), indent=1)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
