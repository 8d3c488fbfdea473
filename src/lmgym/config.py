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

from lmgym.errors import InputError, LmgymError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(LmgymError, ValueError):
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
    max_prompt_tokens: int = Field(128, gt=0, description="prompt budget in tokens (see long_prompts)")
    long_prompts: Literal["truncate", "error"] = Field(
        "truncate",
        description="a prompt over max_prompt_tokens: 'truncate' cuts it at truncation_side (the count is logged "
        "each iteration); 'error' stops before training and names the first such sample",
    )
    chat_template: str = Field(
        "auto",
        description="chat prompts (lists of {role, content} messages): 'auto' renders them with the tokenizer's "
        "chat template, 'none' refuses them, or the path of a .jinja file to use instead; generation then also "
        "stops at the template's end-of-turn token",
    )
    truncation_side: Literal["auto", "left", "right"] = Field(
        "auto",
        description="which end of an over-long prompt is cut. 'auto': the task's choice (tasks whose prompts "
        "start with an instruction, e.g. cnn_dailymail and narrativeqa, cut the right), else 'left' for causal "
        "models (keep the text they continue) and 'right' for encoder-decoders (keep the leading instruction)",
    )
    freeze_embeddings: bool | None = Field(
        None,
        description="keep input embeddings and LM head fixed: with Adam every vocabulary row would otherwise move "
        "by ~lr each step (the softmax sends all of them gradient), shifting the whole distribution at once. "
        "None: frozen, except for the randomly initialised 'tiny' test models, which learn nothing without them",
    )

    @property
    def embeddings_frozen(self) -> bool:
        """`freeze_embeddings` resolved: an explicit setting, else frozen for every model but the tiny ones."""
        if self.freeze_embeddings is not None:
            return self.freeze_embeddings
        return self.name not in ("tiny", "tiny-seq2seq")

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
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="'hf': transformers' generate (any device); 'vllm': a vLLM engine on the GPU, weights synced "
        "after each update (needs the vllm package and a GPU; an error says which is missing)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GenerationSettings:
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise InputError(f"min_new_tokens ({self.min_new_tokens}) > max_new_tokens ({self.max_new_tokens})")
        if not self.do_sample:
            ignored = [
                f"{name}={value}"
                for name, value, default in (
                    ("temperature", self.temperature, 1.0),
                    ("top_k", self.top_k, 0),
                    ("top_p", self.top_p, 1.0),
                )
                if value != default
            ]
            if ignored:
                raise InputError(
                    f"do_sample=false (greedy decoding) contradicts {', '.join(ignored)}, which only apply when "
                    "sampling: set do_sample=true or remove them"
                )
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
    chat: bool = Field(
        False,
        description="wrap every plain string prompt as one user message and render it with the chat template "
        "(any task, GRUE's included; needs model.chat_template auto or a file), in training and evaluation",
    )
    batch_size: int = Field(
        16, gt=0, description="completions per iteration (group algorithms draw batch_size / k prompts, k each)"
    )
    reuse_generation_scores: bool = Field(
        True, description="take old log-probs and values from generation's own forward passes (saves one pass)"
    )
    reuse_frozen_trunk: bool = Field(
        True,
        description="with frozen embeddings and bottom blocks (model.trainable_layers): keep their output from "
        "generation, so the reference's score pass and the update's passes start at the first trainable block; the "
        "reference shares the frozen modules with the policy (less memory). Same numbers up to float rounding",
    )
    log_samples_every: int = Field(
        0,
        ge=0,
        description="every N iterations, append that iteration's rollout to the run's rollouts.jsonl: each sample's "
        "prompt, generation, reward (as trained on), the score of each part of a composed reward and its KL to the "
        "reference (nats); 0: off",
    )


class KLSettings(Section):
    controller: Literal["fixed", "adaptive"] = "adaptive"
    coef: float = Field(0.05, ge=0, description="initial β in R − β·(log πθ − log π0)")
    per: Literal["sequence", "token"] = Field(
        "sequence",
        description="unit of the KL the adaptive controller measures and `target` is in: nats summed over each "
        "completion and averaged over the batch ('sequence', Ziegler et al., TRL), or the mean over the batch's "
        "generated tokens ('token', RL4LMs/GRUE)",
    )
    target: float | None = Field(4.0, gt=0, description="adaptive: the KL (in `per` units) that β steers toward")
    horizon: int = Field(10_000, gt=0, description="adaptive: samples over which β may change by e^0.2")
    update_rate: float | None = Field(
        None,
        gt=0,
        description="adaptive: β ← β·(1 + rate·e) once per iteration instead of the horizon rule "
        "β ← β·(1 + e·batch/horizon); RL4LMs uses 0.1",
    )


