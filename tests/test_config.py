"""Configuration: defaults, YAML files, `--set` overrides and the error messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmgym.config import ConfigError, GenerationSettings, TrainConfig, dump_config, load_config, parse_overrides


def test_defaults_are_valid() -> None:
    config = load_config()
    assert config == TrainConfig()
    assert config.task == "sentiment" and config.algo == "ppo"
    assert config.model.name == "smollm2-135m-instruct" and config.model.value_head == "shared"
    assert config.kl.controller == "adaptive" and config.kl.target == 4.0
    assert config.ppo.lr == 1e-5 and config.ppo.clip_range == 0.2
    assert config.generation.max_new_tokens is None


def test_set_overrides_are_typed_as_yaml() -> None:
    config = load_config(
        overrides=[
            "ppo.lr=3e-3",
            "ppo.epochs=2",
            "eval.every=0",
            "generation.do_sample=false",
            "ppo.value_clip=null",
            "name=my run",
            "task_args.per_token=true",
            "task_args.target=movie",
            "generation.min_new_tokens=2",
        ]
    )
    assert config.ppo.lr == 3e-3 and isinstance(config.ppo.lr, float)
    assert config.ppo.epochs == 2 and isinstance(config.ppo.epochs, int)
    assert config.eval.every == 0
    assert config.generation.do_sample is False
    assert config.ppo.value_clip is None
    assert config.name == "my run"
    assert config.task_args == {"per_token": True, "target": "movie"}
    assert config.generation.min_new_tokens == 2
    assert parse_overrides(["a.b=1.5e-5", "c=yes", "d=", "e=[1, 2]", "f=x=y", " g = 3"]) == [
        ("a.b", 1.5e-5),
        ("c", True),
        ("d", ""),
        ("e", [1, 2]),
        ("f", "x=y"),
        ("g", 3),
    ]


def test_set_scientific_notation_without_dot_is_a_float() -> None:
    assert parse_overrides(["task_args.eps=1e-5"]) == [("task_args.eps", 1e-5)]


def test_model_shorthand_and_later_subkeys() -> None:
    assert load_config(overrides=["model=tiny"]).model.name == "tiny"
    config = load_config(overrides=["model=tiny-seq2seq", "model.value_head=separate", "model.max_prompt_tokens=32"])
    assert config.model.name == "tiny-seq2seq"
    assert config.model.value_head == "separate"
    assert config.model.max_prompt_tokens == 32


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: toy\nmodel: tiny\niterations: 7\nppo:\n  lr: 0.001\n  epochs: 3\n", encoding="utf-8")
    config = load_config(path, ["ppo.epochs=1"])
    assert (config.task, config.model.name, config.iterations) == ("toy", "tiny", 7)
    assert config.ppo.lr == 0.001 and config.ppo.epochs == 1
    assert config.ppo.minibatch_size == 8  # untouched default
    # dump_config round-trips.
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config), encoding="utf-8")
    assert load_config(again) == config
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_config(empty) == TrainConfig()


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("ppo.lrr", "ppo.lr"), ("iteration", "iterations"), ("generation.max_new_token", "generation.max_new_tokens")],
)
def test_unknown_key_is_named_with_nearest_suggestion(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"{key}=1"])
    message = str(info.value)
    assert f"unknown config key {key!r}" in message
    assert f"did you mean {suggestion!r}" in message


def test_unknown_key_without_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["zzzzqqq=1"])
    assert "'zzzzqqq'" in str(info.value) and "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("ppo.lr=fast", "ppo.lr"),
        ("iterations=0", "iterations"),
        ("model.value_head=both", "model.value_head"),
        ("generation.temperature=-1", "generation.temperature"),
        ("eval.split=dev", "eval.split"),
        ("ppo.epochs=[1]", "ppo.epochs"),
    ],
)
def test_wrong_type_or_value_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert str(info.value).startswith("invalid config: ")
    assert f"{field}:" in str(info.value)


def test_set_into_a_non_section_and_bad_syntax() -> None:
    with pytest.raises(ConfigError, match="'iterations' is not a section"):
        load_config(overrides=["iterations=3", "iterations.x=1"])
    with pytest.raises(ConfigError, match="iterations: "):
        load_config(overrides=["iterations.x=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["ppo.lr"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert "nope.yaml" in str(info.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping, got list"):
        load_config(listing)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping, got int"):
        load_config(scalar)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ppo: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    typo = tmp_path / "typo.yaml"
    typo.write_text("ppo:\n  lrr: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"did you mean 'ppo\.lr'"):
        load_config(typo)


def test_min_new_tokens_above_max_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"min_new_tokens \(9\) > max_new_tokens \(4\)"):
        load_config(overrides=["generation.max_new_tokens=4", "generation.min_new_tokens=9"])
    # Equal is fine, and without a max (task default) any min is accepted here.
    assert load_config(overrides=["generation.max_new_tokens=4", "generation.min_new_tokens=4"])
    assert load_config(overrides=["generation.min_new_tokens=9"]).generation.min_new_tokens == 9


def test_generation_hf_settings() -> None:
    greedy = GenerationSettings(do_sample=False)
    assert greedy.hf_settings(12) == {"max_new_tokens": 12, "min_new_tokens": 0, "do_sample": False}
    sampled = GenerationSettings(max_new_tokens=5, top_k=3)
    assert sampled.hf_settings(12) == {
        "max_new_tokens": 5,
        "min_new_tokens": 0,
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 3,
        "top_p": 1.0,
    }
