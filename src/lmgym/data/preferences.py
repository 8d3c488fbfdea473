"""Datasets for learning from comparisons and from scored text.

Three record types, each loadable from a JSONL/JSON file with every field checked (a problem names
the file, the row and the field):

- `Comparison`: responses to one prompt with the best first, for reward models and DPO.
  ``ranked=True``: a full ranking, best to worst (a pair is a ranking of two);
  ``ranked=False``: a best-of-K choice, where only "the first beats each of the others" is known.
  Rows: ``{"prompt", "chosen", "rejected"[, "margin"]}`` (a pair),
  ``{"prompt", "responses": [best, ..., worst]}`` (a ranking) or
  ``{"prompt", "responses": [...], "best": i}`` (a best-of-K choice).
- `ScoredText`: a prompt, a completion and its reward, for offline RL (ILQL). Rows:
  ``{"prompt", "completion", "reward"}`` or ``{"prompt", "completion", "token_rewards": [...]}``
  (one reward per completion token, EOS included, under the policy's tokenizer); either may carry
  ``"completion_ids"``, the exact tokens (logged generations keep them: re-encoding text can differ).
- `Demonstration`: a prompt and a target completion, for supervised fine-tuning. Rows:
  ``{"prompt", "completion"}``.

It also makes data where none is given: comparisons ranked by a hidden scoring rule (so that a
learned reward model can be checked against the rule it must recover), and logged generations of a
policy scored by a reward (the behaviour data of offline RL, and on-policy comparisons for RLHF).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmgym.data.rows import DatasetError, read_rows
from lmgym.data.sample import Sample
from lmgym.errors import InputError
from lmgym.rewards.base import Reward, check_scores
from lmgym.rewards.lexicon import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS


@dataclass(frozen=True)
class Comparison:
    """Responses to ``prompt``, best first; see the module docstring for ``ranked``."""

    id: str
    prompt: str
    responses: tuple[str, ...]
    ranked: bool = True
    margin: float = 0.0  # how much better the first is (Llama 2's margin); only pairs carry one

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs this comparison asserts: all K-choose-2 of a ranking, K−1 of a choice."""
        k = len(self.responses)
        if self.ranked:
            return list(itertools.combinations(range(k), 2))
        return [(0, j) for j in range(1, k)]


@dataclass(frozen=True)
class ScoredText:
    """A completion of ``prompt`` and its reward: one sequence-level ``reward`` (credited to the last
    token) or ``token_rewards`` (one per completion token). ``completion_ids`` are the exact tokens
    when the completion came from the policy itself (decoding and re-encoding may differ)."""

    id: str
    prompt: str
    completion: str
    reward: float | None = None
    token_rewards: tuple[float, ...] | None = None
    completion_ids: tuple[int, ...] | None = None

    @property
    def total_reward(self) -> float:
        return float(sum(self.token_rewards)) if self.token_rewards is not None else float(self.reward or 0.0)


@dataclass(frozen=True)
class Demonstration:
    """A prompt and the completion supervised fine-tuning imitates."""

    id: str
    prompt: str
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)


# --- loading -------------------------------------------------------------------------------------


