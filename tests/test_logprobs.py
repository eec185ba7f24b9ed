"""Memory-lean completion log-probs equal the full-vocabulary computation, values and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from irpo_train.logprobs import completion_logps, full_vocab_logps


@pytest.fixture(scope="module")
def model(demo_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(demo_model.path, dtype=torch.float32)


@pytest.fixture(scope="module")
def batch(demo_tokenizer):
    """Two prompt+completion rows of different lengths, left-aligned with right padding."""
    texts = [("Q: 2+3?\nA:", " 2+3 = 5. The answer is 5."), ("Q: Tom has 4 boxes of 7 pens. How many?\nA:", " 28.")]
    ids, masks = [], []
    for prompt, completion in texts:
        p = demo_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = demo_tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids.append(p + c)
        masks.append([False] * len(p) + [True] * len(c))
    width = max(map(len, ids))
    pad = demo_tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    completion = torch.tensor([m + [False] * (width - len(m)) for m in masks])
    return input_ids, attention, completion


def test_values_match_the_full_vocabulary_computation(model, batch):
    with torch.no_grad():
        lean, lean_n = completion_logps(model, *batch, chunk_rows=3)  # several chunks
        full, full_n = full_vocab_logps(model, *batch)
    assert lean_n.tolist() == full_n.tolist() == [int(batch[2][0].sum()), int(batch[2][1].sum())]
    # fp32 sums in another order (chunks vs one matmul): measured up to 3e-4 on -16 with AVX2 kernels.
    assert torch.allclose(lean, full, rtol=1e-4, atol=1e-4), (lean, full)
    assert (lean < 0).all()


def test_gradients_match_the_full_vocabulary_computation(model, batch):
    grads = []
    for fn in (lambda: completion_logps(model, *batch, chunk_rows=4), lambda: full_vocab_logps(model, *batch)):
        model.zero_grad()
        logps, _ = fn()
        logps.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    lean, full = grads
    assert lean.keys() == full.keys()
    worst = max((lean[n] - full[n]).abs().max().item() / (full[n].abs().max().item() + 1e-12) for n in full)
    assert worst < 5e-3, worst  # relative; 1.1e-3 measured with AVX2 fp32 kernels, ~1e-4 with AVX-512
