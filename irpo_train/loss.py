"""The Iterative RPO objective: DPO on (winner, loser) plus the winner's length-normalised NLL.

For a pair (x, winner w, loser l), policy M and frozen reference M_ref (the previous iteration):

    L = -log sigmoid( beta * [ (log M(w|x) - log M_ref(w|x)) - (log M(l|x) - log M_ref(l|x)) ] )
        + alpha * ( -log M(w|x) / |w| )

log M(y|x) is the sum of the completion's token log-probs (prompt masked) and |w| the winner's
completion length in tokens: the NLL is normalised per answer, as Pang et al. (2024) write it.
TRL's `sft` loss term instead averages over all chosen tokens of the batch, which weighs long
winners more; that difference is why this loss is ours. alpha = 0 is plain DPO.

The baselines the paper compares with are this loss's parts (train.objective):
    dpo_nll      the loss above
    dpo          alpha = 0: the DPO term alone
    dpo_norm_nll the DPO term on length-normalised log-ratios (Tülu 3's; beyond the paper), + the NLL:
                 -log sigmoid(beta [(log M(w|x) - log M_ref(w|x)) / |w| - (log M(l|x) - log M_ref(l|x)) / |l|])
                 + alpha (-log M(w|x) / |w|)
    sft_winners  the NLL term alone, on the winners (STaR / rejection-sampling fine-tuning)
    sft_gold     the NLL term alone, on the dataset's gold solutions
so that a comparison between them changes the objective and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irpo.objectives import OBJECTIVES


def dpo_nll_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    rejected_lengths: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch-mean loss and its parts, from 1-D tensors of per-pair summed log-probs.

    With `rejected_lengths`, each log-ratio is divided by its answer's length (dpo_norm_nll); the
    rewards are then per token. With `weights` (pairs labelled by vote: the vote margin), each pair's loss,
    both terms, is multiplied by its weight before the batch mean, as ScPO's loss (Prasad et al. 2024, eq. 3)
    weighs it; without, every pair weighs 1 and the arithmetic is the paper's, unchanged.
    parts (unweighted): dpo, nll (batch means), reward_chosen / reward_rejected (beta x log-ratio),
    reward_margin, reward_accuracy (share of pairs whose margin is positive), all detached.
    """
    tensors = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_lengths)
    tensors += () if rejected_lengths is None else (rejected_lengths,)
    tensors += () if weights is None else (weights,)
    if any(t.dim() != 1 or t.shape != chosen_logps.shape for t in tensors):
        raise ValueError(
            f"dpo_nll_loss wants 1-D tensors of one length, got shapes {[tuple(t.shape) for t in tensors]}"
        )
    if bool((chosen_lengths <= 0).any()):
        raise ValueError("chosen_lengths must be positive: a winner with no completion tokens cannot be normalised")
    reward_chosen = beta * (chosen_logps - ref_chosen_logps)
    reward_rejected = beta * (rejected_logps - ref_rejected_logps)
    if rejected_lengths is not None:
        if bool((rejected_lengths <= 0).any()):
            raise ValueError(
                "rejected_lengths must be positive: a loser with no completion tokens cannot be normalised"
            )
        reward_chosen = reward_chosen / chosen_lengths.to(chosen_logps.dtype)
        reward_rejected = reward_rejected / rejected_lengths.to(chosen_logps.dtype)
    margin = reward_chosen - reward_rejected
    # logsigmoid is computed stably: a margin of +-1e4 gives 0 and 1e4, never inf or NaN.
    dpo = -F.logsigmoid(margin)
    nll = -chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    per_pair = dpo + alpha * nll
    loss = (per_pair if weights is None else weights.to(per_pair.dtype) * per_pair).mean()
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


def sft_loss(logps: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch mean of -log M(y|x) / |y|: dpo_nll_loss's NLL term without the DPO term.

    Normalised per answer like that term, so sft_winners differs from dpo_nll only by the DPO part.
    """
    if logps.dim() != 1 or lengths.shape != logps.shape:
        raise ValueError(
            f"sft_loss wants two 1-D tensors of one length, got shapes {tuple(logps.shape)} and {tuple(lengths.shape)}"
        )
    if bool((lengths <= 0).any()):
        raise ValueError("lengths must be positive: an answer with no completion tokens cannot be normalised")
    nll = -logps / lengths.to(logps.dtype)
    loss = nll.mean()
    return loss, {"nll": loss.detach(), "logps_chosen": logps.mean().detach()}


def objective_loss(
    objective: str, logps: torch.Tensor, lengths: torch.Tensor, batch: dict, *, beta: float, alpha: float
):
    """The loss of `objective` (irpo.objectives) on one collated batch's policy log-probs: the DPO term
    where it is pairwise, plus alpha x the NLL term where it has one; the NLL term alone otherwise."""
    spec = OBJECTIVES[objective]
    if not spec.pairwise:
        return sft_loss(logps, lengths)
    half = logps.shape[0] // 2  # collate() puts the B chosen rows first, then the B rejected
    return dpo_nll_loss(
        logps[:half],
        logps[half:],
        batch["ref_chosen_logps"],
        batch["ref_rejected_logps"],
        lengths[:half],
        beta=beta,
        alpha=alpha if spec.nll else 0.0,
        rejected_lengths=lengths[half:] if spec.length_normalised else None,
        weights=batch.get("weight"),
    )
