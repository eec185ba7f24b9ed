"""dpo_nll_loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from irpo_train.loss import dpo_nll_loss, objective_loss, sft_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_one_pair_by_hand():
    # Policy log-probs: winner -10, loser -12; reference: both -11; winner has 5 tokens.
    # beta * ((-10 + 11) - (-12 + 11)) = 0.1 * 2 = 0.2
    # dpo = -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598138869...
    # nll = 10 / 5 = 2
    loss, parts = dpo_nll_loss(t(-10), t(-12), t(-11), t(-11), t(5), beta=0.1, alpha=1.0)
    dpo = math.log1p(math.exp(-0.2))
    assert loss.item() == pytest.approx(dpo + 2.0, abs=1e-12)
    assert parts["dpo"].item() == pytest.approx(dpo, abs=1e-12)
    assert parts["nll"].item() == pytest.approx(2.0)
    assert parts["reward_chosen"].item() == pytest.approx(0.1)
    assert parts["reward_rejected"].item() == pytest.approx(-0.1)
    assert parts["reward_margin"].item() == pytest.approx(0.2)
    assert parts["reward_accuracy"].item() == 1.0


def test_alpha_zero_is_plain_dpo():
    loss, parts = dpo_nll_loss(t(-10), t(-12), t(-11), t(-11), t(5), beta=0.1, alpha=0.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-12)
    assert parts["nll"].item() == pytest.approx(2.0)  # still reported, not added


def test_nll_is_normalised_per_answer_not_per_batch_token():
    # Winners of 2 and 8 tokens with log-probs -4 and -8: per answer (4/2 + 8/8) / 2 = 1.5,
    # whereas a batch token mean (TRL's sft term) would give (4 + 8) / (2 + 8) = 1.2.
    _, parts = dpo_nll_loss(t(-4, -8), t(-9, -9), t(-4, -8), t(-9, -9), t(2, 8), beta=0.1, alpha=1.0)
    assert parts["nll"].item() == pytest.approx(1.5)
    # Equal log-ratios: margin 0, dpo = log 2 for both pairs, accuracy 0 (a tie is not a win).
    assert parts["dpo"].item() == pytest.approx(math.log(2))
    assert parts["reward_accuracy"].item() == 0.0


def test_batch_mean_of_mixed_pairs():
    # Pair 1 margin +0.2 (as above); pair 2 mirrored: margin -0.2, winner -12 over 4 tokens.
    loss, parts = dpo_nll_loss(t(-10, -12), t(-12, -10), t(-11, -11), t(-11, -11), t(5, 4), beta=0.1, alpha=0.5)
    dpo = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.2))) / 2
    nll = (10 / 5 + 12 / 4) / 2
    assert loss.item() == pytest.approx(dpo + 0.5 * nll, abs=1e-12)
    assert parts["reward_accuracy"].item() == 0.5 and parts["reward_margin"].item() == pytest.approx(0.0)


@pytest.mark.parametrize("gap", [1e4, -1e4, 1e30, -1e30])
def test_extreme_margins_stay_finite_with_finite_gradients(gap):
    chosen = t(-5.0).requires_grad_()
    loss, parts = dpo_nll_loss(chosen, t(-5.0 - gap), t(-5.0), t(-5.0), t(3), beta=0.1, alpha=1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(chosen.grad.item())
    expected_dpo = 0.0 if gap > 0 else 0.1 * abs(gap)  # -log sigmoid(m) -> 0 or -m
    assert parts["dpo"].item() == pytest.approx(expected_dpo, rel=1e-9, abs=1e-12)


def test_gradient_pushes_winner_up_and_loser_down():
    chosen, rejected = t(-10.0).requires_grad_(), t(-12.0).requires_grad_()
    loss, _ = dpo_nll_loss(chosen, rejected, t(-11), t(-11), t(5), beta=0.1, alpha=1.0)
    loss.backward()
    # d/dc = -beta * sigmoid(-m) - alpha / |w| < 0 ; d/dr = +beta * sigmoid(-m) > 0
    sig = 1 / (1 + math.exp(0.2))
    assert chosen.grad.item() == pytest.approx(-0.1 * sig - 1 / 5)
    assert rejected.grad.item() == pytest.approx(0.1 * sig)


def test_bad_shapes_and_empty_winners_are_refused():
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        dpo_nll_loss(t(-1, -2), t(-1), t(-1), t(-1), t(1))
    with pytest.raises(ValueError, match="chosen_lengths must be positive"):
        dpo_nll_loss(t(-1), t(-1), t(-1), t(-1), t(0))


def test_the_baselines_are_the_losses_parts():
    """dpo = the DPO term alone, sft_winners = the NLL term alone, on the same batch."""
    chosen, rejected, lengths = t(-12.0, -30.0), t(-20.0, -25.0), t(4.0, 10.0)
    batch = {"ref_chosen_logps": t(-14.0, -29.0), "ref_rejected_logps": t(-18.0, -26.0)}
    logps, both = torch.cat([chosen, rejected]), torch.cat([lengths, t(5.0, 7.0)])
    full, parts = objective_loss("dpo_nll", logps, both, batch, beta=0.1, alpha=1.0)
    dpo, dpo_parts = objective_loss("dpo", logps, both, batch, beta=0.1, alpha=1.0)  # alpha is ignored: dpo is alpha 0
    sft, sft_parts = sft_loss(chosen, lengths)
    assert dpo.item() == pytest.approx(parts["dpo"].item()) and dpo_parts["nll"].item() == pytest.approx(
        parts["nll"].item()
    )
    assert sft.item() == pytest.approx((12 / 4 + 30 / 10) / 2) == pytest.approx(parts["nll"].item())
    assert full.item() == pytest.approx(dpo.item() + sft.item())
    # SFT batches hold the chosen answers only: objective_loss passes them straight through.
    assert objective_loss("sft_gold", chosen, lengths, {}, beta=0.1, alpha=1.0)[0].item() == pytest.approx(sft.item())
    assert set(sft_parts) == {"nll", "logps_chosen"}


def test_sft_loss_gradient_raises_every_answer_and_refuses_bad_input():
    logps = t(-8.0, -3.0).requires_grad_()
    sft_loss(logps, t(4.0, 1.0))[0].backward()
    assert (logps.grad < 0).all()  # descending the loss raises each answer's log-prob, short answers more per token
    assert logps.grad[1] < logps.grad[0]
    with pytest.raises(ValueError, match="positive"):
        sft_loss(t(-1.0), t(0.0))
    with pytest.raises(ValueError, match="1-D"):
        sft_loss(t(-1.0, -2.0), t(1.0))


def test_an_objective_is_one_entry_checked_at_load_and_trained_by_its_fields(monkeypatch):
    """Adding an objective: one entry in irpo.objectives (here a DPO whose NLL term is switched on, under
    another name). The card takes it, the loss follows its fields, a task without gold solutions
    refuses only the objectives that need them."""
    from irpo import objectives
    from irpo.card_loader import CardError, load_card
    from irpo.objectives import OBJECTIVES, Objective
    from irpo_train.loss import objective_loss

    added = Objective("dpo_nll_again", "DPO+NLL, again", True, True, "pairs", "the pairs")
    monkeypatch.setitem(objectives.OBJECTIVES, added.name, added)
    monkeypatch.setitem(objectives.ABLATIONS, added.name, objectives.Ablation(added.name, added))
    assert (
        load_card("demo", ["train.objective=dpo_nll_again", "ablations=[dpo_nll_again]"]).train.objective == added.name
    )
    logps, lengths = torch.tensor([-4.0, -9.0]), torch.tensor([2.0, 3.0])
    batch = {"ref_chosen_logps": torch.tensor([-5.0]), "ref_rejected_logps": torch.tensor([-8.0])}
    ours, _ = objective_loss("dpo_nll_again", logps, lengths, batch, beta=0.1, alpha=1.0)
    paper, _ = objective_loss("dpo_nll", logps, lengths, batch, beta=0.1, alpha=1.0)
    assert ours == paper  # the same fields, the same loss
    with pytest.raises(CardError, match="train.objective has 'sft'"):
        load_card("demo", ["train.objective=sft"])
    needs_gold = sorted(name for name, o in OBJECTIVES.items() if o.needs_gold)
    assert needs_gold == ["sft_gold"]


def test_the_length_normalised_dpo_term_by_hand():
    # dpo_norm_nll (Tülu 3's length-normalised DPO term, the NLL unchanged). Winner: -10 over 5 tokens,
    # reference -11; loser: -12 over 4 tokens, reference -10.
    # per-token log-ratios: (-10 + 11) / 5 = 0.2 and (-12 + 10) / 4 = -0.5; margin = 0.1 * (0.2 + 0.5) = 0.07
    # dpo = -log sigmoid(0.07) = log(1 + e^-0.07) = 0.65831...; nll = 10 / 5 = 2 (as dpo_nll's)
    lengths = t(5, 4)
    batch = {"ref_chosen_logps": t(-11), "ref_rejected_logps": t(-10)}
    loss, parts = objective_loss("dpo_norm_nll", t(-10, -12), lengths, batch, beta=0.1, alpha=1.0)
    dpo = math.log1p(math.exp(-0.07))
    assert loss.item() == pytest.approx(dpo + 2.0, abs=1e-12)
    assert parts["reward_chosen"].item() == pytest.approx(0.02) and parts["reward_rejected"].item() == pytest.approx(
        -0.05
    )
    # The paper's term on the same pair: margin 0.1 * (1 + 2) = 0.3, another loss.
    paper, _ = objective_loss("dpo_nll", t(-10, -12), lengths, batch, beta=0.1, alpha=1.0)
    assert paper.item() == pytest.approx(math.log1p(math.exp(-0.3)) + 2.0, abs=1e-12)


def test_vote_weights_multiply_each_pairs_loss_by_hand():
    # Two pairs labelled by vote (pairs.label=vote), weights 0.5 and 0.25 (their vote margins).
    # Pair 1: margin 0.1 * ((-10 + 11) - (-12 + 10)) = 0.3, nll 10 / 5 = 2 -> log(1 + e^-0.3) + 2.
    # Pair 2: margin 0.1 * ((-8 + 8) - (-9 + 9)) = 0, nll 8 / 4 = 2 -> log 2 + 2.
    # Loss = (0.5 * pair 1 + 0.25 * pair 2) / 2: the batch mean of the weighted losses (ScPO's eq. 3).
    chosen, lengths = t(-10, -8, -12, -9), t(5, 4, 6, 3)
    batch = {"ref_chosen_logps": t(-11, -8), "ref_rejected_logps": t(-10, -9), "weight": t(0.5, 0.25)}
    loss, parts = objective_loss("dpo_nll", chosen, lengths, batch, beta=0.1, alpha=1.0)
    one, two = math.log1p(math.exp(-0.3)) + 2.0, math.log(2.0) + 2.0
    assert loss.item() == pytest.approx((0.5 * one + 0.25 * two) / 2, abs=1e-12)
    # The parts stay unweighted means (what the pairs look like, not how much they count).
    assert parts["nll"].item() == pytest.approx(2.0)
    # Weights of 1 are the paper's loss to the bit.
    ones = {**batch, "weight": t(1.0, 1.0)}
    plain = {k: v for k, v in batch.items() if k != "weight"}
    assert torch.equal(
        objective_loss("dpo_nll", chosen, lengths, ones, beta=0.1, alpha=1.0)[0],
        objective_loss("dpo_nll", chosen, lengths, plain, beta=0.1, alpha=1.0)[0],
    )
