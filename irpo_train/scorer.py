"""The module the Trainer trains: a causal LM whose forward returns completion log-probs.

    scorer = CompletionScorer(lm)
    logps, lengths = scorer(input_ids, attention_mask, completion_mask)

Why a module and not a function of the model: under several processes the Trainer hands
`compute_loss` the *wrapped* model (DDP, FSDP2, DeepSpeed). Each strategy does its work in its
own forward: DDP arms the gradient all-reduce there, FSDP2 gathers the root's parameters (the
embeddings, the final norm, the head) in its pre-forward hook, ZeRO-3 likewise. Reaching past
the wrapper into `model.get_decoder()` or the head's weight fails under DDP (AttributeError),
and unwrapping it silently trains each rank on its own gradients. So the chunked scoring of
`irpo_train.logprobs` runs inside this module's forward, and the head is called as a module
(its hooks fire) rather than read as a weight.

The LM stays `scorer.lm`: it is what is saved (`save_pretrained`), generated from and loaded.
"""

from __future__ import annotations

import torch

from irpo_train.logprobs import completion_logps


class CompletionScorer(torch.nn.Module):
    def __init__(self, lm, chunk_rows: int = 256):
        super().__init__()
        self.lm = lm
        self.chunk_rows = chunk_rows
        # Read by the Trainer and accelerate (FSDP2's auto-wrap looks for the layer classes here).
        self.config = lm.config
        self._no_split_modules = getattr(lm, "_no_split_modules", None)
        # A checkpoint of a model with tied embeddings has no head weight; after loading one the
        # Trainer re-ties the weights when exactly these keys are missing.
        tied = getattr(lm, "_tied_weights_keys", None) if getattr(lm.config, "tie_word_embeddings", False) else None
        self._keys_to_ignore_on_save = list(tied) if tied else None

    def forward(self, input_ids, attention_mask, completion_mask):
        return completion_logps(self.lm, input_ids, attention_mask, completion_mask, self.chunk_rows)

    # The Trainer calls these on the model it is given; they belong to the LM.
    def gradient_checkpointing_enable(self, **kwargs):
        self.lm.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self):
        self.lm.gradient_checkpointing_disable()

    def enable_input_require_grads(self):
        self.lm.enable_input_require_grads()

    def tie_weights(self):
        self.lm.tie_weights()


def language_model(model):
    """The LM inside `model`: a CompletionScorer's, else `model` itself."""
    return model.lm if isinstance(model, CompletionScorer) else model


def as_scorer(model) -> CompletionScorer:
    return model if isinstance(model, CompletionScorer) else CompletionScorer(model)
