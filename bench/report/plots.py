"""Plots of a results store (matplotlib, Agg backend, small PNGs at 100 dpi).

Every plot kind in :data:`PLOT_KINDS` makes one figure per data set that has its data; a kind with no data
makes no image and is returned as :class:`Skipped` with the reason, which the report prints.

- ``density``: learned vs true density for every model on each 2-D data set, from the ``density_grid``
  artifacts (npz with ``x``, ``y``, ``logp_model``, ``logp_true``; ``x``/``y`` either 2-D arrays of
  ``logp``'s shape, or 1-D axes with ``logp[j, i]`` at ``(x[i], y[j])``, or flat point lists).
- ``samples``: sample grids for image data from ``samples`` artifacts (npz ``x``: (N, C, H, W), N <= 64),
  clipped to [0, 1]; when the row's ``extra["samples_space"]`` says they are not in data space (a
  pre-processing such as a logit was not undone), min-max scaled instead and labelled so.
- ``recon_iters``: reconstruction error vs inverse iterations, and vs forward-pass units in a second panel,
  for iterative inverses (rows whose ``extra`` holds lists ``iters``, ``recon_err`` and ``fwd_units``);
  the fixed-point iteration of Behrmann et al., "Invertible Residual Networks", ICML 2019.
- ``lipschitz``: ``lip_forward`` / ``lip_inverse`` per model on test vs OOD inputs (log scale), the
  exploding-inverse diagnosis of Behrmann et al., "Understanding and Mitigating Exploding Inverses in
  Invertible Neural Networks", AISTATS 2021.
- ``logdet``: log-det estimator |bias| and standard deviation vs estimator cost (Chen et al., "Residual
  Flows", NeurIPS 2019).
- ``memory_depth``: training memory vs depth, memory-saving vs ordinary backprop (rows whose ``extra`` holds
  ``depth``, ``bytes_saving``, ``bytes_ordinary``; Gomez et al., "The Reversible Residual Network", 2017).
- ``learning_curves``: one figure per data set and objective (``kl_gap``, ``test_bpd``, ``test_accuracy``): every
  model's held-out value against training seconds (log x; evaluation time excluded), one line per seed, from
  the ``eval_time`` rows' ``extra["curve"]`` (lists ``seconds``, ``step``, ``value`` and its ``metric``).

Every :class:`Plot` names the task and data set of the table it belongs beside (the HTML page places it there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report.tables import INPUT_ORDER, Cell, Store, aggregate, frame, slug
from bench.run.rundir import Row

DPI = 100

PLOT_KINDS: dict[str, str] = {
    "density": "learned vs true density on 2-D data",
    "samples": "samples of image models",
    "recon_iters": "reconstruction error vs inverse iterations",
    "lipschitz": "Lipschitz constants on test vs OOD inputs",
    "logdet": "log-det estimator bias and spread vs cost",
    "memory_depth": "memory vs depth, memory-saving vs ordinary backprop",
    "learning_curves": "learning curves (held-out value vs training seconds)",
    "checkpoints": "checkpointed metrics over training steps (exploding, memgrad)",
}
#: the task whose table a plot kind is shown beside (learning curves: the task of their rows)
PLOT_TASKS: dict[str, str] = {"density": "likelihood", "samples": "likelihood", "recon_iters": "inverse_cost",
                              "lipschitz": "stability", "logdet": "logdet", "memory_depth": "cost",
                              "learning_curves": "likelihood", "checkpoints": ""}


@dataclass
class Plot:
    """A written figure; ``path`` is relative to the report folder."""

    kind: str
    title: str
    path: str
    #: the table it belongs beside: its task and data set
    task: str = ""
    dataset: str = ""


@dataclass
class Skipped:
    """A plot kind (or one figure of it) that was not drawn, and why."""

    kind: str
    reason: str


def make_plots(store: Store, report_dir: Path) -> tuple[list[Plot], list[Skipped]]:
    """Draw every plot kind into ``report_dir / "plots"``; return what was drawn and what was skipped."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    plots: list[Plot] = []
    skipped: list[Skipped] = []
    makers: dict[str, Callable[[Store, Path, list[Skipped]], list[Plot]]] = {
        "density": _density, "samples": _samples, "recon_iters": _recon_iters, "lipschitz": _lipschitz,
        "logdet": _logdet, "memory_depth": _memory_depth, "learning_curves": _learning_curves,
        "checkpoints": _checkpoints,
    }
    plot_dir = report_dir / "plots"
    for kind, maker in makers.items():
        made = maker(store, plot_dir, skipped)
        if not made and not any(s.kind == kind for s in skipped):
            skipped.append(Skipped(kind, f"no data for {PLOT_KINDS[kind]} in this run"))
        plots.extend(made)
    return plots, skipped