class OptimConfig(Section):
    """Fields every on-policy algorithm shares."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; None disables")
    ent_coef: float = Field(0.0, description="weight of the entropy bonus")
    minibatch_size: int = Field(8, gt=0, description="samples of the global batch per gradient step")

    @property
    def completions_per_prompt(self) -> int:
        return 1


class GradientConfig(OptimConfig):
    """Fields of the algorithms that update by minibatch gradient steps (all on-policy ones but TRPO)."""

    epochs: int = Field(1, gt=0, description="passes over each rollout")
    target_kl: float | None = Field(
        None, gt=0, description="stop an update at the first minibatch whose approx. KL > 1.5 × this"
    )
    ptx_coef: float = Field(
        0.0,
        ge=0,
        description="PPO-ptx γ: γ·(mean token log-likelihood of a supervised batch) joins the objective of every "
        "minibatch, keeping the policy close to the data it imitated (InstructGPT); 0: off",
    )
    ptx_data: str = Field(
        "references",
        description="ptx batches: 'references' (the task's train references) or a JSONL of {prompt, "
        "completion} rows (an empty prompt makes it plain language modelling of the completion)",
    )
    ptx_batch_size: int = Field(8, gt=0, description="supervised examples per ptx term")


class CriticFields(Section):
    """Fields of actor-critic algorithms (a value head and GAE)."""

    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    value_head_lr: float | None = Field(
        1e-3, gt=0, description="learning rate of the value head (a fresh linear layer learns slowly at the LM's lr)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ")
    whiten_advantages: bool = True
    value_clip: float | None = Field(None, gt=0, description="clip value predictions to old ± this; None disables")
    k: int = Field(
        1,
        gt=0,
        description="completions sampled per prompt, each with its own returns and advantages; with k > 1 the k "
        "completions of a prompt share one prefill in generation and one packed prompt in the score and update "
        "passes (rollout.batch_size counts completions and must be a multiple of k)",
    )

    @property
    def completions_per_prompt(self) -> int:
        return self.k


class CriticConfig(CriticFields, GradientConfig):
    """An actor-critic updated by minibatch gradient steps."""


class PPOConfig(CriticConfig):
    epochs: int = Field(4, gt=0, description="passes over each rollout")
    clip_range: float = Field(0.2, gt=0, description="ε in the clipped ratio")
    value_clip: float | None = Field(0.2, gt=0, description="clip value predictions to old ± this; None disables")


class NLPOConfig(PPOConfig):
    mask_top_p: float = Field(0.9, gt=0, le=1, description="actions outside the mask policy's top-p set are masked")
    mask_update_every: int = Field(5, gt=0, description="μ: copy the learner into the mask policy every μ iterations")
    min_tokens_to_keep: int = Field(1, gt=0, description="the mask keeps at least this many tokens")


class A2CConfig(CriticConfig):
    minibatch_size: int = Field(32, gt=0, description="samples per gradient step (one epoch, no clipping)")


class TRPOConfig(CriticFields, OptimConfig):
    minibatch_size: int = Field(8, gt=0, description="samples per chunk of the policy step; per value-regression step")
    max_kl: float = Field(0.01, gt=0, description="δ: bound on the mean per-token KL(old ‖ new) of an update")
    cg_iters: int = Field(10, gt=0, description="conjugate-gradient iterations for F⁻¹g")
    cg_damping: float = Field(0.1, ge=0, description="λ in (F + λI)v, keeps the Fisher solve stable")
    fisher_fraction: float = Field(
        0.25, gt=0, le=1, description="share of the rollout's samples (evenly spaced) the Fisher-vector products use"
    )
    backtrack_coef: float = Field(0.5, gt=0, lt=1, description="step shrink factor of the line search")
    backtrack_iters: int = Field(10, gt=0, description="line-search tries before the update is rejected")
    value_epochs: int = Field(2, gt=0, description="epochs of value regression per iteration")


class ReinforceConfig(GradientConfig):
    baseline_decay: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="baseline = moving average of the earlier iterations' mean return with this decay (0: the "
        "previous batch's mean; the first iteration uses its own batch mean)",
    )


class GroupConfig(GradientConfig):
    """Algorithms that draw k completions per prompt and compare them with each other."""

    k: int = Field(4, gt=1, description="completions per prompt (a group)")

    @property
    def completions_per_prompt(self) -> int:
        return self.k


class RLOOConfig(GroupConfig):
    k: int = Field(4, gt=1, description="completions per prompt; each one's baseline is the mean of the other k−1")


class GRPOConfig(GroupConfig):
    clip_range: float = Field(0.2, gt=0, description="ε in the clipped ratio")
    beta: float = Field(0.04, ge=0, description="weight of the k3 KL estimate in the loss (not in the reward)")
    scale_rewards: bool = Field(True, description="divide group-centred rewards by the group's std")


class OfflineConfig(Section):
    """Fields of the trainers that learn from a fixed dataset (sft, dpo, ilql): `iterations` counts gradient steps."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; None disables")
    batch_size: int = Field(16, gt=0, description="examples (pairs for DPO) per gradient step")
    max_completion_tokens: int = Field(64, gt=0, description="completions are cut to this many tokens (EOS included)")


