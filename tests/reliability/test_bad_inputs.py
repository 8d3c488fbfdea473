"""Every bad input gives one clear error on the command line, and leaves runs/ untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmgym.cli import app
from lmgym.models.tiny import tiny_model


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    out: dict[str, Path] = {"root": root}

    def write(name: str, content: str | bytes) -> Path:
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        out[name] = path
        return path

    good_rows = [{"prompt": f"Write about item {i}", "references": [f"item {i}"]} for i in range(12)]
    write("good.jsonl", "".join(json.dumps(r) + "\n" for r in good_rows))
    write("empty.jsonl", "")
    write("wrong_column.jsonl", '{"text": "hello"}\n')
    write("latin1.jsonl", '{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    write("broken.jsonl", '{"prompt": "ok"}\n{"prompt": \n')
    write("data.parquet", "not really")
    write("blank_prompt.jsonl", '{"prompt": "   "}\n')
    write("bad_refs.jsonl", '{"prompt": "hi", "references": 3}\n')
    write("not_object.jsonl", "[1, 2]\n")
    write("bad.json", '{"prompt": "a single object, not a list"}')
    write("syntax.yaml", "ppo: {lr: [1\n")
    write("list.yaml", "- ppo\n- lr\n")
    write("unsafe.yaml", '!!python/object/apply:os.system ["echo pwned"]\n')
    write("latin1.yaml", "name: caf\u00e9\n".encode("latin-1"))
    write("unknown.yaml", "ppo:\n  learning_rate: 0.1\n")
    write("no_refs.jsonl", "".join(json.dumps({"prompt": f"Write about item {i}"}) + "\n" for i in range(12)))
    write("comparisons.jsonl", '{"prompt": "p", "chosen": "good", "rejected": "bad"}\n{"prompt": "p", "chosen": "x"}\n')
    # A user's reward module with a bug in it (imported by name: its folder is put on sys.path).
    write("user_rewards_lmgym_test.py", "def broken(prompts, generations, references, meta):\n    return [1 / 0]\n")
    out["hub_imdb"] = Path(__file__).resolve().parents[2] / "configs" / "grue" / "hub" / "imdb" / "ppo.yaml"

    model, tok = tiny_model()
    no_config = root / "no_config"
    no_config.mkdir()
    (no_config / "weights.safetensors").write_bytes(b"")
    no_tokenizer = root / "no_tokenizer"
    model.save_pretrained(no_tokenizer)
    pickled = root / "pickled"
    model.config.save_pretrained(pickled)
    tok.save_pretrained(pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    out.update(no_config=no_config, no_tokenizer=no_tokenizer, pickled=pickled)
    return out


def file_task(path: Path | str, *more: str) -> list[str]:
    return ["task=file", f"task_args.train={path}", *more]


# (case id, --set overrides or a config path, a fragment the error must contain)
CASES: list[tuple[str, list[str], str]] = [
    # config keys and types
    ("unknown key", ["lerning_rate=1"], "unknown config key 'lerning_rate'"),
    ("misspelt nested key", ["ppo.lrr=1e-3"], "did you mean 'ppo.lr'"),
    ("string for a float", ["ppo.lr=fast"], "ppo.lr"),
    ("negative lr", ["ppo.lr=-1"], "ppo.lr"),
    ("zero iterations", ["iterations=0"], "iterations"),
    ("unknown algo", ["algo=ppoo"], "algo"),
    ("zero batch", ["rollout.batch_size=0"], "rollout.batch_size"),
    ("zero clip range", ["ppo.clip_range=0"], "ppo.clip_range"),
    ("unknown kl controller", ["kl.controller=sometimes"], "kl.controller"),
    ("negative kl coef", ["kl.coef=-0.1"], "kl.coef"),
    ("top_p above 1", ["generation.top_p=1.5"], "generation.top_p"),
    ("zero temperature", ["generation.temperature=0"], "generation.temperature"),
    ("min above max tokens", ["generation.max_new_tokens=4", "generation.min_new_tokens=9"], "min_new_tokens (9)"),
    ("greedy with temperature", ["generation.do_sample=false", "generation.temperature=0.7"], "temperature=0.7"),
    ("greedy with top_k", ["generation.do_sample=false", "generation.top_k=5"], "top_k=5"),
    ("unknown dtype", ["model.dtype=float8"], "model.dtype"),
    ("unknown value head", ["model.value_head=big"], "model.value_head"),
    ("unknown eval split", ["eval.split=dev"], "eval.split"),
    ("keep zero checkpoints", ["checkpoint.keep=0"], "checkpoint.keep"),
    ("negative kl bound", ["guards.max_kl=-1"], "guards.max_kl"),
    ("zero threads", ["threads=0"], "threads"),
    ("unknown long_prompts", ["model.long_prompts=drop"], "model.long_prompts"),
    ("override without =", ["ppo.lr"], "expects key=value"),
    ("batch not a multiple of k", ["algo=rloo", "rollout.batch_size=6", "rloo.k=4"], "multiple of"),
    # tasks and task arguments
    ("unknown task", ["task=nope"], "unknown task 'nope'"),
    ("unknown task argument", ["task_args.colour=red"], "task_args for task 'toy'"),
    ("file task without train", ["task=file"], "needs task_args.train"),
    # dataset files
    ("missing dataset file", file_task("/nonexistent/train.jsonl"), "does not exist"),
    ("empty dataset file", file_task("{empty.jsonl}"), "has no rows"),
    ("wrong column", file_task("{wrong_column.jsonl}"), "no 'prompt' field"),
    ("not UTF-8", file_task("{latin1.jsonl}"), "is not UTF-8"),
    ("invalid JSON line", file_task("{broken.jsonl}"), "line 2 is not valid JSON"),
    ("unsupported extension", file_task("{data.parquet}"), "is not a valid parquet file"),
    ("blank prompt", file_task("{blank_prompt.jsonl}"), "must be a non-empty string"),
    ("references not strings", file_task("{bad_refs.jsonl}"), "must be a string or a list of strings"),
    ("row not an object", file_task("{not_object.jsonl}"), "not an object"),
    ("json not a list", file_task("{bad.json}"), "list of objects"),
    ("file task without a reward", file_task("{good.jsonl}"), "no default reward"),
    ("too few rows to hold out", file_task("{wrong_column.jsonl}", "task_args.prompt_field=text"), "too few"),
    # models
    ("model path missing", ["model.name=/nonexistent/model"], "does not exist"),
    ("model folder without config", ["model.name={no_config}"], "has no config.json"),
    ("model folder without tokenizer", ["model.name={no_tokenizer}"], "has no tokenizer"),
    ("pickle weights only", ["model.name={pickled}"], "does not load pickle files"),
    # prompts and context
    ("prompt too long", ["model.max_prompt_tokens=2", "model.long_prompts=error"], "longer than model.max_prompt"),
    ("context overflow", ["model.max_prompt_tokens=500", "generation.max_new_tokens=100"], "context of 512"),
    # config files
    ("config file missing", ["@/nonexistent/config.yaml"], "does not exist"),
    ("config file YAML syntax", ["@{syntax.yaml}"], "not valid YAML"),
    ("config file not a mapping", ["@{list.yaml}"], "mapping"),
    ("config file with a python tag", ["@{unsafe.yaml}"], "not valid YAML"),
    ("config file not UTF-8", ["@{latin1.yaml}"], "latin1.yaml"),
    ("config file unknown key", ["@{unknown.yaml}"], "did you mean 'ppo.lr'"),
    # rewards named in the config
    ("reward module missing", ["reward.name=no_such_module_xyz:score"], "cannot import module 'no_such_module_xyz'"),
    ("reward function missing", ["reward.name=lmgym.rewards.base:no_such_fn"], "has no attribute 'no_such_fn'"),
    ("reward name misspelt", ["reward.name=bleuu"], "did you mean 'bleu'"),
    # a user's bug: one line naming the reward, the exception and the user's file:line (the folder is removed)
    (
        "user reward raises",
        ["reward.name=user_rewards_lmgym_test:broken"],
        "reward 'broken' raised ZeroDivisionError at {user_rewards_lmgym_test.py}:2: division by zero",
    ),
    ("reward needs references", file_task("{no_refs.jsonl}", "reward=bleu"), "sample 0 has no reference"),
    ("comparisons with a broken row", ["algo=dpo", "dpo.data={comparisons.jsonl}"], "row 2 has no 'rejected' field"),
    # settings that cannot work here, and the hub without a network
    ("fp16 on a CPU", ["accelerate.mixed_precision=fp16"], "fp16 needs a GPU"),
    ("hub task offline", ["@{hub_imdb}", "task=imdb"], "could not load 'stanfordnlp/imdb'"),
    # run folders
    ("resume a run that does not exist", ["!resume", "name=ghost"], "there is no run at"),
    ("run exists without --resume", ["name=keep"], "--resume"),
]


def test_enough_distinct_cases() -> None:
    assert len(CASES) >= 40
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("case_id", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(
    tmp_path: Path, files: dict[str, Path], case_id: str, args: list[str], fragment: str, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub task must fail fast, as on a machine without a network
    monkeypatch.syspath_prepend(str(files["root"]))
    runs = tmp_path / "runs"
    (runs / "keep" / "checkpoints").mkdir(parents=True)
    (runs / "keep" / "config.yaml").write_text("task: toy\n", encoding="utf-8")
    (runs / "keep" / "metrics.jsonl").write_text('{"iteration": 1}\n', encoding="utf-8")
    before = tree(runs)

    for name, path in files.items():
        args = [a.replace("{" + name + "}", str(path)) for a in args]
        fragment = fragment.replace("{" + name + "}", str(path))
    command = ["train"]
    sets = ["model.name=tiny", "task=toy", "threads=1", f"run_dir={runs}", "name=bad"]
    for arg in args:
        if arg.startswith("@"):
            command.append(arg[1:])
        elif arg == "!resume":
            command.append("--resume")
        else:
            sets.append(arg)
    for s in sets:
        command += ["--set", s]

    result = CliRunner().invoke(app, command)
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, f"{case_id}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    assert output.count("error:") == 1, output
    assert " ".join(fragment.split()) in output, output
    assert tree(runs) == before, f"{case_id} changed {runs}"


def test_debug_shows_the_traceback_of_a_users_bug(tmp_path: Path, files: dict[str, Path], monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(files["root"]))
    sets = ["model.name=tiny", "threads=1", f"run_dir={tmp_path}", "reward.name=user_rewards_lmgym_test:broken"]
    command = ["train", *(arg for s in sets for arg in ("--set", s))]
    plain = CliRunner().invoke(app, command)
    assert plain.exit_code == 2 and "Traceback" not in plain.output and "--debug" in plain.output
    debug = CliRunner().invoke(app, ["--debug", *command])
    assert debug.exit_code == 2
    assert "Traceback" in debug.output and "return [1 / 0]" in debug.output  # the user's own line
    assert " ".join(debug.output.split()).count("error:") == 1
