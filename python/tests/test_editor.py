"""kedit's own surface: one ROME edit, then revert, save, load and save the model."""

import numpy as np
import pytest

import kedit
from conftest import EIFFEL

PROMPT = EIFFEL["prompt"]


@pytest.fixture(scope="module")
def edited(model, rome_hparams):
    editor = kedit.Editor(model)
    before = editor.generate(PROMPT, max_new_tokens=3)
    result = editor.edit("rome", EIFFEL, hparams=rome_hparams)
    return editor, before, result


def test_an_edit_changes_the_answer_and_reports_what_it_did(edited):
    editor, before, result = edited
    assert "Paris" in before
    assert "Rome" in editor.generate(PROMPT, max_new_tokens=3)
    assert result.edit.kind == "weights"
    assert result.report["method"] == "ROME"
    assert result.report["applied"]["params"] == ["blocks.5.mlp.out_proj.weight"]
    assert [a["kind"] for a in editor.applied] == ["weights"]
    assert not editor.is_pristine()


def test_metrics_through_the_editor_see_the_edit(edited, model):
    editor, _, _ = edited
    pre = kedit.Editor(model).evaluate(EIFFEL)
    post = editor.evaluate(EIFFEL, pre=pre)
    assert pre[0]["rewrite_acc"] == [0.0]
    assert post[0]["rewrite_acc"] == [1.0]


def test_edits_and_models_save_load_and_revert(edited, model, tmp_path):
    editor, before, result = edited
    after = editor.generate(PROMPT, max_new_tokens=3)
    editor.save_edits(tmp_path / "edits")
    edited_out = editor.model.capture(PROMPT, ["blocks.5.mlp.out"])["blocks.5.mlp.out"]
    editor.save_model(tmp_path / "model")

    editor.revert_all()
    assert editor.is_pristine()
    assert editor.generate(PROMPT, max_new_tokens=3) == before
    assert editor.applied == []

    editor.load_edits(tmp_path / "edits")
    assert editor.generate(PROMPT, max_new_tokens=3) == after
    assert kedit.Edit.load(tmp_path / "edits/000.safetensors").fingerprint() == result.edit.fingerprint()
    original = editor.original_weights(["blocks.5.mlp.out_proj.weight"])["blocks.5.mlp.out_proj.weight"]
    assert original.shape == (model.config["d_model"], model.config["d_ff"])
    editor.revert_all()

    saved = kedit.Model.load(tmp_path / "model")
    assert saved.generate(PROMPT, max_new_tokens=3) == after
    reloaded = saved.capture(PROMPT, ["blocks.5.mlp.out"])["blocks.5.mlp.out"]
    np.testing.assert_allclose(reloaded, edited_out, atol=1e-5)
