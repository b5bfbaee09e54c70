"""Native i-ResNet / Residual Flow against FrEIA 0.2's ``IResNetLayer``: log-det cost and inverse cost.

Run: ``pytest tests/benchmarks/test_bench_iresnet.py --benchmark-only -q -s``. Every ratio is the median over
alternating rounds in one process (:func:`bench.timing.time_ratio`), stored in ``benchmark.extra_info`` and
printed. FrEIA's layers get the native block's (normalised) weights, so both sides compute the same ``g``.

(a) Log-det cost (Behrmann et al., ICML 2019, sec. 4): one block, equal terms, probes, width and batch.
    FrEIA re-evaluates ``g`` and takes a fresh ``autograd.grad`` for every term and probe, and needs grad mode
    even to evaluate; the native block evaluates ``g`` once and applies the transposed chain to all probes
    at once. Two ratios: evaluation (native under ``no_grad``) and training forward (native keeps the graph
    of a differentiable log-det; FrEIA's log-det has no backward at all, so it does strictly less work there).
(b) Inverse cost in forward-pass units, ``time(inverse) / time(forward without log-det)``, at reconstruction
    error <= 1e-5 (float32), on an i-ResNet (c = 0.9) trained briefly on a 2-D ring of Gaussians (300 steps), on
    8x8 digits as 64-vectors and as (1, 8, 8) images (400 steps each): native plain fixed point, Anderson, Newton
    (also at D = 64, past the dimension the model accepts it for, to show its cost) and ``auto``, each at the
    loosest residual tolerance (``stop = "residual"``) meeting the error, against FrEIA's fixed 50 iterations on the
    ring; and ``auto`` with the models' default certified stop (``stop = "error"``, ``tol = 1e-5``), with each
    block's certified ``Lip(g)``: not reached where a block is not a certified contraction or its bound stalls at
    the float32 floor. Beside them the Krylov floor (:mod:`models.krylov`): per block, linearised at its solution, the
    fewest evaluations of ``g`` after which any solver that combines ``y`` and values of ``g`` linearly (plain
    iteration, Anderson, Broyden, GMRES) can be within 1e-4 or 1e-5 (2-norm) of it, and that count in forward-pass
    units. The ring model once more, trained with ``sn_tol = 1e-3``: there the certified stop is reached.
(c) Training step of ``iresnet-native`` against ``realnvp-nflows`` at equal parameter count, and the cost of
    spectral normalisation to a tolerance (``sn_tol = 1e-3``, the Residual Flows code's practice) against one
    power step per training forward, with the power steps it took per layer and forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import FrEIA.modules as Fm
import pytest
import torch
from torch import Tensor, nn

from bench.datasets import load
from bench.timing import time_ratio
from models.actnorm import ActNorm
from models.base import InverseSettings
from models.iresnet import NEWTON_MAX_DIM, IResNetNative, ResidualBlock, ResidualNet
from models.jacobian import jacobian_from_vjp
from models.krylov import evaluations_needed, krylov_floor
from models.logdet_estimators import EstimatorSettings
from models.spectral_norm import SpectralNormLinear


def _freia_layer_like(net: ResidualNet, terms: int, probes: int, iterations: int = 50) -> Fm.IResNetLayer:
    """A FrEIA ``IResNetLayer`` computing the same ``g`` (normalised weights copied), Linear/ELU only."""
    first = net.layers[0]
    assert isinstance(first, SpectralNormLinear)
    d, hidden = first.weight.shape[1], first.weight.shape[0]
    layer = Fm.IResNetLayer([(d,)], internal_size=hidden, n_internal_layers=len(net.layers) - 2,
                            jacobian_iterations=terms, hutchinson_samples=probes,
                            fixed_point_iterations=iterations)
    with torch.no_grad():
        for mine, theirs in zip(net.weights(update=False), layer.layers, strict=True):
            theirs.weight.copy_(mine)
        for src, dst in zip(net.layers, layer.layers, strict=True):
            assert isinstance(src, SpectralNormLinear)
            dst.bias.copy_(src.bias)
    return layer


# ------------------------------------------------------------------------------------------ (a) log-det cost
@pytest.mark.parametrize(("terms", "probes"), [(5, 1), (10, 4)])
def test_logdet_cost_native_series_vs_freia(benchmark: Any, terms: int, probes: int) -> None:
    d, hidden, batch = 64, 64, 128
    torch.manual_seed(0)
    block = ResidualBlock(ResidualNet((d,), hidden, 0.9, "elu"))
    freia = _freia_layer_like(block.net, terms, probes)
    settings = EstimatorSettings(method="series", terms=terms, probes=probes, probe="rademacher")
    x = torch.randn(batch, d)

    def freia_forward() -> Tensor:
        _, jac = freia([x.clone()], jac=True)
        return jac

    def native_eval() -> Tensor:
        with torch.no_grad():
            return block(x, settings, None, update=False)[1]  # type: ignore[return-value]

    def native_train_forward() -> Tensor:
        return block(x, settings, None, update=False)[1]  # type: ignore[return-value]

    def native_train_step() -> None:
        y, ladj = block(x, settings, None, update=False)
        assert ladj is not None
        (ladj.sum() + y.sum()).backward()

    with torch.no_grad():
        same_g = torch.allclose(freia([x.clone()], jac=False)[0][0], block(x, update=False)[0], atol=1e-5)
    assert same_g, "FrEIA's layer must compute the same g as the native block"
    freia_grad = freia_forward().requires_grad
    native_grad = native_train_forward().requires_grad
    eval_ratio = time_ratio(freia_forward, native_eval, rounds=31, max_seconds=30)
    train_ratio = time_ratio(freia_forward, native_train_forward, rounds=31, max_seconds=30)
    step_ratio = time_ratio(native_train_step, freia_forward, rounds=15, max_seconds=30)
    benchmark.pedantic(native_eval, rounds=20, iterations=1, warmup_rounds=2)
    info = {
        "d": d, "hidden": hidden, "batch": batch, "terms": terms, "probes": probes,
        "freia_over_native_eval": eval_ratio.median, "freia_over_native_eval_iqr": [eval_ratio.q25, eval_ratio.q75],
        "freia_over_native_train_forward": train_ratio.median,
        "freia_over_native_train_forward_iqr": [train_ratio.q25, train_ratio.q75],
        "native_train_step_over_freia_forward": step_ratio.median,
        "freia_logdet_has_gradient": freia_grad, "native_logdet_has_gradient": native_grad,
    }
    benchmark.extra_info.update(info)
    print(f"\n[iresnet log-det cost, D={d} hidden={hidden} batch={batch} terms={terms} probes={probes}] "
          f"FrEIA forward / native: eval {eval_ratio.median:.2f}x (IQR {eval_ratio.q25:.2f}-{eval_ratio.q75:.2f}), "
          f"training forward {train_ratio.median:.2f}x (IQR {train_ratio.q25:.2f}-{train_ratio.q75:.2f}); "
          f"native forward+backward = {step_ratio.median:.2f} FrEIA forwards; "
          f"log-det gradient: FrEIA {freia_grad}, native {native_grad}")
    assert native_grad and not freia_grad


# ------------------------------------------------------------------------------------------ (b) inverse cost
def _ring(n: int, generator: torch.Generator) -> Tensor:
    """8 Gaussians (std 0.2) on a circle of radius 2: (n, 2)."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.to(torch.float32) * (2 * math.pi / 8)
    centres = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.2 * torch.randn(n, 2, generator=generator)


