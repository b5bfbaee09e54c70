"""The measurement tasks inverse_cost, stability, logdet and cost on models with known answers.

``trained_model`` is replaced by a stub that returns ``ctx.make_model()`` untrained, so each test controls the
model exactly (a known spectrum, a known truncation bias, a known blow-up).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from task_helpers import (
    D,
    GradScaledLinear,
    SaturatingFlow,
    SeriesResidual,
    TrainingCalls,
    by_name,
    context,
    gaussian_data,
)

from bench.regularizers import FDRegularizer
from bench.tasks.cost import CostTask
from bench.tasks.inverse_cost import InverseCostTask
from bench.tasks.logdet import LogdetTask, default_grid
from bench.tasks.registry import get_task
from bench.tasks.stability import KINDS, StabilityTask
from models.base import InvertibleModel
from models.template import LinearFlow


def test_registry_resolves_the_four_tasks() -> None:
    assert get_task("inverse_cost") is InverseCostTask and get_task("stability") is StabilityTask
    assert get_task("logdet") is LogdetTask and get_task("cost") is CostTask


# ----------------------------------------------------------------------------------------------- inverse_cost


def test_inverse_cost_on_linear_flow(calls: list[dict[str, Any]]) -> None:
    out = by_name(InverseCostTask().run(context(lambda **kw: LinearFlow((D,), **kw))))
    assert set(out) == {"inverse_fwd_units", "inverse_iters", "recon_err"}
    assert all(m.status == "ok" for m in out.values())
    assert out["inverse_iters"].value == 0
    assert out["recon_err"].value is not None and out["recon_err"].value < 1e-5
    units = out["inverse_fwd_units"]
    assert units.value is not None and math.isfinite(units.value) and units.value > 0
    assert units.extra["q25"] <= units.value <= units.extra["q75"] and units.extra["grad_mode"] == "no_grad"
    assert units.unit == "fwd passes" and units.higher_is_better is False
    assert calls == [{"objective": "likelihood", "regularizer": None}]


def test_inverse_cost_curve_for_an_iterative_inverse(calls: list[dict[str, Any]]) -> None:
    task_ctx = context(lambda **kw: SeriesResidual((D,), **kw), curve_rounds=1)
    out = by_name(InverseCostTask().run(task_ctx))
    assert out["inverse_iters"].value is not None and out["inverse_iters"].value > 3
    assert out["inverse_fwd_units"].extra["forward_unit"] == "encode"
    assert out["inverse_fwd_units"].extra["grad_mode"] == "no_grad"
    assert out["inverse_fwd_units"].extra["full_forward_grad_mode"] == "grad"
    curve = out["recon_err"].extra
    iters = curve["iters"]
    assert iters[:3] == [1, 2, 4] and iters[-1] >= out["inverse_iters"].value
    assert len(curve["recon_err"]) == len(curve["fwd_units"]) == len(iters)
    errs = curve["recon_err"]
    assert all(b < a for a, b in itertools.pairwise(errs[:4]))  # contraction: error falls with the cap
    assert errs[-1] == pytest.approx(out["recon_err"].value, rel=1e-6)
    assert errs[-1] < 1e-5 < errs[0]


def test_inverse_cost_reports_not_converged_with_its_value(calls: list[dict[str, Any]]) -> None:
    out = by_name(InverseCostTask().run(context(lambda **kw: SeriesResidual((D,), max_iter=2, **kw),
                                                curve_rounds=1)))
    assert {m.status for m in out.values()} == {"not_converged"}
    assert out["inverse_iters"].value == 2 and out["recon_err"].value is not None and out["recon_err"].value > 1e-4


def test_diverged_training_gives_valueless_rows(calls: TrainingCalls) -> None:
    calls.diverged = True
    for task in (InverseCostTask(), StabilityTask(), CostTask()):
        out = task.run(context(lambda **kw: LinearFlow((D,), **kw), type(task)))
        assert out and all(m.status == "diverged" and m.value is None for m in out)


# ----------------------------------------------------------------------------------------------- stability


def test_stability_on_a_known_spectrum(calls: list[dict[str, Any]]) -> None:
    s = [2.0, 1.0, 0.7, 0.5]
    out = by_name(StabilityTask().run(context(lambda **kw: LinearFlow((D,), singular_values=s, **kw))))
    assert set(StabilityTask.metrics) <= set(out)
    for kind in KINDS:
        assert out[f"lip_forward@{kind}"].value == pytest.approx(2.0, rel=1e-5)
        assert out[f"lip_inverse@{kind}"].value == pytest.approx(2.0, rel=1e-5)  # 1 / 0.5
        assert out[f"condition@{kind}"].value == pytest.approx(4.0, rel=1e-5)
        assert out[f"nonfinite_frac@{kind}"].value == 0.0
        assert out[f"recon_err_f64@{kind}"].value < 1e-12
        assert out[f"recon_err_f32@{kind}"].value < 1e-4
        assert out[f"lip_forward@{kind}"].extra["input"] == kind


def test_stability_flags_an_exploding_inverse_out_of_distribution(calls: list[dict[str, Any]]) -> None:
    out = by_name(StabilityTask().run(context(lambda **kw: SaturatingFlow((D,), **kw), scale=6.0)))
    assert out["nonfinite_frac@test"].value == 0.0
    assert out["recon_err_f32@test"].value < 1e-4
    assert out["nonfinite_frac@scaled"].value > 0.1  # |6 x| > 9 in some coordinate: tanh rounds to 1, atanh = inf
    assert out["nonfinite_frac@scaled"].extra["n_exploded"] > 0
    assert out["recon_err_f64@scaled"].value < 1e-5  # float64 still resolves tanh(11)
    assert out["lip_inverse@scaled"].value > 1e6 > out["lip_inverse@test"].value


def test_stability_with_an_ood_dataset_and_the_fd_regulariser(calls: list[dict[str, Any]]) -> None:
    other = gaussian_data(n_test=32)
    other.name, other.test_x = "shifted", other.test_x + 3.0
    reg = {"eps": 0.05, "weight": 2.0, "every": 3}
    out = by_name(StabilityTask().run(context(lambda **kw: LinearFlow((D,), **kw), ood_dataset=other,
                                              regularizer=reg, kinds=["test", "scaled"])))
    for suffix in ("", "+reg"):
        assert {f"{m}@{k}{suffix}" for m in ("lip_forward", "nonfinite_frac") for k in ("test", "scaled", "ood")} \
            <= set(out)
    assert "lip_inverse@ood+reg" in out and "lip_inverse@noise+reg" not in out
    assert out["recon_err_f32@ood+reg"].extra["regularizer"] == reg
    assert calls[1]["regularizer"] == FDRegularizer(eps=0.05, weight=2.0, every=3)


def test_stability_regulariser_limited_to_named_models(calls: list[dict[str, Any]]) -> None:
    reg = {"eps": 0.05, "weight": 2.0, "every": 3}
    ctx = context(lambda **kw: LinearFlow((D,), **kw), regularizer=reg, regularizer_models=["other-model"],
                  kinds=["test"])
    ctx.model_name = "linear-template"
    out = by_name(StabilityTask().run(ctx))
    assert "lip_forward@test" in out and not any(name.endswith("+reg") for name in out)
    assert [c["regularizer"] for c in calls] == [None]
    ctx.options["regularizer_models"] = ["linear-template"]
    assert "lip_forward@test+reg" in by_name(StabilityTask().run(ctx))


def test_stability_measures_memory_saving_gradient_error(calls: list[dict[str, Any]]) -> None:
    out = by_name(StabilityTask().run(context(lambda **kw: GradScaledLinear((D,), **kw), kinds=["test"])))
    assert out["memgrad_rel_err@test"].value == pytest.approx(0.5, rel=1e-6)
    assert out["memgrad_rel_err@test"].extra["f64"] == pytest.approx(0.5, rel=1e-9)


# ----------------------------------------------------------------------------------------------- logdet


def test_logdet_bias_matches_the_truncation_and_shrinks_with_terms(calls: list[dict[str, Any]]) -> None:
    task_ctx = context(lambda **kw: SeriesResidual((D,), c=0.8, **kw), draws=32, batch=32, rounds=1)
    out = by_name(LogdetTask().run(task_ctx))
    grid = default_grid({"method": "series", "terms": 5, "probes": 1})
    assert len(out) == 3 * len(grid)
    assert "logdet_bias[terms=5,probes=1]" in out and "logdet_std[terms=10,probes=16]" in out
    model = SeriesResidual((D,), c=0.8)
    x = task_ctx.dataset.test_x[:32]
    for terms in (1, 2, 5, 20):
        bias = out[f"logdet_bias[terms={terms},probes=1]"]
        with torch.no_grad():
            truth = float((model.expected_estimate(x, terms) - model.exact_logdet(x)).mean())
        assert abs(bias.value - truth) < 4 * bias.extra["bias_se"] + 1e-9, (terms, bias.value, truth)
        assert bias.higher_is_better is None and bias.extra["settings"] == {"terms": terms, "probes": 1}
    assert abs(out["logdet_bias[terms=1,probes=1]"].value) > 5 * abs(out["logdet_bias[terms=20,probes=1]"].value)
    assert out["logdet_std[terms=10,probes=16]"].value < 0.5 * out["logdet_std[terms=10,probes=1]"].value
    assert out["logdet_cost[terms=1,probes=1]"].extra["reference"] == {"terms": 1, "probes": 1}


def test_logdet_restores_the_estimator_settings(calls: list[dict[str, Any]]) -> None:
    built: list[SeriesResidual] = []

    def make(**kw: Any) -> SeriesResidual:
        built.append(SeriesResidual((D,), terms=7, probes=2, **kw))
        return built[-1]

    LogdetTask().run(context(make, settings=[{"terms": 3}, {"terms": 9, "probes": 4}], draws=2, rounds=1))
    assert built[-1].estimator_settings() == {"method": "series", "terms": 7, "probes": 2}
    assert LogdetTask.supports(SeriesResidual.capabilities, gaussian_data())
    assert not LogdetTask.supports(LinearFlow.capabilities, gaussian_data())


# ----------------------------------------------------------------------------------------------- cost


def test_cost_on_linear_flow(calls: list[dict[str, Any]]) -> None:
    out = by_name(CostTask().run(context(lambda **kw: LinearFlow((D,), **kw), batch=64)))
    assert set(out) == {"forward_throughput", "inverse_throughput", "train_memory_bytes"}
    assert out["forward_throughput"].value > 0 and out["inverse_throughput"].value > 0
    assert out["forward_throughput"].unit == "examples/s" and out["forward_throughput"].higher_is_better
    # the matmul saves its (32, D) float32 input for backward, so at least 32 * D * 4 bytes
    assert out["train_memory_bytes"].value >= 32 * D * 4
    assert out["train_memory_bytes"].extra["method"] == "saved_tensors"


def test_cost_memory_against_depth_for_a_memory_saving_model(calls: list[dict[str, Any]]) -> None:
    from models.revnet import RevNetNative

    def make(**kw: Any) -> InvertibleModel:
        return RevNetNative((D,), **{"hidden": 8, "depth": 2, **kw})

    out = by_name(CostTask().run(context(make, depths=[2, 8], rounds=2)))
    curve = out["memory_depth_ratio"].extra
    assert curve["depth"] == [2, 8]
    assert out["memory_depth_ratio"].value < 1.5  # reconstructing activations: memory does not grow with depth
    assert curve["bytes_ordinary"][1] > 2.5 * curve["bytes_ordinary"][0]  # ordinary backprop grows with depth
    assert out["train_memory_bytes"].extra["bytes_ordinary"] > out["train_memory_bytes"].value
