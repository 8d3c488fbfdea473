"""NLPO: the masked distribution, the mask policy's refresh, the incremental mask path, learning, exact resume."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from lmgym.algos.nlpo import MASK_FILE, MaskPolicyProcessor, NLPOTrainer, masked_entropy, masked_log_softmax, top_p_mask
from lmgym.api import train
from lmgym.config import load_config
from lmgym.models.policy import forward_generated
from lmgym.models.tiny import tiny_model
from lmgym.rollout.rollout import Rollout


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def overrides(run_dir: Path, name: str, *extra: str) -> list[str]:
    return ["task=toy", "model=tiny", "algo=nlpo", "threads=1", f"run_dir={run_dir}", f"name={name}", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def train_records(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s/"))}
        for r in read_jsonl(run / "metrics.jsonl")
        if r["kind"] == "train"
    ]


def nucleus_bounds(
    logits: torch.Tensor, top_p: float, always: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference top-p sets ``[..., V]`` computed independently (by probability value, in float64),
    with a tolerance for float rounding: every token in ``must`` belongs to the nucleus, none outside
    ``may`` does. A token is in the nucleus when the tokens more likely than it hold < top_p."""
    probs = logits.double().softmax(-1)
    ascending, _ = probs.sort(-1)
    suffix = ascending.flip(-1).cumsum(-1).flip(-1)  # suffix[i] = mass of ascending[i:]
    suffix = torch.cat([suffix, torch.zeros_like(suffix[..., :1])], -1)
    delta = 1e-6 * probs.amax(-1, keepdim=True)  # near-ties count both ways

    def mass_at_least(threshold: torch.Tensor) -> torch.Tensor:  # Σ p_u over p_u ≥ threshold
        return suffix.gather(-1, torch.searchsorted(ascending.contiguous(), threshold.contiguous()))

    must = mass_at_least(probs - delta) - probs < top_p - eps
    may = mass_at_least(probs + delta) < top_p + eps
    top1 = torch.zeros_like(must).scatter(-1, probs.argmax(-1, keepdim=True), True)
    must, may = must | top1, may | top1
    must[..., always] = True
    may[..., always] = True
    return must, may


def check_nucleus(
    recorded: torch.Tensor, logits: torch.Tensor, valid: torch.Tensor, top_p: float, always: torch.Tensor
) -> float:
    """Fraction of valid positions whose recorded set is NOT the nucleus of ``logits`` (0.0: all match).
    Tokens with logit −inf could not be sampled and belong to no set."""
    must, may = nucleus_bounds(logits, top_p, always)
    sampleable = torch.isfinite(logits)
    must, may = must & sampleable, may & sampleable
    ok = ((must & ~recorded) | (recorded & ~may)).sum(-1) == 0  # must ⊆ recorded ⊆ may
    return float((~ok)[valid].float().mean())


# --- (1) the masked distribution ----------------------------------------------------------------


def test_top_p_mask_hand_checked_sets() -> None:
    probs = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # ranked: 1 (.5), 3 (.2), 4 (.15), 2 (.1), 0 (.05)
    logits = probs.log()

    def allowed(**kwargs: object) -> set[int]:
        return set(torch.nonzero(top_p_mask(logits, **kwargs)).flatten().tolist())

    assert allowed(top_p=0.45) == {1}
    assert allowed(top_p=0.69) == {1, 3}  # .5 + .2 ≥ .69
    assert allowed(top_p=0.71) == {1, 3, 4}
    assert allowed(top_p=0.9) == {1, 3, 4, 2}
    assert allowed(top_p=0.96) == {0, 1, 2, 3, 4}
    assert allowed(top_p=1.0) == {0, 1, 2, 3, 4}
    assert allowed(top_p=0.3, min_tokens_to_keep=3) == {1, 3, 4}
    assert allowed(top_p=0.3, always_allowed=torch.tensor([0, 2])) == {0, 1, 2}
    # Batched: each row keeps its own nucleus.
    batched = torch.stack([logits, logits.roll(1)]).unsqueeze(0)  # [1, 2, V]; row 2: [.15, .05, .5, .1, .2]
    mask = top_p_mask(batched, 0.69)
    assert mask.shape == (1, 2, 5)
    assert mask[0, 0].tolist() == [False, True, False, True, False]
    assert mask[0, 1].tolist() == [False, False, True, False, True]


