"""Models with known answers and a task context for the tests of the measurement tasks.

``trained_model`` is replaced (fixture ``calls`` in conftest.py) by a stub that returns ``ctx.make_model()``
untrained, so each test controls the model exactly (a known spectrum, a known truncation bias, a known blow-up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bench.datasets.base import Dataset
from bench.tasks.base import Budget, Metric, Task, TaskContext
from models.base import (
    Capabilities,
    EstimatorSettings,
    InverseInfo,
    InverseSettings,
    InvertibleModel,
    refuse_changes,
)
from models.template import LinearFlow

D = 4

# ----------------------------------------------------------------------------------------------- test models


class SeriesResidual(InvertibleModel):
    """``F(x) = x + tanh(W x + b)`` with ``||W||_2 = c``; log-det by the truncated power series with Hutchinson
    probes (Behrmann et al., ICML 2019); inverse by fixed-point iteration ``x <- z - g(x)``.

    ``x``: (B, D) -> ``z``: (B, D), ``ladj``: (B,). The Jacobian of ``g`` is explicit, so the expected value of
    the estimator at ``n`` terms is known exactly: ``sum_{k<=n} (-1)^{k+1} tr(J_g^k) / k``.
    """

    family = "seriesres"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="estimator", inverse="iterative")

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, c: float = 0.7, terms: int = 5,
                 probes: int = 1, max_iter: int = 500, seed: int = 0) -> None:
        super().__init__(shape, num_classes, c=c, terms=terms, probes=probes, max_iter=max_iter, seed=seed)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(self.dim, self.dim, generator=g)
        self.weight = nn.Parameter(c * w / torch.linalg.matrix_norm(w, 2))
        self.bias = nn.Parameter(0.2 * torch.randn(self.dim, generator=g))
        self.terms, self.probes = terms, probes
        self.solve = InverseSettings(solver="fixed_point", tol=1e-6, max_iter=max_iter)
        self.encode_calls = 0

    def jacobian_g(self, x: Tensor) -> Tensor:
        """``J_g(x)``: (B, D) -> (B, D, D)."""
        t = torch.tanh(x @ self.weight.T + self.bias)
        return (1 - t**2).unsqueeze(-1) * self.weight

    def encode(self, x: Tensor) -> Tensor:
        self.encode_calls += 1
        return x + torch.tanh(x @ self.weight.T + self.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x + torch.tanh(x @ self.weight.T + self.bias)
        jac = self.jacobian_g(x)
        v = torch.randn(x.shape[0], self.probes, self.dim, dtype=x.dtype)
        w, ladj = v, torch.zeros(x.shape[0], dtype=x.dtype)
        for k in range(1, self.terms + 1):
            w = torch.einsum("bij,bpj->bpi", jac, w)
            ladj = ladj + (-1) ** (k + 1) / k * (v * w).sum(-1).mean(-1)
        return z, ladj

    def expected_estimate(self, x: Tensor, terms: int) -> Tensor:
        jac, power = self.jacobian_g(x), torch.eye(self.dim, dtype=x.dtype).expand(x.shape[0], -1, -1)
        out = torch.zeros(x.shape[0], dtype=x.dtype)
        for k in range(1, terms + 1):
            power = power @ jac
            out = out + (-1) ** (k + 1) / k * power.diagonal(dim1=1, dim2=2).sum(-1)
        return out

    def exact_logdet(self, x: Tensor) -> Tensor:
        return torch.linalg.slogdet(torch.eye(self.dim, dtype=x.dtype) + self.jacobian_g(x))[1]

    def inverse(self, z: Tensor) -> Tensor:
        x, history = z.clone(), []
        tol = self.solve.tol or 1e-6
        for _ in range(self.solve.max_iter):
            new = z - torch.tanh(x @ self.weight.T + self.bias)
            history.append(float((new - x).detach().abs().max()))
            x = new
            if history[-1] < tol:
                break
        self.last_inverse = InverseInfo(iterations=len(history), residual=history[-1], converged=history[-1] < tol,
                                        per_block=[len(history)], history=history)
        return x

    def estimator_settings(self) -> EstimatorSettings:
        return EstimatorSettings(method="series", terms=self.terms, probes=self.probes)

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        refuse_changes(self.estimator_settings(), settings, ("terms", "probes"), "SeriesResidual")
        self.terms, self.probes = settings.terms, settings.probes
        self._hparams.update(terms=settings.terms, probes=settings.probes)

    def inverse_settings(self) -> InverseSettings:
        return self.solve

    def configure_inverse(self, settings: InverseSettings) -> None:
        refuse_changes(self.solve, settings, ("tol", "max_iter"), "SeriesResidual")
        self.solve = settings
        self._hparams.update(max_iter=settings.max_iter)


class SaturatingFlow(InvertibleModel):
    """``z = tanh(x)`` elementwise: in float32 ``tanh(x)`` rounds to 1 for ``|x| > 9`` and ``atanh`` returns inf,
    an inverse that explodes out of distribution while being exact on data near 0."""

    family = "saturating"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic")

    def __init__(self, shape: Sequence[int], num_classes: int | None = None) -> None:
        super().__init__(shape, num_classes)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(x + self.dummy)
        return z, torch.log1p(-z**2).reshape(x.shape[0], -1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        return torch.atanh(z) - self.dummy


class GradScaledLinear(LinearFlow):
    """A LinearFlow whose "memory-saving" mode (in training mode, as RevNet's) scales every parameter gradient by
    1.5 (same values, wrong backward): a broken recomputation with a known relative gradient error of 0.5."""

    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", memory_saving=True,
                                inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(shape, num_classes, seed=seed)
        self.saving = True

    def set_memory_saving(self, enabled: bool) -> None:
        self.saving = enabled

    def _scaled(self, p: Tensor) -> Tensor:
        return 1.5 * p - 0.5 * p.detach() if self.saving and self.training else p

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w, b = self._scaled(self.weight), self._scaled(self.bias)
        z = x.reshape(x.shape[0], -1) @ w.T + b
        return z.reshape(x.shape), torch.linalg.slogdet(w)[1].expand(x.shape[0])


class BiasedEstimatorFlow(LinearFlow):
    """A LinearFlow that declares a log-det *estimator* whose estimate is ``log|det W| + bias``: biased high by
    construction, so its estimated NLL is the exact one minus ``bias`` and training drives the loss ``bias`` nats
    below what the model truly assigns (a model exploiting its estimator's bias). ``z`` is exact, so the exact
    autograd log-det of the likelihood task sees through it."""

    capabilities = Capabilities(density=True, logdet="estimator", inverse="analytic", inputs=("vector",))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, bias: float = 1.0, terms: int = 3,
                 seed: int = 0) -> None:
        super().__init__(shape, num_classes, seed=seed)
        self._hparams.update(bias=bias, terms=terms)
        self.bias_nats = bias
        self.settings = EstimatorSettings(method="series", terms=terms)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = super().forward(x)
        return z, ladj + self.bias_nats

    def estimator_settings(self) -> EstimatorSettings:
        return self.settings

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        refuse_changes(self.settings, settings, ("terms", "exact_terms", "probes"), "BiasedEstimatorFlow")
        self.settings = settings
        self._hparams.update(terms=settings.terms)


class WrongLadjFlow(LinearFlow):
    """A LinearFlow whose ladj is off by ``error`` nats (``log|det W| + error``): a planted failure of the
    change-of-variables formula, seen by any comparison with the slogdet of the autograd Jacobian (which is ``W``)."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, error: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__(shape, num_classes, seed=seed)
        self._hparams.update(error=error)
        self.error = error

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = super().forward(x)
        return z, ladj + self.error


class ClosedFormGaussian(LinearFlow):
    """A full-covariance Gaussian fitted in closed form (``closed_form_fit``): ``z = L^-1 (x - mu)`` with
    ``L L^T`` the sample covariance of the training set; the baseline ``"gaussian"``. ``x``: (B, D)."""

    closed_form_fit = True
    baseline = "gaussian"

    def fit_closed_form(self, y: Tensor) -> None:
        """``y``: (N, D) the whole pre-processed training set."""
        flat = y.reshape(y.shape[0], -1).double()
        mu = flat.mean(0)
        chol = torch.linalg.cholesky(torch.cov(flat.T).reshape(self.dim, self.dim))
        w = torch.linalg.inv(chol)
        with torch.no_grad():
            self.weight.copy_(w.to(self.weight.dtype))
            self.bias.copy_((-(w @ mu)).to(self.bias.dtype))


# ----------------------------------------------------------------------------------------------- harness


class StubResult:
    def __init__(self, diverged: bool = False) -> None:
        self.diverged = diverged


class TrainingCalls(list[dict[str, Any]]):
    """The arguments of each stubbed ``trained_model`` call (fixture ``calls``); set ``diverged = True`` to make
    the stub report a diverged training run."""

    diverged: bool = False


def gaussian_data(n_test: int = 64, d: int = D, clamp: float = 1.9) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(name="gauss", kind="vector", train_x=torch.randn(128, d, generator=g),
                   test_x=torch.randn(n_test, d, generator=g).clamp(-clamp, clamp))


#: quick timing defaults for the tasks whose options have these fields
FAST = {"rounds": 3, "max_seconds": 2.0}


def context(make: Callable[..., InvertibleModel], task: type[Task], dataset: Dataset | None = None,
            **options: Any) -> TaskContext:
    """A context for ``task`` with ``options`` parsed into its ``Options`` dataclass (as the worker does), over
    ``FAST`` timing defaults where the task has those options."""
    fields = {f.name for f in dataclasses.fields(task.Options)}
    table = {**{k: v for k, v in FAST.items() if k in fields}, **options}
    return TaskContext(make_model=make, dataset=dataset or gaussian_data(), seed=0,
                       budget=Budget(steps=1, batch_size=32), device=torch.device("cpu"),
                       options=task.parse_options(table, f"tasks.{task.name}"), task_name=task.name)


def by_name(metrics: list[Metric]) -> dict[str, Metric]:
    out = {m.name: m for m in metrics}
    assert len(out) == len(metrics), "metric names must be unique"
    return out


