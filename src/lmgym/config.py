"""Run configuration: pydantic models (unknown keys are errors), YAML, ``--set`` overrides.

Every field has a default; a YAML file and ``--set a.b=value`` overrides change
only what they name. Values given with ``--set`` are parsed as YAML scalars, so
``--set ppo.lr=1e-5`` is a float and ``--set eval.every=0`` an int.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration problem, with the offending field named."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="'tiny', 'tiny-seq2seq', 'smollm2-135m-instruct' (bundled), a local folder or a hub id",
    )
    value_head: Literal["shared", "separate", "none"] = Field(
        "shared", description="'shared': linear head on the policy's last hidden state; 'separate': own critic network"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = Field(
        False, description="run code shipped with a hub model (off: only code you installed runs)"
    )
    max_prompt_tokens: int = Field(128, gt=0, description="longer prompts lose their beginning (counted in the log)")
    freeze_embeddings: bool = Field(
        True,
        description="keep input embeddings and LM head fixed: with Adam every vocabulary row would otherwise move "
        "by ~lr each step (the softmax sends all of them gradient), shifting the whole distribution at once",
    )
    trainable_layers: int | None = Field(
        None, gt=0, description="train only the top N transformer blocks (of each stack); None trains all"
    )


class GenerationSettings(Section):
    max_new_tokens: int | None = Field(None, gt=0, description="horizon of an episode; None takes the task's default")
    min_new_tokens: int = Field(0, ge=0)
    do_sample: bool = True
    temperature: float = Field(1.0, gt=0, description="also divides the logits when scoring, so PPO stays on-policy")
    top_k: int = Field(0, ge=0, description="0 samples from the full distribution, which on-policy training assumes")
    top_p: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> GenerationSettings:
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) > max_new_tokens ({self.max_new_tokens})")
        return self

    def hf_settings(self, default_max_new_tokens: int) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens or default_max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            settings.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return settings


class RolloutConfig(Section):
    batch_size: int = Field(
        16, gt=0, description="completions per iteration (group algorithms draw batch_size / k prompts, k each)"
    )
    reuse_generation_scores: bool = Field(
        True, description="take old log-probs and values from generation's own forward passes (saves one pass)"
    )


class KLSettings(Section):
    controller: Literal["fixed", "adaptive"] = "adaptive"
    coef: float = Field(0.05, ge=0, description="initial β in R − β·(log πθ − log π0)")
    target: float | None = Field(4.0, gt=0, description="adaptive: KL (nats per sequence) that β steers toward")
    horizon: int = Field(10_000, gt=0, description="adaptive: samples over which β may change by e^0.2")


class OptimConfig(Section):
    """Fields every algorithm shares."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; None disables")
    ent_coef: float = Field(0.0, description="weight of the entropy bonus")
    minibatch_size: int = Field(8, gt=0, description="samples per gradient step")


class CriticConfig(OptimConfig):
    """Fields of actor-critic algorithms (a value head and GAE)."""

    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    value_head_lr: float | None = Field(
        1e-3, gt=0, description="learning rate of the value head (a fresh linear layer learns slowly at the LM's lr)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ")
    whiten_advantages: bool = True


class PPOConfig(CriticConfig):
    epochs: int = Field(4, gt=0, description="passes over each rollout")
    clip_range: float = Field(0.2, gt=0, description="ε in the clipped ratio")
    value_clip: float | None = Field(0.2, gt=0, description="clip value predictions to old ± this; None disables")
    target_kl: float | None = Field(None, gt=0, description="stop an update early when approx. KL > 1.5 × this")


class NLPOConfig(PPOConfig):
    mask_top_p: float = Field(0.9, gt=0, le=1, description="actions outside the mask policy's top-p set are masked")
    mask_update_every: int = Field(5, gt=0, description="μ: copy the learner into the mask policy every μ iterations")
    min_tokens_to_keep: int = Field(1, gt=0, description="the mask keeps at least this many tokens")


class A2CConfig(CriticConfig):
    minibatch_size: int = Field(32, gt=0, description="samples per gradient step (one epoch, no clipping)")