def test_masked_distribution_is_renormalised_and_zero_elsewhere() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 50) * 3
    special = torch.tensor([0, 7])
    mask = top_p_mask(logits, 0.8, min_tokens_to_keep=2, always_allowed=special)
    assert mask[..., special].all() and (mask.sum(-1) >= 2).all() and (mask.sum(-1) < 50).all()
    logp = masked_log_softmax(logits, mask)
    probs = logp.exp()
    assert torch.all(probs[~mask] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 3))
    full = logits.softmax(-1)
    expected = full * mask / (full * mask).sum(-1, keepdim=True)
    torch.testing.assert_close(probs, expected)
    # Each nucleus (without the specials) reaches top_p; dropping its least likely token would not.
    plain = top_p_mask(logits, 0.8)
    kept = (full * plain).sum(-1)
    least = torch.where(plain, full, torch.inf).amin(-1)
    assert (kept >= 0.8).all() and (kept - least < 0.8).all()
    # Entropy over the allowed tokens only, finite, with finite gradients.
    leaf = logits.clone().requires_grad_(True)
    logp = masked_log_softmax(leaf, mask)
    entropy = masked_entropy(logp, mask)
    torch.testing.assert_close(entropy, -(expected * expected.clamp(min=1e-30).log()).sum(-1))
    entropy.sum().backward()
    assert torch.isfinite(leaf.grad).all() and torch.all(leaf.grad[~mask] == 0)


def test_processor_masks_scores_and_records_behaviour_logprobs() -> None:
    torch.manual_seed(0)
    B, V, T = 3, 20, 1.5
    processor = MaskPolicyProcessor(
        None,
        False,
        torch.zeros(B, 2, dtype=torch.long),
        torch.ones(B, 2, dtype=torch.long),
        top_p=0.6,
        min_tokens_to_keep=1,
        always_allowed=torch.tensor([1]),
        temperature=T,
    )
    ids = torch.zeros(B, 2, dtype=torch.long)
    steps, tokens = [], []
    for t in range(3):
        scores = torch.randn(B, V) * 2
        if t == 0:
            scores[:, 1] = -torch.inf  # an earlier processor (min_new_tokens) ruled EOS out
        out = processor(ids, scores.clone())
        allowed = processor.action_masks[-1]
        if t == 0:
            assert not allowed[:, 1].any()
        else:
            assert allowed[:, 1].all()
        assert torch.equal(allowed, top_p_mask(scores / T, 0.6, 1, torch.tensor([1])) & torch.isfinite(scores))
        assert torch.all(out[~allowed] == -torch.inf) and torch.equal(out[allowed], scores[allowed])
        token = torch.multinomial((out / T).softmax(-1), 1)  # [B, 1]
        steps.append(masked_log_softmax(scores / T, allowed).gather(-1, token).squeeze(-1))
        tokens.append(token)
        ids = torch.cat([ids, token], 1)
    logprobs, action_mask = processor.finish(torch.cat(tokens, 1))
    assert action_mask.shape == (B, 3, V)
    torch.testing.assert_close(logprobs, torch.stack(steps, 1))
    assert torch.all(logprobs < 0)


# --- (2) the refreshed mask policy shapes generation -----------------------------------------------


