"""Perplexity: how likely a language model finds texts (GRUE's fluency measure).

Two uses: the perplexity of the *generations* under a fixed reference LM (rises when a policy drifts
into text the original model finds unlikely), and the perplexity of the *references* under the policy
(falls as the policy learns the task's language). Texts are scored as continuations of their prompt
(``condition_on_prompt``), the way the policy produced them. Per sample: exp(mean token NLL of that
text); corpus: exp(total NLL / total tokens), so a batch of one has corpus = per-sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmgym.errors import InputError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, register_metric


@torch.no_grad()
def continuation_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    texts: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> list[tuple[float, int]]:
    """(sum of token NLLs in nats, token count) of each ``texts[i]`` as a continuation of ``contexts[i]``.

    Causal LMs read context + text (with BOS in front when the tokenizer has one, so the first text
    token is scored too); encoder-decoders encode the context and decode the text."""
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    for start in range(0, len(texts), batch_size):
        ctx_batch = contexts[start : start + batch_size]
        txt_batch = texts[start : start + batch_size]
        ctx_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in ctx_batch]
        txt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in txt_batch]
        if seq2seq:
            if tokenizer.eos_token_id is not None:
                txt_ids = [[*ids, tokenizer.eos_token_id] for ids in txt_ids]
            enc = _pad([c[-max_length:] or [pad] for c in ctx_ids], pad)
            labels = _pad([t[:max_length] for t in txt_ids], -100)
            logits = model(
                input_ids=enc[0].to(device), attention_mask=enc[1].to(device), labels=labels[0].clamp(min=0).to(device)
            ).logits
            targets, mask = labels[0], labels[1]
            logprobs = torch.log_softmax(logits.float(), -1).cpu()  # [batch, tgt_len, vocab]
            token_lp = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        else:
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            rows, scored = [], []
            for c, t in zip(ctx_ids, txt_ids, strict=True):
                t = t[:max_length]
                c = (bos + c)[-max(max_length - len(t), 0) :] if max_length > len(t) else []
                rows.append(c + t)
                scored.append([0] * len(c) + [1] * len(t))
            ids, attn = _pad(rows, pad)
            score_mask, _ = _pad(scored, 0)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), -1).cpu()  # predicts tokens 1..L-1
            token_lp = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            mask = score_mask[:, 1:]  # the first token of a row has no context to be predicted from
        for row_lp, row_mask in zip(token_lp, mask, strict=True):
            n = int(row_mask.sum())
            out.append((float(-(row_lp * row_mask).sum()), n))
    return out


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


@register_metric("perplexity", "perplexity of the generations under a reference LM, or of the references under a model")
class Perplexity(Metric):
    """``model``: a model name lmgym loads (``smollm2-135m-instruct``, ``tiny``, a local folder) or a loaded
    `PreTrainedModel` with its ``tokenizer`` (e.g. the policy being trained). ``target``: ``"generations"``
    or ``"references"`` (a sample's references pooled into one count)."""

    name = "perplexity"
    higher_is_better = False
    requires = "a language model (default: the bundled smollm2-135m-instruct)"

    def __init__(
        self,
        model: str | PreTrainedModel = "smollm2-135m-instruct",
        tokenizer: PreTrainedTokenizerBase | None = None,
        target: Literal["generations", "references"] = "generations",
        condition_on_prompt: bool = True,
        batch_size: int = 16,
        max_length: int = 512,
    ) -> None:
        if target not in ("generations", "references"):
            raise InputError(f"perplexity: target must be 'generations' or 'references', got {target!r}")
        if not isinstance(model, str) and tokenizer is None:
            raise InputError("perplexity: a model object needs its tokenizer= as well")
        self.model_spec, self.tokenizer = model, tokenizer
        self.target, self.condition_on_prompt = target, condition_on_prompt
        self.batch_size, self.max_length = batch_size, max_length
        self._model: PreTrainedModel | None = None if isinstance(model, str) else model

    def _load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._model is None:
            from lmgym.models.loading import load_model

            loaded = load_model(str(self.model_spec))
            self._model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        assert self.tokenizer is not None
        return self._model, self.tokenizer

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        model, tokenizer = self._load()
        contexts, texts, owner = [], [], []
        for i, prompt in enumerate(prompts):
            targets = [generations[i]] if self.target == "generations" else list(references[i])
            if self.target == "references" and not targets:
                raise InputError(f"perplexity of references: sample {i} has no reference")
            for text in targets:
                contexts.append(prompt if self.condition_on_prompt else "")
                texts.append(text)
                owner.append(i)
        nll = [0.0] * len(prompts)
        count = [0] * len(prompts)
        for i, (s, n) in zip(
            owner, continuation_nll(model, tokenizer, contexts, texts, self.batch_size, self.max_length), strict=True
        ):
            nll[i] += s
            count[i] += n
        per_sample = [math.exp(s / n) if n else float("nan") for s, n in zip(nll, count, strict=True)]
        total = sum(count)
        corpus = math.exp(sum(nll) / total) if total else float("nan")
        return {self.name: MetricValue(per_sample, corpus)}
