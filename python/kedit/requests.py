"""Edit requests from Python values: kedit's own field names or EasyEdit's.

A request is a dict. kedit's fields: ``prompt``, ``target_new``, ``subject``,
``ground_truth`` (str or list), ``rephrase`` (str or list), ``locality`` and
``portability`` as ``{group: [{"prompt", "answer", "aliases"}]}``. EasyEdit's spellings
are accepted too: ``rephrase_prompt``, and groups as ``{group: {"prompt": ..,
"ground_truth": ..}}`` (one prompt or a list).
"""

import json


def _strings(value, what):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{what}: expected a string or a list of strings, got {value!r}")


def _probe(prompt, answer, what):
    answers = _strings(answer, what)
    if not isinstance(prompt, str) or not answers:
        raise ValueError(f"{what}: a probe needs a prompt and an answer, got {prompt!r} -> {answer!r}")
    return {"prompt": prompt, "answer": answers[0], "aliases": answers[1:]}


def _groups(groups, what):
    """``{group: probes}`` in kedit's form, from kedit's or EasyEdit's."""
    if not groups:
        return {}
    if not isinstance(groups, dict):
        raise ValueError(f"{what}: expected a dict of groups, got {type(groups).__name__}")
    out = {}
    for name, probes in groups.items():
        where = f"{what}[{name!r}]"
        if isinstance(probes, dict):  # EasyEdit: {"prompt": p or [p], "ground_truth": a or [a]}
            prompt, truth = probes.get("prompt"), probes.get("ground_truth")
            if isinstance(prompt, (list, tuple)):
                if not isinstance(truth, (list, tuple)) or len(truth) != len(prompt):
                    raise ValueError(f"{where}: one ground_truth per prompt is required")
                out[name] = [_probe(p, t, where) for p, t in zip(prompt, truth)]
            else:
                out[name] = [_probe(prompt, truth, where)]
        elif isinstance(probes, (list, tuple)):
            out[name] = [
                _probe(p.get("prompt"), [p.get("answer")] + list(p.get("aliases", [])), where)
                if isinstance(p, dict)
                else _probe(None, None, where)
                for p in probes
            ]
        else:
            raise ValueError(f"{where}: expected probes, got {probes!r}")
    return out


def to_request(value, index):
    """One request in kedit's JSON shape; ``index`` names it when it has no ``case_id``."""
    if not isinstance(value, dict):
        raise ValueError(f"request {index}: expected a dict, got {type(value).__name__}")
    prompt, target = value.get("prompt"), value.get("target_new")
    if not isinstance(prompt, str) or not isinstance(target, str):
        raise ValueError(f"request {index}: `prompt` and `target_new` must be strings")
    rephrase = value.get("rephrase", value.get("rephrase_prompt"))
    return {
        "case_id": str(value.get("case_id", index)),
        "prompt": prompt,
        "subject": value.get("subject") or "",
        "target_new": target,
        "ground_truth": _strings(value.get("ground_truth"), f"request {index}: ground_truth"),
        "rephrase": _strings(rephrase, f"request {index}: rephrase"),
        "locality": _groups(value.get("locality"), f"request {index}: locality"),
        "portability": _groups(value.get("portability"), f"request {index}: portability"),
        "generation_prompts": _strings(value.get("generation_prompts"), f"request {index}"),
    }


def requests_json(requests):
    """A request or a list of them as the JSON the native module reads."""
    if isinstance(requests, dict):
        requests = [requests]
    return json.dumps([to_request(r, i) for i, r in enumerate(requests)])