def test_refresh_makes_the_new_mask_policy_shape_generation(tmp_path: Path) -> None:
    config = load_config(
        overrides=overrides(
            tmp_path,
            "refresh",
            "model.freeze_embeddings=false",
            "rollout.batch_size=16",
            "nlpo.lr=1e-2",
            "nlpo.minibatch_size=16",
            "nlpo.epochs=2",
            "nlpo.mask_update_every=2",
            "nlpo.mask_top_p=0.8",
            "kl.controller=fixed",
            "kl.coef=0",
        )
    )
    # A dense reward (characters written), so the learner moves from the first update on.
    trainer = NLPOTrainer(config, reward=lambda _p, gens, _r, _m: [len(g) / 40 for g in gens], console=quiet())
    rollouts: dict[int, Rollout] = {}
    rollout = trainer.rollout
    iteration = 0

    def recording(samples: list) -> Rollout:
        rollouts[iteration] = rollout(samples)
        return rollouts[iteration]

    trainer.rollout = recording  # type: ignore[method-assign]
    mask_model_calls: list[int] = []
    trainer.mask_model.register_forward_hook(lambda *_: mask_model_calls.append(iteration))
    initial = copy.deepcopy(trainer.policy.model)
    records, learner = {}, {}
    for iteration in (1, 2, 3, 4):
        learner[iteration] = copy.deepcopy(trainer.policy.model)  # the learner as this iteration starts
        records[iteration] = trainer.step(iteration)
    assert [records[i]["nlpo/mask_refreshed"] for i in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 0.0]
    # The mask model runs only while its weights differ from the learner's, one batched step per token.
    gen_steps = {i: rollouts[i].batch.gen_ids.shape[1] for i in rollouts}
    assert [mask_model_calls.count(i) for i in (1, 2, 3, 4)] == [0, gen_steps[2], 0, gen_steps[4]]
    at_refresh = learner[3]  # π_mask ← the learner at the start of iteration 3
    assert torch.equal(at_refresh.lm_head.weight, trainer.mask_model.lm_head.weight)

    always = trainer.always_allowed
    top_p = trainer.mask_top_p

    def mismatch(model: torch.nn.Module, it: int) -> float:
        r = rollouts[it]
        with torch.no_grad():
            logits, _ = forward_generated(model, False, r.batch)  # a plain full forward
        return check_nucleus(r.extras["action_mask"], logits, r.mask.bool(), top_p, always)

    assert mismatch(initial, 1) == 0.0  # iteration 1: π_mask = the initial weights = the learner
    assert mismatch(initial, 2) == 0.0  # before the refresh: the old mask policy (the learner has moved)
    assert mismatch(learner[2], 2) > 0.5
    assert mismatch(at_refresh, 3) == 0.0  # the refresh iteration (the mask comes from the learner's scores)
    assert mismatch(at_refresh, 4) == 0.0  # and the next one (the mask model runs beside generation)
    assert mismatch(initial, 3) > 0.5 and mismatch(initial, 4) > 0.5  # the old mask would differ
    assert mismatch(learner[4], 4) > 0.5  # and so would the learner's own nucleus


# --- (3) the incremental mask model equals a full forward ------------------------------------------


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        pytest.param("tiny", ["generation.min_new_tokens=2"], id="causal"),
        pytest.param("tiny-seq2seq", [], id="seq2seq"),
    ],
)
def test_incremental_mask_model_matches_full_forward(tmp_path: Path, model: str, extra: list[str]) -> None:
    config = load_config(
        overrides=[
            *overrides(
                tmp_path,
                "incremental",
                "rollout.batch_size=16",
                "nlpo.mask_top_p=0.7",
                "nlpo.min_tokens_to_keep=3",
                "generation.temperature=1.3",
                *extra,
            ),
            f"model.name={model}",
        ]
    )
    trainer = NLPOTrainer(config, console=quiet())
    seq2seq = trainer.policy.is_seq2seq
    trainer.mask_model = tiny_model(seq2seq, seed=1)[0].to(trainer.policy.device).eval().requires_grad_(False)
    trainer.mask_is_learner = False
    torch.manual_seed(0)
    rollout = trainer.rollout(trainer.train_samples[:16])
    valid = rollout.mask.bool()
    action_mask = rollout.extras["action_mask"]
    B, G = rollout.batch.gen_ids.shape
    assert action_mask.shape[:2] == (B, G) and G > 3
    assert rollout.batch.prompt_mask.float().mean() < 1  # prompts of several lengths: padding is exercised
    with torch.no_grad():
        mask_logits, _ = forward_generated(trainer.mask_model, seq2seq, rollout.batch)
        learner = trainer.policy.score(rollout.batch, trainer.temperature, keep_logits=True)
    eos = trainer.tokenizer.eos_token_id
    if not seq2seq:  # min_new_tokens=2: EOS could not be sampled in the first two steps
        assert not action_mask[:, :2, eos].any() and action_mask[:, 2:, eos].all()
        mask_logits[:, :2, eos] = -torch.inf
    assert check_nucleus(action_mask, mask_logits / trainer.temperature, valid, 0.7, trainer.always_allowed) == 0.0
    assert (action_mask.sum(-1) >= 3).all()
    # The mask model, not the learner, chose the sets.
    assert check_nucleus(action_mask, learner.logits, valid, 0.7, trainer.always_allowed) > 0.5
    # Every sampled token was allowed; the behaviour log-probs are the masked, renormalised ones...
    assert action_mask.gather(-1, rollout.batch.gen_ids.unsqueeze(-1))[valid].all()
    expected = masked_log_softmax(learner.logits, action_mask).gather(-1, rollout.batch.gen_ids.unsqueeze(-1))
    torch.testing.assert_close(rollout.extras["masked_logprobs"], expected.squeeze(-1) * valid, atol=1e-5, rtol=0)
    # ... and the unmasked ones (for the KL penalty) stay the learner's own.
    torch.testing.assert_close(rollout.logprobs, learner.logprobs * valid, atol=1e-5, rtol=0)
    assert (rollout.extras["masked_logprobs"][valid] > rollout.logprobs[valid]).all()
    # The update's first minibatch sees ratio 1.
    logprobs, _, _ = trainer.score_minibatch(rollout, torch.arange(B), with_entropy=False)
    torch.testing.assert_close(logprobs, rollout.extras["masked_logprobs"], atol=1e-5, rtol=0)