class LoggedDataConfig(OfflineConfig):
    data: str = Field(
        "logged",
        description="'logged': sample logged_per_prompt completions of each train prompt from the initial policy and "
        "score them with the reward (saved as the run's data.jsonl, reused by --resume); or a JSONL file",
    )
    logged_per_prompt: int = Field(4, gt=0, description="'logged': completions sampled per prompt")
    logged_prompts: int | None = Field(None, gt=0, description="'logged': only the first N train prompts (None: all)")


class SFTConfig(LoggedDataConfig):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    data: str = Field(
        "references",
        description="'references': one example per reference of each train prompt; 'logged-best': the best (by the "
        "reward) of logged_per_prompt completions of each train prompt sampled from the initial policy (best-of-K "
        "distillation, kept as the run's sft-data.jsonl); or a JSONL of {prompt, completion}",
    )


class DPOConfig(LoggedDataConfig):
    beta: float = Field(0.1, gt=0, description="β: strength of the implicit KL constraint to the reference")
    loss: Literal["sigmoid", "ipo", "conservative"] = Field(
        "sigmoid",
        description="'sigmoid': DPO, −log σ(h); 'conservative': cDPO, labels flipped with probability "
        "label_smoothing; 'ipo': IPO, (h/β − 1/(2β))²",
    )
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="ε of loss=conservative (unused otherwise)")
    pairs: Literal["best_worst", "all"] = Field(
        "best_worst", description="from a ranking (or logged completions): only best vs worst, or all K-choose-2 pairs"
    )


class ILQLConfig(LoggedDataConfig):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (the LM and the heads)")
    gamma: float = Field(0.99, ge=0, le=1, description="γ in the Q target r + γ·V(next)")
    tau: float = Field(0.7, gt=0, lt=1, description="expectile of V's regression toward min(target Q)")
    cql_coef: float = Field(0.1, ge=0, description="weight of the CQL term (pushes down Q of unseen tokens)")
    awac_coef: float = Field(1.0, ge=0, description="weight of the LM (behaviour) loss")
    awac_beta: float = Field(
        0.0, ge=0, description="LM loss weight per token exp(awac_beta·(min Q̂ − V)), capped; 0: plain behaviour cloning"
    )
    awac_max_weight: float = Field(20.0, gt=0, description="cap of the AWAC weight")
    target_update_rate: float = Field(0.05, gt=0, le=1, description="α: target ← (1−α)·target + α·Q (Polyak)")
    target_update_every: int = Field(1, gt=0, description="apply the Polyak update every n gradient steps")
    beta: float = Field(4.0, ge=0, description="decoding: β·(Q − V) is added to the policy's logits")


