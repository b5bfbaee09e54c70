"""Conformance checks of the adapter contract (models/base.py), usable by anyone on any adapter.

``validate("realnvp-nflows")`` or ``validate("my_pkg.flows:MyFlow")`` runs every check at small dimension and
returns one :class:`CheckResult` per (check, input shape): its figure and pass/fail. A check that raises is a
failed check with the error as its figure, never a crash. The command line is ``invbench validate NAME``.

Checks (names are the keys of ``InvertibleModel.known_defects``):

- ``shapes``: ``z`` has x's shape, ``ladj`` has shape (B,), both float32 and finite.
- ``ladj_tensor``: ``ladj`` is a tensor (not a python float / numpy scalar) on x's device and dtype.
- ``roundtrip``: ``max|inverse(forward(x)) - x|`` in float64 within the adapter's ``roundtrip_tol``; an iterative
  inverse must also report ``converged``.
- ``logdet``: ``ladj`` against the exact autograd Jacobian ``slogdet`` in float64: max error within ``logdet_tol``
  for exact adapters; for estimators, bias and standard deviation over repeated draws, passing when
  ``|bias| <= logdet_tol + 4 * standard error``.
- ``log_prob``: ``log_prob(x) == N(z; 0, I) + ladj`` (density models).
- ``gradients``: every trainable parameter gets a finite gradient from the training loss
  (:func:`models.loss.training_loss`: the mean NLL, the cross-entropy of ``logits``, or the sum of both for hybrid
  models), and for density models that are not
  volume-preserving the gradient of ``ladj`` with respect to the parameters agrees with the gradient of the
  exact log-det (cosine >= 0.9 and relative norm error <= 0.25; estimators averaged over draws). A log-det
  that carries no gradient fails here.
- ``state_dict``: ``type(m)(**m.config())`` with ``m.state_dict()`` reproduces ``m``'s outputs; the config is JSON.
- ``eval_deterministic``: two ``eval()`` forward passes give identical ``z``.
- ``dtype_float64``: after ``.to(torch.float64)`` the outputs are float64.
- ``logits``: classifiers return (B, num_classes).
- ``encode``: ``encode(x)`` (the latent without the log-det) equals ``forward(x)[0]``.
- ``inputs_untouched``: ``forward`` leaves the caller's tensor as it was (values and ``requires_grad``).
- ``settings``: estimator models report :class:`~models.base.EstimatorSettings` and iterative inverses
  :class:`~models.base.InverseSettings` (the others None); a changed cost knob and iteration cap are reported back
  and rebuilt by ``config()``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from models.base import InvertibleModel, standard_normal_log_prob
from models.jacobian import jacobian_slogdet
from models.loss import Objective, training_loss

BATCH = 3
ESTIMATOR_DRAWS = 64


@dataclass
class CheckResult:
    """The outcome of one conformance check on one input shape."""

    name: str
    shape: tuple[int, ...]
    passed: bool
    figure: str
    known_defect: str = ""

    @property
    def status(self) -> str:
        if self.passed:
            return "PASS"
        return "FAIL (known defect)" if self.known_defect else "FAIL"


def default_shapes(cls: type[InvertibleModel]) -> list[tuple[int, ...]]:
    """The small shapes the checks use: (4,) for vector models, (1, 4, 4) for image models."""
    shapes: list[tuple[int, ...]] = []
    if "vector" in cls.capabilities.inputs:
        shapes.append((4,))
    if "image" in cls.capabilities.inputs:
        shapes.append((1, 4, 4))
    return shapes


def _resolve(model: str | type[InvertibleModel]) -> type[InvertibleModel]:
    if isinstance(model, str):
        from models.registry import get

        return get(model)
    return model


def _inputs(shape: tuple[int, ...], n: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    # data-like values in (0, 1) for images (models see dequantised [0, 1) data), standard normal for vectors
    if len(shape) > 1:
        return torch.rand((n, *shape), generator=g, dtype=torch.float64).to(dtype)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64).to(dtype)


def _build(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> InvertibleModel:
    torch.manual_seed(seed)
    model = cls(shape=shape)
    model = model.to(dtype)
    model.data_init(_inputs(shape, 32, seed + 1, dtype))
    return model


def _fmt(v: float) -> str:
    return f"{v:.2e}"


# ------------------------------------------------------------------------------------------------ the checks
def check_shapes(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float32).eval()
    x = _inputs(shape, BATCH, seed)
    z, ladj = model(x)
    problems = []
    if tuple(z.shape) != tuple(x.shape):
        problems.append(f"z shape {tuple(z.shape)} != x shape {tuple(x.shape)}")
    if not isinstance(ladj, Tensor) or tuple(ladj.shape) != (BATCH,):
        problems.append(f"ladj shape {getattr(ladj, 'shape', type(ladj).__name__)} != ({BATCH},)")
    if z.dtype != torch.float32:
        problems.append(f"z dtype {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        problems.append("z not finite")
    if problems:
        return False, "; ".join(problems)
    return True, f"z {tuple(z.shape)}, ladj ({BATCH},), float32"


def check_ladj_tensor(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float32).eval()
    x = _inputs(shape, BATCH, seed)
    _, ladj = model(x)
    if not isinstance(ladj, Tensor):
        return False, f"ladj is {type(ladj).__name__}, not a tensor"
    if ladj.dtype != x.dtype or ladj.device != x.device:
        return False, f"ladj {ladj.dtype} on {ladj.device}, x {x.dtype} on {x.device}"
    return True, f"tensor {ladj.dtype} on {ladj.device}"


def check_roundtrip(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float64).eval()
    x = _inputs(shape, BATCH, seed, torch.float64)
    with torch.no_grad():
        z, _ = model(x)
        x_rec, info = model.invert(z)
    err = float((x_rec.detach() - x.detach()).abs().max())
    ok = err <= cls.roundtrip_tol and math.isfinite(err)
    figure = f"max err {_fmt(err)} (tol {_fmt(cls.roundtrip_tol)})"
    if cls.capabilities.inverse == "iterative":
        figure += f", {info.iterations} iters, residual {_fmt(info.residual)}, converged={info.converged}"
        ok = ok and info.converged
    return ok, figure


def check_logdet(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float64).eval()
    x = _inputs(shape, BATCH, seed, torch.float64)
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    if cls.capabilities.logdet == "exact":
        with torch.no_grad():
            _, ladj = model(x)
        err = float((ladj - exact).abs().max())
        ok = err <= cls.logdet_tol
        return ok, f"max |ladj - slogdet| {_fmt(err)} (tol {_fmt(cls.logdet_tol)})"
    draws = []
    for i in range(ESTIMATOR_DRAWS):
        torch.manual_seed(seed * 1000 + i)
        with torch.no_grad():
            draws.append(model(x)[1].detach())
    est = torch.stack(draws)  # (R, B)
    diff = est - exact
    bias = diff.mean(0)  # (B,)
    std = est.std(0)
    se = std / math.sqrt(ESTIMATOR_DRAWS)
    worst = int(torch.argmax(bias.abs() - 4 * se))
    ok = bool((bias.abs() <= cls.logdet_tol + 4 * se).all())
    settings = model.estimator_settings()
    shown = f"{settings.method} {settings.knobs()}" if settings is not None else "none reported"
    return ok, (f"bias {_fmt(float(bias[worst]))} ± {_fmt(float(se[worst]))} (s.e.), std {_fmt(float(std.mean()))} "
                f"over {ESTIMATOR_DRAWS} draws, |exact| {_fmt(float(exact.abs().mean()))}, "
                f"tol {_fmt(cls.logdet_tol)}; estimator {shown}")


def check_log_prob(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    if not cls.capabilities.density:
        return True, "not a density model (skipped by declaration)"
    model = _build(cls, shape, seed, torch.float64).eval()
    x = _inputs(shape, BATCH, seed, torch.float64)
    torch.manual_seed(seed)
    with torch.no_grad():
        lp = model.log_prob(x)
    torch.manual_seed(seed)
    with torch.no_grad():
        z, ladj = model(x)
    expected = standard_normal_log_prob(z) + ladj
    err = float((lp - expected).abs().max())
    ok = tuple(lp.shape) == (BATCH,) and err <= 1e-8
    return ok, f"max |log_prob - (N(z) + ladj)| {_fmt(err)}, shape {tuple(lp.shape)}"


def _loss(model: InvertibleModel, x: Tensor) -> Tensor:
    """:func:`models.loss.training_loss` of every objective the model has: the mean NLL (density models) plus the
    cross-entropy of the logits against cycling labels (classifiers)."""
    caps = model.capabilities
    objectives: list[Objective] = []
    if caps.density:
        objectives.append("likelihood")
    if caps.classifier:
        objectives.append("classification")
    return torch.stack([training_loss(model, x, objective=o) for o in objectives]).sum()


def _param_grads(params: list[torch.nn.Parameter], fn: Callable[[], Tensor]) -> Tensor | None:
    out = fn()
    if not out.requires_grad:
        return None
    grads = torch.autograd.grad(out, params, allow_unused=True)
    flat = [torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1) for p, g in zip(params, grads, strict=True)]
    return torch.cat(flat)


def check_gradients(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float64).train()
    x = _inputs(shape, 8, seed, torch.float64)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return False, "model has no trainable parameters"
    model.zero_grad()
    torch.manual_seed(seed)
    _loss(model, x).backward()
    missing = [n for n, p in zip(names, params, strict=True)
               if p.grad is None or not bool(torch.isfinite(p.grad).all())]
    figure = [f"{len(params) - len(missing)}/{len(params)} parameters get finite loss gradients"]
    ok = not missing
    if missing:
        figure.append(f"missing: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    caps = cls.capabilities
    if caps.density and not caps.volume_preserving:
        xs = x[:2]
        if caps.memory_saving:  # the exact log-det's gradient is a double backward: ordinary autograd for it
            model.set_memory_saving(False)
        exact_grad = _param_grads(params, lambda: jacobian_slogdet(lambda v: model(v)[0], xs,
                                                                    create_graph=True).sum())
        if caps.memory_saving:  # ladj's gradient as training takes it
            model.set_memory_saving(True)
        draws = 1 if caps.logdet == "exact" else 16
        est: Tensor | None = None
        for i in range(draws):
            torch.manual_seed(seed * 7919 + i)
            g = _param_grads(params, lambda: model(xs)[1].sum())
            if g is None:
                est = None
                break
            est = g / draws if est is None else est + g / draws
        if exact_grad is None:
            figure.append("exact log-det has no parameter gradient")
        elif est is None or float(est.norm()) == 0.0:
            ok = False
            norm = _fmt(float(exact_grad.norm()))
            figure.append(f"ladj carries NO gradient to the parameters (|grad exact log-det| {norm})")
        else:
            cos = float(torch.nn.functional.cosine_similarity(est, exact_grad, dim=0))
            rel = float((est - exact_grad).norm() / exact_grad.norm().clamp_min(1e-30))
            ok = ok and cos >= 0.9 and rel <= 0.25
            figure.append(f"ladj gradient vs exact log-det gradient: cosine {cos:.4f}, rel err {_fmt(rel)}")
    return ok, "; ".join(figure)


def check_state_dict(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float32).eval()
    cfg = model.config()
    json.dumps(cfg)
    twin = cls(**cfg)
    twin.load_state_dict(copy.deepcopy(model.state_dict()))
    twin.eval()
    x = _inputs(shape, BATCH, seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        z1, l1 = model(x)
    torch.manual_seed(seed)
    with torch.no_grad():
        z2, l2 = twin(x)
    err = max(float((z1 - z2).abs().max()), float((l1 - l2).abs().max()))
    return err <= 1e-6, f"rebuilt from config {sorted(cfg)}: max output diff {_fmt(err)}"


def check_eval_deterministic(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float32).eval()
    x = _inputs(shape, BATCH, seed)
    with torch.no_grad():
        z1, _ = model(x)
        z2, _ = model(x)
    err = float((z1 - z2).abs().max())
    return err == 0.0, f"max diff between two eval passes {_fmt(err)}"


def check_dtype_float64(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float32).to(torch.float64).eval()
    x = _inputs(shape, BATCH, seed, torch.float64)
    with torch.no_grad():
        z, ladj = model(x)
        x_rec = model.inverse(z)
    dtypes = {str(t.dtype) for t in (z, ladj, x_rec)}
    return dtypes == {"torch.float64"}, f"outputs {', '.join(sorted(dtypes))}"


def check_logits(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    if not cls.capabilities.classifier:
        return True, "not a classifier (skipped by declaration)"
    model = _build(cls, shape, seed, torch.float32).eval()
    x = _inputs(shape, BATCH, seed)
    with torch.no_grad():
        out = model.logits(x)
    expected = (BATCH, model.num_classes)
    return tuple(out.shape) == expected, f"logits {tuple(out.shape)} (expected {expected})"


def check_encode(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float64).eval()
    x = _inputs(shape, BATCH, seed, torch.float64)
    with torch.no_grad():
        z_encode = model.encode(x)
    torch.manual_seed(seed)
    z_forward = model(x)[0].detach()
    err = float((z_encode.detach() - z_forward).abs().max())
    return err <= 1e-10, f"max |encode(x) - forward(x)[0]| {_fmt(err)}"


def check_settings(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    """Estimator models report :class:`EstimatorSettings` and iterative inverses :class:`InverseSettings` (the
    others None); a changed cost knob / iteration cap is what the model then reports, and ``config()`` rebuilds it."""
    model = _build(cls, shape, seed, torch.float32)
    caps = cls.capabilities
    problems: list[str] = []
    done: list[str] = []
    est, inv = model.estimator_settings(), model.inverse_settings()
    if (caps.logdet == "estimator") != (est is not None):
        problems.append(f"logdet {caps.logdet!r} but estimator_settings() is {est!r}")
    if (caps.inverse == "iterative") != (inv is not None):
        problems.append(f"inverse {caps.inverse!r} but inverse_settings() is {inv!r}")
    if est is not None and est.cost_knobs():
        knob = est.cost_knobs()[0]
        bumped: dict[str, Any] = {knob: int(getattr(est, knob)) + 1}
        changed = replace(est, **bumped)
        model.configure_estimator(changed)
        rebuilt = cls(**model.config()).estimator_settings()
        if model.estimator_settings() != changed or rebuilt != changed:
            problems.append(f"configure_estimator({knob}={getattr(changed, knob)}): the model reports "
                            f"{model.estimator_settings()!r}, its config rebuilds {rebuilt!r}")
        done.append(f"estimator {est.method} {knob} -> {getattr(changed, knob)}")
    if inv is not None:
        capped = replace(inv, max_iter=inv.max_iter + 1)
        model.configure_inverse(capped)
        rebuilt_inv = cls(**model.config()).inverse_settings()
        if model.inverse_settings() != capped or rebuilt_inv != capped:
            problems.append(f"configure_inverse(max_iter={capped.max_iter}): the model reports "
                            f"{model.inverse_settings()!r}, its config rebuilds {rebuilt_inv!r}")
        done.append(f"inverse {inv.solver} max_iter -> {capped.max_iter}")
    if problems:
        return False, "; ".join(problems)
    return True, ("; ".join(done) + ", reported and rebuilt from config") if done else "exact log-det, analytic inverse"


def check_inputs_untouched(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int) -> tuple[bool, str]:
    model = _build(cls, shape, seed, torch.float32).eval()
    x = _inputs(shape, BATCH, seed)
    before = x.clone()
    with torch.no_grad():
        model(x)
    ok = not x.requires_grad and torch.equal(x.detach(), before)
    if ok:
        return True, "forward left the caller's input unchanged"
    return False, f"forward changed the caller's input (requires_grad={x.requires_grad})"


CHECKS: dict[str, Callable[[type[InvertibleModel], tuple[int, ...], int], tuple[bool, str]]] = {
    "shapes": check_shapes,
    "ladj_tensor": check_ladj_tensor,
    "roundtrip": check_roundtrip,
    "logdet": check_logdet,
    "log_prob": check_log_prob,
    "gradients": check_gradients,
    "state_dict": check_state_dict,
    "eval_deterministic": check_eval_deterministic,
    "dtype_float64": check_dtype_float64,
    "logits": check_logits,
    "encode": check_encode,
    "inputs_untouched": check_inputs_untouched,
    "settings": check_settings,
}


def validate(model: str | type[InvertibleModel], shape: tuple[int, ...] | None = None, seed: int = 0,
             checks: list[str] | None = None) -> list[CheckResult]:
    """Run the conformance checks on a registered name, a ``"module:Class"`` string or a class.

    Returns one :class:`CheckResult` per check and shape; never raises for a failing model.
    """
    cls = _resolve(model)
    shapes = [shape] if shape is not None else default_shapes(cls)
    try:
        defects = cls(shape=shapes[0]).known_defects()
    except Exception:
        defects = {}
    results = []
    for shp in shapes:
        for name in checks or list(CHECKS):
            try:
                passed, figure = CHECKS[name](cls, shp, seed)
            except Exception as exc:
                passed, figure = False, f"raised {type(exc).__name__}: {exc}"
            defect = defects.get(name, "") if not passed else ""
            results.append(CheckResult(name, shp, passed, figure, defect))
    return results


def format_report(model: str | type[InvertibleModel], results: list[CheckResult]) -> str:
    """A plain-text table: one row per property with its figure and pass/fail."""
    label = model if isinstance(model, str) else f"{model.__module__}:{model.__qualname__}"
    lines = [f"conformance checks for {label}"]
    width = max(len(r.name) for r in results) if results else 10
    for r in results:
        shape = "x".join(str(s) for s in r.shape)
        lines.append(f"  {r.name:<{width}}  {shape:<7}  {r.status:<19}  {r.figure}")
        if r.known_defect:
            lines.append(f"  {'':<{width}}  {'':<7}  {'':<19}  known defect: {r.known_defect}")
    failed = sum(not r.passed for r in results)
    tail = f", {failed} FAILED" if failed else ""
    lines.append(f"result: {len(results) - failed}/{len(results)} checks passed{tail}")
    return "\n".join(lines)
