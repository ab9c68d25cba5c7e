"""Classification losses for imbalanced classes (class weights, focal loss, label smoothing),
and the listwise loss a ranking network trains with.

Every loss here is the *mean over the batch* of per-sample losses, each multiplied by its true
class's weight (not divided by the weights' sum, as ``F.cross_entropy(weight=...)`` does): the
Trainer weights micro-batches by their share of the optimizer step, and a plain mean keeps
accumulated micro-batches exactly equal to one large batch. ``auto`` class weights average to 1
over the training split, so the loss keeps its usual scale.

Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002) scales each class's log-loss term
by ``(1 - p)^gamma``, where ``p`` is the predicted probability of that class; class weights play
the part of the paper's alpha. With smoothed targets the term of every class is scaled by its own
``(1 - p_c)^gamma``, so ``gamma = 0`` is exactly (label-smoothed) cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LossOptions:
    """How a classification task's loss departs from plain cross-entropy.

    ``weights`` has one entry per class (in the task's class order), or is None for equal
    weights; ``focal_gamma`` None means no focal term; ``label_smoothing`` in [0, 1).
    """

    weights: tuple[float, ...] | None = None
    focal_gamma: float | None = None
    label_smoothing: float = 0.0

    @property
    def is_plain(self) -> bool:
        """Whether this is ordinary cross-entropy (computed exactly as before these options)."""
        return self.weights is None and self.focal_gamma is None and self.label_smoothing == 0.0


def binary_loss(output: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """Binary cross-entropy on one logit per row; ``target`` holds 0.0 / 1.0.

    Label smoothing moves targets toward 0.5: ``t * (1 - s) + s / 2``.
    """
    import torch.nn.functional as F

    logits = output.float().squeeze(-1)  # (B,)
    soft = target * (1.0 - options.label_smoothing) + 0.5 * options.label_smoothing
    if options.focal_gamma is None:
        per_row = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    else:
        gamma = options.focal_gamma
        # log p and log (1 - p) from the logit directly: stable for large |logits|.
        log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
        p = log_p.exp()
        per_row = -(soft * (1.0 - p) ** gamma * log_p + (1.0 - soft) * p**gamma * log_q)
    return _weighted_mean(per_row, target.long(), options)


def multiclass_loss(
    output: torch.Tensor, target: torch.Tensor, options: LossOptions
) -> torch.Tensor:
    """Cross-entropy over C logits per row; ``target`` holds class indices."""
    import torch.nn.functional as F

    logits = output.float()  # (B, C)
    smoothing = options.label_smoothing
    if options.focal_gamma is None:
        per_row = F.cross_entropy(logits, target, label_smoothing=smoothing, reduction="none")
    else:
        log_p = F.log_softmax(logits, dim=-1)  # (B, C)
        n_classes = logits.shape[-1]
        # The smoothed target distribution, as F.cross_entropy's label_smoothing defines it.
        soft = F.one_hot(target, n_classes).float() * (1.0 - smoothing) + smoothing / n_classes
        focal = (1.0 - log_p.exp()) ** options.focal_gamma
        per_row = -(soft * focal * log_p).sum(dim=-1)
    return _weighted_mean(per_row, target, options)


def _weighted_mean(
    per_row: torch.Tensor, classes: torch.Tensor, options: LossOptions
) -> torch.Tensor:
    if options.weights is None:
        return per_row.mean()
    weights = _weights_tensor(options.weights, per_row.device)
    return (per_row * weights[classes]).mean()


@lru_cache(maxsize=8)
def _weights_tensor(weights: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Built once per device, not copied to it at every step.
    import torch

    return torch.tensor(weights, dtype=torch.float32, device=device)


def listwise_loss(
    scores: torch.Tensor, relevance: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """ListNet's top-one loss (Cao et al. 2007, https://dl.acm.org/doi/10.1145/1273496.1273513)
    with NDCG's gains: per query, the cross-entropy between the softmax of the scores and the
    distribution of the gains ``2**relevance - 1``; the mean over the queries of the batch that
    hold a relevant item (the others carry no ordering to learn).

    ``queries`` is each row's query (any integer codes); a query's items must all be in the
    batch for its loss to be the whole query's (the ranking batches keep queries whole).
    """
    import torch

    scores = scores.float().reshape(-1)
    _, query = torch.unique(queries, return_inverse=True)
    n_queries = int(query.max()) + 1 if len(query) else 0
    # A numerically stable log-softmax within each query: shift by the query's maximum.
    top = torch.full((n_queries,), -torch.inf, device=scores.device, dtype=scores.dtype)
    top = top.scatter_reduce(0, query, scores.detach(), reduce="amax")
    shifted = scores - top[query]
    sums = torch.zeros(n_queries, device=scores.device, dtype=scores.dtype)
    sums = sums.index_add(0, query, shifted.exp())
    log_p = shifted - sums.log()[query]
    gains = torch.exp2(relevance.float().reshape(-1)) - 1.0
    totals = torch.zeros_like(sums).index_add(0, query, gains)
    target = gains / totals.clamp_min(torch.finfo(totals.dtype).tiny)[query]
    per_query = -torch.zeros_like(sums).index_add(0, query, target * log_p)
    relevant = totals > 0
    if not bool(relevant.any()):
        return scores.sum() * 0.0  # keeps the graph: nothing to learn from this batch
    return per_query[relevant].mean()


def dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, dice_weight: float = 1.0
) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` x (1 - soft Dice over the classes present), pixels at
    ``ignore_index`` left out of both: CE learns every pixel, Dice keeps small classes from
    drowning in the background.

    ``logits``: (B, C, H, W); ``target``: (B, H, W) class ids.
    """
    import torch.nn.functional as F

    target = target.long()
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if not dice_weight:
        return ce
    valid = (target != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    probabilities = logits.float().softmax(dim=1) * valid
    one_hot = F.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
    one_hot = one_hot * valid
    overlap = (probabilities * one_hot).sum(dim=(0, 2, 3))
    sizes = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    present = one_hot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * overlap + 1.0) / (sizes + 1.0)  # +1: smooth where a class is tiny
    return ce + dice_weight * (1.0 - dice[present].mean())
