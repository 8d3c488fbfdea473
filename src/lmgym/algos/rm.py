"""Reward models: a scalar head on a text model, fit to human (or rule-made) comparisons.

A comparison orders K responses to one prompt (a pair is K = 2). With r = the reward model's score of
prompt + response, the Bradley–Terry model says P(y_i ≻ y_j) = σ(r_i − r_j), and the losses are

    pairwise   L = −log σ(r_better − r_worse − m)                  every asserted pair its own element
    ranking    L = mean over the comparison's K-choose-2 pairs of the same term  (InstructGPT: the K
               responses of a prompt are scored together, one batch element per comparison)
    best_of_k  L = −log softmax(r_1, ..., r_K)[best]               (a best-of-K choice)

with a margin m = ``rm.margin`` plus the comparison's own margin (Llama 2). Pairwise accuracy, the
share of held-out asserted pairs the model orders correctly, is the quality measure.

`lmgym rm train` writes a folder that `lmgym.rewards.reward_model.RewardModelReward(path)` (or
``rm.path`` in a training config) turns into a reward for any on-policy algorithm:
``reward_model.json`` (trunk kind, pooling, normalisation, held-out accuracy), ``head.safetensors``,
``trunk/`` (the text model and its tokenizer), ``comparisons-train.jsonl`` / ``comparisons-eval.jsonl``
and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from lmgym.config import ConfigError, RewardModelConfig, TrainConfig, dump_config
from lmgym.data.preferences import Comparison, LexiconRule, hidden_rule_comparisons, load_comparisons, write_jsonl
from lmgym.distributed import Distributed
from lmgym.errors import InputError, MissingFileError, RunExistsError
from lmgym.guards import TrainingError
from lmgym.models.encoder import BUNDLED_ENCODER, bundled_encoder_path
from lmgym.models.loading import ModelLoadError, check_safetensors, resolve_model_path
from lmgym.rewards.base import Reward

META_FILE = "reward_model.json"
HEAD_FILE = "head.safetensors"
TRUNK_DIR = "trunk"


# --- the model ---------------------------------------------------------------------------------


def load_trunk(name: str) -> tuple[PreTrainedModel, Any, str]:
    """A text model without its LM head, its tokenizer, and its kind ('encoder', 'causal', 'seq2seq')."""
    if name in ("tiny", "tiny-encoder"):
        from lmgym.models.tiny import tiny_model, tiny_tokenizer

        if name == "tiny":
            model, tokenizer = tiny_model()
            return model.model, tokenizer, "causal"
        tokenizer = tiny_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id,
            )
            return BertModel(config, add_pooling_layer=False), tokenizer, "encoder"
    source = str(bundled_encoder_path()) if name == BUNDLED_ENCODER else resolve_model_path(name)
    if Path(source).is_dir():
        check_safetensors(Path(source))
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, use_safetensors=True)
    except OSError as err:
        raise ModelLoadError(f"could not load reward model trunk {name!r}: {err}") from None
    if getattr(config, "is_encoder_decoder", False):
        kind = "seq2seq"
    elif getattr(config, "is_decoder", False) or any(a.endswith("ForCausalLM") for a in config.architectures or []):
        kind = "causal"
    else:
        kind = "encoder"
    return model, tokenizer, kind


class RewardModel(nn.Module):
    """r(prompt, response) = w·pool(trunk(prompt + response)) + b, then (r − mean) / std when normalised."""

    def __init__(self, trunk: PreTrainedModel, tokenizer, kind: str, pooling: str, max_length: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # a long prompt loses its beginning, never the response
        self.kind = kind
        self.pooling = ("last" if kind == "causal" else "mean") if pooling == "auto" else pooling
        self.max_length = max_length
        hidden = trunk.config.get_text_config().hidden_size if hasattr(trunk.config, "get_text_config") else None
        hidden = hidden or getattr(trunk.config, "d_model", None) or trunk.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, prompts: Sequence[str], responses: Sequence[str], normalized: bool = False) -> torch.Tensor:
        """Scores [N] of each prompt + response (the response continues the prompt's text)."""
        enc = self.tokenizer(
            [p + r for p, r in zip(prompts, responses, strict=True)],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.head.weight.device)
        if self.kind == "seq2seq":
            states = self.trunk.get_encoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        else:
            states = self.trunk(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        hidden = states.last_hidden_state.float()  # [N, T, H]
        mask = enc["attention_mask"].unsqueeze(-1).float()  # [N, T, 1]
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # right padding: the last real token of row i is at lengths[i] − 1
            last = enc["attention_mask"].sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        rewards = self.head(pooled).squeeze(-1)
        return (rewards - self.mean) / self.std if normalized else rewards

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """Normalised rewards, in inference mode and batches."""
        self.eval()
        out: list[float] = []
        for start in range(0, len(responses), batch_size):
            out += self(prompts[start : start + batch_size], responses[start : start + batch_size], True).tolist()
        return out

    def save(self, folder: Path, meta: dict[str, Any]) -> None:
        """Write the model into ``folder`` (a temporary sibling renamed into place: never half-written)."""
        folder = Path(folder)
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.trunk.save_pretrained(tmp / TRUNK_DIR)
        self.tokenizer.save_pretrained(tmp / TRUNK_DIR)
        state = {"weight": self.head.weight, "bias": self.head.bias, "mean": self.mean, "std": self.std}
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / HEAD_FILE))
        info = {"kind": self.kind, "pooling": self.pooling, "max_length": self.max_length, **meta}
        (tmp / META_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        # Keep the run's other files (metrics, comparisons) when re-saving into an existing folder.
        if folder.exists():
            for item in folder.iterdir():
                if not (tmp / item.name).exists():
                    os.replace(item, tmp / item.name)
            shutil.rmtree(folder)
        os.replace(tmp, folder)


def load_reward_model(path: str | Path) -> tuple[RewardModel, dict[str, Any]]:
    """A reward model written by `lmgym rm train`, and its metadata."""
    path = Path(path).expanduser()
    if not (path / META_FILE).exists():
        raise MissingFileError(f"{path} is not a reward model folder (no {META_FILE}); train one with `lmgym rm train`")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    trunk_dir = path / TRUNK_DIR
    check_safetensors(trunk_dir)
    trunk = AutoModel.from_pretrained(trunk_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(trunk_dir)
    model = RewardModel(trunk, tokenizer, meta["kind"], meta["pooling"], meta["max_length"])
    state = load_file(str(path / HEAD_FILE))
    model.head.load_state_dict({"weight": state["weight"], "bias": state["bias"]})
    model.mean.copy_(state["mean"])
    model.std.copy_(state["std"])
    return model.eval(), meta


# --- the losses --------------------------------------------------------------------------------


def comparison_loss(rewards: torch.Tensor, comparison: Comparison, loss: str, margin: float) -> torch.Tensor:
    """The loss of one comparison from the rewards [K] of its responses (best first)."""
    if loss == "best_of_k":
        return -F.log_softmax(rewards, dim=0)[0]
    better, worse = zip(*comparison.pairs(), strict=True)
    diffs = rewards[list(better)] - rewards[list(worse)] - (margin + comparison.margin)
    return -F.logsigmoid(diffs).mean()


def pairwise_accuracy(model: RewardModel, comparisons: Sequence[Comparison], batch_size: int = 64) -> float:
    """Share of the asserted (better, worse) pairs of ``comparisons`` with r(better) > r(worse)."""
    prompts = [c.prompt for c in comparisons for _ in c.responses]
    responses = [r for c in comparisons for r in c.responses]
    rewards = model.score(prompts, responses, batch_size)
    correct = total = start = 0
    for c in comparisons:
        r = rewards[start : start + len(c.responses)]
        start += len(c.responses)
        for i, j in c.pairs():
            correct += r[i] > r[j]
            total += 1
    return correct / max(total, 1)


def as_pairs(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Every asserted pair of the comparisons as its own two-response comparison (loss=pairwise)."""
    return [
        Comparison(f"{c.id}:{i}>{j}", c.prompt, (c.responses[i], c.responses[j]), True, c.margin)
        for c in comparisons
        for i, j in c.pairs()
    ]


@dataclass
class RewardModelFit:
    """Fits a `RewardModel` to comparisons; also used to keep fine-tuning it during RLHF."""

    model: RewardModel
    config: RewardModelConfig
    # Several processes (`lmgym rm train` under torchrun / accelerate launch): each scores its share of every
    # batch and the gradients are averaged, so all replicas take the one-process step.
    dist: Distributed = field(default_factory=Distributed)

    def __post_init__(self) -> None:
        cfg = self.config
        head = list(self.model.head.parameters())
        trunk = [p for p in self.model.trunk.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": trunk, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}], weight_decay=cfg.weight_decay
        )

    def elements(self, comparisons: Sequence[Comparison]) -> list[Comparison]:
        """The batch elements: one per comparison, or one per asserted pair (loss=pairwise)."""
        return as_pairs(comparisons) if self.config.loss == "pairwise" else list(comparisons)

    def step(self, batch: Sequence[Comparison]) -> float:
        """One gradient step on a batch of comparisons (all responses scored in one forward pass)."""
        cfg = self.config
        self.model.train()
        batch = self.dist.shard(batch)  # equal shares: every comparison's loss weighs the same
        prompts = [c.prompt for c in batch for _ in c.responses]
        responses = [r for c in batch for r in c.responses]
        rewards = self.model(prompts, responses)
        losses, start = [], 0
        for c in batch:
            losses.append(comparison_loss(rewards[start : start + len(c.responses)], c, cfg.loss, cfg.margin))
            start += len(c.responses)
        loss = torch.stack(losses).mean()
        if self.dist.any(not bool(torch.isfinite(loss))):  # every process stops, not only the one that saw it
            where = f"on comparisons {[c.id for c in batch][:5]}" if not torch.isfinite(loss) else "in another process"
            raise TrainingError(f"reward model loss is {float(loss)} {where}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(p for p in self.model.parameters() if p.requires_grad)
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.model.eval()
        return self.dist.mean_float(float(loss.detach()))

    def fit(self, comparisons: Sequence[Comparison], steps: int, seed: int, log=None) -> list[float]:
        """``steps`` gradient steps over seeded shuffles of ``comparisons``."""
        elements = self.elements(comparisons)
        rng = random.Random(seed)
        order: list[int] = []
        losses = []
        for step in range(1, steps + 1):
            if len(order) < self.config.batch_size:
                perm = list(range(len(elements)))
                rng.shuffle(perm)
                order += perm
            idx, order = order[: self.config.batch_size], order[self.config.batch_size :]
            losses.append(self.step([elements[i] for i in idx]))
            if log is not None:
                log(step, losses[-1])
        return losses

    @torch.no_grad()
    def normalize(self, comparisons: Sequence[Comparison]) -> None:
        """Set mean and std to those of the raw rewards of every response in ``comparisons``."""
        self.model.eval()
        prompts = [c.prompt for c in comparisons for _ in c.responses]
        responses = [r for c in comparisons for r in c.responses]
        raw = []
        for start in range(0, len(responses), 64):
            raw += self.model(prompts[start : start + 64], responses[start : start + 64]).tolist()
        values = torch.tensor(raw)
        self.model.mean.fill_(float(values.mean()))
        self.model.std.fill_(max(float(values.std()), 1e-6) if len(raw) > 1 else 1.0)


# --- `lmgym rm train` ----------------------------------------------------------------------------


def rule_reward(config: TrainConfig, task) -> Reward:
    if config.rm.rule == "lexicon":
        return LexiconRule()
    if task.reward is None:
        raise ConfigError(f"rm.rule=task: task {config.task!r} has no reward to rank responses by")
    return task.reward


def hidden_rule_data(config: TrainConfig, task, tokenizer) -> list[Comparison]:
    """Comparisons a rater following the hidden rule would give, on the task's train prompts."""
    from lmgym.data.preferences import comparisons_from_scored, log_generations, rank_by_rule

    cfg = config.rm
    rule = rule_reward(config, task)
    samples = task.split("train")
    if cfg.responses == "words":
        return hidden_rule_comparisons(
            samples, rule, tokenizer, cfg.k, cfg.comparisons_per_prompt, config.seed, ranked=cfg.loss != "best_of_k",
            noise=cfg.noise,
        )  # fmt: skip
    from lmgym.models.loading import load_model
    from lmgym.models.policy import Policy, make_generation_config

    loaded = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
    max_new = config.generation.max_new_tokens or int(task.generation.get("max_new_tokens", 32))
    generation = make_generation_config(loaded.tokenizer, **config.generation.hf_settings(max_new))
    prompts = [s for s in samples for _ in range(cfg.comparisons_per_prompt)]
    scored = log_generations(policy, rule, prompts, generation, config.model.max_prompt_tokens, cfg.k, seed=config.seed)
    ranked = comparisons_from_scored(scored, "ranking")
    if cfg.noise > 0 or cfg.loss == "best_of_k":
        rng = random.Random(config.seed)
        by_text = {(s.prompt, s.completion): s.total_reward for s in scored}
        redone = [
            rank_by_rule(c.id, c.prompt, c.responses, [by_text[(c.prompt, r)] for r in c.responses],
                         cfg.loss != "best_of_k", cfg.noise, rng)
            for c in ranked
        ]  # fmt: skip
        ranked = [c for c in redone if c is not None]
    return ranked


def train_reward_model(
    config: TrainConfig, console: Console | None = None, overwrite: bool = False
) -> tuple[Path, dict[str, float]]:
    """Train a reward model as configured in ``config.rm``; returns its folder and held-out metrics."""
    from lmgym.data.task import load_task

    # Several processes train one model data parallel (on their CPUs, like a single process does); the main
    # process alone prints and writes.
    dist = Distributed.setup("no", "cpu", "none")
    console = (console or Console()) if dist.is_main else Console(quiet=True)
    cfg = config.rm
    if dist.enabled and cfg.batch_size % dist.world_size:
        raise ConfigError(f"rm.batch_size={cfg.batch_size} must split over {dist.world_size} processes")
    name = config.name or f"{config.task}-rm-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(config.run_dir) / name
    exists = root.exists() and any(root.iterdir())
    if exists and not overwrite:
        raise RunExistsError(f"run folder {root} exists; pass --overwrite to replace it, or --set name=...")
    dist.barrier()  # every process has looked before the main one clears or writes it
    if exists and dist.is_main:
        shutil.rmtree(root)
    torch.manual_seed(config.seed)
    dist.set_threads(config.threads)
    if cfg.init is not None:
        model, _ = load_reward_model(cfg.init)
        model.max_length = cfg.max_length
    else:
        trunk, tokenizer, kind = load_trunk(cfg.model)
        model = RewardModel(trunk, tokenizer, kind, cfg.pooling, cfg.max_length)
    task = load_task(config.task, **config.task_args)
    if cfg.data == "hidden-rule":
        comparisons = hidden_rule_data(config, task, model.tokenizer)
        source = f"hidden rule ({cfg.rule}, {cfg.responses})"
    else:
        if not Path(cfg.data).expanduser().exists():
            raise MissingFileError(f"rm.data: {cfg.data!r} is neither 'hidden-rule' nor an existing JSONL file")
        comparisons = load_comparisons(cfg.data)
        source = cfg.data
    if cfg.loss == "best_of_k" and any(c.ranked and len(c.responses) > 2 for c in comparisons):
        console.print("rm.loss=best_of_k on rankings: only 'the first beats the rest' of each ranking is used")
    shuffled = list(comparisons)
    random.Random(config.seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * cfg.eval_fraction))
    if len(shuffled) - n_eval < 1:
        raise InputError(f"{source}: {len(shuffled)} comparisons are too few to hold {n_eval} out for evaluation")
    eval_set, train_set = shuffled[:n_eval], shuffled[n_eval:]
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        write_jsonl(root / "comparisons-train.jsonl", train_set)
        write_jsonl(root / "comparisons-eval.jsonl", eval_set)
    dist.broadcast_parameters(model)  # replicas start equal even if a random head init differed
    fit = RewardModelFit(model, cfg, dist)
    steps = cfg.epochs * math.ceil(len(fit.elements(train_set)) / cfg.batch_size)
    before = pairwise_accuracy(model, eval_set)
    console.print(
        f"reward model on {model.kind} trunk {cfg.init or cfg.model}: {len(train_set)} train / {len(eval_set)} "
        f"held-out comparisons from {source}; {steps} steps; held-out pairwise accuracy before: {before:.3f}"
    )
    metrics_file = (root / "metrics.jsonl").open("a", encoding="utf-8") if dist.is_main else None
    t0 = time.perf_counter()

    def log(step: int, loss: float) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps({"step": step, "kind": "train", "loss": loss}) + "\n")
        if step % max(1, steps // 10) == 0 or step == steps:
            console.print(f"step {step:>5}/{steps}  loss {loss:.4f}", highlight=False)

    fit.fit(train_set, steps, config.seed, log)
    seconds = time.perf_counter() - t0
    if cfg.normalize:
        fit.normalize(train_set)
    metrics = {
        "eval/pairwise_accuracy": pairwise_accuracy(model, eval_set),
        "eval/pairwise_accuracy_before": before,
        "train/pairwise_accuracy": pairwise_accuracy(model, train_set),
        "train_seconds": seconds,
        "n_train": len(train_set),
        "n_eval": len(eval_set),
    }
    if metrics_file is not None:
        metrics_file.write(json.dumps({"kind": "eval", **metrics}) + "\n")
        metrics_file.close()
        model.save(root, {"metrics": metrics, "data": source, "task": config.task, "loss": cfg.loss})
    dist.barrier()
    console.print(
        f"held-out pairwise accuracy {metrics['eval/pairwise_accuracy']:.3f} (before {before:.3f}, train "
        f"{metrics['train/pairwise_accuracy']:.3f}); reward model written to [bold]{root}[/]"
    )
    return root, metrics


# --- RLHF: keep the reward model up to date with the policy's own samples ------------------------------

RETRAINED_DIR = "reward_model"
RETRAIN_DATA = "rm-comparisons.jsonl"


def check_retrainable(reward: Reward) -> None:
    """rm.retrain_every needs the run's reward to be a reward model it can fine-tune."""
    from lmgym.rewards.reward_model import RewardModelReward

    if not isinstance(reward, RewardModelReward):
        raise ConfigError(
            f"rm.retrain_every > 0 fine-tunes the reward model being optimised, but the reward is "
            f"{getattr(reward, 'name', type(reward).__name__)!r}: set reward.name to a reward model folder "
            "(from `lmgym rm train`) with no scale/clip/normalize wrapper, or rm.retrain_every=0"
        )


def retrain_on_policy_samples(trainer, iteration: int) -> dict[str, float]:
    """Every ``rm.retrain_every`` iterations: sample k completions of ``rm.retrain_prompts`` train prompts
    from the current policy, rank them with the hidden rule (``rm.rule``, standing in for a rater), measure
    the reward model's accuracy on these fresh comparisons (it falls when the policy finds its blind spots),
    and take ``rm.retrain_steps`` gradient steps on all comparisons gathered so far.

    The fine-tuned model and the comparisons are written to the run folder (``reward_model/``,
    ``rm-comparisons.jsonl``); a resumed run continues from the newest of them."""
    from lmgym.data.preferences import comparisons_from_scored, load_comparisons, log_generations

    cfg = trainer.config.rm
    reward = trainer.reward
    root = trainer.run.root
    if getattr(trainer, "_rm_fit", None) is None:
        check_retrainable(reward)
        if (root / RETRAINED_DIR / META_FILE).exists():  # a resumed run: continue from the newest retrained model
            model, _ = load_reward_model(root / RETRAINED_DIR)
            reward.model = model
        trainer._rm_fit = RewardModelFit(reward.model, cfg)
        trainer._rm_data = load_comparisons(root / RETRAIN_DATA) if (root / RETRAIN_DATA).exists() else []
    rng = random.Random(trainer.config.seed * 7919 + iteration)
    prompts = rng.sample(trainer.train_samples, min(cfg.retrain_prompts, len(trainer.train_samples)))
    rule = rule_reward(trainer.config, trainer.task)
    scored = log_generations(
        trainer.policy,
        rule,
        prompts,
        trainer.generation,
        trainer.config.model.max_prompt_tokens,
        per_prompt=cfg.k,
        seed=trainer.config.seed * 7919 + iteration,
    )
    fresh = comparisons_from_scored(scored, "ranking")
    stats = {"rm/new_comparisons": float(len(fresh))}
    if not fresh:
        return stats
    stats["rm/accuracy_on_policy"] = pairwise_accuracy(reward.model, fresh)
    trainer._rm_data += fresh
    losses = trainer._rm_fit.fit(trainer._rm_data, cfg.retrain_steps, trainer.config.seed + iteration)
    stats["rm/retrain_loss"] = sum(losses) / len(losses)
    if trainer.dist.is_main:
        write_jsonl(root / RETRAIN_DATA, trainer._rm_data)
        reward.model.save(root / RETRAINED_DIR, {"retrained_at_iteration": iteration})
    return stats
