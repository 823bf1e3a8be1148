"""Adversarial distillation's reward: a small discriminator that tells gold answers from the
student's, trained alongside the policy; the student is rewarded for answers it takes for gold.

The discriminator is logistic regression on hashed word uni- and bigrams of the answer's title,
summary and questions (2^16 buckets, sublinear counts, L2-normalised): small enough to train a
few steps on every batch in milliseconds on a CPU, and blind to formatting because it sees the
parsed answer, not the raw text. On each reward call it first scores the batch (the reward),
then takes `steps` Adam steps on those student answers (label 0) against their tasks' golds
(label 1), so it keeps up with the policy as the research's adversarial setup did. Answers that
fail to parse or fail the spec gate get `fail_reward` and are still shown to it as negatives.
"""
from __future__ import annotations

import re
import zlib

from data.contract import DiscoveryResult, parse_assistant, spec_violations
from rl.reward import RewardStats, completion_text

N_BUCKETS = 1 << 16
_WORD = re.compile(r"[a-z0-9']+")


def answer_text(result: DiscoveryResult) -> str:
    return " \n ".join([result.task_title, result.task_description,
                        *(f"{q.title} {q.description}" for q in result.questions)])


def hashed_features(text: str):
    """Sparse (indices, values) of hashed uni/bigrams, log(1 + count), L2-normalised."""
    import math
    words = _WORD.findall(text.lower())
    counts: dict[int, int] = {}
    for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
        i = zlib.crc32(gram.encode()) % N_BUCKETS
        counts[i] = counts.get(i, 0) + 1
    vals = {i: math.log1p(c) for i, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in vals.values())) or 1.0
    return list(vals), [v / norm for v in vals.values()]


class Discriminator:
    def __init__(self, lr: float = 0.05, steps: int = 2, seed: int = 0):
        import torch
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(N_BUCKETS, generator=g) * 1e-3)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.opt = torch.optim.Adam([self.weight, self.bias], lr=lr)
        self.steps = steps
        self.history: list[dict] = []

    def _matrix(self, texts: list[str]):
        import torch
        rows, cols, vals = [], [], []
        for r, t in enumerate(texts):
            idx, v = hashed_features(t)
            rows += [r] * len(idx)
            cols += idx
            vals += v
        return torch.sparse_coo_tensor([rows, cols], vals, (len(texts), N_BUCKETS)).coalesce()

    def logits(self, texts: list[str]):
        import torch
        return torch.sparse.mm(self._matrix(texts), self.weight.unsqueeze(1)).squeeze(1) \
            + self.bias

    def prob_gold(self, texts: list[str]) -> list[float]:
        import torch
        with torch.no_grad():
            return torch.sigmoid(self.logits(texts)).tolist()

    def update(self, gold_texts: list[str], student_texts: list[str]) -> dict:
        import torch
        texts = gold_texts + student_texts
        labels = torch.tensor([1.0] * len(gold_texts) + [0.0] * len(student_texts))
        for _ in range(self.steps):
            self.opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.logits(texts),
                                                                        labels)
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            acc = float(((self.logits(texts) > 0).float() == labels).float().mean())
        record = {"loss": float(loss), "accuracy": acc}
        self.history.append(record)
        return record


class DiscriminatorReward:
    """A TRL reward function like rl.reward.PlannerReward, scored by the discriminator."""

    def __init__(self, discriminator: Discriminator, fail_reward: float = 0.0):
        self.d, self.fail_reward = discriminator, fail_reward
        self.__name__ = "discriminator"
        self.stats = RewardStats()

    def __call__(self, prompts, completions, gold, task_input, **_) -> list[float]:
        rewards = [self.fail_reward] * len(completions)
        texts, passing = [], []
        for i, comp in enumerate(completions):
            raw = completion_text(comp)
            parsed = parse_assistant(raw)
            if parsed.result is None or spec_violations(parsed.result):
                self.stats.spec_failed += 1
                texts.append(raw)
                continue
            texts.append(answer_text(parsed.result))
            passing.append(i)
        if passing:
            probs = self.d.prob_gold([texts[i] for i in passing])
            for i, p in zip(passing, probs):
                rewards[i] = p
            self.stats.judged += len(passing)
        golds = list(dict.fromkeys(gold))      # each task's gold once per batch
        self.d.update([answer_text(DiscoveryResult.from_json(g, where="gold")) for g in golds],
                      texts)
        self.stats.completions += len(completions)
        return rewards