def _fit(model: IResNetNative, init: Tensor, draw: Callable[[], Tensor], steps: int, lr: float) -> IResNetNative:
    """``model`` data-initialised on ``init`` and trained ``steps`` Adam steps on ``-log_prob`` of ``draw()``."""
    model.data_init(init)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = -model.log_prob(draw()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _train(steps: int, sn_tol: float | None = None) -> IResNetNative:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = IResNetNative((2,), coeff=0.9, solver="fixed_point", sn_tol=sn_tol)
    return _fit(model, _ring(512, gen), lambda: _ring(128, gen), steps, lr=5e-3)


def _train_digits(name: str, steps: int) -> tuple[IResNetNative, Tensor]:
    """``iresnet-native`` at its defaults (c = 0.9) trained by maximum likelihood on 8x8 digits (``name``:
    ``digits`` as (1, 8, 8) images or ``digits-flat`` as 64-vectors), batch 64, Adam 1e-3; 256 dequantised test
    points."""
    torch.manual_seed(0)
    data = load(name, seed=0)
    shape = tuple(data.train_x.shape[1:])
    gen = torch.Generator().manual_seed(0)
    model = IResNetNative(shape, solver="fixed_point")

    def batch() -> Tensor:
        return data.dequantize(data.train_x[torch.randint(0, data.train_x.shape[0], (64,), generator=gen)],
                               generator=gen)

    return _fit(model, batch(), batch, steps, lr=1e-3), data.dequantize(data.test_x[:256], generator=gen)


class _FreiaStack(nn.Module):
    """FrEIA ActNorm + IResNetLayer pairs with the native model's parameters: the same map, FrEIA's inverse."""

    def __init__(self, model: IResNetNative) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for norm, block in zip(model.actnorms, model.blocks, strict=True):
            assert isinstance(norm, ActNorm) and isinstance(block, ResidualBlock)
            fr_norm = Fm.ActNorm([(2,)])
            with torch.no_grad():  # native (x + b) e^s == FrEIA x e^s' + b' with s' = s, b' = b e^s
                fr_norm.scale.copy_(norm.log_scale.view(1, -1))
                fr_norm.bias.copy_((norm.bias * norm.log_scale.exp()).view(1, -1))
            fr_norm.init_on_next_batch = False
            mods += [fr_norm, _freia_layer_like(block.net, terms=1, probes=1)]
        self.mods = nn.ModuleList(mods)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        for m in self.mods:
            x = m([x], jac=False)[0][0]
        return x

    @torch.no_grad()
    def inverse(self, z: Tensor) -> Tensor:
        for m in reversed(self.mods):
            z = m([z], rev=True, jac=False)[0][0]
        return z


#: the per-block error targets (2-norm per example) of the Krylov floor, and the most evaluations it looks at
FLOOR_TARGETS = (1e-4, 1e-5)
FLOOR_EVALUATIONS = 40


def _krylov_floor(model: IResNetNative, x: Tensor, forward: Callable[[], Tensor]) -> dict[str, Any]:
    """Each block of ``model`` linearised at its input in the forward pass of ``x`` (the solution its inverse solve
    seeks), from the solvers' start ``x0 = y``: the fewest evaluations of ``g`` after which a point of ``x0 + K_n``
    is within each of :data:`FLOOR_TARGETS` of the solution (:func:`models.krylov.krylov_floor`), over the batch and
    for the median example, in inversion order (last block first, as ``per_block``); and the time of one evaluation
    of every block's ``g`` in forward-pass units, which turns the evaluations into a floor in those units (the
    floor costs no residual checks, so it is below what any such solver pays)."""
    inputs: list[Tensor] = []
    floors: list[Tensor] = []
    nets: list[ResidualNet] = []
    with torch.no_grad():
        h = model._pre(x)
        for norm, block in zip(model.actnorms, model.blocks, strict=True):
            if isinstance(norm, ActNorm):
                h = norm(h)[0]
            net = model._block(block).net
            gx, vjp = net.linearize(h, net.weights(update=False))
            floors.append(krylov_floor(jacobian_from_vjp(vjp, h), -gx.reshape(h.shape[0], -1), FLOOR_EVALUATIONS))
            inputs.append(h)
            nets.append(net)
            h = h + gx

    def every_g_once() -> None:
        with torch.no_grad():
            for net, h_in in zip(nets, inputs, strict=True):
                net.evaluate(h_in, net.weights(update=False))

    per_evaluation = time_ratio(every_g_once, forward, rounds=21, max_seconds=10)
    out: dict[str, Any] = {"every_g_over_forward": per_evaluation.median,
                           "every_g_over_forward_iqr": [per_evaluation.q25, per_evaluation.q75]}
    for target in FLOOR_TARGETS:
        needed = [evaluations_needed(f, target) for f in reversed(floors)]  # 0: not within FLOOR_EVALUATIONS
        worst = [FLOOR_EVALUATIONS + 1 if bool((n == 0).any()) else int(n.max()) for n in needed]
        median = [int(n.where(n > 0, FLOOR_EVALUATIONS + 1).median()) for n in needed]
        out[f"{target:.0e}"] = {"evaluations_per_block": worst, "median_example_per_block": median,
                                "forward_units": sum(worst) / len(worst) * per_evaluation.median,
                                "reached": all(n <= FLOOR_EVALUATIONS for n in worst)}
    return out


SOLVERS: dict[str, tuple[str, ...]] = {"ring": ("fixed_point", "anderson", "newton", "auto"),
                                        "digits-flat": ("fixed_point", "anderson", "newton", "auto"),
                                        "digits": ("fixed_point", "anderson", "auto")}


@pytest.mark.parametrize("case", list(SOLVERS))
def test_inverse_cost_in_forward_units(benchmark: Any, case: str) -> None:
    if case == "ring":
        model = _train(steps=300)
        x = _ring(256, torch.Generator().manual_seed(1))
    else:
        model, x = _train_digits(case, steps=400)
    with torch.no_grad():
        z = model.encode(x)
    freia = _FreiaStack(model) if case == "ring" else None

    def forward() -> Tensor:
        with torch.no_grad():
            return model.encode(x)

    results: dict[str, dict[str, Any]] = {}
    for solver in SOLVERS[case]:
        for tol in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7):  # the loosest residual tolerance reaching the error
            settings = InverseSettings(solver=solver, tol=tol, stop="residual")  # type: ignore[arg-type]
            if solver == "newton" and x[0].numel() > NEWTON_MAX_DIM:
                model.solve = settings  # past the dimension the model accepts Newton for, to show what it would cost
            else:
                model.configure_inverse(settings)
            x_rec, info = model.invert(z)
            err = (x_rec - x).abs().max().item()
            if err <= 1e-5 and info.converged:
                break
        stats = time_ratio(lambda: model.inverse(z), forward, rounds=21, max_seconds=20)
        results[solver] = {"forward_units": stats.median, "iqr": [stats.q25, stats.q75], "tol": tol,
                           "iterations_per_block": info.per_block, "reconstruction_error": err,
                           "converged": info.converged}
    # the certified stop: inverse_tol = 1e-5 as a bound on the error (the models' default stop), where every block is
    # a certified contraction and the bound is reachable in float32
    model.configure_inverse(InverseSettings(solver="auto", tol=1e-5, stop="error"))
    x_rec, info = model.invert(z)
    certified: dict[str, Any] = {  # reached: every block met its bound (no bound: a block is not a contraction)
        "converged": info.converged and info.error_bound is not None, "error_bound": info.error_bound,
        "iterations_per_block": info.per_block,
        "reconstruction_error": (x_rec - x).abs().max().item(),
        "block_lipschitz": [model._block(b).net.lipschitz() for b in reversed(model.blocks)]}
    if certified["converged"]:
        stats = time_ratio(lambda: model.inverse(z), forward, rounds=21, max_seconds=20)
        certified.update({"forward_units": stats.median, "iqr": [stats.q25, stats.q75]})
    model.configure_inverse(InverseSettings(solver="auto", tol=results["auto"]["tol"], stop="residual"))
    head_to_head = None
    if freia is not None:
        assert torch.allclose(freia(x), z, atol=1e-5), "the FrEIA stack must compute the same map"
        freia_err = (freia.inverse(z) - x).abs().max().item()
        freia_stats = time_ratio(lambda: freia.inverse(z), lambda: freia(x), rounds=21, max_seconds=20)
        results["freia"] = {"forward_units": freia_stats.median, "iqr": [freia_stats.q25, freia_stats.q75],
                            "iterations_per_block": [50] * len(model.blocks), "reconstruction_error": freia_err}
        head_to_head = time_ratio(lambda: freia.inverse(z), lambda: model.inverse(z), rounds=21, max_seconds=20)
    floor = _krylov_floor(model, x, forward)
    benchmark.pedantic(lambda: model.inverse(z), rounds=10, iterations=1, warmup_rounds=1)
    versus_freia = None if head_to_head is None else head_to_head.median
    benchmark.extra_info.update({"case": case, "inverse": results, "certified": certified, "batch": x.shape[0],
                                 "krylov_floor": floor,
                                 "coeff": 0.9,
                                 "depth": len(model.blocks), "freia_over_native_auto_inverse": versus_freia})
    print(f"\n[iresnet inverse cost, {case}, c=0.9, float32, batch 256, "
          "loosest residual tolerance giving error <= 1e-5]")
    for name, r in results.items():
        print(f"  {name:<12} {r['forward_units']:.2f} forward passes (IQR {r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}), "
              f"iterations/block {r['iterations_per_block']}, max reconstruction error {r['reconstruction_error']:.1e}"
              + (f", tol {r['tol']:.0e}" if "tol" in r else ""))
    if head_to_head is not None:
        print(f"  FrEIA inverse time / native auto inverse time: {head_to_head.median:.2f}x")
    lips = ", ".join(f"{lip:.3f}" for lip in certified["block_lipschitz"])
    if certified["converged"]:
        print(f"  auto, certified (stop = error, tol 1e-5): {certified['forward_units']:.2f} forward passes "
              f"(IQR {certified['iqr'][0]:.2f}-{certified['iqr'][1]:.2f}), iterations/block "
              f"{certified['iterations_per_block']}, bound {certified['error_bound']:.1e}, error "
              f"{certified['reconstruction_error']:.1e}; block Lip(g) {lips}")
    else:
        bound = certified["error_bound"]
        print(f"  auto, certified (stop = error, tol 1e-5): not reached (iterations/block "
              f"{certified['iterations_per_block']}, bound {'none' if bound is None else f'{bound:.1e}'}, error "
              f"{certified['reconstruction_error']:.1e}); block Lip(g) {lips}"
              + (": a block above 1 is not a certified contraction" if bound is None else ""))
    print(f"  Krylov floor (solvers that combine y and values of g linearly; each block linearised at its solution, "
          f"float64): one evaluation of every g = {floor['every_g_over_forward']:.2f} forward passes")
    for target in FLOOR_TARGETS:
        f = floor[f"{target:.0e}"]
        print(f"    per-block error <= {target:.0e} (2-norm): evaluations/block {f['evaluations_per_block']} (median "
              f"example {f['median_example_per_block']}), >= {f['forward_units']:.2f} forward passes")
    for solver in SOLVERS[case]:
        assert results[solver]["converged"] and results[solver]["reconstruction_error"] <= 1e-5, solver
    assert all(floor[f"{t:.0e}"]["reached"] for t in FLOOR_TARGETS), floor


