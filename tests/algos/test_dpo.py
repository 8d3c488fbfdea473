"""DPO, cDPO and IPO losses by hand; training raises the implicit reward margin of the chosen completions."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.algos.dpo import dpo_loss, pairs_of
from lmgym.config import load_config
from lmgym.data.preferences import Comparison
from lmgym.data.registry import load_task


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# Sequence log-probs of two pairs under the policy and the reference.
PI_W, PI_L = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
REF_W, REF_L = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
# log-ratio margins by hand: pair 0: (−3 + 3.5) − (−4 + 3) = 1.5; pair 1: (−5 + 4) − (−2 + 2.5) = −1.5
MARGINS = (1.5, -1.5)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_losses_by_hand(beta: float) -> None:
    eps = 0.2
    sigmoid = sum(-log_sigmoid(beta * m) for m in MARGINS) / 2
    conservative = sum(-(1 - eps) * log_sigmoid(beta * m) - eps * log_sigmoid(-beta * m) for m in MARGINS) / 2
    ipo = sum((m - 1 / (2 * beta)) ** 2 for m in MARGINS) / 2
    for loss_type, expected in (("sigmoid", sigmoid), ("conservative", conservative), ("ipo", ipo)):
        loss, stats = dpo_loss(PI_W, PI_L, REF_W, REF_L, beta, loss_type, eps)
        assert float(loss) == pytest.approx(expected, rel=1e-6), loss_type
    assert float(stats["rewards/chosen"]) == pytest.approx(beta * (0.5 + -1.0) / 2)
    assert float(stats["rewards/rejected"]) == pytest.approx(beta * (-1.0 + 0.5) / 2)
    assert float(stats["rewards/margin"]) == pytest.approx(0.0)
    assert float(stats["rewards/accuracy"]) == 0.5


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # −log σ(−x)


# Three pairs with unequal log-ratios, so that no loss is symmetric under swapping chosen and rejected.
PI_W3, REF_W3 = torch.tensor([-2.0, -6.0, -3.0]), torch.tensor([-3.0, -5.5, -3.5])  # log-ratios 1, −0.5, 0.5
PI_L3, REF_L3 = torch.tensor([-4.0, -1.0, -7.0]), torch.tensor([-3.0, -1.25, -7.75])  # log-ratios −1, 0.25, 0.75
MARGINS3 = (2.0, -0.75, -0.25)  # chosen − rejected log-ratio; their sum (1.0) is not 0


@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.2), (0.5, 0.1), (2.0, 0.3)])
def test_dpo_losses_by_hand_with_asymmetric_margins(beta: float, eps: float) -> None:
    n = len(MARGINS3)
    # −log σ(h) = softplus(−h); cDPO mixes in the flipped label with weight ε; IPO regresses the margin to 1/(2β).
    sigmoid = sum(softplus(-beta * m) for m in MARGINS3) / n
    conservative = sum((1 - eps) * softplus(-beta * m) + eps * softplus(beta * m) for m in MARGINS3) / n
    ipo = sum((m - 1 / (2 * beta)) ** 2 for m in MARGINS3) / n
    # The preference's direction matters: the same pairs read the other way round score differently.
    assert sigmoid != pytest.approx(sum(softplus(beta * m) for m in MARGINS3) / n)
    assert ipo != pytest.approx(sum((-m - 1 / (2 * beta)) ** 2 for m in MARGINS3) / n)
    for loss_type, expected in (("sigmoid", sigmoid), ("conservative", conservative), ("ipo", ipo)):
        loss, stats = dpo_loss(PI_W3, PI_L3, REF_W3, REF_L3, beta, loss_type, eps)
        assert float(loss) == pytest.approx(expected, rel=1e-6), loss_type
        # Implicit rewards β·log-ratio: chosen β·(1 − 0.5 + 0.5)/3, rejected β·(−1 + 0.25 + 0.75)/3 = 0.
        assert float(stats["rewards/chosen"]) == pytest.approx(beta / 3)
        assert float(stats["rewards/rejected"]) == pytest.approx(0.0, abs=1e-7)
        assert float(stats["rewards/margin"]) == pytest.approx(beta * sum(MARGINS3) / n)
        assert float(stats["rewards/accuracy"]) == pytest.approx(1 / 3)  # only pair 0's chosen reward is higher
    with pytest.raises(ValueError, match=r"dpo\.loss must be"):
        dpo_loss(PI_W3, PI_L3, REF_W3, REF_L3, beta, "hinge")


def test_pairs_of_rankings_and_choices() -> None:
    ranking = Comparison("r", "p", ("a", "b", "c"))
    choice = Comparison("c", "p", ("a", "b", "c"), ranked=False)
    assert pairs_of(ranking, "best_worst") == [(0, 2)]
    assert pairs_of(ranking, "all") == [(0, 1), (0, 2), (1, 2)]
    assert pairs_of(choice, "best_worst") == [(0, 1), (0, 2)]


def test_dpo_raises_the_chosen_margin(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = ["movie", "film", "story", "night", "day"]
    rows = [
        {"prompt": s.prompt, "chosen": " the the the the", "rejected": " " + " ".join(rng.choices(words, k=4))}
        for s in load_task("toy").split("train")[:64]
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config(
        None,
        ["task=toy", "model=tiny", "algo=dpo", "iterations=12", f"dpo.data={data}", "dpo.lr=1e-3", "threads=1",
         "eval.num_prompts=8", f"run_dir={tmp_path}", "name=dpo"],
    )  # fmt: skip
    trainer = get_trainer("dpo")(config, console=Console(file=io.StringIO()))

    def margins() -> dict[str, float]:
        with torch.no_grad():
            _, stats = trainer.loss(trainer.examples)
        return {k: float(v) for k, v in stats.items()}

    before = margins()
    assert before["rewards/margin"] == pytest.approx(0.0, abs=1e-5)  # the policy is the reference
    trainer.train()
    after = margins()
    assert after["rewards/margin"] > 0.3  # β·(log-ratio margin), β = 0.1
    assert after["rewards/accuracy"] > 0.95
    records = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["kind"] == "train"]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"} <= logged[-1].keys()
    assert logged[-1]["loss/total"] < logged[0]["loss/total"]
