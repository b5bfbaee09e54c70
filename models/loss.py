"""The training loss: one function for both objectives, used by every training loop and every measurement that
differentiates "a training step" (the benchmark's loops, its memory and gradient measurements, the conformance
checks).

- ``likelihood``: the mean negative log-likelihood in nats per example, ``-mean(log p_model(x) + ldj)``, where
  ``ldj`` is the log-det of any pre-processing applied to the data before the model (zero without one), so the
  loss is the NLL of the data in the space it is stored in (maximum likelihood, Dinh et al., "Density estimation
  using Real NVP", ICLR 2017, eq. 3).
- ``classification``: the mean cross-entropy of ``model.logits(x)`` against integer labels, in nats.

Labels may be omitted for measurements that only need a classifier's loss gradient (memory of a training step,
gradients with memory-saving backprop on and off, "every parameter gets a gradient"): the labels then cycle
through the classes, ``arange(B) % num_classes``, so the loss is still a cross-entropy of fixed targets.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from models.base import InvertibleModel

Objective = Literal["likelihood", "classification"]
#: The objectives :func:`training_loss` knows.
OBJECTIVES: tuple[Objective, ...] = ("likelihood", "classification")


def default_objective(model: InvertibleModel) -> Objective:
    """``"likelihood"`` for density models, ``"classification"`` for the others (classifiers)."""
    return "likelihood" if model.capabilities.density else "classification"


def cycling_labels(n: int, num_classes: int, device: torch.device | None = None) -> Tensor:
    """Fixed labels ``0, 1, ..., num_classes - 1, 0, 1, ...``: (n,) int64."""
    return torch.arange(n, device=device) % num_classes


def training_loss(model: InvertibleModel, x: Tensor, y: Tensor | None = None, objective: Objective | None = None,
                  ldj: Tensor | None = None) -> Tensor:
    """The scalar a training step minimises, in nats per example.

    Args:
        model: the model; ``log_prob`` (likelihood) or ``logits`` (classification) is called once on ``x``.
        x: (B, *shape) inputs as the model sees them (dequantised and pre-processed).
        y: (B,) int64 class labels for classification (None: :func:`cycling_labels`); the likelihood
            objective does not use labels.
        objective: ``"likelihood"`` or ``"classification"``; None: :func:`default_objective`.
        ldj: (B,) or scalar ``log|det d x / d x_data|`` of the pre-processing, added to the log-likelihood
            (None: 0); a constant of the parameters, so the cross-entropy does not use it.

    Returns:
        A 0-dim tensor: ``-mean(log_prob(x) + ldj)`` or ``cross_entropy(logits(x), y)`` (mean over the batch).
    """
    objective = default_objective(model) if objective is None else objective
    if objective == "likelihood":
        logp = model.log_prob(x)
        return -(logp if ldj is None else logp + ldj).mean()
    if objective == "classification":
        logits = model.logits(x)
        labels = cycling_labels(x.shape[0], logits.shape[1], logits.device) if y is None else y.long()
        return F.cross_entropy(logits, labels)
    raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