def test_certified_inverse_after_spectral_norm_to_a_tolerance(benchmark: Any) -> None:
    """The ring model trained as in (b) but with ``sn_tol = 1e-3``: every block a certified contraction, so the
    default certified stop (``auto``, ``stop = "error"``, ``tol = 1e-5``) is reached; its forward-pass units against
    ``auto`` at the loosest residual tolerance giving error <= 1e-5 on the same model."""
    model = _train(steps=300, sn_tol=1e-3)
    x = _ring(256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.encode(x)

    def forward() -> Tensor:
        with torch.no_grad():
            return model.encode(x)

    rows: dict[str, dict[str, Any]] = {}
    for name, stop, tols in (("certified", "error", (1e-5,)), ("residual", "residual", (1e-4, 3e-5, 1e-5, 3e-6, 1e-6))):
        for tol in tols:
            model.configure_inverse(InverseSettings(solver="auto", tol=tol, stop=stop))  # type: ignore[arg-type]
            x_rec, info = model.invert(z)
            err = (x_rec - x).abs().max().item()
            if err <= 1e-5 and info.converged:
                break
        stats = time_ratio(lambda: model.inverse(z), forward, rounds=21, max_seconds=20)
        rows[name] = {"forward_units": stats.median, "iqr": [stats.q25, stats.q75], "tol": tol, "stop": info.stop,
                      "iterations_per_block": info.per_block, "reconstruction_error": err,
                      "error_bound": info.error_bound, "converged": info.converged}
    lips = [model._block(b).net.lipschitz() for b in reversed(model.blocks)]
    model.configure_inverse(InverseSettings(solver="auto", tol=1e-5, stop="error"))
    benchmark.pedantic(lambda: model.inverse(z), rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"inverse": rows, "block_lipschitz": lips})
    print("\n[iresnet inverse cost, ring trained with sn_tol = 1e-3, c=0.9, float32, batch 256]; block Lip(g) "
          + ", ".join(f"{lip:.3f}" for lip in lips))
    for name, r in rows.items():
        bound = r["error_bound"]
        print(f"  auto {name:<10} {r['forward_units']:.2f} forward passes (IQR {r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}), "
              f"tol {r['tol']:.0e}, stop {r['stop']}, iterations/block {r['iterations_per_block']}, error "
              f"{r['reconstruction_error']:.1e}, bound {'none' if bound is None else f'{bound:.1e}'}")
    assert rows["certified"]["stop"] == "error" and rows["certified"]["converged"]
    assert rows["certified"]["reconstruction_error"] <= 1e-5


