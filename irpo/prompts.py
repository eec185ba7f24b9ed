"""Prompts as the model sees them: rendered once, tokenized once, and where a model's turn ends.

    fmt = prompt_format(model_path, tokenizer, task, style="auto")
    texts = render_prompts(task, questions, tokenizer, fmt.style)
    ids = encode_prompts(tokenizer, texts)          # what every engine is given, and the trainer scores

Every engine (vLLM, the transformers fallback, Ray's shard workers, the candidate scoring, the
trainer's own held-out generation) is given these token ids, never the text: a text prompt is
tokenized again by the engine, with the tokenizer's special tokens added, and a chat template that
already starts with the BOS (Llama-2 `<s>[INST]`, Llama-3 `<|begin_of_text|>`) then reaches the model
with two (vLLM issues 16976 and 27515, TRL 3853).

One BOS, the rule lm-eval's vLLM backend also follows (`tok_encode`): a text that starts with the
tokenizer's BOS is tokenized without special tokens; any other text with them, so the tokenizer adds
its BOS where it adds one (Phi-3's template writes none, its tokenizer adds `<s>`; ChatML models have
none at all). irpo's evaluation therefore gives the model the same ids as the build.

Styles (card `task.prompt_style`):
- `chat`: the task's messages in the model's chat template, the generation prompt added;
- `plain`: the paper's prompt as plain text, for a base model; generation also stops at the task's
  run-on markers (`Task.run_on_markers`, "\\nQuestion:"), where a base model goes on to invent the
  next exemplar. A bare "Question" would cut answers mid-reasoning (sglang PR 29264).
- `auto`: chat when the tokenizer has a chat template, else plain.

End of turn: the token that ends an assistant turn under the chat template (found by rendering one
assistant turn and reading the first special token after it: `<|im_end|>`, `<|eot_id|>`, `</s>`,
`<end_of_turn>`, `<|end|>`), or the EOS without a template. It closes gold solutions and SFT answers.
Generation stops on it and on every id of the model's `generation_config.eos_token_id` (Qwen2.5 base
ships a ChatML template and stops only on `<|endoftext|>`; Llama-3-Instruct lists two).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from irpo.errors import IrpoError
from irpo.tasks import Question, Task

log = logging.getLogger(__name__)

STYLES = ("auto", "chat", "plain")
_MARK = "IRPO-END-OF-TURN-PROBE"


class PromptError(IrpoError, ValueError):
    """A model whose prompts or end of turn cannot be worked out."""


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end of answer) or "length" (hit max_new_tokens)
    token_ids: tuple[int, ...] = ()  # as the engine returned them (irpo.prompts.cut_at_stop for stop strings)


@dataclass(frozen=True)
class PromptFormat:
    """How one model is prompted and where its answers end."""

    style: str  # "chat" or "plain" (resolved from "auto")
    end_of_turn_id: int  # closes gold solutions and SFT answers
    stop_token_ids: tuple[int, ...]  # generation stops on any of these (kept in the completion's ids)
    stop_strings: tuple[str, ...] = ()  # plain prompts: the task's run-on markers (cut from the completion)


def resolve_style(tokenizer, style: str) -> str:
    if style not in STYLES:
        raise PromptError(f"task.prompt_style must be auto, chat or plain, got {style!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if style == "chat" and not has_template:
        raise PromptError(
            "task.prompt_style=chat, but the model's tokenizer has no chat template; use plain (a base model)"
        )
    return style if style != "auto" else ("chat" if has_template else "plain")


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn under the model's chat template; the EOS without one."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False)
        except Exception as exc:  # noqa: BLE001  (a template that raises on this turn: say which model)
            raise PromptError(f"the model's chat template fails on a user and an assistant turn ({exc})") from None
        after = text[text.rindex(_MARK) + len(_MARK) :] if _MARK in text else ""
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
            if token in special:
                return int(token)
    if tokenizer.eos_token_id is None:
        raise PromptError("the model's tokenizer has neither a chat template that ends a turn nor an EOS token")
    return int(tokenizer.eos_token_id)


def generation_eos_ids(model_path: Path | str) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (an id or a list of them), or () where there is none."""
    from transformers import GenerationConfig  # here: `import irpo` and `irpo --help` never load it

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except (OSError, ValueError):
        return ()
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def prompt_format(model_path: Path | str, tokenizer, task: Task, style: str = "auto") -> PromptFormat:
    """The model's prompt format for `task`: style, end-of-turn token, what stops generation."""
    style = resolve_style(tokenizer, style)
    eos = generation_eos_ids(model_path)
    # Plain prompts have no turns: an answer ends where the model's text does, at its EOS (a base model
    # that ships a chat template, run plain, would otherwise learn to close answers with a turn's end).
    if style == "chat":
        end = end_of_turn_id(tokenizer)
    elif tokenizer.eos_token_id is not None:
        end = int(tokenizer.eos_token_id)
    elif eos:
        end = eos[0]
    else:
        raise PromptError("the model's tokenizer has no EOS token and its generation config names none")
    stops = tuple(dict.fromkeys([end, *eos]))
    return PromptFormat(style, end, stops, tuple(task.run_on_markers) if style == "plain" else ())