class RewardModelConfig(Section):
    """`lmgym rm train`: a scalar head on a text model, fit to comparisons with the Bradley–Terry loss."""

    model: str = Field(
        "all-minilm-l6-v2",
        description="trunk: 'all-minilm-l6-v2' (the bundled sentence encoder), 'tiny-encoder' / 'tiny' (tests), or a "
        "local folder / hub id of an encoder, causal LM or encoder-decoder",
    )
    init: str | None = Field(None, description="a trained reward model folder to start from (instead of model)")
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto", description="how the trunk's token states become one vector; auto: last token of a causal LM, else mean"
    )
    max_length: int = Field(256, gt=0, description="prompt + response tokens (longer ones are cut)")
    data: str = Field(
        "hidden-rule",
        description="a JSONL of comparisons (pairs, rankings or best-of-K), or 'hidden-rule': responses ranked by "
        "`rule` standing in for a human rater",
    )
    rule: Literal["task", "lexicon"] = Field(
        "task", description="hidden-rule: the task's own reward, or a word lexicon (+1 positive, −1 negative words)"
    )
    responses: Literal["words", "policy"] = Field(
        "words", description="hidden-rule: random word strings, or samples of the policy model.name (slower)"
    )
    k: int = Field(4, ge=2, description="hidden-rule: responses per comparison")
    comparisons_per_prompt: int = Field(1, gt=0, description="hidden-rule: comparisons per train prompt")
    noise: float = Field(0.0, ge=0, description="hidden-rule: Bradley–Terry rater noise (0: the rule's exact order)")
    loss: Literal["ranking", "pairwise", "best_of_k"] = Field(
        "ranking",
        description="'ranking': a prompt's K-choose-2 pairs form one batch element (InstructGPT); 'pairwise': every "
        "pair its own element; 'best_of_k': softmax over the K rewards, the best one the target",
    )
    margin: float = Field(0.0, description="m in −log σ(r_chosen − r_rejected − m), added to any per-pair margin")
    lr: float = Field(3e-5, gt=0, description="AdamW learning rate of the trunk")
    head_lr: float = Field(1e-3, gt=0, description="learning rate of the fresh scalar head")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    batch_size: int = Field(16, gt=0, description="comparisons per gradient step")
    epochs: int = Field(2, gt=0)
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of comparisons held out for pairwise accuracy")
    normalize: bool = Field(True, description="shift and scale rewards to mean 0, std 1 over the training responses")
    retrain_every: int = Field(
        0,
        ge=0,
        description="during on-policy training against a reward model: every N iterations, rank fresh samples of the "
        "policy with `rule` and fine-tune the reward model on them; 0: never",
    )
    retrain_prompts: int = Field(16, gt=0, description="retraining: train prompts sampled, k completions each")
    retrain_steps: int = Field(10, gt=0, description="retraining: gradient steps over all comparisons gathered so far")


