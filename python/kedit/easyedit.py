"""EasyEdit's surface over kedit, so that an EasyEdit script runs with only its import
line changed::

    from kedit import BaseEditor, ROMEHyperParams

    hparams = ROMEHyperParams.from_hparams("hparams/ROME/smollm2-135m.yaml")
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, _ = editor.edit(prompts=..., ground_truth=..., target_new=...,
                                           subject=..., sequential_edit=False)

The metric dictionaries have EasyEdit's shape (``case_id``, ``requested_rewrite``,
``time``, ``pre``/``post`` with ``rewrite_acc``, ``rephrase_acc``, ``locality``
``{group}_output``/``{group}_acc``, ``portability`` ``{group}_acc``), and the values are
kedit's, which equal EasyEdit's to the token. The edits and evaluations run as
``kedit eval`` runs them (the library's experiment layer), so the numbers equal
``kedit eval``'s on the same cases.

What differs, on purpose: ``edited_model`` is a :class:`kedit.Editor` (it generates and
evaluates with the edits), and outside ``sequential_edit`` it has been restored, as
EasyEdit's is; ``weights_copy`` maps each weight the kept edits changed to its original
value (empty when nothing is kept: ``editor.revert_all()`` restores bit-identically).
"""

import json
import os
import tempfile
import warnings

import numpy as np

from . import _native
from .core import Editor, Model
from .requests import requests_json

__all__ = ["HyperParams", "BaseEditor"]


def _registry():
    return json.loads(_native.methods_json())


def method_for(alg_name):
    """The registry's method for an EasyEdit ``alg_name``: the row of that name, else the
    first row that carries it (``FT`` reads its objective from the file)."""
    rows = _registry()
    if not isinstance(alg_name, str):
        raise ValueError(f"alg_name must be a string, got {alg_name!r}")
    for row in rows:
        if row["name"] == alg_name.lower():
            return row["name"]
    for row in rows:
        if row["alg_name"].lower() == alg_name.lower():
            return row["name"]
    known = ", ".join(sorted({r["alg_name"] for r in rows}))
    raise ValueError(f"unknown alg_name `{alg_name}`; kedit has: {known}")


class HyperParams:
    """A hyper-parameter file's keys as attributes (EasyEdit's ``HyperParams``)."""

    #: The EasyEdit ``alg_name`` values an alias accepts (None: any).
    _alg_names = None

    def __init__(self, **values):
        self.__dict__.update(values)
        self.origin = None

    @classmethod
    def from_hparams(cls, hparams_name_or_path):
        """Reads a YAML (or JSON) file; a name without an extension gets ``.yaml``, as
        EasyEdit's does."""
        path = os.fspath(hparams_name_or_path)
        if not path.endswith((".yaml", ".yml", ".json")):
            path += ".yaml"
        values = json.loads(_native.read_hparams(path))
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of hyper-parameters")
        alg = values.get("alg_name")
        if cls._alg_names is not None and str(alg).lower() not in cls._alg_names:
            raise ValueError(f"{path}: alg_name is `{alg}`; {cls.__name__} reads {sorted(cls._alg_names)}")
        hparams = cls(**values)
        hparams.origin = path
        return hparams

    def to_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "origin"}

    def __repr__(self):
        return f"{type(self).__name__}({self.to_dict()!r})"


def _alias(class_name, alg_names):
    cls = type(class_name, (HyperParams,), {"_alg_names": frozenset(a.lower() for a in alg_names)})
    cls.__doc__ = f"EasyEdit's {class_name}: a HyperParams whose alg_name is one of {sorted(alg_names)}."
    return cls


# EasyEdit's class name for each registry row's alg_name (one alias per row; FT-L, FT-M
# and FT share FTHyperParams, as they share EasyEdit's FT files).
_CLASS_NAMES = {
    "FT": "FTHyperParams",
    "ROME": "ROMEHyperParams",
    "MEMIT": "MEMITHyperParams",
    "EMMET": "EMMETHyperParams",
    "PMET": "PMETHyperParams",
    "AlphaEdit": "AlphaEditHyperParams",
    "IKE": "IKEHyperParams",
    "SERAC": "SERACHparams",
    "GRACE": "GraceHyperParams",
    "WISE": "WISEHyperParams",
    "MEND": "MENDHyperParams",
    "KE": "KEHyperParams",
}