def render_prompts(task: Task, questions: list[Question], tokenizer, style: str = "auto") -> list[str]:
    """Each question's prompt text: the task's messages in the chat template, or its plain text."""
    if resolve_style(tokenizer, style) == "plain":
        return [task.user_message(q) for q in questions]
    return [
        tokenizer.apply_chat_template(task.messages(q), tokenize=False, add_generation_prompt=True) for q in questions
    ]


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of prompt texts with one BOS: the text's own, or the one the tokenizer adds."""
    if not texts:
        return []
    bos = tokenizer.bos_token
    has_bos = [bool(bos) and text.startswith(bos) for text in texts]
    own = [t for t, b in zip(texts, has_bos) if b]
    added = [t for t, b in zip(texts, has_bos) if not b]
    own_ids = iter(tokenizer(own, add_special_tokens=False)["input_ids"] if own else [])
    added_ids = iter(tokenizer(added, add_special_tokens=True)["input_ids"] if added else [])
    return [list(next(own_ids) if b else next(added_ids)) for b in has_bos]


@dataclass
class Prompts:
    """Questions with their prompts as text (the samples' and pairs' `prompt` column) and as the token
    ids every engine is given (irpo.prompts)."""

    questions: list[Question]
    texts: list[str]
    ids: list[list[int]]

    @classmethod
    def of(cls, task: Task, questions: list[Question], tokenizer, style: str) -> "Prompts":
        texts = render_prompts(task, questions, tokenizer, style)
        return cls(list(questions), texts, encode_prompts(tokenizer, texts))

    def fit_context(self, max_model_len: int, left_out: str = "not sampled") -> tuple["Prompts", list[str]]:
        """(the prompts that leave room for an answer in the engine's context, sampling.max_model_len;
        the ids of the questions left out). Such a prompt would stop the engine mid-build, and again on
        every resume: it is never sent, and the dataset card counts it."""
        kept = [i for i, ids in enumerate(self.ids) if len(ids) < max_model_len]
        dropped = [self.questions[i].question_id for i, ids in enumerate(self.ids) if len(ids) >= max_model_len]
        if dropped:
            log.warning(
                "%d question(s) have a prompt of sampling.max_model_len=%d tokens or more and are %s: %s",
                len(dropped),
                max_model_len,
                left_out,
                ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else ""),
            )
        pick = Prompts([self.questions[i] for i in kept], [self.texts[i] for i in kept], [self.ids[i] for i in kept])
        return pick, dropped


def encode_answers(tokenizer, texts: list[str], end_of_turn: int) -> list[list[int]]:
    """Token ids of answers that were not sampled (gold solutions), closed by the end-of-turn token."""
    if not texts:
        return []
    return [list(ids) + [end_of_turn] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def cut_at_stop(token_ids: list[int], text: str, tokenizer) -> tuple[list[int], str]:
    """An answer cut at a stop string: `text` is what precedes the string. What is recorded, and trained:
    the shortest prefix of the ids whose decoding covers that text (a token that straddles the string's
    start, such as ".\n" before "\nQuestion:", is kept: the model sampled it), and the text itself.
    Found by bisection: a longer prefix covers at least what a shorter one does."""

    def covers(end: int) -> bool:
        return tokenizer.decode(token_ids[:end], skip_special_tokens=True).startswith(text)

    if not covers(len(token_ids)):  # the text is not what these ids decode to: keep them all
        return list(token_ids), tokenizer.decode(token_ids, skip_special_tokens=True)
    low, high = 0, len(token_ids)
    while low < high:
        middle = (low + high) // 2
        if covers(middle):
            high = middle
        else:
            low = middle + 1
    return list(token_ids[:low]), text


def left_padded(prompt_ids: list[list[int]], pad_token_id: int):
    """(input_ids, attention_mask) tensors of prompts padded on the left: generation continues at the right edge."""
    import torch  # here: `import irpo`, `irpo --help` and the run's parent never load torch

    width = max(map(len, prompt_ids))
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def context_left(model, input_ids, max_model_len: int | None = None) -> int:
    """transformers' generate: the new tokens a batch has room for in the context (the cap when the card
    leaves it open, sampling.max_new_tokens null): the card's sampling.max_model_len, as vLLM's, within
    the model's own."""
    context = int(getattr(model.config, "max_position_embeddings", None) or max_model_len or 2048)
    if max_model_len is not None:
        context = min(context, int(max_model_len))
    return max(1, context - int(input_ids.shape[1]))


def stopped(tokens: list[int], stop_ids: set[int], stop_strings: tuple[str, ...], tokenizer) -> Generation:
    """One row of transformers' output as a Generation: up to and with its stop token, or cut before a
    stop string, or all of it when it hit max_new_tokens (what follows is padding)."""
    end = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    kept = tokens if end is None else tokens[: end + 1]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    marker = min((text.index(s) for s in stop_strings if s in text), default=None)
    if marker is not None:
        kept, text = cut_at_stop(kept, text[:marker], tokenizer)
        return Generation(text, len(kept), "stop", tuple(kept))
    return Generation(text, len(kept), "length" if end is None else "stop", tuple(kept))