def _save(fig: Any, plot_dir: Path, kind: str, dataset: str, title: str, part: str = "", task: str = "") -> Plot:
    """Write ``plots/<kind>__<dataset>[__<part>].png``; the plot belongs beside ``task``'s table (default: the
    kind's, :data:`PLOT_TASKS`)."""
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    name = f"{kind}__{slug(dataset)}" + (f"__{slug(part)}" if part else "") + ".png"
    fig.suptitle(title, fontsize=10)
    fig.savefig(plot_dir / name, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return Plot(kind=kind, title=title, path=f"plots/{name}", task=task or PLOT_TASKS.get(kind, ""), dataset=dataset)


def _figure(n_panels: int, ncols: int, size: float = 2.6) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.4, size * nrows + 0.5), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


# ----------------------------------------------------------------------------------------------- artifacts


def _artifacts(store: Store, kind: str, skipped: list[Skipped]) -> dict[str, dict[str, tuple[dict[str, Any], Row]]]:
    """``{dataset: {model: (arrays, row)}}`` of the artifacts of ``kind`` ("density" or "samples"), lowest seed
    (with status ok first) per model."""
    out: dict[str, dict[str, tuple[dict[str, Any], Row]]] = {}
    rows = sorted((r for r in store.rows if isinstance(r.extra.get("artifact"), str)),
                  key=lambda r: (r.dataset, r.model, r.status != "ok", r.seed))
    for row in rows:
        if row.model in out.get(row.dataset, {}):
            continue
        path = store.run_dir / row.extra["artifact"]
        if not path.is_file():
            skipped.append(Skipped(kind, f"artifact {row.extra['artifact']} ({row.model}, {row.dataset}) not found"))
            continue
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        is_density = "logp_model" in arrays and "logp_true" in arrays
        is_samples = not is_density and "x" in arrays and arrays["x"].ndim == 4
        if (kind == "density" and is_density) or (kind == "samples" and is_samples):
            out.setdefault(row.dataset, {})[row.model] = (arrays, row)
    return out