# ------------------------------------------------------------------------------------------ (c) training step
def _training_step(model: Any, x: Tensor, lr: float) -> Callable[[], None]:
    """``model`` data-initialised on ``x`` and one maximum-likelihood step on ``x`` as the suite trains
    (:func:`bench.tasks.training.training_step`: multi-tensor Adam, gradient clipping, ``after_step``), as a function
    to time."""
    from bench.tasks.training import training_step

    model.data_init(x)
    return training_step(model, x, lr)


@pytest.mark.parametrize("method", ["series", "exact"])
def test_training_step_against_realnvp_of_equal_parameters(benchmark: Any, method: str) -> None:
    """One maximum-likelihood step (forward, log-det, backward, Adam) of ``iresnet-native`` at its defaults (4 blocks
    of width 64, c = 0.9; ``series``: 5 terms, 1 probe; ``exact``: the 2x2 Jacobian's log-det) against
    ``realnvp-nflows`` with its width scaled to the same trainable parameter count, batch 256 on the 2-D ring."""
    from bench.flops import trainable_parameters
    from bench.run.match_params import match_width
    from models.registry import create

    torch.manual_seed(0)
    ours = create("iresnet-native", (2,), method=method)
    target = trainable_parameters(ours)
    matched = match_width("realnvp-nflows", (2,), None, {}, target)
    assert matched.hparam is not None and matched.value is not None
    theirs = create("realnvp-nflows", (2,), **{matched.hparam: matched.value})
    x = _ring(256, torch.Generator().manual_seed(0))
    steps = {name: _training_step(model, x, lr=1e-3) for name, model in (("ours", ours), ("theirs", theirs))}
    stats = time_ratio(steps["ours"], steps["theirs"], rounds=21, max_seconds=30)
    benchmark.pedantic(steps["ours"], rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"method": method, "params_ours": target, "params_theirs": matched.params,
                                 "ratio": stats.median, "iqr": [stats.q25, stats.q75]})
    print(f"\n[training step, 2-D ring, batch 256] iresnet-native ({method}, {target} params) / realnvp-nflows "
          f"({matched.hparam} = {matched.value}, {matched.params} params): {stats.median:.2f}x "
          f"(IQR {stats.q25:.2f}-{stats.q75:.2f})")


