"""kedit's own surface: models, the editor, edits, evaluation runs, causal tracing.

A thin layer over the native module: arguments become the library's JSON shapes,
tensors come back as numpy arrays. Long calls release the GIL and draw progress on
stderr.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _native
from .requests import requests_json


def _array(data, shape):
    return np.frombuffer(data, dtype="<f4").reshape(shape)


def _path(p):
    return None if p is None else os.fspath(p)


def methods():
    """The method registry: one dict per method (name, alg_name, family, summary, needs)."""
    return json.loads(_native.methods_json())


class Model:
    """A loaded model (a ``.gguf`` file or a Hugging Face directory)."""

    def __init__(self, native):
        self._native = native

    @classmethod
    def load(cls, path=None):
        """Loads ``path``; the default model (SmolLM2-135M-Instruct) when ``None``."""
        return cls(_native.Model.load(_path(path)))

    @staticmethod
    def default_path():
        return _native.default_model_path()

    @property
    def path(self):
        return self._native.path

    @property
    def config(self):
        """Architecture and sizes: ``n_layers``, ``d_model``, ``d_ff``, ``vocab_size``, ..."""
        return json.loads(self._native.config_json())

    def fingerprint(self):
        return self._native.fingerprint()

    def encode(self, text):
        return self._native.encode(text)

    def decode(self, ids):
        return self._native.decode(list(ids))

    def generate(self, prompt, max_new_tokens=32, top_k=None, temperature=1.0, seed=0, chat=False):
        """The continuation of ``prompt`` (a string, or a list of them: a list back)."""
        return _generate(self._native, prompt, max_new_tokens, top_k, temperature, seed, chat)

    def capture(self, text, sites):
        """One forward pass over ``text``: ``{site: array}`` for each site name
        (``blocks.5.mlp.key``, ``blocks.3.resid_post``, ``embed``, ``logits``, ...), each
        ``[1, tokens, width]`` float32."""
        if isinstance(sites, str):
            sites = [sites]
        return {name: _array(data, shape) for name, data, shape in self._native.capture(text, list(sites))}

    def __repr__(self):
        return f"kedit.Model({self.path!r})"


def _generate(native, prompt, max_new_tokens, top_k, temperature, seed, chat):
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    texts = native.generate(prompts, max_new_tokens, top_k, temperature, seed, chat)
    return texts[0] if single else texts


class Edit:
    """One edit of any kind (weights, adaptor, side memory, memory, context): a value that
    is saved, loaded and applied the same way."""

    def __init__(self, native):
        self._native = native

    @property
    def kind(self):
        return self._native.kind

    @property
    def meta(self):
        return json.loads(self._native.meta_json())

    def fingerprint(self):
        return self._native.fingerprint()

    def save(self, path):
        self._native.save(_path(path))

    @classmethod
    def load(cls, path):
        return cls(_native.Edit.load(_path(path)))

    def __repr__(self):
        return f"kedit.Edit(kind={self.kind!r})"


@dataclass
class EditResult:
    """What :meth:`Editor.edit` returns: the applied edit and the method's report
    (``method``, ``seconds``, ``timings``, ``notes``, ``applied``, ``warnings``)."""

    edit: Edit
    report: dict


def _hparams_args(hparams):
    """``(path, json)`` for the native module from ``None``, a file path, a dict or a
    :class:`kedit.HyperParams`."""
    if hparams is None:
        return None, None
    if isinstance(hparams, (str, os.PathLike)):
        return os.fspath(hparams), None
    if isinstance(hparams, dict):
        return None, json.dumps(hparams)
    to_dict = getattr(hparams, "to_dict", None)
    if to_dict is None:
        raise ValueError(f"hparams: expected a path, a dict or HyperParams, got {type(hparams).__name__}")
    return _path(getattr(hparams, "origin", None)), json.dumps(to_dict())


class Editor:
    """A model plus reversible edits of every kind."""

    def __init__(self, model=None):
        if model is None or isinstance(model, (str, os.PathLike)):
            model = Model.load(model)
        self._native = _native.Editor(model._native)
        self.edits = []

    @property
    def model(self):
        """The model with the weight edits applied."""
        return Model(self._native.model())

    @property
    def original_model(self):
        return Model(self._native.original_model())

    def edit(self, method, requests, hparams=None, corpus=None, seed=0, chat=False):
        """Computes the edit of ``requests`` (a dict or a list, see :mod:`kedit.requests`)
        with ``method`` (``kedit.methods()`` lists them) on the system as it is now, and
        applies it. ``hparams``: a file, a dict, HyperParams, or None for the shipped file.
        ``chat``: edit the prompts as the chat template renders them (also switched on by
        ``chat_template: true`` in the hyper-parameters)."""
        path, text = _hparams_args(hparams)
        native, report = self._native.edit(method, requests_json(requests), path, text, _path(corpus), seed, chat)
        edit = Edit(native)
        self.edits.append(edit)
        return EditResult(edit, json.loads(report))

    def apply(self, edit):
        """Applies an edit (computed here or loaded with :meth:`Edit.load`)."""
        applied = json.loads(self._native.apply(edit._native))
        self.edits.append(edit)
        return applied

    def revert_all(self):
        """Undoes every edit: the weights are bit-identical to the original ones."""
        self._native.revert_all()
        self.edits = []

    @property
    def applied(self):
        return json.loads(self._native.applied_json())

    def is_pristine(self):
        return self._native.is_pristine()

    def save_edits(self, directory):
        """Saves the applied edits, in order, as ``directory/000.safetensors``, ..."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, edit in enumerate(self.edits):
            path = directory / f"{i:03d}.safetensors"
            edit.save(path)
            paths.append(path)
        return paths

    def load_edits(self, directory):
        """Applies the edits :meth:`save_edits` wrote, in order."""
        for path in sorted(Path(directory).glob("*.safetensors")):
            self.apply(Edit.load(path))

    def save_model(self, directory, overwrite=False):
        """Saves the edited model as a Hugging Face directory."""
        self._native.save_model(_path(directory), overwrite)

    def original_weights(self, names):
        """``{name: array}``: the unedited values of weights by canonical name."""
        return {n: _array(d, s) for n, d, s in self._native.original_weights(list(names))}

    def generate(self, prompt, max_new_tokens=32, top_k=None, temperature=1.0, seed=0, chat=False):
        return _generate(self._native, prompt, max_new_tokens, top_k, temperature, seed, chat)

    def evaluate(self, requests, pre=None, fluency=False, free_generation=False, seed=0):
        """kedit's metrics of ``requests`` on the system as it is now (a list of dicts);
        ``pre``: the same requests' metrics before the edit (scores locality)."""
        pre = None if pre is None else json.dumps(pre)
        return json.loads(self._native.evaluate(requests_json(requests), pre, fluency, free_generation, seed))