class AccelerateConfig(Section):
    """Devices, precision and memory; the number of processes comes from the launcher (torchrun/accelerate launch)."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': this process's GPU when torch sees one, else the CPU"
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="autocast forward passes to bf16/fp16 (weights and optimizer stay in model.dtype); 'auto': "
        "the launcher's setting (accelerate launch --mixed_precision), else 'no'. fp16 adds a loss scaler and needs "
        "a GPU",
    )
    grad_accumulation_steps: int = Field(
        1,
        gt=0,
        description="split each minibatch into this many micro-batches, summing their gradients before one "
        "optimizer step (less activation memory, same step count)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in the backward pass (less memory, ~30% slower)"
    )
    fused_optimizer: bool = Field(
        True,
        description="AdamW's fused kernel (torch's fused=True, what transformers' Trainer and TRL use by default): "
        "one pass over each tensor per step, ~3.5x faster on a CPU. Its float rounding differs from the unfused "
        "kernel's in the last bit, so runs with and without it are not bit-identical. Ignored with FSDP sharding",
    )
    host_memory: Literal["auto", "keep", "release"] = Field(
        "auto",
        description="what the C heap does with freed host memory (glibc; lmgym.host_memory): 'keep' holds it for the "
        "next iteration's activations, gradients and rollback copy, so they are not faulted in afresh every "
        "iteration (a full fine-tune's update 10-20% faster on a CPU; the resident memory stays at its high-water "
        "mark, the peak ~20% higher); 'release' returns it to the system; 'auto': keep on a CPU device, release on "
        "a GPU",
    )
    sharding: Literal["auto", "none", "full", "grad_op"] = Field(
        "auto",
        description="shard the policy and reference over the processes with FSDP (torch fully_shard, one unit per "
        "transformer block): 'full' frees each block's gathered weights after its forward pass (like ZeRO-3), "
        "'grad_op' keeps them until the backward pass (like ZeRO-2); both shard weights, gradients and optimizer "
        "state. 'none': replicated weights (data parallel). 'auto': the launcher's setting (an accelerate config "
        "with distributed_type FSDP), else 'none'. Ignored with one process",
    )


class PeftSettings(Section):
    """LoRA adapters through peft: only the adapters (and the value head) train; the reference policy is the
    same base weights with the adapters switched off, so there is no second copy of the model."""

    r: int = Field(8, gt=0, description="rank of each adapter's update B·A")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="names (or name suffixes) of the linear layers that get adapters, e.g. [q_proj, v_proj]; "
        "'all-linear': every linear layer but the LM head",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases train with the adapters")
    merge_on_save: bool = Field(
        True,
        description="final/ holds the merged model (a plain checkpoint every tool loads) and final/adapter/ the "
        "adapter; false: only the adapter, in final/adapter/",
    )


class GuardConfig(Section):
    """When to stop a run that has gone numerically wrong (a NaN/inf reward or loss always stops it)."""

    max_kl: float | None = Field(
        10.0,
        gt=0,
        description="stop when the rollout's mean KL to the reference per generated token exceeds this (nats); "
        "10 means the policy writes tokens the reference gives ~e^-10 probability: it has collapsed. None: no bound",
    )
    rollback: bool = Field(
        True,
        description="keep one host copy of the trainable state (weights that train + optimizer state; pinned, "
        "copied asynchronously from a GPU, so no device memory), taken at each iteration's first optimizer step, "
        "so that a NaN loss after a step, or a runaway KL, saves the last good state as a checkpoint. Off: no copy; "
        "a failure before its iteration's first step still saves the (unchanged) state, later ones name the newest "
        "periodic checkpoint instead",
    )


class RewardPart(Section):
    """One weighted term of a composed reward (``reward.parts``)."""

    name: str = Field(description="a registered metric or reward name (`lmgym metrics`), or 'module:function'")
    weight: float = Field(1.0, description="sum: the term's weight; product: its exponent")
    key: str | None = Field(None, description="which value of a metric that reports several (e.g. 'rouge-L')")
    args: dict[str, Any] = Field(default_factory=dict, description="options of the metric or reward")


class RewardConfig(Section):
    """The reward of on-policy training. Empty (no name, no parts): the task's default reward, to which
    scale/offset, clip, normalize and per_token still apply. A ``reward=`` object given in Python wins over
    this section. ``reward: bleu`` is short for ``reward: {name: bleu}``."""

    name: str | None = Field(
        None,
        description="a registered metric or reward (`lmgym metrics` lists them: bleu, meteor, r3, classifier, "
        "reward_model, ...), 'package.module:function' (only that module is imported; with args the function is "
        "a factory called with them), or the folder of a reward model trained by `lmgym rm train`",
    )
    key: str | None = Field(None, description="which value of a metric that reports several (e.g. 'rouge-L')")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the metric or reward (e.g. classifier: {classifier: PATH, label: POSITIVE})",
    )
    parts: list[RewardPart] = Field(
        default_factory=list, description="instead of name: several rewards combined by `combine`"
    )
    combine: Literal["sum", "product"] = Field(
        "sum", description="parts: Σ weight·reward (per-token when a part is), or Π reward^weight (sequence-level)"
    )
    scale: float = Field(1.0, description="reward ← offset + scale·reward (scale=-1, offset=1 turns TER into 1 − TER)")
    offset: float = Field(0.0, description="see scale")
    clip: tuple[float | None, float | None] | None = Field(
        None, description="[low, high] bounds applied after scale/offset; null on one side leaves it open"
    )
    normalize: bool = Field(
        False, description="divide by the running std (and subtract the running mean) of all scores seen so far"
    )
    per_token: Literal["none", "last", "uniform", "incremental"] = Field(
        "none",
        description="shape a sequence reward into per-token rewards: 'last' token only, 'uniform' (1/n each), or "
        "'incremental' (token t earns R(text up to t) − R(text before t); scores every prefix)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if self.name is not None and self.parts:
            raise InputError("give either reward.name or reward.parts, not both")
        if not self.name and (self.key is not None or self.args):
            raise InputError("reward.key and reward.args need reward.name")
        if self.clip is not None and None not in self.clip and self.clip[0] > self.clip[1]:
            raise InputError(f"reward.clip: low {self.clip[0]} > high {self.clip[1]}")
        return self

    @property
    def is_default(self) -> bool:
        """True when the section changes nothing about the task's reward."""
        return self == RewardConfig()