class TRPOConfig(CriticConfig):
    max_kl: float = Field(0.01, gt=0, description="δ: bound on the mean per-token KL(old ‖ new) of an update")
    cg_iters: int = Field(10, gt=0, description="conjugate-gradient iterations for F⁻¹g")
    cg_damping: float = Field(0.1, ge=0, description="λ in (F + λI)v, keeps the Fisher solve stable")
    fisher_fraction: float = Field(
        0.25, gt=0, le=1, description="share of the rollout's samples (evenly spaced) the Fisher-vector products use"
    )
    backtrack_coef: float = Field(0.5, gt=0, lt=1, description="step shrink factor of the line search")
    backtrack_iters: int = Field(10, gt=0, description="line-search tries before the update is rejected")
    value_epochs: int = Field(2, gt=0, description="epochs of value regression per iteration")


class ReinforceConfig(OptimConfig):
    baseline_decay: float = Field(
        0.9, ge=0, lt=1, description="baseline = moving average of the reward with this decay (0: batch mean only)"
    )


class RLOOConfig(OptimConfig):
    k: int = Field(4, gt=1, description="completions per prompt; each one's baseline is the mean of the other k−1")


class GRPOConfig(OptimConfig):
    k: int = Field(4, gt=1, description="completions per prompt (a group)")
    epochs: int = Field(1, gt=0, description="passes over each rollout")
    clip_range: float = Field(0.2, gt=0, description="ε in the clipped ratio")
    beta: float = Field(0.04, ge=0, description="weight of the k3 KL estimate in the loss (not in the reward)")
    scale_rewards: bool = Field(True, description="divide group-centred rewards by the group's std")


class EvalConfig(Section):
    split: Literal["train", "val", "test"] = "test"
    num_prompts: int = Field(64, gt=0, description="held-out prompts scored before and after training")
    every: int = Field(0, ge=0, description="also evaluate every N iterations (0: only before and after)")
    batch_size: int = Field(32, gt=0)
    seed: int = 1234


class CheckpointConfig(Section):
    every: int = Field(0, ge=0, description="save every N iterations (0: only at the end)")
    keep: int = Field(2, gt=0, description="how many step-N checkpoints to keep")


class TrainConfig(Section):
    task: str = Field("sentiment", description="a registered task (`lmgym tasks` lists them)")
    task_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the task factory")
    model: ModelConfig = Field(default_factory=ModelConfig)
    algo: Literal["ppo", "nlpo", "a2c", "trpo", "reinforce", "rloo", "grpo"] = Field(
        "ppo", description="the algorithm; its settings are the section of the same name"
    )
    iterations: int = Field(50, gt=0)
    max_train_seconds: float | None = Field(
        None, gt=0, description="stop after the iteration that crosses this wall-clock budget (evaluation excluded)"
    )
    seed: int = 0
    run_dir: str = Field("runs", description="runs are written to run_dir/name")
    name: str | None = Field(None, description="run name; default <task>-<algo>-<timestamp>")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    kl: KLSettings = Field(default_factory=KLSettings)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    nlpo: NLPOConfig = Field(default_factory=NLPOConfig)
    a2c: A2CConfig = Field(default_factory=A2CConfig)
    trpo: TRPOConfig = Field(default_factory=TRPOConfig)
    reinforce: ReinforceConfig = Field(default_factory=ReinforceConfig)
    rloo: RLOOConfig = Field(default_factory=RLOOConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def _all_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _all_paths(ann, prefix + name + ".")
    return paths


def _describe(err: ValidationError) -> str:
    lines = []
    known = _all_paths(TrainConfig)
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"unknown config key {loc!r}{hint}")
        else:
            lines.append(f"{loc or 'config'}: {e['msg']} (got {e.get('input')!r:.60})")
    return "invalid config: " + "; ".join(lines)


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if isinstance(child, str) and key == "model":  # `model=tiny` then `model.dtype=...`
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {path}: {key!r} is not a section")
        node[key] = child
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):  # YAML 1.1 reads 1e-5 as a string
            value = float(value)
        parsed.append((key.strip(), value))
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for key, value in parse_overrides(overrides or []):
        set_dotted(data, key, value)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
