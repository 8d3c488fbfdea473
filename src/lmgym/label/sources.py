"""What there is to label: pairs of responses to one prompt, made from the sources `lmgym label` names.

- a run folder: each held-out sample's iteration-0 generation against its final one (same sample id), or with
  ``sample=K``, all pairs among K fresh samples of each held-out prompt from the run's final policy;
- a JSONL of ``{prompt, responses: [...]}`` rows: all pairs of each row's responses;
- two run folders (``blind_eval``): the runs' final generations on the same held-out prompts, A against B.

An item's id ends in a hash of its texts, so a judgment in the labels file only ever counts for the very texts
it was made on, even when a source file changes between two starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmgym.data.tasks.files import DatasetError
from lmgym.errors import InputError, MissingFileError


@dataclass(frozen=True)
class Item:
    """Two responses to a prompt; ``source`` says where each came from (its "a" and "b" name the sides)."""

    id: str
    prompt: str
    a: str
    b: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def blind_eval(self) -> bool:
        return self.source.get("kind") == "eval"


def make_item(key: str, prompt: str, a: str, b: str, source: dict[str, Any]) -> Item:
    digest = hashlib.sha256(json.dumps([prompt, a, b], ensure_ascii=False).encode()).hexdigest()[:10]
    return Item(f"{key}#{digest}", prompt, a, b, source)


def _json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSONL file; a last line cut short by a killed writer is ignored."""
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):  # no newline after it: the writer died mid-line
                continue
            raise DatasetError(f"{path} line {n} is not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {n} is a JSON {type(row).__name__}, not an object")
        out.append((n, row))
    return out


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def eval_records(run: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The run's held-out generations by sample id: those of iteration 0 and those of the final evaluation."""
    samples = run / "samples.jsonl"
    if not samples.is_file():
        raise MissingFileError(f"{run} has no samples.jsonl (held-out generations); is it a finished run?")
    first: dict[str, dict[str, Any]] = {}
    final: dict[str, dict[str, Any]] = {}
    for n, row in _json_lines(samples):
        if row.get("kind") != "eval":
            continue
        for name in ("id", "prompt", "generation"):
            if name not in row:
                raise DatasetError(f"{samples} line {n}: an eval record needs {name!r}; it has {sorted(row)}")
        if row.get("final"):
            final[str(row["id"])] = row
        elif row.get("iteration") == 0:
            first[str(row["id"])] = row  # a resumed run may repeat it: the newest wins
    if not final:
        raise MissingFileError(f"{run} has no final evaluation in samples.jsonl; it has not finished")
    return first, final


def run_pairs(run: Path) -> list[Item]:
    """Iteration-0 generation against the final one, per held-out sample id (identical texts left out)."""
    first, final = eval_records(run)
    items = []
    for sid, end in final.items():
        start = first.get(sid)
        if start is None or start["generation"] == end["generation"]:
            continue
        source = {"kind": "run", "run": str(run), "sample_id": sid, "a": "iteration 0"}
        source["b"] = f"final (iteration {end.get('iteration')})"
        items.append(make_item(f"{sid}:0-final", end["prompt"], start["generation"], end["generation"], source))
    if not items:
        raise InputError(f"{run}: no held-out sample has both an iteration-0 and a different final generation")
    return items


def jsonl_pairs(path: Path) -> list[Item]:
    """All pairs of each ``{prompt, responses}`` row's distinct responses."""
    if path.suffix.lower() != ".jsonl":
        raise DatasetError(f"{path}: a source file must be a .jsonl of {{prompt, responses}} rows (or a run folder)")
    items = []
    for n, row in _json_lines(path):
        prompt, responses = row.get("prompt"), row.get("responses")
        if not isinstance(prompt, str):
            raise DatasetError(f"{path} line {n}: 'prompt' must be a string, got {prompt!r:.60}")
        if not isinstance(responses, list) or not all(isinstance(r, str) and r.strip() for r in responses):
            raise DatasetError(f"{path} line {n}: 'responses' must be a list of non-empty strings")
        row_id = str(row.get("id", n))
        distinct = list(dict.fromkeys(responses))
        for (i, a), (j, b) in itertools.combinations(((responses.index(r), r) for r in distinct), 2):
            source = {"kind": "jsonl", "file": str(path), "row": row_id, "a": f"response {i}", "b": f"response {j}"}
            items.append(make_item(f"{row_id}:{i}-{j}", prompt, a, b, source))
    if not items:
        raise InputError(f"{path}: no row has two different responses to compare")
    return items


def eval_pairs(run_a: Path, run_b: Path) -> list[Item]:
    """Blind A/B items: the two runs' final generations for the held-out samples they share (same id and prompt)."""
    _, final_a = eval_records(run_a)
    _, final_b = eval_records(run_b)
    items = []
    for sid, rec_a in final_a.items():
        rec_b = final_b.get(sid)
        if rec_b is None or rec_a["prompt"] != rec_b["prompt"] or rec_a["generation"] == rec_b["generation"]:
            continue
        source = {"kind": "eval", "sample_id": sid, "a": str(run_a), "b": str(run_b)}
        items.append(make_item(f"{sid}:A-B", rec_a["prompt"], rec_a["generation"], rec_b["generation"], source))
    if not items:
        raise InputError(
            f"{run_a} and {run_b} share no held-out sample (same id and prompt) with different final generations"
        )
    return items


def sampled_pairs(run: Path, k: int, seed: int, cache: Path) -> list[Item]:
    """All pairs among ``k`` fresh samples of each held-out prompt from the run's final policy.

    The samples are kept in ``cache`` (written once, atomically) so that a restarted server shows the same texts."""
    if cache.is_file():
        return [Item(**row) for _, row in _json_lines(cache)]
    if k < 2:
        raise InputError(f"--sample needs at least 2 samples per prompt to make a pair, got {k}")
    _, final = eval_records(run)
    texts = _sample_final_policy(run, [(sid, rec["prompt"]) for sid, rec in final.items()], k, seed)
    items = []
    for (sid, rec), completions in zip(final.items(), texts, strict=True):
        distinct = list(dict.fromkeys(c for c in completions if c.strip()))
        for (i, a), (j, b) in itertools.combinations(enumerate(distinct), 2):
            source = {"kind": "sample", "run": str(run), "sample_id": sid, "a": f"sample {i}", "b": f"sample {j}"}
            items.append(make_item(f"{sid}:s{i}-s{j}", rec["prompt"], a, b, source))
    if not items:
        raise InputError(f"{run}: {k} samples per prompt gave no two different completions of any prompt")
    tmp = cache.with_name(f".tmp-{cache.name}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("".join(json.dumps(vars(it), ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
    tmp.replace(cache)
    return items


def _sample_final_policy(run: Path, prompts: list[tuple[str, str]], k: int, seed: int) -> list[list[str]]:
    """``k`` sampled completions of each prompt from ``run``'s final policy, with the run's generation settings."""
    from lmgym.data.registry import load_task
    from lmgym.data.sample import Sample
    from lmgym.rewards.base import FunctionReward
    from lmgym.rollout.logged import log_generations
    from lmgym.rollout.sampling import generation_config, load_policy
    from lmgym.tracking import RunDir

    run_dir = RunDir(run)
    config = run_dir.config()
    task = load_task(config.task, **config.task_args)
    policy = load_policy(str(run_dir.final_model()), config, task)
    generation = generation_config(config.generation, task, policy.tokenizer, do_sample=True)  # greedy repeats itself
    unscored = FunctionReward(lambda p, g, r, m: [0.0] * len(g), name="none")
    samples = [Sample(sid, prompt) for sid, prompt in prompts]
    scored = log_generations(policy, unscored, samples, generation, config.model.max_prompt_tokens, k, seed=seed)
    return [[s.completion for s in scored[i * k : (i + 1) * k]] for i in range(len(samples))]


def load_items(sources: list[Path], sample: int | None, blind_eval: bool, seed: int, out: Path) -> list[Item]:
    """The items of ``lmgym label SOURCE... [--sample K] [--eval]`` (``out``: the labels file)."""
    for path in sources:
        if not path.exists():
            raise MissingFileError(f"{path} does not exist")
    if blind_eval:
        if len(sources) != 2 or not all(is_run(p) for p in sources):
            raise InputError("--eval compares two run folders: lmgym label RUN_A RUN_B --eval --out ...")
        if sample is not None:
            raise InputError("--eval compares the runs' final held-out generations; --sample does not apply")
        return eval_pairs(*sources)
    if len(sources) != 1:
        raise InputError(f"one source (a run folder or a JSONL file) unless --eval; got {len(sources)}")
    (path,) = sources
    if is_run(path):
        if sample is not None:
            return sampled_pairs(path, sample, seed, out.with_name(f"{out.stem}.samples.jsonl"))
        return run_pairs(path)
    if path.is_dir():
        raise MissingFileError(f"{path} is not a run folder (no config.yaml)")
    if sample is not None:
        raise InputError("--sample K samples a run's final policy; the source is a file")
    return jsonl_pairs(path)
