"""The Iterative RPO objective: DPO on (winner, loser) plus the winner's length-normalised NLL.

For a pair (x, winner w, loser l), policy M and frozen reference M_ref (the previous iteration):

    L = -log sigmoid( beta * [ (log M(w|x) - log M_ref(w|x)) - (log M(l|x) - log M_ref(l|x)) ] )
        + alpha * ( -log M(w|x) / |w| )

log M(y|x) is the sum of the completion's token log-probs (prompt masked) and |w| the winner's
completion length in tokens: the NLL is normalised per answer, as Pang et al. (2024) write it.
TRL's `sft` loss term instead averages over all chosen tokens of the batch, which weighs long
winners more; that difference is why this loss is ours. alpha = 0 is plain DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_nll_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch-mean loss and its parts, from 1-D tensors of per-pair summed log-probs.

    parts: dpo, nll (batch means), reward_chosen / reward_rejected (beta x log-ratio),
    reward_margin, reward_accuracy (share of pairs whose margin is positive), all detached.
    """
    tensors = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_lengths)
    if any(t.dim() != 1 or t.shape != chosen_logps.shape for t in tensors):
        raise ValueError(f"dpo_nll_loss wants 1-D tensors of one length, got shapes {[tuple(t.shape) for t in tensors]}")
    if bool((chosen_lengths <= 0).any()):
        raise ValueError("chosen_lengths must be positive: a winner with no completion tokens cannot be normalised")
    reward_chosen = beta * (chosen_logps - ref_chosen_logps)
    reward_rejected = beta * (rejected_logps - ref_rejected_logps)
    margin = reward_chosen - reward_rejected
    # logsigmoid is computed stably: a margin of +-1e4 gives 0 and 1e4, never inf or NaN.
    dpo = -F.logsigmoid(margin)
    nll = -chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    loss = (dpo + alpha * nll).mean()
    parts = {
        "dpo": dpo.mean(),
        "nll": nll.mean(),
        "reward_chosen": reward_chosen.mean(),
        "reward_rejected": reward_rejected.mean(),
        "reward_margin": margin.mean(),
        "reward_accuracy": (margin > 0).to(chosen_logps.dtype).mean(),
        "logps_chosen": chosen_logps.mean(),
        "logps_rejected": rejected_logps.mean(),
    }
    return loss, {name: value.detach() for name, value in parts.items()}
