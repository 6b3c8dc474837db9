#!/usr/bin/env python3
"""kedit's PEFT adapter, checked with the real clients: transformers loads the *unedited*
model kedit saved as a Hugging Face directory, peft loads kedit's adapter onto it, and the
logits at every position of a few prompts are compared with kedit's edited logits (from
`kedit logits --edit ...`). Also compared: transformers on the *edited* directory kedit
saved (the same forward, so that the adapter's own error is seen apart from the two
runtimes' float differences).

    python3 scripts/reference/peft_check.py --base DIR --adapter DIR --edited DIR \
        --logits edited-logits.json [--out report.json]

Run by scripts/reference/export_check (which makes every input). Needs torch,
transformers, peft, safetensors, numpy. float32, eval mode, attn_implementation="eager".
Prints max |Δlogit| and exits 1 when the adapter's logits differ from transformers' on the
edited weights by more than 1e-4 (kedit's own logits differ from transformers' by the two
runtimes' float difference, which --base-logits measures on the unedited model).
"""

import argparse
import json
import sys

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM


def load(path):
    return AutoModelForCausalLM.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()


def all_logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return out.logits[0].double().numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the unedited model kedit saved (--hf)")
    ap.add_argument("--adapter", required=True, help="kedit's PEFT adapter directory")
    ap.add_argument("--edited", required=True, help="the edited model kedit saved (--hf)")
    ap.add_argument("--logits", required=True, help="kedit logits --edit ... --out FILE")
    ap.add_argument("--base-logits", help="kedit logits (no edit) --out FILE: the two "
                    "runtimes' own difference on the unedited model")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    # The header metadata transformers 4.46 needs (it crashes without "format").
    with safetensors.safe_open(f"{args.base}/model.safetensors", "np") as f:
        fmt = (f.metadata() or {}).get("format")
    kedit = json.load(open(args.logits))
    base = load(args.base)
    adapted = PeftModel.from_pretrained(base, args.adapter).eval()
    report = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "safetensors_format": fmt,
        "prompts": [],
    }
    rows = []
    for p in kedit["prompts"]:
        ids = p["ids"]
        want = np.asarray(p["logits"], dtype=np.float64)
        got = all_logits(adapted, ids)
        rows.append((p, want, got))
    with adapted.disable_adapter():
        unedited = [all_logits(adapted, p["ids"]) for p, _, _ in rows]
    if args.base_logits:
        kedit_base = json.load(open(args.base_logits))["prompts"]
        runtime = max(
            float(np.abs(np.asarray(k["logits"], dtype=np.float64) - u).max())
            for k, u in zip(kedit_base, unedited)
        )
        report["max_abs_diff_unedited_transformers_vs_kedit"] = runtime
        print(f"unedited model: max |Δlogit| transformers vs kedit {runtime:.2e} (the two "
              "runtimes' own float difference)")
    del adapted, base
    edited = load(args.edited)
    worst = worst_same_runtime = 0.0
    for (p, want, got), before in zip(rows, unedited):
        direct = all_logits(edited, p["ids"])
        d = float(np.abs(got - want).max())
        d_same = float(np.abs(got - direct).max())
        effect = float(np.abs(want - before).max())
        top_peft = int(got[-1].argmax())
        top_kedit = int(want[-1].argmax())
        worst = max(worst, d)
        worst_same_runtime = max(worst_same_runtime, d_same)
        report["prompts"].append(
            {
                "text": p["text"],
                "positions": len(p["ids"]),
                "max_abs_diff_peft_vs_kedit": d,
                "max_abs_diff_peft_vs_transformers_edited_dir": d_same,
                "edit_effect_max_abs": effect,
                "argmax_peft": top_peft,
                "argmax_kedit": top_kedit,
            }
        )
        print(
            f"{p['text']!r}: {len(p['ids'])} positions, max |Δlogit| peft vs kedit {d:.2e}, "
            f"peft vs transformers(edited dir) {d_same:.2e}; the edit moves logits by "
            f"{effect:.2f}; argmax {top_peft} / kedit {top_kedit}"
        )
    report["max_abs_diff_peft_vs_kedit"] = worst
    report["max_abs_diff_peft_vs_transformers_edited_dir"] = worst_same_runtime
    print(f"safetensors header format: {fmt!r}")
    print(f"all prompts: max |Δlogit| peft vs kedit {worst:.2e}; peft vs transformers on the "
          f"edited directory {worst_same_runtime:.2e} (tolerance {args.tolerance:g})")
    if args.out:
        json.dump(report, open(args.out, "w"), indent=1)
    # The adapter's own error is what transformers + peft give against transformers on the
    # edited weights: one runtime, so no float difference between runtimes enters it.
    ok = worst_same_runtime <= args.tolerance and fmt == "pt"
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
