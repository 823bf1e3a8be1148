"""tests/greedy_ties.py accepts a parting only at a near-tie of the reference's logits."""
from __future__ import annotations

from types import SimpleNamespace

import torch

try:
    from tests.greedy_ties import parting, tie_problem
except ImportError:
    from greedy_ties import parting, tie_problem


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are set per context length."""

    def __init__(self, by_length: dict[int, list[float]]):
        super().__init__()
        self.by_length = by_length

    def forward(self, input_ids):
        row = torch.tensor(self.by_length[input_ids.shape[1]])
        return SimpleNamespace(logits=row.expand(1, input_ids.shape[1], -1))


def test_parting_step():
    assert parting([1, 2, 3], [1, 2, 3]) is None
    assert parting([1, 2, 3], [1, 5, 3]) == 1
    assert parting([1, 2], [1, 2, 4]) == 2          # the shorter one stopped there


def test_a_near_tie_is_accepted_and_anything_else_is_not():
    prompt = [7, 7]
    # after the prompt and one generated token, tokens 2 and 3 are 1e-5 apart
    tie = FixedLogits({3: [0.0, 0.0, 5.0, 5.00001, 0.0]})
    assert tie_problem(tie, prompt, [1, 3, 4], [1, 2, 0], eos_id=0, tol=1e-3) is None
    clear = FixedLogits({3: [0.0, 0.0, 5.0, 7.0, 0.0]})
    assert "logit gap 2" in tie_problem(clear, prompt, [1, 3, 4], [1, 2, 0], eos_id=0, tol=1e-3)
    # close, but the other run took a token that is not among the top two
    assert tie_problem(tie, prompt, [1, 3], [1, 4], eos_id=0, tol=1e-3) is not None
    # one run stopped (EOS) where the other went on: EOS must be one of the tied pair
    eos_tie = FixedLogits({3: [5.0, 0.0, 0.0, 5.00001, 0.0]})
    assert tie_problem(eos_tie, prompt, [1, 3], [1], eos_id=0, tol=1e-3) is None
    assert tie_problem(tie, prompt, [1, 3], [1], eos_id=0, tol=1e-3) is not None
