"""What a model can be trained with, one record each: the paper's loss and the baselines it is compared with.

    OBJECTIVES["dpo_nll"]  -> Objective(name="dpo_nll", label="DPO+NLL (iterative RPO)", pairwise=True,
                                        nll=True, rows="pairs", ...)
    ABLATIONS["dpo_nll_2x"] -> Ablation(objective=OBJECTIVES["dpo_nll"], pairs_factor=2, ...)

Everything that depends on the objective reads it here: the card's check (`train.objective`,
`ablations`), the loss (irpo_train.loss: the DPO term where `pairwise`, the NLL term where `nll`), the
trainer (what a row is, what its manifest says it trained on), the leaderboard and the summary (the
label), the CLIs (the choices). Adding an objective is one entry here and, if its loss is new, one
function in irpo_train/loss.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    name: str  # the card's train.objective
    label: str  # as tables and figures name it
    pairwise: bool  # the DPO term on (winner, loser) against the reference's log-probs
    nll: bool  # the winner's NLL / its length, weighted by train.alpha (without the DPO term: alone)
    rows: str  # what one training row is: "pairs" (winner and loser), "winners", or "gold" (gold solutions)
    trained_on: str  # as models/M_t/train_manifest.json says it
    # The DPO term on log-ratios divided by each answer's length (Tülu 3's length-normalised DPO).
    length_normalised: bool = False

    @property
    def needs_gold(self) -> bool:
        """Trains on the task's gold worked solutions: a task without them refuses this objective."""
        return self.rows == "gold"


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        # Pang et al. (2024): DPO on (winner, loser) + alpha x the winner's NLL / its length.
        Objective("dpo_nll", "DPO+NLL (iterative RPO)", True, True, "pairs", "the pairs"),
        Objective("dpo", "DPO", True, False, "pairs", "the pairs"),  # alpha = 0
        # Beyond the paper: the DPO term on per-token log-ratios (Lambert et al. 2024, Tülu 3; TRL's
        # loss_type="sigmoid_norm"), reference-based; the NLL term unchanged.
        Objective(
            "dpo_norm_nll", "length-normalised DPO+NLL", True, True, "pairs", "the pairs", length_normalised=True
        ),
        # STaR / rejection-sampling fine-tuning: the NLL term alone, on the pairs' winners.
        Objective(
            "sft_winners", "SFT on winners (STaR)", False, True, "winners", "the pairs' winners (chosen answers)"
        ),
        Objective(
            "sft_gold",
            "SFT on gold solutions",
            False,
            True,
            "gold",
            "the gold solutions of the questions the iteration sampled",
        ),
    )
}


@dataclass(frozen=True)
class Ablation:
    """A side model trained at iteration 1 from the same samples (irpo run --ablations): models/M_1-NAME."""

    name: str
    objective: Objective
    pairs_factor: int = 1  # the samples paired at this many times K (the paper's "twice as much data", §3.1)
    # Another ablation whose model this one starts from (and takes as DPO's reference): the paper's rows
    # "initialized from SFT" start from the model SFT on iteration 1's winners made (models/M_1-sft_winners).
    start_from: str | None = None

    @property
    def label(self) -> str:
        twice = ", twice the pairs" if self.pairs_factor == 2 else ""
        start = f", from M_1-{self.start_from}" if self.start_from else ""
        return self.objective.label + twice + start


ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        *(Ablation(name, objective) for name, objective in OBJECTIVES.items()),
        Ablation("dpo_nll_2x", OBJECTIVES["dpo_nll"], 2),
        Ablation("sft_winners_2x", OBJECTIVES["sft_winners"], 2),
        # Table 1's "DPO initialized from SFT training" and "Iterative RPO (1 iteration) initialized from
        # SFT": the same pairs, from the SFT-on-winners model, which is also the reference (DPO's reference
        # is the model it starts from, as every DPO model of the paper is trained).
        Ablation("dpo_from_sft", OBJECTIVES["dpo"], start_from="sft_winners"),
        Ablation("dpo_nll_from_sft", OBJECTIVES["dpo_nll"], start_from="sft_winners"),
    )
}


def training_order(ablations: list[str], objective: str) -> list[str]:
    """The ablations `irpo run` trains beside M_1, in the order they can be trained: each once, the main
    line's objective left out (M_1 is it), and a model an ablation starts from before that ablation."""
    names = [a for a in dict.fromkeys(ablations) if a != objective]
    starts = [ABLATIONS[a].start_from for a in names if ABLATIONS[a].start_from]
    return list(dict.fromkeys([*starts, *names]))
