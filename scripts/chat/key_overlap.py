#!/usr/bin/env python3
"""Why FT-M loses locality under the chat template: the MLP key FT-M trains on (layer 21,
the last prompt token, which predicts the answer's first token) is far more alike between
an edit prompt and an unrelated locality prompt when both end in the template's
`<|im_start|>assistant\n` than when each ends in its own words. Prints the mean cosine
similarity of those keys, plain and chat, over the first N ZsRE dev records.

    target/python-venv/bin/python scripts/chat/key_overlap.py [--limit 100] [--layer 21]
"""
import argparse
import json

import numpy as np

import kedit

ap = argparse.ArgumentParser()
ap.add_argument("--limit", type=int, default=100)
ap.add_argument("--layer", type=int, default=21)
ap.add_argument("--data", default="../shared/data/zsre/zsre_mend_eval_portability_gpt4.dev.json")
args = ap.parse_args()

model = kedit.Model.load()
records = json.load(open(args.data))[: args.limit]
site = f"blocks.{args.layer}.mlp.key"


# SmolLM2-Instruct's template with one user message and the assistant's turn opened, as
# kedit's `prompts::chat_prompt` renders it (crates/kedit/tests/chat_editing.rs checks it).
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat(text):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


def last_key(text):
    return model.capture(text, [site])[site][0, -1].astype(np.float64)


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


rows = {"plain": [], "chat": []}
for r in records:
    edit, loc = r["src"], r["loc"]
    rows["plain"].append(cos(last_key(edit), last_key(loc)))
    rows["chat"].append(cos(last_key(chat(edit)), last_key(chat(loc))))
for k, v in rows.items():
    print(f"{k:5}: mean cosine(key of the edit prompt, key of its locality prompt) at layer "
          f"{args.layer} = {np.mean(v):.3f} (min {np.min(v):.3f}, max {np.max(v):.3f}, n {len(v)})")
