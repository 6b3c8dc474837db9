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


@pytest.fixture(scope="session")
def model(at_root):
    import kedit

    return kedit.Model.load()
