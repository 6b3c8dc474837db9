"""`kedit.evaluate` (a run directory, resumable) and `kedit.trace` (grids and pictures)."""

import json

import numpy as np
import pytest

import kedit
from conftest import ZSRE

@pytest.fixture(scope="module")
def run_args(rome_hparams):
    return dict(limit=2, fluency=False, free_generation=False, hparams=rome_hparams)


@pytest.fixture(scope="module")
def run(model, tmp_path_factory, run_args):
    out = tmp_path_factory.mktemp("eval") / "run"
    return out, kedit.evaluate("rome", ZSRE, out, model=model, **run_args)


def test_evaluate_writes_a_run_that_resumes(model, run, run_args):
    out, summary = run
    args = dict(model=model, **run_args)
    assert summary["n"] == 2 and summary["refused"] == 0
    assert summary["weights_identical_after_run"]
    assert summary["reliability"] > 0.5
    for name in ("run.json", "pre.jsonl", "cases.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    lines = (out / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # Again: every case is in the store, so nothing is edited and the summary is the same.
    again = kedit.evaluate("rome", ZSRE, out, **args)
    assert (out / "cases.jsonl").read_text().splitlines() == lines
    assert again["post"] == summary["post"]
    # A different configuration is refused, naming what changed.
    try:
        kedit.evaluate("rome", ZSRE, out, seed=1, **args)
    except kedit.KeditError as e:
        assert "seed" in str(e)
    else:
        raise AssertionError("a run with another seed resumed")


def test_shards_merge_into_the_unsharded_run(model, run, tmp_path, run_args):
    _, whole = run
    shards = [tmp_path / f"shard{k}" for k in range(2)]
    for k, out in enumerate(shards):
        part = kedit.evaluate("rome", ZSRE, out, model=model, shard=(k, 2), **run_args)
        assert part["n"] == 1
    merged = kedit.merge_runs(shards, tmp_path / "merged")
    assert merged["post"] == whole["post"] and merged["pre"] == whole["pre"]


def test_evaluate_rejects_bad_arguments(model, tmp_path):
    for kwargs in (dict(mode="sideways"), dict(format="csv"), dict(shard="2/2")):
        try:
            kedit.evaluate("rome", ZSRE, tmp_path / "x", model=model, **kwargs)
        except ValueError as e:
            assert list(kwargs.values())[0] in str(e)
        else:
            raise AssertionError(f"{kwargs} accepted")
    assert not (tmp_path / "x").exists()


def test_trace_returns_grids_and_writes_pictures(model, tmp_path):
    prompt = "The Eiffel Tower is located in the city of"
    result = kedit.trace(prompt, "The Eiffel Tower", model=model, answer=" Paris", out=tmp_path,
                         samples=1, window=4, sigma=0.05)
    n_tokens = len(model.encode(prompt))
    for grid in ("hidden", "mlp", "attn"):
        assert result[grid].shape == (n_tokens, model.config["n_layers"])
        assert np.all((result[grid] >= 0) & (result[grid] <= 1))
    assert result["clean_prob"] > result["corrupted_prob"]
    names = {p.split("/")[-1] for p in result["files"]}
    assert {"trace.json", "hidden.png", "mlp.svg"} <= names
    saved = json.loads((tmp_path / "trace.json").read_text())
    np.testing.assert_allclose(saved["hidden"], result["hidden"])