def _rows(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DatasetError(f"dataset file {path}: unsupported extension {path.suffix!r} (use .jsonl or .json)")
    return str(path), read_rows(path)


def _text(source: str, n: int, row: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    if name not in row:
        raise DatasetError(f"{source} row {n} has no {name!r} field (it has {sorted(row)})")
    value = row[name]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DatasetError(f"{source} row {n}: {name!r} must be a non-empty string, got {value!r:.60}")
    return value


def _number(source: str, n: int, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{source} row {n}: {name!r} must be a finite number, got {value!r:.60}")
    return float(value)


def _row_id(source: str, n: int, row: dict[str, Any]) -> str:
    return str(row["id"]) if "id" in row else f"{Path(source).stem}-{n}"


LABEL_JUDGMENTS = ("pick", "tie", "skip", "undo")  # the `judgment` markers of `lmgym label` rows


def comparison_from_row(source: str, n: int, row: dict[str, Any]) -> Comparison:
    """One row of a comparison file (see the module docstring for the three shapes)."""
    prompt = _text(source, n, row, "prompt", allow_empty=True)
    if "chosen" in row or "rejected" in row:
        chosen, rejected = _text(source, n, row, "chosen"), _text(source, n, row, "rejected")
        if chosen == rejected:
            raise DatasetError(f"{source} row {n}: 'chosen' and 'rejected' are the same text")
        margin = _number(source, n, "margin", row["margin"]) if "margin" in row else 0.0
        return Comparison(_row_id(source, n, row), prompt, (chosen, rejected), True, margin)
    if "responses" not in row:
        raise DatasetError(
            f"{source} row {n} needs 'chosen' and 'rejected', or 'responses' (best first), or 'responses' and "
            f"'best'; it has {sorted(row)}"
        )
    responses = row["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DatasetError(f"{source} row {n}: 'responses' must be a list of at least 2 strings, got {responses!r:.60}")
    for i, text in enumerate(responses):
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{source} row {n}: 'responses'[{i}] must be a non-empty string, got {text!r:.60}")
    if len(set(responses)) < len(responses):
        raise DatasetError(f"{source} row {n}: 'responses' holds the same text twice")
    if "best" not in row:
        return Comparison(_row_id(source, n, row), prompt, tuple(responses), True)
    best = row["best"]
    if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < len(responses):
        raise DatasetError(f"{source} row {n}: 'best' must be an index in [0, {len(responses)}), got {best!r:.60}")
    ordered = (responses[best], *responses[:best], *responses[best + 1 :])
    return Comparison(_row_id(source, n, row), prompt, ordered, False)


def load_comparisons(path: str | Path) -> list[Comparison]:
    """The comparisons of a file. Rows that `lmgym label` writes carry a ``judgment``: "pick" rows are pairs like
    any other; "tie" and "skip" rows state no preference and are left out; an "undo" row withdraws the earlier
    row whose id it names in ``undoes`` (an annotator's undo is appended, never rewritten into the file)."""
    source, rows = _rows(path)
    kept: list[tuple[str, Comparison | None]] = []  # (row id, comparison; None for a tie or skip an undo may name)
    for n, row in enumerate(rows, start=1):
        judgment = row.get("judgment")
        if judgment is not None and judgment not in LABEL_JUDGMENTS:
            raise DatasetError(f"{source} row {n}: 'judgment' must be one of {LABEL_JUDGMENTS}, got {judgment!r:.60}")
        if judgment == "undo":
            undone = row.get("undoes")
            where = next((i for i in reversed(range(len(kept))) if kept[i][0] == undone), None)
            if where is None:
                raise DatasetError(f"{source} row {n}: 'undoes' must name the id of an earlier row, got {undone!r:.60}")
            del kept[where]
            continue
        comparison = None if judgment in ("tie", "skip") else comparison_from_row(source, n, row)
        kept.append((_row_id(source, n, row), comparison))
    return [c for _, c in kept if c is not None]


def load_scored_texts(path: str | Path) -> list[ScoredText]:
    source, rows = _rows(path)
    out = []
    for n, row in enumerate(rows, start=1):
        prompt = _text(source, n, row, "prompt", allow_empty=True)
        completion = _text(source, n, row, "completion")
        if ("reward" in row) == ("token_rewards" in row):
            raise DatasetError(
                f"{source} row {n} needs exactly one of 'reward' or 'token_rewards'; it has {sorted(row)}"
            )
        ids = row.get("completion_ids")
        if ids is not None and (
            not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
        ):
            raise DatasetError(f"{source} row {n}: 'completion_ids' must be a non-empty list of token ids")
        exact = tuple(ids) if ids is not None else None
        if "reward" in row:
            reward = _number(source, n, "reward", row["reward"])
            out.append(ScoredText(_row_id(source, n, row), prompt, completion, reward, None, exact))
            continue
        rewards = row["token_rewards"]
        if not isinstance(rewards, list) or not rewards:
            raise DatasetError(f"{source} row {n}: 'token_rewards' must be a non-empty list of numbers")
        values = tuple(_number(source, n, f"token_rewards[{i}]", v) for i, v in enumerate(rewards))
        if exact is not None and len(exact) != len(values):
            raise DatasetError(f"{source} row {n}: {len(values)} 'token_rewards' for {len(exact)} 'completion_ids'")
        out.append(ScoredText(_row_id(source, n, row), prompt, completion, None, values, exact))
    return out


def load_demonstrations(path: str | Path) -> list[Demonstration]:
    source, rows = _rows(path)
    return [
        Demonstration(
            _row_id(source, n, row), _text(source, n, row, "prompt", True), _text(source, n, row, "completion")
        )
        for n, row in enumerate(rows, start=1)
    ]


def demonstrations_from_references(samples: Sequence[Sample], source: str = "task") -> list[Demonstration]:
    """One demonstration per (prompt, reference) of ``samples``; an error when none has a reference."""
    out = [
        Demonstration(f"{s.id}/{j}", s.prompt, ref, s.meta)
        for s in samples
        for j, ref in enumerate(s.references)
        if ref.strip()
    ]
    if not out:
        raise DatasetError(
            f"{source}: no sample has a reference to imitate; give sft.data a JSONL of {{prompt, completion}} rows"
        )
    return out


def write_jsonl(path: str | Path, records: Sequence[Comparison | ScoredText | Demonstration]) -> Path:
    """Write records in the row format their loader reads (atomically: a temporary file is renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(to_row(r), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def to_row(record: Comparison | ScoredText | Demonstration) -> dict[str, Any]:
    if isinstance(record, Comparison):
        if len(record.responses) == 2 and record.ranked:
            row = {"id": record.id, "prompt": record.prompt, "chosen": record.responses[0]}
            row["rejected"] = record.responses[1]
            return {**row, "margin": record.margin} if record.margin else row
        row = {"id": record.id, "prompt": record.prompt, "responses": list(record.responses)}
        return row if record.ranked else {**row, "best": 0}
    if isinstance(record, ScoredText):
        row: dict[str, Any] = {"id": record.id, "prompt": record.prompt, "completion": record.completion}
        if record.token_rewards is not None:
            row["token_rewards"] = list(record.token_rewards)
        else:
            row["reward"] = record.reward
        if record.completion_ids is not None:  # the exact tokens (decoding and re-encoding may differ)
            row["completion_ids"] = list(record.completion_ids)
        return row
    return {"id": record.id, "prompt": record.prompt, "completion": record.completion}


# --- scoring arbitrary text with a reward ------------------------------------------------------------


def score_texts(
    reward: Reward,
    tokenizer,
    prompts: Sequence[str],
    texts: Sequence[str],
    meta: Sequence[dict[str, Any]] | None = None,
    references: Sequence[Sequence[str]] | None = None,
) -> list[float]:
    """Sequence-level scores of ``texts`` as if the policy had generated them: rewards that look at the
    tokens (``meta["gen_tokens"]``) see the texts' tokens under ``tokenizer``, EOS included (when it has one)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []  # encoders (BERT) have none
    token_ids = [ids + eos for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    metas = [
        {**(meta[i] if meta else {}), "gen_token_ids": ids, "gen_tokens": [tokenizer.decode([t]) for t in ids]}
        for i, ids in enumerate(token_ids)
    ]
    refs = [list(r) for r in references] if references is not None else [[] for _ in texts]
    raw = reward(list(prompts), list(texts), refs, metas)
    scores = check_scores(reward, raw, [len(ids) for ids in token_ids])
    return [float(sum(s)) if isinstance(s, list) else float(s) for s in scores]


# --- a hidden rule that ranks responses -----------------------------------------------------------


def random_responses(
    rng: random.Random, n: int, vocabulary: Sequence[str], min_words: int, max_words: int
) -> list[str]:
    """``n`` distinct word strings with a leading space (they continue a prompt)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        text = " " + " ".join(rng.choice(vocabulary) for _ in range(rng.randint(min_words, max_words)))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def rank_by_rule(
    prompt_id: str,
    prompt: str,
    responses: Sequence[str],
    scores: Sequence[float],
    ranked: bool = True,
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> Comparison | None:
    """The comparison a rater following ``scores`` would give, or None when all scores tie.

    ``noise`` > 0 makes the rater a Bradley–Terry one: the order is drawn by the Plackett–Luce model
    with weights exp(score / noise) (a pair is ordered correctly with probability σ(Δ/noise)).
    Responses tied with a better one are dropped, so every asserted pair is a strict preference.
    """
    if noise > 0:
        rng = rng or random.Random(0)
        keys = [s / noise - math.log(-math.log(max(rng.random(), 1e-12))) for s in scores]  # Gumbel-max trick
    else:
        keys = list(scores)
    order = sorted(range(len(responses)), key=lambda i: -keys[i])
    kept = [order[0]]
    for i in order[1:]:
        if all(keys[i] != keys[j] for j in kept):
            kept.append(i)
    if len(kept) < 2:
        return None
    if not ranked:
        kept = [kept[0], *(i for i in range(len(responses)) if i != kept[0] and keys[i] < keys[kept[0]])]
    return Comparison(prompt_id, prompt, tuple(responses[i] for i in kept), ranked)


def hidden_rule_comparisons(
    prompts: Sequence[Sample],
    rule: Reward,
    tokenizer,
    k: int = 2,
    per_prompt: int = 1,
    seed: int = 0,
    vocabulary: Sequence[str] = POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS,
    min_words: int = 3,
    max_words: int = 8,
    ranked: bool = True,
    noise: float = 0.0,
) -> list[Comparison]:
    """Synthetic preference data: for each prompt, ``per_prompt`` sets of ``k`` random word responses,
    ordered by the hidden ``rule`` (any reward; ``tokenizer`` gives token-level rewards their tokens).
    Sets where the rule ties all responses are skipped."""
    if k < 2:
        raise InputError(f"a comparison needs k >= 2 responses, got {k}")
    rng = random.Random(seed)
    drafts = [
        (f"{s.id}/{j}", s, random_responses(rng, k, vocabulary, min_words, max_words))
        for s in prompts
        for j in range(per_prompt)
    ]
    texts = [t for _, _, responses in drafts for t in responses]
    scores = score_texts(
        rule,
        tokenizer,
        [s.prompt for _, s, rs in drafts for _ in rs],
        texts,
        [s.meta for _, s, rs in drafts for _ in rs],
    )
    out = []
    for n, (cid, sample, responses) in enumerate(drafts):
        c = rank_by_rule(cid, sample.prompt, responses, scores[n * k : (n + 1) * k], ranked, noise, rng)
        if c is not None:
            out.append(c)
    return out


def comparisons_from_scored(
    scored: Sequence[ScoredText], mode: str = "ranking", key: Callable[[ScoredText], float] | None = None
) -> list[Comparison]:
    """Group completions by prompt and order each group by reward (ties dropped, see `rank_by_rule`).

    ``mode``: 'ranking' keeps the whole order; 'pair' keeps only best versus worst (DPO's usual data)."""
    if mode not in ("ranking", "pair"):
        raise InputError(f"mode must be 'ranking' or 'pair', got {mode!r}")
    key = key or (lambda s: s.total_reward)
    groups: dict[str, list[ScoredText]] = {}
    for s in scored:
        groups.setdefault(s.prompt, []).append(s)
    out = []
    for n, group in enumerate(groups.values()):
        unique = list({s.completion: s for s in group if s.completion.strip()}.values())
        if len(unique) < 2:
            continue
        c = rank_by_rule(f"{group[0].id.rsplit('/', 1)[0]}#{n}", group[0].prompt, [s.completion for s in unique],
                         [key(s) for s in unique])  # fmt: skip
        if c is None:
            continue
        if mode == "pair":
            c = Comparison(c.id, c.prompt, (c.responses[0], c.responses[-1]), True)
        out.append(c)
    return out
