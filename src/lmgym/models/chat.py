"""Chat prompts: a prompt may be a list of ``{role, content}`` messages, rendered with the model's chat template.

``model.chat_template``: ``auto`` renders message prompts with the tokenizer's own template, ``none`` refuses
them, a path to a ``.jinja`` file replaces the tokenizer's template. ``rollout.chat: true`` also wraps every
plain string prompt as one user message (any task, GRUE's included). A rendered prompt's ids are exactly
``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``'s, and generation stops at EOS or at
the template's end-of-turn token (SmolLM2's ``<|im_end|>``, Llama 3's ``<|eot_id|>``), so it ends with the
assistant's turn. Plain prompts with ``chat: false`` are tokenized exactly as before.

The settings travel with the tokenizer (like its padding and truncation sides): `configure_chat` sets them
once, and every place that tokenizes prompts reads them through `encode_prompts` and `stop_token_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lmgym.errors import InputError, MissingFileError

Messages = list[dict[str, str]]
_ATTR = "_lmgym_chat"
_PROBE = "lmgym end-of-turn probe"


@dataclass(frozen=True)
class ChatFormat:
    wrap_strings: bool  # rollout.chat: a plain prompt becomes one user message
    stop_ids: tuple[int, ...]  # EOS and the template's end-of-turn token


def configure_chat(tokenizer: PreTrainedTokenizerBase, chat_template: str, wrap_strings: bool, model: str) -> None:
    """Apply ``model.chat_template`` and ``rollout.chat`` to ``tokenizer`` (in place)."""
    if chat_template == "none":
        if wrap_strings:
            raise InputError("rollout.chat=true needs a chat template: set model.chat_template to auto or a file")
        setattr(tokenizer, _ATTR, None)
        return
    if chat_template != "auto":
        path = Path(chat_template).expanduser()
        if not path.is_file():
            raise MissingFileError(f"model.chat_template: {chat_template!r} is neither auto, none nor a .jinja file")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    if wrap_strings and not tokenizer.chat_template:
        raise InputError(
            f"rollout.chat=true: model {model!r} has no chat template; give one with model.chat_template=<file.jinja>"
        )
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = end_of_turn_id(tokenizer) if tokenizer.chat_template else None
    stops += [end] if end is not None and end not in stops else []
    setattr(tokenizer, _ATTR, ChatFormat(wrap_strings, tuple(stops)))


def chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat | None:
    return getattr(tokenizer, _ATTR, None)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the template puts after an assistant message (None when it puts none)."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    after = text[text.rindex(_PROBE) + len(_PROBE) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a completion: EOS, and with a chat template configured, the end-of-turn token."""
    fmt = chat_format(tokenizer)
    if fmt is not None and fmt.stop_ids:
        return list(fmt.stop_ids)
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def is_messages(prompt: Any) -> bool:
    return isinstance(prompt, list)


def uses_chat(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Any]) -> bool:
    """Whether these prompts are rendered with the chat template: messages always (unless
    model.chat_template=none), strings with rollout.chat. An unconfigured tokenizer is model.chat_template=auto."""
    if any(is_messages(p) for p in prompts):
        refused = hasattr(tokenizer, _ATTR) and chat_format(tokenizer) is None
        if refused or not tokenizer.chat_template:
            name = getattr(tokenizer, "name_or_path", "") or "this model"
            raise InputError(
                f"prompts are chat messages, but {name!r} has no chat template to render them (or "
                "model.chat_template=none): give one with model.chat_template=<file.jinja>, or use string prompts"
            )
        return True
    fmt = chat_format(tokenizer)
    return fmt is not None and fmt.wrap_strings


def as_messages(prompt: str | Messages) -> Messages:
    return prompt if is_messages(prompt) else [{"role": "user", "content": prompt}]


def render_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | Messages) -> list[int]:
    """The prompt's ids through the chat template, with the generation prompt (the assistant's turn) open."""
    encoded = tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=True)
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])  # transformers 5: an encoding


def fit_chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | Messages, limit: int) -> tuple[list[int], bool]:
    """The rendered ids of ``prompt`` within ``limit`` tokens, and whether it had to be cut. The template is
    kept whole: the last user message's text is shortened (at the tokenizer's truncation side) and rendered
    again; only when that cannot fit are the rendered ids themselves cut at the left (the system prompt goes,
    the open assistant turn stays)."""
    ids = render_ids(tokenizer, prompt)
    if len(ids) <= limit:
        return ids, False
    messages = [dict(m) for m in as_messages(prompt)]
    user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    for _ in range(4):
        content = tokenizer(messages[user]["content"], add_special_tokens=False)["input_ids"]
        cut = len(ids) - limit + 1
        if cut >= len(content):
            break
        kept = content[cut:] if tokenizer.truncation_side == "left" else content[:-cut]
        messages[user]["content"] = tokenizer.decode(kept)
        ids = render_ids(tokenizer, messages)
        if len(ids) <= limit:
            return ids, True
    return ids[-limit:], True


def reward_prompt(prompt: str | Messages) -> str:
    """The prompt a reward sees: the text itself, or the last user message of a conversation (the whole
    conversation is in ``meta["messages"]``)."""
    if not is_messages(prompt):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]
