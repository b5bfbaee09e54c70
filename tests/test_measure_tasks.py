"""The measurement tasks inverse_cost, logdet and cost on models with known answers (stability:
test_stability_task.py).

``trained_model`` is replaced by a stub that returns ``ctx.make_model()`` untrained, so each test controls the
model exactly (a known spectrum, a known truncation bias, a known blow-up).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict
from typing import Any

import pytest
import torch
from task_helpers import D, SaturatingFlow, SeriesResidual, TrainingCalls, by_name, context, gaussian_data

from bench.options import OptionError
from bench.tasks.base import Task
from bench.tasks.cost import CostTask
from bench.tasks.inverse_cost import InverseCostTask
from bench.tasks.logdet import GRID, LogdetTask, default_grid
from bench.tasks.registry import get_task
from bench.tasks.stability import StabilityTask
from models.base import EstimatorSettings, InverseSettings, InvertibleModel
from models.template import LinearFlow


def test_registry_resolves_the_four_tasks() -> None:
    assert get_task("inverse_cost") is InverseCostTask and get_task("stability") is StabilityTask
    assert get_task("logdet") is LogdetTask and get_task("cost") is CostTask


# ----------------------------------------------------------------------------------------------- inverse_cost


def test_inverse_cost_on_linear_flow(calls: TrainingCalls) -> None:
    out = by_name(InverseCostTask().run(context(lambda **kw: LinearFlow((D,), **kw), InverseCostTask)))
    assert set(out) == {s.name for s in InverseCostTask.metric_specs}
    assert all(m.status == "ok" for m in out.values())
    assert out["inverse_iters"].value == 0
    assert out["recon_err"].value is not None and out["recon_err"].value < 1e-5
    units = out["inverse_fwd_units"]
    assert units.value is not None and math.isfinite(units.value) and units.value > 0
    assert units.extra["q25"] <= units.value <= units.extra["q75"] and units.extra["grad_mode"] == "no_grad"
    assert units.unit == "fwd passes" and units.direction == "down" and units.settings == {}
    assert "inverse_settings" not in units.extra  # an analytic inverse has none
    flops = out["inverse_flop_units"]  # the inverse is a linear solve: no matrix product to count
    assert flops.value == 0 and flops.extra["flops_forward_unit"] == 2 * D * D and flops.unit == "fwd FLOPs"
    assert flops.extra["counter"] == "torch.utils.flop_counter.FlopCounterMode" and "counts" not in flops.extra
    assert calls == [{"objective": "likelihood", "regularizer": None}]


def test_inverse_cost_curve_for_an_iterative_inverse(calls: TrainingCalls) -> None:
    built: list[SeriesResidual] = []

    def make(**kw: Any) -> SeriesResidual:
        built.append(SeriesResidual((D,), **kw))
        return built[-1]

    out = by_name(InverseCostTask().run(context(make, InverseCostTask, curve_rounds=1)))
    assert out["inverse_iters"].value is not None and out["inverse_iters"].value > 3
    assert out["inverse_fwd_units"].extra["forward_unit"] == "encode"
    assert out["inverse_fwd_units"].extra["grad_mode"] == "no_grad"
    assert out["inverse_fwd_units"].extra["full_forward_grad_mode"] == "grad"
    assert out["inverse_iters"].extra["inverse_settings"] == asdict(InverseSettings(tol=1e-6, max_iter=500))
    curve = out["recon_err"].extra
    iters = curve["iters"]
    assert iters[:3] == [1, 2, 4] and iters[-1] >= out["inverse_iters"].value
    assert curve["iters_used"][:3] == [1, 2, 4]  # each cap reached the model through configure_inverse
    assert len(curve["recon_err"]) == len(curve["fwd_units"]) == len(iters)
    errs = curve["recon_err"]
    assert all(b < a for a, b in itertools.pairwise(errs[:4]))  # contraction: error falls with the cap
    assert errs[-1] == pytest.approx(out["recon_err"].value, rel=1e-6)
    assert errs[-1] < 1e-5 < errs[0]
    assert built[-1].inverse_settings().max_iter == 500  # restored
    # one x W^T per iteration against one in encode: the FLOP ratio is the iteration count exactly
    assert out["inverse_flop_units"].value == out["inverse_iters"].value
    assert out["inverse_flop_units"].extra["flops_inverse"] == out["inverse_iters"].value * 2 * D * D


def test_inverse_flop_units_without_matrix_products_is_unsupported(calls: TrainingCalls) -> None:
    out = by_name(InverseCostTask().run(context(lambda **kw: SaturatingFlow((D,), **kw), InverseCostTask)))
    assert out["inverse_flop_units"].status == "unsupported" and out["inverse_flop_units"].value is None
    assert out["inverse_flop_units"].extra["flops_forward_unit"] == 0


def test_inverse_cost_reports_not_converged_with_its_value(calls: TrainingCalls) -> None:
    out = by_name(InverseCostTask().run(context(lambda **kw: SeriesResidual((D,), max_iter=2, **kw),
                                                InverseCostTask, curve_rounds=1)))
    assert {m.status for m in out.values()} == {"not_converged"}
    assert out["inverse_iters"].value == 2 and out["recon_err"].value is not None and out["recon_err"].value > 1e-4


def test_diverged_training_gives_valueless_rows(calls: TrainingCalls) -> None:
    calls.diverged = True
    for task in (InverseCostTask(), StabilityTask(), CostTask()):
        out = task.run(context(lambda **kw: LinearFlow((D,), **kw), type(task)))
        assert out and all(m.status == "diverged" and m.value is None for m in out)
    out = LogdetTask().run(context(lambda **kw: SeriesResidual((D,), **kw), LogdetTask))
    grid = default_grid(SeriesResidual((D,)).estimator_settings())
    assert len(out) == 3 * len(grid) and all(m.status == "diverged" and m.value is None for m in out)
    assert {tuple(m.settings.items()) for m in out} == {tuple(c.changes().items()) for c in grid}


@pytest.mark.parametrize(("task", "options", "problem"), [
    (InverseCostTask, {"rounds": 0}, r"tasks.inverse_cost.rounds: must be >= 1"),
    (InverseCostTask, {"grad": "yes"}, r"tasks.inverse_cost.grad: expected one of auto, grad, no_grad"),
    (LogdetTask, {"settings": [{"term": 3}]}, r"tasks.logdet.settings\[0\]: unknown option 'term'; did you mean "),
    (LogdetTask, {"settings": [{"probes": 0}]}, r"tasks.logdet.settings\[0\].probes: must be >= 1"),
    (LogdetTask, {"settings": []}, r"tasks.logdet: settings: give at least one table"),
    (CostTask, {"depths": [4]}, r"tasks.cost: depths: give at least two depths"),
    (CostTask, {"objective": "density"}, r"tasks.cost.objective: expected one of likelihood, classification"),
])
def test_options_are_validated_before_anything_runs(task: type[Task], options: dict[str, Any], problem: str) -> None:
    with pytest.raises(OptionError, match=problem):
        task.parse_options(options, f"tasks.{task.name}")


# ----------------------------------------------------------------------------------------------- logdet


def test_default_grid_sweeps_the_declared_cost_knobs() -> None:
    series = [c.changes() for c in default_grid(EstimatorSettings(method="series"))]
    assert series[:5] == [{"terms": t, "probes": 1} for t in GRID["terms"]]
    assert series[5:] == [{"terms": 10, "probes": p} for p in GRID["probes"] if p != 1]  # (10, 1) is swept once
    roulette = [c.changes() for c in default_grid(EstimatorSettings(method="roulette"))]
    assert {"exact_terms": 0, "probes": 1} in roulette and {"exact_terms": 2, "probes": 16} in roulette
    assert all(set(c) == {"exact_terms", "probes"} for c in roulette)
    assert [c.changes() for c in default_grid(EstimatorSettings(method="exact"))] == [{}]


def test_logdet_bias_matches_the_truncation_and_shrinks_with_terms(calls: TrainingCalls) -> None:
    task_ctx = context(lambda **kw: SeriesResidual((D,), c=0.8, **kw), LogdetTask, draws=32, batch=32, rounds=1)
    out = LogdetTask().run(task_ctx)
    grid = default_grid(SeriesResidual((D,)).estimator_settings())
    assert len(out) == 3 * len(grid)
    table = {(m.name, m.settings["terms"], m.settings["probes"]): m for m in out}
    assert len(table) == len(out) and all("[" not in m.name for m in out)
    model = SeriesResidual((D,), c=0.8)
    x = task_ctx.dataset.test_x[:32]
    for terms in (1, 2, 5, 20):
        bias = table["logdet_bias", terms, 1]
        assert bias.value is not None
        with torch.no_grad():
            truth = float((model.expected_estimate(x, terms) - model.exact_logdet(x)).mean())
        assert abs(bias.value - truth) < 4 * bias.extra["bias_se"] + 1e-9, (terms, bias.value, truth)
        assert bias.direction == "zero" and bias.settings == {"terms": terms, "probes": 1}
        assert bias.extra["resolved_settings"]["terms"] == terms
    assert abs(table["logdet_bias", 1, 1].value or 0) > 5 * abs(table["logdet_bias", 20, 1].value or 1)
    assert (table["logdet_std", 10, 16].value or 1) < 0.5 * (table["logdet_std", 10, 1].value or 0)
    assert table["logdet_cost", 1, 1].extra["reference"] == {"terms": 1, "probes": 1}
    assert table["logdet_std", 1, 1].direction == table["logdet_cost", 1, 1].direction == "down"


def test_logdet_restores_the_estimator_settings(calls: TrainingCalls) -> None:
    built: list[SeriesResidual] = []

    def make(**kw: Any) -> SeriesResidual:
        built.append(SeriesResidual((D,), terms=7, probes=2, **kw))
        return built[-1]

    out = LogdetTask().run(context(make, LogdetTask, settings=[{"terms": 3}, {"terms": 9, "probes": 4}], draws=2,
                                   rounds=1))
    assert [m.settings for m in out if m.name == "logdet_bias"] == [{"terms": 3}, {"terms": 9, "probes": 4}]
    assert [m.extra["resolved_settings"]["probes"] for m in out if m.name == "logdet_bias"] == [2, 4]
    assert built[-1].estimator_settings() == EstimatorSettings(method="series", terms=7, probes=2)
    assert LogdetTask.supports(SeriesResidual.capabilities, gaussian_data().info)
    assert not LogdetTask.supports(LinearFlow.capabilities, gaussian_data().info)


# ----------------------------------------------------------------------------------------------- cost


def test_cost_on_linear_flow(calls: TrainingCalls) -> None:
    out = by_name(CostTask().run(context(lambda **kw: LinearFlow((D,), **kw), CostTask, batch=64)))
    assert set(out) == {"forward_throughput", "inverse_throughput", "train_memory_bytes", "params", "flops_forward",
                        "flops_inverse"}
    assert out["params"].value == D * D + D and out["params"].unit == "parameters" and out["params"].direction is None
    # z = x W^T + b: 2 D^2 FLOPs per example (the bias add and slogdet count zero; the inverse is a solve: zero)
    assert out["flops_forward"].value == 2 * D * D and out["flops_inverse"].value == 0
    assert out["flops_forward"].unit == "FLOPs/example" and out["flops_forward"].direction == "down"
    assert out["flops_forward"].extra["batch"] == 64 and out["flops_inverse"].extra["iterations"] == 0
    fwd, inv, mem = out["forward_throughput"].value, out["inverse_throughput"].value, out["train_memory_bytes"].value
    assert fwd is not None and inv is not None and mem is not None and fwd > 0 and inv > 0
    assert out["forward_throughput"].unit == "examples/s" and out["forward_throughput"].direction == "up"
    # the matmul saves its (32, D) float32 input for backward, so at least 32 * D * 4 bytes
    assert mem >= 32 * D * 4
    assert out["train_memory_bytes"].extra["method"] == "saved_tensors"


def test_cost_memory_against_depth_for_a_memory_saving_model(calls: TrainingCalls) -> None:
    from models.revnet import RevNetNative

    def make(**kw: Any) -> InvertibleModel:
        return RevNetNative((D,), **{"hidden": 8, "depth": 2, **kw})

    out = by_name(CostTask().run(context(make, CostTask, depths=[2, 8], rounds=2)))
    curve = out["memory_depth_ratio"].extra
    assert curve["depth"] == [2, 8]
    ratio = out["memory_depth_ratio"].value
    assert ratio is not None and ratio < 1.5  # reconstructing activations: memory does not grow with depth
    assert curve["bytes_ordinary"][1] > 2.5 * curve["bytes_ordinary"][0]  # ordinary backprop grows with depth
    assert out["train_memory_bytes"].extra["bytes_ordinary"] > (out["train_memory_bytes"].value or 0)


def test_cost_counts_the_estimator_forward_and_every_inverse_iteration(calls: TrainingCalls) -> None:
    terms, probes = 3, 2
    out = by_name(CostTask().run(context(lambda **kw: SeriesResidual((D,), terms=terms, probes=probes, **kw),
                                         CostTask, batch=16)))
    fwd, inv = out["flops_forward"], out["flops_inverse"]
    # x W^T for z and for J_g, then one (D x D) @ (D x probes) product per series term
    assert fwd.value == 2 * 2 * D * D + terms * 2 * D * D * probes
    assert fwd.extra["grad_mode"] == "grad" and fwd.extra["estimator"]["terms"] == terms
    iterations = inv.extra["iterations"]
    assert iterations > 3 and inv.value == iterations * 2 * D * D
    assert out["params"].value == D * D + D
