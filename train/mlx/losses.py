"""The training losses of the MLX backend, written once here (the torch backend's are TRL's).

sft_loss: cross-entropy summed over answer tokens (position t predicts token t + 1), returned
with the token count so gradient accumulation divides by the tokens of the whole step, as
transformers does with num_items_in_batch.
orpo_loss: ORPO (Hong et al. 2024) as TRL's ORPOTrainer computes it: chosen NLL minus
beta * mean log sigmoid(log odds ratio), the odds built on each answer's mean token log-prob.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from train.mlx.data import IGNORE


def token_logps(logits: mx.array, labels: mx.array) -> tuple[mx.array, mx.array]:
    """(log p of each next token, mask of positions that count), both batch x (seq - 1)."""
    logits = logits[:, :-1, :].astype(mx.float32)
    targets = labels[:, 1:]
    mask = targets != IGNORE
    safe = mx.where(mask, targets, 0)
    logp = mx.take_along_axis(logits, safe[..., None], axis=-1)[..., 0] \
        - mx.logsumexp(logits, axis=-1)
    return logp, mask


def sft_loss(model, input_ids: mx.array, labels: mx.array) -> tuple[mx.array, mx.array]:
    """(summed answer-token cross-entropy, number of answer tokens)."""
    logp, mask = token_logps(model(input_ids), labels)
    return -(logp * mask).sum(), mask.sum()


def _log1mexp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x < 0, stable at both ends (as TRL's log1mexp)."""
    return mx.where(x < -0.6931471805599453, mx.log1p(-mx.exp(x)), mx.log(-mx.expm1(x)))


def orpo_loss(model, chosen: tuple, rejected: tuple, beta: float,
              nll_on_completion_only: bool = True) -> tuple[mx.array, dict]:
    """chosen/rejected: (input_ids, labels, attention_mask) padded to one width."""
    (c_ids, c_labels, c_mask), (r_ids, r_labels, _) = chosen, rejected
    n = c_ids.shape[0]
    logits = model(mx.concatenate([c_ids, r_ids], axis=0))
    labels = mx.concatenate([c_labels, r_labels], axis=0)
    logp, mask = token_logps(logits, labels)
    mean_logp = (logp * mask).sum(-1) / mask.sum(-1)
    chosen_logps, rejected_logps = mean_logp[:n], mean_logp[n:]
    if nll_on_completion_only:
        nll_targets = c_labels                              # the answer only
    else:
        nll_targets = mx.where(c_mask == 1, c_ids, IGNORE)  # TRL's own: prompt and answer
    nll_logp, nll_mask = token_logps(logits[:n], nll_targets)
    nll = -(nll_logp * nll_mask).sum() / nll_mask.sum()
    log_odds = (chosen_logps - rejected_logps) \
        - (_log1mexp(chosen_logps) - _log1mexp(rejected_logps))
    ratio = nn.log_sigmoid(log_odds)
    loss = nll - beta * ratio.mean()
    chosen_rewards, rejected_rewards = beta * chosen_logps, beta * rejected_logps
    metrics = {"nll_loss": nll, "log_odds_ratio": ratio.mean(), "log_odds_chosen": log_odds.mean(),
               "rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
               "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
               "rewards/margins": (chosen_rewards - rejected_rewards).mean()}
    return loss, {k: mx.stop_gradient(v) for k, v in metrics.items()}