class EvalConfig(Section):
    split: Literal["train", "val", "test"] = Field("test", description="the task split the held-out prompts come from")
    num_prompts: int = Field(64, gt=0, description="held-out prompts scored before and after training")
    every: int = Field(0, ge=0, description="also evaluate every N iterations (0: only before and after)")
    batch_size: int = Field(32, gt=0, description="prompts generated per batch")
    seed: int = Field(1234, description="seed of the evaluation's sampling (the same generations for the same policy)")
    metrics: list[str] | None = Field(
        None,
        description="registered metrics (`lmgym metrics`) also computed on the held-out generations at every "
        "evaluation, logged as eval/<name>; None: the task's metric set (those of its names that are registered "
        "metrics); []: none. Reward, perplexity under the reference, distinct-1/2 and length are always reported",
    )


class CheckpointConfig(Section):
    every: int = Field(0, ge=0, description="save every N iterations (0: only at the end)")
    every_minutes: float | None = Field(
        10.0,
        gt=0,
        description="also save after the first iteration that ends this many minutes after the last save, so a "
        "crash loses at most about that much training; None: only `every` and the end",
    )
    keep: int = Field(2, gt=0, description="how many step-N checkpoints to keep")


TrackerName = Literal["tensorboard", "wandb", "trackio", "mlflow"]


class TrackingConfig(Section):
    """Experiment trackers that receive what metrics.jsonl holds (lmgym.trackers): every scalar of each
    iteration's record at step = iteration, the evaluations (eval/...), the resolved config as hyperparameters
    and a table of held-out generations. Only the main process logs; `--resume` continues the same tracker runs."""

    report_to: list[TrackerName] = Field(
        default_factory=list,
        description="backends to log to: tensorboard (event files in the run folder's tensorboard/), wandb, trackio, "
        "mlflow; they need the tracking extra (pip install 'lmgym[tracking]')",
    )
    project: str = Field(
        "lmgym", description="the W&B project, trackio project or MLflow experiment the run is logged under"
    )
    run_name: str | None = Field(None, description="the run's name in the trackers; None: the run folder's name")
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI (a server URL, sqlite:///mlflow.db, ...); None: $MLFLOW_TRACKING_URI or "
        "MLflow's default",
    )
    samples: int = Field(8, ge=0, description="held-out generations per evaluation in the samples table; 0: none")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TrainConfig(Section):
    task: str = Field("sentiment", description="a registered task (`lmgym tasks` lists them)")
    task_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the task factory")
    model: ModelConfig = Field(default_factory=ModelConfig)
    algo: Literal["ppo", "nlpo", "a2c", "trpo", "reinforce", "rloo", "grpo", "sft", "dpo", "ilql"] = Field(
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
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    ilql: ILQLConfig = Field(default_factory=ILQLConfig)
    rm: RewardModelConfig = Field(default_factory=RewardModelConfig)
    reward: RewardConfig = Field(
        default_factory=RewardConfig, description="the reward (see RewardConfig); empty: the task's default"
    )
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    accelerate: AccelerateConfig = Field(default_factory=AccelerateConfig)
    peft: PeftSettings | None = Field(
        None, description="LoRA adapters (see PeftSettings); None trains the model's own weights"
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def _all_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _all_paths(ann, prefix + name + ".")
    return paths


# Names other libraries use for our fields (TRL, trlX, RL4LMs), mapped to ours for the "did you mean" hint.
_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "ppo_epochs": "epochs",
    "cliprange": "clip_range",
    "init_kl_coef": "coef",
    "kl_coef": "coef",
    "mini_batch_size": "minibatch_size",
}


def _qualified(alias: str, loc: str) -> str:
    return loc.rsplit(".", 1)[0] + "." + alias if "." in loc else alias


def _describe(err: ValidationError) -> str:
    lines = []
    known = _all_paths(TrainConfig)
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            leaf = loc.rsplit(".", 1)[-1]
            guess = _qualified(_ALIASES[leaf], loc) if leaf in _ALIASES else loc
            close = difflib.get_close_matches(guess, known, n=1, cutoff=0.6)
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