for _row in _registry():
    _name = _CLASS_NAMES.get(_row["alg_name"], _row["alg_name"].replace("-", "_") + "HyperParams")
    if _name not in globals():
        globals()[_name] = _alias(_name, [_row["alg_name"], _row["name"]])
        __all__.append(_name)
# EasyEdit's own spellings of two of them.
R_ROMEHyperParams = _alias("R_ROMEHyperParams", ["R-ROME"])
GRACEHyperParams = globals()["GraceHyperParams"]
__all__ += ["R_ROMEHyperParams", "GRACEHyperParams"]


def _listify(value, n, what):
    if value is None:
        return [None] * n
    if isinstance(value, str):
        value = [value]
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: {len(value)} given for {n} prompts")
    return value


def _per_request(inputs, n, what):
    """EasyEdit's ``{group: {"prompt": [one per request], "ground_truth": [...]}}`` split
    into one ``{group: {"prompt", "ground_truth"}}`` per request."""
    out = [{} for _ in range(n)]
    for group, values in (inputs or {}).items():
        if not isinstance(values, dict) or "prompt" not in values or "ground_truth" not in values:
            raise ValueError(f"{what}[{group!r}]: expected {{'prompt': [...], 'ground_truth': [...]}}")
        prompts, truths = values["prompt"], values["ground_truth"]
        if isinstance(prompts, str):
            prompts, truths = [prompts], [truths]
        if len(prompts) != n or len(truths) != n:
            raise ValueError(f"{what}[{group!r}]: one prompt and one ground_truth per edit ({n}) are required")
        for i, (p, t) in enumerate(zip(prompts, truths)):
            if p is not None:
                out[i][group] = {"prompt": p, "ground_truth": t}
    return out


