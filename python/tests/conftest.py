"""Shared fixtures: the tests run from the repository root (where `hparams/`, `models/`
and `../shared` are, as the command line's tests find them) on the real SmolLM2."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
ZSRE = SHARED / "data/zsre/zsre_mend_eval_portability_gpt4.dev.json"

EIFFEL = {
    "prompt": "The Eiffel Tower is located in the city of",
    "subject": "The Eiffel Tower",
    "target_new": "Rome",
    "ground_truth": "Paris",
}


@pytest.fixture(scope="session", autouse=True)
def at_root():
    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


# ROME's shipped settings with C from 200 documents of the small test corpus: the shipped
# 2,582 Wikipedia documents would cost the tests minutes of key statistics (`kedit demo`
# and a user's first ROME edit compute them once; the Rust tests check that path's pieces).
SMALL_STATS = {
    "mom2_dataset": str(SHARED / "data/corpus/wikitext2_test.txt"),
    "mom2_n_samples": 200,
}


def with_small_stats(hparams):
    """`hparams` with SMALL_STATS set, as an EasyEdit user sets attributes of HyperParams."""
    for key, value in SMALL_STATS.items():
        setattr(hparams, key, value)
    return hparams


@pytest.fixture(scope="session")
def rome_hparams(at_root, tmp_path_factory):
    """The shipped ROME file with SMALL_STATS, as a JSON file (what `--hparams` reads too)."""
    import json

    import kedit

    hparams = with_small_stats(kedit.ROMEHyperParams.from_hparams("hparams/ROME/smollm2-135m.yaml"))
    path = tmp_path_factory.mktemp("hparams") / "rome.json"
    path.write_text(json.dumps(hparams.to_dict()))
    return path


@pytest.fixture(scope="session")
def model(at_root):
    import kedit

    return kedit.Model.load()
