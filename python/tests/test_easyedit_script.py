"""EasyEdit's surface: an unmodified EasyEdit-style script (python/examples/easyedit_rome.py)
gives the same metrics as `kedit eval` on the same case."""

import json
import os
import runpy
import subprocess
from pathlib import Path

import pytest

import kedit
from conftest import ROOT, with_small_stats

SCRIPT = ROOT / "python/examples/easyedit_rome.py"


def kedit_binary():
    """`kedit`: $KEDIT_BIN (scripts/test sets it, so CI never skips), else the release build."""
    given = os.environ.get("KEDIT_BIN")
    if given:
        assert Path(given).is_file(), f"KEDIT_BIN={given} does not exist"
        return given
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "release/kedit"
    if not path.is_file():
        pytest.skip(f"{path} not built (cargo build --release)")
    return str(path)


def as_zsre_record(g):
    """The script's case as a ZsRE record (what `kedit eval` reads)."""
    return {
        "subject": g["subject"][0],
        "src": g["prompts"][0],
        "alt": g["target_new"][0],
        "answers": g["ground_truth"],
        "rephrase": g["rephrase_prompts"][0],
        "loc": g["locality_inputs"]["neighborhood"]["prompt"][0],
        "loc_ans": g["locality_inputs"]["neighborhood"]["ground_truth"][0],
        "portability": {
            "New Question": g["portability_inputs"]["one_hop"]["prompt"][0],
            "New Answer": g["portability_inputs"]["one_hop"]["ground_truth"][0],
        },
    }


def test_the_easyedit_script_equals_kedit_eval(tmp_path, capsys, monkeypatch, rome_hparams):
    # The script reads the shipped file; the statistics it names are swapped for the small
    # ones, as an EasyEdit user sets an attribute of the HyperParams they loaded.
    read = kedit.ROMEHyperParams.from_hparams
    monkeypatch.setattr(kedit.ROMEHyperParams, "from_hparams", lambda path: with_small_stats(read(path)))
    g = runpy.run_path(str(SCRIPT), run_name="__main__")
    printed = capsys.readouterr().out
    assert "rewrite_acc" in printed
    metrics, edited_model, _ = g["metrics"], g["edited_model"], g["editor"]
    (m,) = metrics
    assert m["case_id"] == 0 and m["time"] > 0
    assert m["requested_rewrite"]["subject"] == "Lahti Town Hall"
    assert set(m["pre"]) == {"rewrite_acc", "rephrase_acc", "locality", "portability"}
    assert set(m["post"]["locality"]) == {"neighborhood_output", "neighborhood_acc"}
    assert set(m["post"]["portability"]) == {"one_hop_acc"}
    assert m["post"]["rewrite_acc"] == [1.0]
    # Not sequential: the returned editor is restored, as EasyEdit's model is.
    assert edited_model.is_pristine()

    data = tmp_path / "case.json"
    data.write_text(json.dumps([as_zsre_record(g)]))
    out = tmp_path / "run"
    subprocess.run(
        [kedit_binary(), "eval", "--method", "rome", "--hparams", str(rome_hparams),
         "--data", str(data), "--out", str(out), "--no-fluency", "--no-free-generation"],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )
    (case,) = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    for stage in ("pre", "post"):
        cli, ours = case[stage], m[stage]
        assert ours["rewrite_acc"] == cli["rewrite_acc"], stage
        assert ours["rephrase_acc"] == cli["rephrase_acc"], stage
        assert ours["portability"]["one_hop_acc"] == cli["portability_acc"]["one_hop"], stage
        assert ours["locality"]["neighborhood_output"] == cli["locality_output"]["neighborhood"], stage
    assert m["post"]["locality"]["neighborhood_acc"] == case["post"]["locality_acc"]["neighborhood"]


def test_sequential_edit_keeps_the_edits(model):
    hparams = with_small_stats(kedit.ROMEHyperParams.from_hparams("hparams/ROME/smollm2-135m"))
    editor = kedit.BaseEditor.from_hparams(hparams, model=model)
    prompts = ["The Eiffel Tower is located in the city of", "The Louvre is located in the city of"]
    metrics, edited, weights_copy = editor.edit(
        prompts=prompts, target_new=["Rome", "London"], subject=["The Eiffel Tower", "The Louvre"],
        sequential_edit=True, verbose=False,
    )
    assert [m["post"]["rewrite_acc"] for m in metrics] == [[1.0], [1.0]]
    assert len(edited.applied) == 2
    assert "Rome" in edited.generate(prompts[0], max_new_tokens=3)
    assert "London" in edited.generate(prompts[1], max_new_tokens=3)
    assert list(weights_copy) == ["blocks.5.mlp.out_proj.weight"]
    edited.revert_all()
    assert edited.is_pristine()


def test_hyperparams_read_easyedit_files_and_check_the_method(tmp_path):
    hp = kedit.HyperParams.from_hparams("hparams/ROME/smollm2-135m.yaml")
    assert hp.alg_name == "ROME" and hp.layers == [5]
    with pytest.raises(ValueError, match="alg_name is `ROME`"):
        kedit.FTHyperParams.from_hparams("hparams/ROME/smollm2-135m.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("alg_name: ROME\nlayers: [5]\nlayers: [6]\n")
    with pytest.raises(kedit.KeditError, match="layers"):
        kedit.HyperParams.from_hparams(bad)
    for alias in ("FTHyperParams", "MEMITHyperParams", "GraceHyperParams", "WISEHyperParams",
                  "SERACHparams", "MENDHyperParams", "IKEHyperParams", "AlphaEditHyperParams"):
        assert issubclass(getattr(kedit, alias), kedit.HyperParams)
