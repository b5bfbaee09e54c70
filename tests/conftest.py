"""Shared test set-up: single-threaded torch (the CI machine has 2 cores) and deterministic seeds."""

from __future__ import annotations

import pytest
import torch
from task_helpers import StubResult, TrainingCalls

from bench.regularizers import FDRegularizer
from bench.tasks import training
from bench.tasks.base import TaskContext
from models.base import InvertibleModel

torch.set_num_threads(1)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> TrainingCalls:
    """Replace trained_model by ``ctx.make_model()`` in eval mode; records each call's arguments. The stub reports
    a diverged run when the test sets ``calls.diverged = True``."""
    log = TrainingCalls()

    def fake(ctx: TaskContext, objective: str, regularizer: FDRegularizer | None = None
             ) -> tuple[InvertibleModel, StubResult]:
        log.append({"objective": objective, "regularizer": regularizer})
        return ctx.make_model().to(ctx.device).eval(), StubResult(log.diverged)

    monkeypatch.setattr(training, "trained_model", fake)
    return log
