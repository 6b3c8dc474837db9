"""kedit: knowledge editing for large language models, in Rust.

Two surfaces over one library:

- kedit's own: :class:`Model` (load, generate, capture sites as numpy arrays),
  :class:`Editor` (edit with any method, apply, revert, save edits and models),
  :func:`evaluate` (a dataset into a resumable run directory), :func:`trace` (causal
  tracing), :func:`methods` (the method registry).
- EasyEdit's: :class:`BaseEditor` and :class:`HyperParams` with per-method aliases
  (``ROMEHyperParams``, ``FTHyperParams``, ...), so that an EasyEdit script runs with
  only its import line changed.

Errors of the library are :class:`KeditError` (a ``RuntimeError``); arguments that
cannot be read are ``ValueError``.
"""

from ._native import KeditError, __version__
from .core import Edit, EditResult, Editor, Model, evaluate, merge_runs, methods, trace
from .easyedit import BaseEditor, HyperParams
from .easyedit import *  # noqa: F401,F403  (the per-method hyper-parameter aliases)
from .easyedit import __all__ as _aliases

__all__ = [
    "KeditError",
    "Model",
    "Editor",
    "Edit",
    "EditResult",
    "evaluate",
    "merge_runs",
    "trace",
    "methods",
    "BaseEditor",
    "HyperParams",
    "__version__",
] + [a for a in _aliases if a not in ("BaseEditor", "HyperParams")]
