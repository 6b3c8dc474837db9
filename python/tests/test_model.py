import threading
import time

import numpy as np
import pytest

import kedit


def test_generates_greedily_and_deterministically(model):
    text = model.generate("The capital of France is", max_new_tokens=4)
    assert "Paris" in text
    assert model.generate(["The capital of France is"], max_new_tokens=4) == [text]


def test_captures_sites_as_arrays_that_agree_with_each_other(model):
    prompt = "The Eiffel Tower is located in the city of"
    n = len(model.encode(prompt))
    c = model.capture(prompt, ["blocks.4.resid_post", "blocks.5.resid_pre", "blocks.5.mlp.key", "logits"])
    cfg = model.config
    assert c["blocks.5.mlp.key"].shape == (1, n, cfg["d_ff"])
    assert c["logits"].shape == (1, n, cfg["vocab_size"])
    assert c["blocks.5.mlp.key"].dtype == np.float32
    # The residual leaving block 4 is the one entering block 5.
    np.testing.assert_array_equal(c["blocks.4.resid_post"], c["blocks.5.resid_pre"])
    # The logits' argmax at the last position is the greedy next token.
    next_id = int(c["logits"][0, -1].argmax())
    assert model.decode([next_id]) == model.generate(prompt, max_new_tokens=1)


def test_errors_are_python_exceptions_with_kedits_messages(model, tmp_path):
    with pytest.raises(ValueError, match="site"):
        model.capture("x", ["blocks.5.nowhere"])
    missing = tmp_path / "missing.gguf"
    with pytest.raises(kedit.KeditError, match="missing.gguf") as err:
        kedit.Model.load(missing)
    assert isinstance(err.value, RuntimeError)
    editor = kedit.Editor(model)
    with pytest.raises(kedit.KeditError, match="unknown method `nope`"):
        editor.edit("nope", {"prompt": "a b", "target_new": "c"})
    with pytest.raises(ValueError, match="target_new"):
        editor.edit("ft-m", {"prompt": "a b"})


def test_long_calls_release_the_gil(model):
    ticks = []
    done = threading.Event()

    def work():
        model.generate("The capital of France is", max_new_tokens=24)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.monotonic())
        time.sleep(0.005)
    t.join()
    # Python code kept running beside the generation: it held no GIL.
    assert len(ticks) > 5


def test_the_registry_is_visible(model):
    names = {m["name"] for m in kedit.methods()}
    assert {"rome", "ft-m", "memit", "grace", "wise", "serac", "ike"} <= names