def evaluate(method, data, out, model=None, limit=None, mode="single", batch_size=1, hparams=None,
             format="auto", corpus=None, seed=0, fluency=True, free_generation=True, skip_invalid=False,
             chat=False, shard=None, pre_from=None):
    """``kedit eval``: edit and evaluate a dataset into the run directory ``out``
    (``run.json``, ``pre.jsonl``, ``cases.jsonl``, ``summary.json``); running it again
    resumes. ``method=None``: pre-edit metrics only. ``data``: a file or a list of files.
    ``chat``: prompts through the chat template. ``shard``: ``"K/N"`` (or ``(K, N)``) runs
    every N-th case (batch mode: batch) from K; :func:`merge_runs` joins the shards.
    ``pre_from``: a run directory of the same model, data and metric settings whose pre-edit
    metrics are taken instead of computed. Returns the summary (a dict)."""
    if isinstance(shard, tuple):
        shard = "{}/{}".format(*shard)
    if not isinstance(model, Model):
        model = Model.load(model)
    files = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    summary = _native.evaluate_run(
        model._native, method, [os.fspath(f) for f in files], os.fspath(out), limit, mode,
        batch_size, _path(hparams), format, _path(corpus), seed, fluency, free_generation, skip_invalid,
        chat, shard, _path(pre_from),
    )
    return json.loads(summary)


def merge_runs(runs, out):
    """``kedit merge-runs``: joins the run directories of a sharded run into ``out``;
    returns the summary, identical to the unsharded run's."""
    return json.loads(_native.merge_runs([os.fspath(r) for r in runs], os.fspath(out)))


def trace(prompt, subject, model=None, answer=None, out=None, samples=10, noise=3.0, sigma=None,
          window=10, seed=1, tokens_per_pass=3, facts=None):
    """Causal tracing of ``prompt`` (ROME's): the probability of the answer when the
    subject is corrupted and one state is restored. Returns the result as a dict whose
    grids ``hidden``, ``mlp``, ``attn`` are numpy arrays ``[tokens, layers]``; with
    ``out``, writes ``trace.json`` and the heatmaps there (``result["files"]``)."""
    if not isinstance(model, Model):
        model = Model.load(model)
    text, files = _native.trace(
        model._native, prompt, subject, answer, _path(out), samples, noise, sigma, window, seed,
        tokens_per_pass, _path(facts),
    )
    result = json.loads(text)
    for grid in ("hidden", "mlp", "attn"):
        result[grid] = np.array(result[grid], dtype=np.float64)
    result["files"] = files
    return result
