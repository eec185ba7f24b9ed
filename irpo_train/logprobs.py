"""Summed completion log-probs of token sequences, without the batch's full-vocabulary logits.

    logps, lengths = completion_logps(model, input_ids, attention_mask, completion_mask)

A causal LM's head turns each position's hidden state into V logits (49,152 for the demo
model); the usual `log_softmax(logits).gather(target)` holds B x T x V floats at once, plus
their gradient, and on CPU that output layer dominates a DPO step. Here only completion
positions go through the head, a chunk of rows at a time, and each chunk is recomputed in
the backward pass (activation checkpointing) instead of kept, so memory grows with
`chunk_rows` x V, not with the batch. Exact: the same numbers as the full computation.

Works for models whose head is one linear layer over the decoder's last hidden state
(Llama, Mistral, Qwen, SmolLM, ...); others can use `full_vocab_logps`. Training calls it
through `irpo_train.scorer.CompletionScorer`, the module the Trainer wraps.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def completion_logps(model, input_ids, attention_mask, completion_mask, chunk_rows: int = 256):
    """(sum of log p(token) over completion tokens, number of completion tokens), per row.

    completion_mask[b, t] is True where input_ids[b, t] is a completion token to score;
    position t is predicted from position t-1, so the first token is never scored.
    """
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    scored = completion_mask[:, 1:]
    rows = hidden[:, :-1][scored]  # (N, H): states that predict a completion token
    targets = input_ids[:, 1:][scored]  # (N,)
    owner = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(scored)[scored]
    token_logps = (
        torch.cat(
            [
                checkpoint(
                    _chunk_logps,
                    rows[i : i + chunk_rows],
                    targets[i : i + chunk_rows],
                    head,
                    use_reentrant=False,
                )
                for i in range(0, rows.shape[0], chunk_rows)
            ]
        )
        if rows.shape[0]
        else rows.new_zeros(0, dtype=torch.float32)
    )
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(
        0, owner, token_logps
    )
    return sums, scored.sum(dim=1)


def _chunk_logps(rows: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    # The head is called as a module, not read as a weight: FSDP2 and ZeRO-3 gather a sharded
    # weight in the module's hooks (irpo_train.scorer says why that matters).
    logits = head(rows).float()  # float32 for the normaliser, whatever the model dtype
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)


def full_vocab_logps(model, input_ids, attention_mask, completion_mask):
    """The textbook computation, for models with a non-linear head and for checking the above."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    scored = completion_mask[:, 1:]
    return (token_logps * scored).sum(dim=1), scored.sum(dim=1)