# --- (4) learning --------------------------------------------------------------------------------

# Measured (eval reward on 32 held-out prompts, before → after 12 iterations; minibatches cut from the global
# batch, see distributed.local_minibatches): seed 5: 0.003 → 0.95. Over seeds 0-9 at these settings NLPO gains
# more than 0.5 in 7 of 10 (0.58-0.95); seeds 2 and 6 are slower (0.47, 0.37 at 12); seed 1 locks in before
# "the" is found: the nucleus shrinks onto other tokens and tokens outside it get no gradient.
LEARN = [
    "model.freeze_embeddings=false",
    "rollout.batch_size=32",
    "nlpo.lr=1e-2",
    "kl.controller=fixed",
    "kl.coef=0",
    "nlpo.mask_update_every=2",
    "eval.num_prompts=32",
    "iterations=16",  # 12 learn for most seeds; 16 for every seed tried (2, 3, 5), fused AdamW or not
    "seed=5",
]


def test_nlpo_learns_toy_task(tmp_path: Path) -> None:
    result = train(None, overrides(tmp_path, "learn", *LEARN), console=quiet())
    before, after = result.before["reward"], result.after["reward"]
    assert before < 0.05
    assert after > before + 0.5, f"held-out reward {before:.3f} -> {after:.3f}"
    history = result.history
    assert [r["nlpo/mask_refreshed"] for r in history] == [float(i > 1 and (i - 1) % 2 == 0) for i in range(1, 17)]
    assert history[-1]["nlpo/mask_size"] < history[0]["nlpo/mask_size"] / 5  # the nucleus narrowed as it learned
    assert all(0.5 < r["nlpo/allowed_mass"] <= 1.0 for r in history)


# --- (5) exact resume across a refresh -------------------------------------------------------------

RESUME = [
    "model.freeze_embeddings=false",
    "rollout.batch_size=8",
    "nlpo.epochs=2",
    "nlpo.minibatch_size=4",
    "nlpo.lr=1e-2",
    "nlpo.mask_update_every=2",
    "nlpo.mask_top_p=0.8",
    "kl.controller=adaptive",
    "kl.coef=0.05",
    "kl.target=0.5",
    "kl.horizon=40",
    "eval.num_prompts=8",
    "eval.batch_size=4",
    "checkpoint.every=3",
]


def test_resume_is_exact_across_a_refresh(tmp_path: Path) -> None:
    # Refreshes at 3 and 5; resuming after 3 must restore π_mask (the learner after iteration 2) for 4.
    whole = train(None, overrides(tmp_path, "X", "iterations=6", *RESUME), console=quiet())
    train(None, overrides(tmp_path, "Y", "iterations=3", *RESUME), console=quiet())
    resumed = train(None, overrides(tmp_path, "Y", "iterations=6", *RESUME), resume=True, console=quiet())
    assert [r["iteration"] for r in resumed.history] == [4, 5, 6]
    x, y = train_records(whole.run_dir), train_records(tmp_path / "Y")
    assert [r["iteration"] for r in y] == [1, 2, 3, 4, 5, 6]
    assert [r["nlpo/mask_refreshed"] for r in x] == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert y == x
    for step in (3, 6):
        folder = whole.run_dir / "checkpoints" / f"step-{step}"
        policy, mask = load_file(str(folder / "policy.safetensors")), load_file(str(folder / MASK_FILE))
        key = "model.layers.0.mlp.down_proj.weight"
        assert not torch.equal(policy[f"model.{key}"], mask[key])  # π_mask lags the learner
    assert not list(tmp_path.glob("**/.tmp-*"))


