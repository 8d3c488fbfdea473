"""LoRA through peft: frozen, shared base weights; the reference is the base with adapters off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmgym.api import evaluate_run
from lmgym.config import ConfigError
from lmgym.models.loading import load_model
from lmgym.models.policy import TokenBatch, forward_generated, logprobs_from_logits
from lmgym.models.tiny import tiny_model

from .helpers import make_trainer, storage_bytes

LORA = ["peft.r=4", "peft.alpha=8", "ppo.lr=1e-2"]


def base_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "lora_" not in n}


def probe_batch(trainer) -> TokenBatch:
    enc = trainer.tokenizer(["good movie", "a bad day at the"], return_tensors="pt", padding=True)
    gen = torch.tensor([[5, 9, 13, 2], [7, 7, 11, 3]])
    return TokenBatch(enc["input_ids"], enc["attention_mask"], gen, torch.ones_like(gen))


def test_lora_trains_adapters_and_value_head_and_keeps_the_base_bit_identical(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "lora", *LORA)
    base_before = base_weights(trainer)
    probe = probe_batch(trainer)
    ref_before = trainer.reference.logprobs(probe)
    with torch.no_grad():
        policy_before = trainer.policy.score(probe).logprobs
    torch.testing.assert_close(policy_before, ref_before)  # B = 0 at the start: policy = base
    names = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or n.startswith("value_head.") for n in names)
    assert {"value_head.weight", "value_head.bias"} <= names
    for iteration in (1, 2, 3):
        trainer.step(iteration)
    for name, value in base_weights(trainer).items():
        assert torch.equal(value, base_before[name]), name
    lora_b = [p for n, p in trainer.policy.named_parameters() if "lora_B" in n]
    assert max(float(p.detach().abs().max()) for p in lora_b) > 1e-3  # the adapters moved
    assert float(trainer.policy.value_head.weight.detach().abs().max()) > 1e-4  # the value head trained alongside
    # The reference is the base model: unchanged, while the policy moved away from it.
    assert torch.equal(trainer.reference.logprobs(probe), ref_before)
    with torch.no_grad():
        assert float((trainer.policy.score(probe).logprobs - ref_before).abs().max()) > 1e-3


def test_lora_keeps_a_single_copy_of_the_base_model(tmp_path: Path) -> None:
    base_model, _ = tiny_model()
    base = storage_bytes(base_model)
    lora = make_trainer(tmp_path, "lora", *LORA)
    assert lora.reference.lm is lora.policy.model
    lora_total = storage_bytes(lora.policy, lora.reference, lora.reference.lm)
    full = make_trainer(tmp_path, "full", "model.freeze_embeddings=false")  # every weight trains: a full copy
    full_total = storage_bytes(full.policy, full.reference)
    adapters = sum(p.numel() * p.element_size() for n, p in lora.policy.named_parameters() if p.requires_grad)
    # Measured: base weights once, plus adapters and the value head; a full fine-tune holds two copies.
    assert lora_total == base + adapters
    assert full_total > 1.9 * base


def logprobs_of(model: torch.nn.Module, probe: TokenBatch) -> torch.Tensor:
    """log p(generated tokens) under a plain causal LM, the way the policy scores them."""
    with torch.no_grad():
        logits, _ = forward_generated(model, False, probe)
    return logprobs_from_logits(logits.float(), probe.gen_ids)


def test_final_holds_the_adapter_and_the_merged_model(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "lora", *LORA)
    trainer.step(1)
    base_before = base_weights(trainer)
    trainer.save_final()
    final = trainer.run.final
    assert (final / "adapter" / "adapter_config.json").exists()
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    assert (final / "value_head.safetensors").exists()
    for name, value in base_weights(trainer).items():  # merging ran on a copy
        assert torch.equal(value, base_before[name]), name
    probe = probe_batch(trainer)
    with torch.no_grad():
        want = trainer.policy.score(probe).logprobs
    assert float((want - trainer.reference.logprobs(probe)).abs().max()) > 1e-4  # the adapter changed the policy
    torch.testing.assert_close(logprobs_of(load_model(str(final)).model, probe), want, rtol=1e-4, atol=1e-4)


def test_adapter_only_when_merge_is_off_and_it_loads_onto_its_base(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "lora", *LORA, "peft.merge_on_save=false")
    trainer.step(1)
    trainer.save_final()
    adapter = trainer.run.final / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    assert not (trainer.run.final / "config.json").exists()
    probe = probe_batch(trainer)
    with torch.no_grad():
        want = trainer.policy.score(probe).logprobs
    torch.testing.assert_close(logprobs_of(load_model(str(adapter)).model, probe), want, rtol=1e-4, atol=1e-4)
    assert set(evaluate_run(trainer.run.root, num_prompts=2)) >= {"reward", "perplexity"}  # `lmgym eval` loads it


def test_lora_with_trainable_layers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainable_layers"):
        make_trainer(tmp_path, "lora", *LORA, "model.trainable_layers=1")


def test_lora_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    first = make_trainer(tmp_path, "lora", *LORA, "iterations=2", "checkpoint.every=1")
    first.train()
    # A checkpoint holds the adapters and the value head, not the frozen base (the model folder has it).
    saved = load_file(str(tmp_path / "lora" / "checkpoints" / "step-2" / "policy.safetensors"))
    assert saved.keys() == {n for n, p in first.policy.named_parameters() if p.requires_grad}
    assert sum(t.numel() for t in saved.values()) < 0.2 * sum(p.numel() for p in first.policy.parameters())
    resumed = make_trainer(tmp_path, "lora", *LORA, "iterations=2", "checkpoint.every=1", resume=True)
    assert resumed.start_iteration == 3
    want = {n: p for n, p in first.policy.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.policy.named_parameters() if p.requires_grad}
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
