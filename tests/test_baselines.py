"""The Gaussian baseline (models/baselines.py): an exact affine flow, and its kl_gap on Gaussian data.

The expected kl_gap of the maximum-likelihood Gaussian fitted to N samples of ``p = N(m, S)`` in D dimensions and
scored on fresh samples is ``E[NLL_q] - H(p) = E[KL(p || q)]``, with
``KL = (1/2) [tr(Sh^-1 S) + (mh - m)^T Sh^-1 (mh - m) - D + log det Sh - log det S]``. ``N Sh`` is Wishart
``W_D(N - 1, S)`` and independent of ``mh - m ~ N(0, S / N)``; with ``E[W^-1] = S^-1 / (n - D - 1)`` and
``E log det W = log det S + D log 2 + sum_{i=1}^D psi((n - i + 1) / 2)`` (n = N - 1 degrees of freedom):

    E[KL] = (1/2) [(N + 1) D / (N - D - 2) - D + sum_{i=1}^D psi((N - i) / 2) + D log(2 / N)],   N > D + 2,

which is ``D (D + 3) / (4 N) + O(D^3 / N^2)``: the parameters' count D(D+3)/2 over 2N, the O(D^2/N) bias of the
fitted covariance. The tests predict the gap with this formula and hold the measured gap to it within 4 standard
errors (the spread of the gap over independent fits, each scored on its own held-out points).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models import registry
from models.baselines import GaussianFit
from models.jacobian import jacobian_slogdet
from models.template import LinearFlow


def expected_kl(n: int, d: int) -> float:
    """E[KL(p || q)] of the ML Gaussian q fitted to n samples of a D-dimensional Gaussian p (module docstring)."""
    assert n > d + 2
    psi = float(torch.special.digamma(torch.tensor([(n - i) / 2 for i in range(1, d + 1)], dtype=torch.float64)).sum())
    return 0.5 * ((n + 1) * d / (n - d - 2) - d + psi + d * math.log(2 / n))


def _gaussian(d: int, seed: int) -> tuple[Tensor, Tensor, float]:
    """A random mean (D,), a random covariance (D, D) with eigenvalues in [0.1, 2.1], and its entropy in nats."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(0.1 + 2 * torch.rand(d, generator=g, dtype=torch.float64)) @ q.T
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    return mean, cov, entropy


def _gaps(d: int, n_train: int, n_test: int, fits: int, seed: int = 0) -> tuple[float, float]:
    """Mean and standard error over ``fits`` independent fits of (held-out NLL - entropy), in nats."""
    mean, cov, entropy = _gaussian(d, seed)
    chol = torch.linalg.cholesky(cov)
    g = torch.Generator().manual_seed(seed + 1)
    gaps = []
    for _ in range(fits):
        x = mean + torch.randn(n_train + n_test, d, generator=g, dtype=torch.float64) @ chol.T
        model = GaussianFit((d,)).double()
        model.fit_closed_form(x[:n_train])
        with torch.no_grad():
            gaps.append(float(-model.log_prob(x[n_train:]).mean()) - entropy)
    t = torch.tensor(gaps, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(fits))


def test_expected_kl_leading_order() -> None:
    """The exact formula approaches D (D + 3) / (4 N) for large N (a check of the formula, not of the model)."""
    d, n = 6, 200_000
    assert expected_kl(n, d) == pytest.approx(d * (d + 3) / (4 * n), rel=1e-3)


def test_kl_gap_zero_within_sampling_error_on_gaussian_data() -> None:
    d, n = 4, 4000
    gap, se = _gaps(d, n, 4000, fits=8)
    bias = expected_kl(n, d)
    assert abs(gap - bias) <= 4 * se, (gap, bias, se)
    assert abs(gap) <= 4 * se + bias, (gap, bias, se)
    assert bias < se  # at this N the fitted covariance's bias is below the sampling error: kl_gap is 0 within it


def test_kl_gap_equals_the_fitted_covariances_bias_at_small_n() -> None:
    """At N = 40, D = 8 the bias is resolved (many standard errors above zero) and the gap matches the formula."""
    d, n = 8, 40
    gap, se = _gaps(d, n, 2000, fits=40)
    bias = expected_kl(n, d)
    assert bias > 8 * se, (bias, se)
    assert abs(gap - bias) <= 4 * se, (gap, bias, se)


