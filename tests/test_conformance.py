"""The conformance checks over every registered adapter, and proof that each check can fail.

Known defects of a wrapped library are asserted as *detected* (the check fails and names the defect),
never skipped.
"""

from __future__ import annotations

import pytest
import torch
from task_helpers import SeriesResidual
from torch import Tensor, nn

from models import registry
from models.base import Capabilities, EstimatorSettings, InvertibleModel
from models.template import LinearFlow
from models.testing import format_report, validate


@pytest.mark.parametrize("name", registry.names())
def test_registered_adapter_conforms(name: str) -> None:
    results = validate(name)
    assert results, f"no checks ran for {name}"
    report = format_report(name, results)
    defects = registry.get(name)(shape=results[0].shape).known_defects()
    unexpected = [r for r in results if not r.passed and r.name not in defects]
    assert not unexpected, report
    for check in defects:
        detected = [r for r in results if r.name == check and not r.passed]
        assert detected, f"{name}: known defect {check!r} was not detected\n{report}"


def test_iresnet_freia_gradient_defect_is_reported_with_figures() -> None:
    results = [r for r in validate("iresnet-freia", shape=(4,), checks=["gradients"])]
    (r,) = results
    assert not r.passed and r.known_defect
    assert "NO gradient" in r.figure and "grad exact log-det" in r.figure


# ----------------------------------------------------------------------------- the checks can fail
class _Broken(LinearFlow):
    """LinearFlow with one property broken at a time, to show each check catches it."""

    breakage = ""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = super().forward(x)
        if self.breakage == "sign":
            ladj = -ladj
        if self.breakage == "float":
            return z, float(ladj[0])  # type: ignore[return-value]
        if self.breakage == "detached":
            ladj = ladj.detach()
        return z, ladj

    def inverse(self, z: Tensor) -> Tensor:
        x = super().inverse(z)
        return x * 1.001 if self.breakage == "inverse" else x


def _broken(kind: str) -> type[InvertibleModel]:
    return type(f"Broken_{kind}", (_Broken,), {"breakage": kind, "__module__": __name__})


@pytest.mark.parametrize(("kind", "check"), [("sign", "logdet"), ("float", "ladj_tensor"),
                                              ("detached", "gradients"), ("inverse", "roundtrip")])
def test_each_check_catches_its_violation(kind: str, check: str) -> None:
    results = {r.name: r for r in validate(_broken(kind), shape=(4,))}
    assert not results[check].passed, results[check].figure
    assert validate(LinearFlow, shape=(4,), checks=[check])[0].passed


class _NoisyInverse(InvertibleModel):
    """An 'iterative' model whose inverse claims convergence falsely: the round trip check still fails."""

    family = "noisy"
    backend = "test"
    capabilities = Capabilities(inverse="iterative")

    def __init__(self, shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(shape, num_classes)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.scale, torch.log(self.scale.abs()).expand(x.shape[0]) * x[0].numel()

    def inverse(self, z: Tensor) -> Tensor:
        return z / self.scale + 1e-3


def test_roundtrip_check_fails_on_a_wrong_inverse() -> None:
    (r,) = validate(_NoisyInverse, shape=(4,), checks=["roundtrip"])
    assert not r.passed and "max err 1.00e-03" in r.figure


def test_settings_check_fails_without_settings_or_when_config_drops_them() -> None:
    (r,) = validate(_NoisyInverse, shape=(4,), checks=["settings"])  # iterative, but no inverse_settings()
    assert not r.passed and "inverse_settings() is None" in r.figure

    class Forgetful(SeriesResidual):
        """Configures its estimator but leaves config() as built."""

        def configure_estimator(self, settings: EstimatorSettings) -> None:
            self.terms, self.probes = settings.terms, settings.probes

    (r,) = validate(Forgetful, shape=(4,), checks=["settings"])
    assert not r.passed and "config rebuilds" in r.figure
    (ok,) = validate(SeriesResidual, shape=(4,), checks=["settings"])
    assert ok.passed and "terms -> 6" in ok.figure and "max_iter -> 501" in ok.figure, ok.figure