def grid_of(x: np.ndarray, y: np.ndarray, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Y, logp)`` as three 2-D arrays of one shape from any of the documented grid layouts."""
    if logp.ndim == 2:
        if x.shape == logp.shape and y.shape == logp.shape:
            return x, y, logp
        if x.ndim == 1 and y.ndim == 1:
            if logp.shape == (len(y), len(x)):
                X, Y = np.meshgrid(x, y)
                return X, Y, logp
            if logp.shape == (len(x), len(y)):
                X, Y = np.meshgrid(x, y, indexing="ij")
                return X, Y, logp
    if logp.ndim == 1 and x.shape == logp.shape and y.shape == logp.shape:
        xs, ys = np.unique(x), np.unique(y)
        if len(xs) * len(ys) == len(logp):
            order = np.lexsort((x, y))
            X, Y = np.meshgrid(xs, ys)
            return X, Y, logp[order].reshape(len(ys), len(xs))
    raise ValueError(f"unrecognised density grid: x {x.shape}, y {y.shape}, logp {logp.shape}")


def _density(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    for dataset, by_model in sorted(_artifacts(store, "density", skipped).items()):
        first = next(iter(by_model.values()))[0]
        try:
            panels = [("true density", grid_of(first["x"], first["y"], first["logp_true"]))]
            panels += [(m, grid_of(a["x"], a["y"], a["logp_model"])) for m, (a, _) in sorted(by_model.items())]
        except ValueError as exc:
            skipped.append(Skipped("density", f"{dataset}: {exc}"))
            continue
        true_p = np.exp(np.clip(panels[0][1][2], -700, 50))
        vmax = float(np.nanmax(true_p)) if np.isfinite(true_p).any() else 1.0
        fig, axes = _figure(len(panels), ncols=4)
        for ax, (label, (X, Y, logp)) in zip(axes, panels, strict=True):
            p = np.ma.masked_invalid(np.exp(np.clip(logp, -700, 50)))
            ax.pcolormesh(X, Y, p, shading="auto", cmap="viridis", vmin=0.0, vmax=vmax)
            ax.set_title(label, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        plots.append(_save(fig, plot_dir, "density", dataset, f"density on {dataset}: true vs learned"))
    return plots


def tile(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (rows*(H+pad)-pad, cols*(W+pad)-pad[, 3]) image, N tiled row-major."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    chans = 3 if c == 3 else 1
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, chans))
    for i in range(n):
        r, q = divmod(i, cols)
        img = images[i] if chans == 3 else images[i, :1]
        out[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = np.transpose(img, (1, 2, 0))
    return out if chans == 3 else out[..., 0]


def _samples(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    for dataset, by_model in sorted(_artifacts(store, "samples", skipped).items()):
        fig, axes = _figure(len(by_model), ncols=4)
        for ax, (model, (arrays, row)) in zip(axes, sorted(by_model.items()), strict=True):
            x = arrays["x"][:64].astype(np.float64)
            title = model
            space = str(row.extra.get("samples_space", "data"))
            if space != "data" and np.isfinite(x).any():
                # samples in the model's space (after pre-processing): min-max scaled for display
                lo, hi = np.nanmin(x[np.isfinite(x)]), np.nanmax(x[np.isfinite(x)])
                x = (x - lo) / (hi - lo) if hi > lo else x - lo
                title += "\n(model space, min-max scaled)"
            img = tile(np.nan_to_num(np.clip(x, 0.0, 1.0), nan=0.0, posinf=1.0, neginf=0.0))
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
        plots.append(_save(fig, plot_dir, "samples", dataset, f"samples on {dataset}"))
    return plots


# -------------------------------------------------------------------------------------------------- curves


def _curve_rows(store: Store, keys: Sequence[str]) -> dict[str, dict[str, list[Row]]]:
    """``{dataset: {model: rows}}`` of rows whose ``extra`` holds list-valued ``keys``, by seed."""
    out: dict[str, dict[str, list[Row]]] = {}
    for row in sorted(store.rows, key=lambda r: (r.dataset, r.model, r.seed)):
        if all(isinstance(row.extra.get(k), list) and row.extra[k] for k in keys):
            out.setdefault(row.dataset, {}).setdefault(row.model, []).append(row)
    return out


def _positive(values: Sequence[Any]) -> np.ndarray:
    """Floats with non-positive / non-finite entries as nan (for log axes)."""
    a = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    a[~np.isfinite(a) | (a <= 0)] = np.nan
    return a


def _colors(n: int) -> list[Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _finish(ax: Any, logx: bool, logy: bool, xlabel: str, ylabel: str, legend: bool = True) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    has = [ln for ln in ax.get_lines() if np.isfinite(np.asarray(ln.get_ydata(), dtype=float)).any()]
    for axis, log in ((ax.yaxis, logy), (ax.xaxis, logx)):
        if log and has:
            (ax.set_yscale if axis is ax.yaxis else ax.set_xscale)("log")
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    if legend and any(not ln.get_label().startswith("_") for ln in ax.get_lines()):
        ax.legend(fontsize=7)


def _recon_iters(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    for dataset, by_model in sorted(_curve_rows(store, ("iters", "recon_err")).items()):
        fig, (ax_it, ax_fw) = _figure(2, ncols=2, size=3.4)
        for color, (model, rows) in zip(_colors(len(by_model)), sorted(by_model.items()), strict=True):
            for i, row in enumerate(rows):
                err = _positive(row.extra["recon_err"])
                label = model if i == 0 else "_"
                ax_it.plot(_positive(row.extra["iters"]), err, "o-", ms=3, color=color, label=label)
                if isinstance(row.extra.get("fwd_units"), list):
                    ax_fw.plot(_positive(row.extra["fwd_units"]), err, "o-", ms=3, color=color, label=label)
        _finish(ax_it, True, True, "inverse iterations", "reconstruction error")
        _finish(ax_fw, True, True, "inverse cost (forward passes)", "reconstruction error", legend=False)
        plots.append(_save(fig, plot_dir, "recon_iters", dataset, f"inverse convergence on {dataset}"))
    return plots


#: a plotted cell: (metric, model, variant, input, settings_key)
MeanKey = tuple[str, str, str, str, str]


def _means(store: Store, metrics: Sequence[str]) -> tuple[dict[str, dict[MeanKey, Cell]], dict[str, str]]:
    """``{dataset: {(metric, model, variant, input, settings_key): cell}}`` for rows whose metric is in
    ``metrics``, and the display text of each settings key."""
    df = frame(store.rows)
    df = df[df["metric"].isin(list(metrics))]
    out: dict[str, dict[MeanKey, Cell]] = {}
    for (dataset, *key), cell in aggregate(df, ("dataset", "metric", "model", "variant", "input",
                                                "settings_key")).items():
        out.setdefault(str(dataset), {})[(key[0], key[1], key[2], key[3], key[4])] = cell
    return out, dict(zip(df["settings_key"], df["settings"], strict=True))


def _lipschitz(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    by_dataset, _ = _means(store, ("lip_forward", "lip_inverse"))
    for dataset, cells in sorted(by_dataset.items()):
        inputs = sorted({k[3] for k in cells},
                        key=lambda c: (INPUT_ORDER.index(c), "") if c in INPUT_ORDER else (99, c))
        models = sorted({(k[1], k[2]) for k in cells})
        if not any(c.mean is not None for c in cells.values()):
            skipped.append(Skipped("lipschitz", f"{dataset}: no ok lip_forward / lip_inverse rows"))
            continue
        fig, axes = _figure(2, ncols=2, size=3.4)
        for ax, metric in zip(axes, ("lip_forward", "lip_inverse"), strict=True):
            for j, (color, (model, variant)) in enumerate(zip(_colors(len(models)), models, strict=True)):
                ys = [cells[k].mean if (k := (metric, model, variant, c, "")) in cells else None for c in inputs]
                xs = np.arange(len(inputs)) + (j - (len(models) - 1) / 2) * 0.08
                label = model + (f"+{variant}" if variant else "")
                ax.plot(xs, _positive(ys), "s--" if variant else "o-", ms=4, lw=0.8, color=color, label=label)
            ax.set_xticks(range(len(inputs)))
            ax.set_xticklabels([c or "-" for c in inputs])
            _finish(ax, False, True, "input", metric, legend=metric == "lip_forward")
        plots.append(_save(fig, plot_dir, "lipschitz", dataset, f"Lipschitz constants on {dataset}: test vs OOD"))
    return plots


def _logdet(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    by_dataset, settings_texts = _means(store, ("logdet_bias", "logdet_std", "logdet_cost"))
    for dataset, cells in sorted(by_dataset.items()):
        series: dict[str, list[tuple[float, float, float, str]]] = {}
        for (metric, model, variant, inp, skey), cell in cells.items():
            if metric != "logdet_cost" or cell.mean is None:
                continue
            bias = cells.get(("logdet_bias", model, variant, inp, skey))
            std = cells.get(("logdet_std", model, variant, inp, skey))
            b = abs(bias.mean) if bias is not None and bias.mean is not None else math.nan
            s = std.mean if std is not None and std.mean is not None else math.nan
            label = model + (f"+{variant}" if variant else "") + (f" ({inp})" if inp else "")
            series.setdefault(label, []).append((cell.mean, b, s, settings_texts.get(skey, "")))
        if not series:
            skipped.append(Skipped("logdet", f"{dataset}: no ok logdet_cost rows to place the estimators on"))
            continue
        fig, (ax_b, ax_s) = _figure(2, ncols=2, size=3.4)
        for color, (model, pts) in zip(_colors(len(series)), sorted(series.items()), strict=True):
            pts.sort()
            cost = np.asarray([p[0] for p in pts])
            ax_b.plot(cost, _positive([p[1] for p in pts]), "o-", ms=4, color=color, label=model)
            ax_s.plot(cost, _positive([p[2] for p in pts]), "o-", ms=4, color=color, label=model)
            for c, b, _, settings in pts:
                if math.isfinite(b) and b > 0:
                    ax_b.annotate(settings, (c, b), fontsize=6, xytext=(2, 2), textcoords="offset points")
        _finish(ax_b, True, True, "estimator cost", "|bias| (nats)")
        _finish(ax_s, True, True, "estimator cost", "std (nats)", legend=False)
        plots.append(_save(fig, plot_dir, "logdet", dataset, f"log-det estimators on {dataset}"))
    return plots


def _memory_depth(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    for dataset, by_model in sorted(_curve_rows(store, ("depth", "bytes_saving", "bytes_ordinary")).items()):
        fig, (ax,) = _figure(1, ncols=1, size=3.8)
        for color, (model, rows) in zip(_colors(len(by_model)), sorted(by_model.items()), strict=True):
            row = rows[0]
            depth = np.asarray(row.extra["depth"], dtype=np.float64)
            mib = 2.0**20
            ax.plot(depth, _positive(row.extra["bytes_saving"]) / mib, "o-", color=color,
                    label=f"{model} memory-saving")
            ax.plot(depth, _positive(row.extra["bytes_ordinary"]) / mib, "s--", color=color,
                    label=f"{model} ordinary")
        _finish(ax, False, False, "depth (blocks)", "training memory (MiB)")
        ax.set_ylim(bottom=0)
        plots.append(_save(fig, plot_dir, "memory_depth", dataset, f"memory vs depth on {dataset}"))
    return plots


# ----------------------------------------------------------------------------------------------- learning curves


def curve_of(row: Row) -> dict[str, Any] | None:
    """The learning curve of an ``eval_time`` row: ``extra["curve"]`` with equal-length lists ``seconds`` and
    ``value`` and a ``metric`` name, or None."""
    curve = row.extra.get("curve")
    if row.metric != "eval_time" or not isinstance(curve, dict):
        return None
    seconds, value = curve.get("seconds"), curve.get("value")
    if not (isinstance(seconds, list) and isinstance(value, list) and seconds and len(seconds) == len(value)):
        return None
    return curve if isinstance(curve.get("metric"), str) else None


def _learning_curves(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    plots = []
    # {(dataset, metric): (task, {model: [curve per seed]})}
    found: dict[tuple[str, str], tuple[str, dict[str, list[dict[str, Any]]]]] = {}
    for row in sorted(store.rows, key=lambda r: (r.dataset, r.model, r.seed)):
        curve = curve_of(row)
        if curve is None or row.variant:
            continue
        task, by_model = found.setdefault((row.dataset, str(curve["metric"])), (row.task, {}))
        by_model.setdefault(row.model, []).append(curve)
    for (dataset, metric), (task, by_model) in sorted(found.items()):
        fig, (ax,) = _figure(1, ncols=1, size=4.2)
        values = [v for curves in by_model.values() for c in curves for v in c["value"]
                  if isinstance(v, int | float) and math.isfinite(v)]
        logy = bool(values) and min(values) > 0 and max(values) / min(values) > 10
        for color, (model, curves) in zip(_colors(len(by_model)), sorted(by_model.items()), strict=True):
            for i, curve in enumerate(curves):
                y = np.asarray([np.nan if v is None else v for v in curve["value"]], dtype=np.float64)
                ax.plot(_positive(curve["seconds"]), y, "o-", ms=2.5, lw=1.0, color=color,
                        label=model if i == 0 else "_")
        _finish(ax, True, logy, "training seconds (evaluation excluded)", metric)
        xs = [v for curves in by_model.values() for c in curves for v in _positive(c["seconds"]) if np.isfinite(v)]
        if xs and max(xs) / min(xs) > 1e3:  # many decades: one labelled tick per decade
            from matplotlib.ticker import LogLocator

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0,)))
        ax.legend(fontsize=6, ncols=2 if len(by_model) > 6 else 1)
        plots.append(_save(fig, plot_dir, "learning_curves", dataset, f"{metric} vs training time on {dataset}",
                           part=metric, task=task))
    return plots


def _checkpoints(store: Store, plot_dir: Path, skipped: list[Skipped]) -> list[Plot]:
    """One figure per (task, data set, metric) of rows measured at training checkpoints (``settings["step"]``):
    the metric against the step, one panel per input, one line per model and variant (seeds drawn separately);
    log-y where the values span more than a decade."""
    # {(task, dataset, metric): {input: {label: {seed: [(step, value)]}}}}
    found: dict[tuple[str, str, str], dict[str, dict[str, dict[int, list[tuple[int, float]]]]]] = {}
    for row in store.rows:
        step = row.settings.get("step")
        if not isinstance(step, int) or row.value is None or not math.isfinite(row.value):
            continue
        label = row.model + (f" +{row.variant}" if row.variant else "")
        per_input = found.setdefault((row.task, row.dataset, row.metric), {})
        per_input.setdefault(row.input or "-", {}).setdefault(label, {}).setdefault(row.seed, []).append(
            (step, float(row.value)))
    plots = []
    for (task, dataset, metric), per_input in sorted(found.items()):
        inputs = sorted(per_input)
        fig, axes = _figure(len(inputs), ncols=min(4, len(inputs)))
        labels = sorted({label for series in per_input.values() for label in series})
        colors = dict(zip(labels, _colors(len(labels)), strict=True))
        for ax, name in zip(axes, inputs, strict=True):
            values = [v for series in per_input[name].values() for pts in series.values() for _, v in pts]
            logy = min(values) > 0 and max(values) / min(values) > 10
            for label, by_seed in sorted(per_input[name].items()):
                for i, (_, pts) in enumerate(sorted(by_seed.items())):
                    steps, vals = zip(*sorted(pts), strict=True)
                    ax.plot(steps, vals, "o-", ms=3, lw=1.0, color=colors[label], label=label if i == 0 else "_")
            _finish(ax, False, logy, "training step", metric, legend=False)
            if logy and max(values) / min(values) > 1e3:  # many decades: one labelled tick per decade
                from matplotlib.ticker import LogLocator

                ax.yaxis.set_major_locator(LogLocator(subs=(1.0,)))
            ax.set_title(f"input: {name}", fontsize=8)
        axes[0].legend(fontsize=6)
        plots.append(_save(fig, plot_dir, "checkpoints", dataset, f"{metric} over training on {dataset} ({task})",
                           part=f"{task}__{metric}", task=task))
    return plots
