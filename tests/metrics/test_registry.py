"""The registry keeps the names other teams rely on; `lmgym metrics`; WordNet arranged for NLTK offline."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmgym.cli import app
from lmgym.metrics.base import MissingRequirement
from lmgym.metrics.wordnet import DATABASE_FILES, LEXNAMES, arrange_nltk_wordnet, system_wordnet_dir
from lmgym.rewards.base import FunctionReward
from lmgym.rewards.catalog import availability, load_metric, metric_infos
from lmgym.rewards.metric import RewardMetric

CONTRACT = [
    "bleu",
    "sacrebleu",
    "chrf",
    "ter",
    "rouge",
    "rouge_l_max",
    "meteor",
    "cider",
    "spice",
    "bertscore",
    "mauve",
    "bleurt",
    "summac",
    "diversity",
    "perplexity",
    "parent",
    "intent_accuracy",
    "commongen_coverage",
    "commongen_copy_penalty",
    "r3",
]


def test_every_contract_name_is_registered() -> None:
    infos = metric_infos()
    assert set(CONTRACT) <= set(infos)
    assert not infos["mauve"].per_sample and infos["bleu"].per_sample


def test_cli_lists_every_metric_with_its_availability() -> None:
    result = CliRunner().invoke(app, ["metrics"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in CONTRACT:
        assert name in result.output
    ok, why = availability(metric_infos()["bleurt"])
    assert not ok and "checkpoint" in why  # BLEURT needs a checkpoint nobody supplied
    assert availability(metric_infos()["rouge"]) == (True, "")
    ok, why = availability(metric_infos()["classifier"])
    assert not ok and why.startswith("needs options")


def test_missing_requirement_names_what_to_supply(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    hidden = {"sacrebleu", "bert_score"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(MissingRequirement, match="metric 'ter' cannot run: `pip install sacrebleu`"):
        load_metric("ter")([""], ["a"], [["a"]], [{}])
    # A package of the `metrics` extra: the extra's pip command, in the error and in `lmgym metrics`.
    with pytest.raises(MissingRequirement, match=r"`pip install 'lmgym\[metrics\]'` \(bert-score\)"):
        load_metric("bertscore")([""], ["a"], [["a"]], [{}])
    lines = CliRunner().invoke(app, ["metrics"], env={"COLUMNS": "200"}).output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("│ bertscore "))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("│      "))
    here = " ".join(line.split("│")[4].strip() for line in lines[start:end])  # the row's "here" column
    assert "no: `pip install 'lmgym[metrics]'` (bert-score)" in here


def test_any_reward_is_a_metric() -> None:
    metric = RewardMetric(FunctionReward(lambda p, g, r, m: [float(len(x)) for x in g], name="chars"))
    result = metric(["", ""], ["ab", "abcd"], [[], []], [{}, {}])
    assert result["chars"].per_sample == [2.0, 4.0] and result["chars"].corpus == 3.0


def test_wordnet_is_copied_with_a_generated_lexnames(tmp_path: Path) -> None:
    source = system_wordnet_dir()
    if source is None:
        pytest.skip("no system WordNet (make test installs Debian's wordnet-base and wordnet-sense-index)")
    folder = arrange_nltk_wordnet(source, tmp_path)
    assert folder == tmp_path / "corpora" / "wordnet"
    for name in DATABASE_FILES:
        assert not (folder / name).is_symlink()
        assert filecmp.cmp(folder / name, source / name, shallow=False)
    lines = (folder / "lexnames").read_text().splitlines()
    assert len(lines) == 45 == len(LEXNAMES)
    assert lines[5] == "05\tnoun.animal\t1" and lines[44] == "44\tadj.ppl\t3"
    # Every lexicographer file number used in the database names a line of lexnames.
    used = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if not line.startswith("  "):
                used.add(int(line.split()[1]))
    assert used == set(range(45))


def test_nltk_reads_the_arranged_wordnet() -> None:
    from lmgym.metrics.wordnet import load_wordnet

    wordnet = load_wordnet()
    assert wordnet.get_version() == "3.0"
    assert wordnet.synset("dog.n.01").lexname() == "noun.animal"
    assert "auto" in wordnet.synset("car.n.01").lemma_names()