def _prepare_requests(prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
                      portability_inputs, subject):
    """EasyEdit's requests (its ``_prepare_requests``' dict shape)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    n = len(prompts)
    targets = _listify(target_new, n, "target_new")
    truths = _listify(ground_truth, n, "ground_truth")
    subjects = _listify(subject, n, "subject")
    rephrases = _listify(rephrase_prompts, n, "rephrase_prompts")
    localities = _per_request(locality_inputs, n, "locality_inputs")
    portabilities = _per_request(portability_inputs, n, "portability_inputs")
    requests = []
    for i in range(n):
        r = {
            "prompt": prompts[i],
            "target_new": targets[i],
            # None, not EasyEdit's "<|endoftext|>" filler: kedit skips the comparisons that
            # need a true answer when there is none.
            "ground_truth": truths[i],
            "portability": portabilities[i],
            "locality": localities[i],
        }
        if subjects[i] is not None:
            r["subject"] = subjects[i]
        if rephrases[i] is not None:
            r["rephrase_prompt"] = rephrases[i]
        requests.append(r)
    return requests


def _quality(metrics, request, post):
    """kedit's per-case metrics in EasyEdit's ``compute_edit_quality`` shape."""
    out = {"rewrite_acc": metrics["rewrite_acc"]}
    if "rephrase_prompt" in request:
        out["rephrase_acc"] = metrics["rephrase_acc"]
    locality = {f"{g}_output": v for g, v in metrics["locality_output"].items()}
    if post:
        locality.update({f"{g}_acc": v for g, v in metrics.get("locality_acc", {}).items()})
    out["locality"] = locality
    out["portability"] = {f"{g}_acc": v for g, v in metrics["portability_acc"].items()}
    if metrics.get("fluency") is not None:
        out["fluency"] = {"ngram_entropy": metrics["fluency"]}
    return out


def summary_metrics(all_metrics):
    """EasyEdit's mean metrics: per key, the mean over cases of each case's mean."""
    summary = {}
    for stage in ("pre", "post"):
        cases = [m[stage] for m in all_metrics if m.get(stage)]
        means = {}
        for key in ("rewrite_acc", "rephrase_acc"):
            values = [np.mean(c[key]) for c in cases if c.get(key)]
            if values:
                means[key] = float(np.mean(values))
        for section in ("locality", "portability"):
            keys = sorted({k for c in cases for k in c.get(section, {}) if k.endswith("_acc")})
            if keys:
                means[section] = {
                    k: float(np.mean([np.mean(c[section][k]) for c in cases if k in c.get(section, {})]))
                    for k in keys
                }
        summary[stage] = means
    return summary


class BaseEditor:
    """EasyEdit's editor: ``BaseEditor.from_hparams(hparams)``, then ``edit`` or
    ``batch_edit``. The model is the file ``hparams.model_name`` names when it is one,
    else kedit's default model (``models/SmolLM2-135M-Instruct.Q4_1.gguf``), or
    ``model=`` (a path or a :class:`kedit.Model`)."""

    @classmethod
    def from_hparams(cls, hparams, model=None):
        return cls(hparams, model=model)

    def __init__(self, hparams, model=None):
        if hparams is None:
            raise ValueError("hparams is None")
        self.hparams = hparams
        self.alg_name = hparams.alg_name
        self.method = method_for(self.alg_name)
        self.model_name = getattr(hparams, "model_name", None)
        if model is None and isinstance(self.model_name, str) and os.path.exists(self.model_name):
            model = self.model_name
        if not isinstance(model, Model):
            model = Model.load(model)
            name = os.path.basename(model.path).lower()
            if isinstance(self.model_name, str) and self.model_name.lower() not in name:
                # EasyEdit would download `model_name`; kedit edits the file it found.
                warnings.warn(f"model_name `{self.model_name}` is not a file; editing {model.path}", stacklevel=3)
        self.editor = Editor(model)

    @property
    def model(self):
        return self.editor

    def _run(self, requests, mode, batch_size, keep, fluency, verbose, kwargs):
        if "train_ds" in kwargs:
            warnings.warn("train_ds is ignored: kedit's IKE retrieves from its own pool", stacklevel=3)
        path, text = (getattr(self.hparams, "origin", None), json.dumps(self.hparams.to_dict()))
        with tempfile.TemporaryDirectory(prefix="kedit-seq-") as tmp:
            run = self.editor._native.run_cases(
                self.method, requests_json(requests), mode, batch_size, path, text,
                os.path.join(tmp, "run") if keep else None, fluency, False, None,
                int(kwargs.get("seed", 0)),
            )
        cases = json.loads(run)["cases"]
        all_metrics = []
        for request, case in zip(requests, cases):
            metric = {
                "case_id": case["index"],
                "requested_rewrite": request,
                "time": case["edit"]["seconds"],
                "pre": _quality(case["pre"], request, post=False),
                "post": None if case["post"] is None else _quality(case["post"], request, post=True),
            }
            if case["edit"].get("error"):
                metric["error"] = case["edit"]["error"]
                warnings.warn(f"case {case['index']}: {case['edit']['error']}", stacklevel=3)
            all_metrics.append(metric)
            if verbose:
                print(f"{case['index']} editing: {request['prompt']} -> {request['target_new']}\n\n{metric}")
        print("Metrics Summary: ", summary_metrics(all_metrics))
        weights_copy = {}
        if keep:
            names = sorted({p for a in self.editor.applied for p in a.get("params", [])})
            weights_copy = self.editor.original_weights(names)
        return all_metrics, self.editor, weights_copy

    def edit(self, prompts, target_new, ground_truth=None, target_neg=None, rephrase_prompts=None,
             locality_inputs=None, portability_inputs=None, sequential_edit=False, verbose=True, **kwargs):
        """Edits one fact per prompt, each evaluated before and after its edit; with
        ``sequential_edit`` the edits accumulate (and stay applied), else each is
        reverted before the next. Returns ``(metrics, edited_model, weights_copy)``."""
        requests = kwargs.pop("requests", None) or _prepare_requests(
            prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
            portability_inputs, kwargs.pop("subject", None),
        )
        mode = "sequential" if sequential_edit else "single"
        fluency = bool(kwargs.pop("test_generation", False))
        return self._run(requests, mode, 1, sequential_edit, fluency, verbose, kwargs)

    def batch_edit(self, prompts, target_new, ground_truth=None, target_neg=None, rephrase_prompts=None,
                   locality_inputs=None, portability_inputs=None, sequential_edit=False, verbose=True, **kwargs):
        """Edits ``hparams.batch_size`` facts per method call (MEMIT, EMMET, PMET,
        AlphaEdit, ...); with ``sequential_edit`` the calls accumulate."""
        batch_size = getattr(self.hparams, "batch_size", None)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_edit: hparams.batch_size must be a positive integer, got {batch_size!r}")
        requests = _prepare_requests(
            prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
            portability_inputs, kwargs.pop("subject", None),
        )
        mode = "sequential" if sequential_edit else "batch"
        fluency = bool(kwargs.pop("test_generation", False))
        return self._run(requests, mode, batch_size, sequential_edit, fluency, verbose, kwargs)