def test_training_step_cost_of_spectral_norm_to_a_tolerance(benchmark: Any) -> None:
    """One maximum-likelihood step of ``iresnet-native`` (4 blocks of 2x64, c = 0.9, series log-det) with
    ``sn_tol = 1e-3`` over the same step with one power step per forward, batch 256 on the 2-D ring, after 100 steps
    of each (so the tolerance's steps are those of training, not of the first convergence)."""
    from models.registry import create

    x = _ring(256, torch.Generator().manual_seed(0))
    steps: dict[str, Callable[[], None]] = {}
    calls = {"steps": 0, "forwards": 0}
    models = {}
    for name, kw in (("tol", {"sn_tol": 1e-3}), ("one", {})):
        torch.manual_seed(0)
        model = create("iresnet-native", (2,), **kw)
        step = _training_step(model, x, lr=5e-3)
        for _ in range(100):
            step()
        steps[name] = step
        models[name] = model
    layers = [m for m in models["tol"].modules() if isinstance(m, SpectralNormLinear)]
    adjoint = SpectralNormLinear._adjoint

    def counting(self: SpectralNormLinear, y: Tensor, w: Tensor) -> Tensor:
        calls["steps"] += 1
        return adjoint(self, y, w)

    SpectralNormLinear._adjoint = counting  # type: ignore[method-assign]
    try:
        for _ in range(20):
            steps["tol"]()
            calls["forwards"] += 1
    finally:
        SpectralNormLinear._adjoint = adjoint  # type: ignore[method-assign]
    per_forward = calls["steps"] / (calls["forwards"] * len(layers))
    stats = time_ratio(steps["tol"], steps["one"], rounds=21, max_seconds=30)
    benchmark.pedantic(steps["tol"], rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"ratio": stats.median, "iqr": [stats.q25, stats.q75],
                                 "power_steps_per_layer_forward": per_forward})
    print(f"\n[training step, 2-D ring, batch 256] iresnet-native sn_tol = 1e-3 / one power step: {stats.median:.2f}x "
          f"(IQR {stats.q25:.2f}-{stats.q75:.2f}); {per_forward:.2f} power steps per layer and forward")
    assert per_forward >= 1