def _fitted(shape: tuple[int, ...], seed: int = 0, n: int = 500) -> tuple[GaussianFit, Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d) + torch.eye(d, dtype=torch.float64)
    y = (torch.rand(n, d, generator=g, dtype=torch.float64) @ mix.T + 3.0).reshape(n, *shape)
    model = GaussianFit(shape).double()
    model.fit_closed_form(y)
    return model, y


@pytest.mark.parametrize("shape", [(5,), (1, 4, 4)])
def test_fit_is_the_ml_gaussian_and_the_flow_is_exact(shape: tuple[int, ...]) -> None:
    model, y = _fitted(shape)
    flat = y.reshape(y.shape[0], -1)
    mu = flat.mean(0)
    cov = (flat - mu).T @ (flat - mu) / flat.shape[0]
    ridge = model.ridge * float(cov.diagonal().mean())
    assert torch.allclose(model.loc.detach(), mu, atol=1e-12)
    assert torch.allclose(model.covariance(), cov + ridge * torch.eye(model.dim, dtype=torch.float64), atol=1e-10)
    x = y[:6]
    with torch.no_grad():
        z, ladj = model(x)
        assert float((model.inverse(z) - x).abs().max()) < 1e-10
    assert float(z.abs().max()) > 0.1  # not the identity
    assert torch.allclose(ladj, jacobian_slogdet(lambda v: model(v)[0], x), atol=1e-10)
    assert torch.allclose(ladj, torch.full_like(ladj, -0.5 * float(torch.logdet(model.covariance()))), atol=1e-10)
    reference = torch.distributions.MultivariateNormal(model.loc.detach(), model.covariance())
    with torch.no_grad():
        assert torch.allclose(model.log_prob(x), reference.log_prob(x.reshape(6, -1)), atol=1e-9)


def test_samples_follow_the_fitted_gaussian() -> None:
    """The samples' mean log-likelihood is minus the model's entropy, within 4 standard errors."""
    model, _ = _fitted((5,))
    with torch.no_grad():
        lp = model.log_prob(model.sample(20_000, generator=torch.Generator().manual_seed(3)))
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * model.covariance()))
    assert abs(float(lp.mean()) + entropy) <= 4 * float(lp.std()) / math.sqrt(lp.numel())


def test_degenerate_directions_get_the_ridge() -> None:
    """A constant coordinate and N < D: the ridge keeps the density proper (finite, normalised log_prob); without
    it the covariance is singular and the Cholesky factorisation fails."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 10, generator=g, dtype=torch.float64)
    y[:, 3] = 0.5
    model = GaussianFit((10,)).double()
    model.fit_closed_form(y)
    with torch.no_grad():
        assert bool(torch.isfinite(model.log_prob(torch.randn(4, 10, dtype=torch.float64))).all())
    with pytest.raises(torch.linalg.LinAlgError):
        GaussianFit((10,), ridge=0.0).double().fit_closed_form(y)


def test_contract_hooks_and_registry() -> None:
    model = registry.create("gaussian-fit", shape=(3,))
    assert isinstance(model, GaussianFit)
    assert GaussianFit.closed_form_fit and GaussianFit.baseline == "gaussian"
    assert not LinearFlow.closed_form_fit and LinearFlow.baseline is None
    with pytest.raises(NotImplementedError):
        LinearFlow((3,)).fit_closed_form(torch.zeros(2, 3))
    x = torch.randn(4, 3)
    z, ladj = model(x)  # as built: N(0, I), the identity
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(4))
    assert sum(p.numel() for p in model.parameters()) == 3 + 3 * 4 // 2
    model.data_init(x + 5.0)  # data_init fits the batch
    assert torch.allclose(model.loc.detach(), (x + 5.0).mean(0), atol=1e-5)
    with pytest.raises(ValueError):
        model.fit_closed_form(torch.zeros(4, 5))
    with pytest.raises(ValueError):
        GaussianFit((3,), ridge=-1.0)