# --- (6) a mask policy above a frozen trunk ----------------------------------------------------------

TRUNK = ["model.freeze_embeddings=true", "model.trainable_layers=1", "rollout.batch_size=8", "nlpo.lr=1e-2"]


def test_mask_policy_above_a_frozen_trunk_equals_a_whole_copy(tmp_path: Path) -> None:
    """With the bottom block frozen, π_mask is a copy of the top block only (sharing the frozen embedding and
    head), run on the hidden states generation computes: the same masks, samples and log-probs as a whole
    copy of the same weights, run on the tokens."""
    config = load_config(overrides=overrides(tmp_path, "trunk", *TRUNK, "nlpo.mask_top_p=0.7"))
    trainer = NLPOTrainer(config, console=quiet())
    assert trainer.trunk_depth == 1
    whole = copy.deepcopy(trainer.policy.model).eval().requires_grad_(False)  # π_mask's weights: the initial ones
    top_params = {id(p) for p in trainer.mask_model.parameters()}
    assert id(trainer.policy.model.get_input_embeddings().weight) in top_params  # shared, not copied
    own = sum(p.numel() for p in trainer.mask_model.parameters() if id(p) not in {
        id(q) for q in trainer.policy.model.parameters()})  # fmt: skip
    assert own < 0.5 * sum(p.numel() for p in whole.parameters())
    trainer.step(1)  # the learner moves away from π_mask
    assert not trainer.mask_is_learner
    samples = trainer.train_samples[:8]
    torch.manual_seed(7)
    above = trainer.rollout(samples)
    trainer.trunk_depth, trainer.mask_model = 0, whole
    torch.manual_seed(7)
    reference = trainer.rollout(samples)
    assert torch.equal(above.batch.gen_ids, reference.batch.gen_ids)
    assert torch.equal(above.extras["action_mask"], reference.extras["action_mask"])
    torch.testing.assert_close(above.extras["masked_logprobs"], reference.extras["masked_logprobs"], atol=1e-5, rtol=0)
    assert above.extras["mask_size"] < 512  # the mask did restrict the actions


def test_refreshing_the_top_copy_loads_the_learners_top(tmp_path: Path) -> None:
    config = load_config(overrides=overrides(tmp_path, "refresh", *TRUNK))
    trainer = NLPOTrainer(config, console=quiet())
    trainer.step(1)
    learner_top = trainer.policy.model.model.layers[1].mlp.down_proj.weight
    assert not torch.equal(trainer.mask_model.model.layers[0].mlp.down_proj.weight, learner_top)
    trainer.refresh_mask_policy()
    assert torch.equal(trainer.mask_model.model.layers[0].mlp.down_proj.weight, learner_top)
    assert torch.equal(trainer.mask_model.model.norm.weight, trainer.policy.model.model.norm.weight)


def test_resume_is_exact_with_a_mask_policy_above_the_trunk(tmp_path: Path) -> None:
    trunk = [*RESUME, "model.freeze_embeddings=true", "model.trainable_layers=1"]
    whole = train(None, overrides(tmp_path, "X", "iterations=5", *trunk), console=quiet())
    train(None, overrides(tmp_path, "Y", "iterations=3", *trunk), console=quiet())
    train(None, overrides(tmp_path, "Y", "iterations=5", *trunk), resume=True, console=quiet())
    assert train_records(tmp_path / "Y") == train_records(whole.run_dir)
    mask = load_file(str(whole.run_dir / "checkpoints" / "step-5" / MASK_FILE))
    assert "model.layers.0.mlp.down_proj.weight" in mask and "model.layers.1.mlp.down_proj.weight" not in mask
