"""Suite files: TOML that says which models, data sets, tasks, seeds and budgets a run covers.

A suite is validated completely before any compute; every problem is one line naming the file and the field,
with near matches for unknown names, e.g.
``suite quick.toml: tasks[2]: unknown task 'stabilty'; did you mean stability?``.

Format (every key optional except ``datasets``)::

    name = "quick"                      # default: the file's stem
    description = "..."
    models = ["all"]                    # list of names; "all" = every registered model
    # [hparams."iresnet-native"]        # hyper-parameter overrides per model: the constructor's keyword arguments
    # depth = 4                         #   (checked against its signature when the suite loads)
    datasets = ["moons", "digits"]      # list of names; or a table name -> loader options:
    # [datasets.digits]
    # n_train = 1000                    #   loader options (checked against the loader's typed options)
    # budget = { steps = 800 }          #   per-data-set budget override
    # models."iresnet-native" = { depth = 2 }   # per-data-set hyper-parameter override (wins over [hparams])
    # tasks = ["likelihood", "stability"]      # run only these of the suite's tasks on this data set
    # targets = { kl_gap = 0.2 }        #   metric -> threshold: training tasks report time_to_target for each
    #                                   #   (a metric that one of the tasks run on this data set emits)
    tasks = ["likelihood", "stability"] # list; or a table name -> task options:
    # [tasks.stability]
    # regularizer = { eps = 0.01, weight = 1.0, every = 1 }
    seeds = 2                           # a count (seeds 0..n-1) or an explicit list [0, 7]
    timeout = 120                       # seconds per cell
    device = "auto"                     # auto | cpu | cuda
    match_params = 20000                # scale each model's width to within 10 % of this many trainable parameters
                                        #   (bench.run.match_params; per model and data set, before any compute)
    [budget]                            # bench.tasks.base.Budget: steps, seconds, batch_size, lr
    steps = 400
    [slurm]                             # the submitit executor (see bench.run.executors): cluster, partition, ...
    [[expect]]                          # an expected outcome (a paper's claim), judged by the report's findings
    claim = "affine coupling explodes on noise"   # table (bench.report.findings); one [[expect]] per claim
    source = "Behrmann et al., AISTATS 2021, Fig. 3"
    model = "glow-native"               # each of model, dataset, task: one of the suite's
    dataset = "digits"
    task = "exploding"
    metric = "nonfinite_frac"           # a metric the task declares (its metric_specs)
    input = "uniform"                   # optional: the rows' input and variant ("" by default)
    variant = ""
    when = "any"                        # over the checkpoint steps: any | all | final (default: the largest step)
    op = ">"                            # > | >= | < | <= | ==
    value = 0                           # a finite number

Extension mechanism: a task may be given as ``"package.module:TaskClass"`` (a :class:`bench.tasks.base.Task`
subclass), a data set as ``"package.module:function"`` (called as ``function(seed=..., **options)`` and returning
a :class:`bench.datasets.base.Dataset`) and a model as ``"package.module:ModelClass"``, so users run their own
tasks, data and models without editing this repository. The module must be importable (on ``PYTHONPATH``).
"""

from __future__ import annotations

import difflib
import importlib.resources
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.expectations import EXPECT_FIELDS, EXPECT_REQUIRED, OPS, WHENS, Expectation
from bench.tasks.base import Budget
from models.registry import import_target, is_target

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
TOP_LEVEL: tuple[str, ...] = (
    "name", "description", "models", "hparams", "datasets", "tasks", "seeds", "budget", "timeout", "device", "slurm",
    "match_params", "expect",
)
BUDGET_FIELDS: tuple[str, ...] = ("steps", "seconds", "batch_size", "lr", "schedule")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
DATASET_RESERVED: tuple[str, ...] = ("budget", "models", "tasks", "targets")
#: keys of the [slurm] table (see bench.run.executors.SubmititExecutor)
SLURM_FIELDS: tuple[str, ...] = (
    "cluster", "partition", "account", "qos", "constraint", "gpus_per_node", "cpus_per_task", "mem_gb",
    "timeout_min", "array_parallelism", "additional_parameters", "poll_seconds",
)


class SuiteError(ValueError):
    """A suite that cannot run; the message is one line naming the file and the field."""


@dataclass
class DatasetEntry:
    """One data set of a suite: loader options, budget overrides, per-model hyper-parameter overrides, the
    subset of the suite's tasks to run on it (None: all) and its targets (metric name -> threshold, for
    ``time_to_target``; each a metric that a task run on the data set emits)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[str] | None = None
    targets: dict[str, float] = field(default_factory=dict)


@dataclass
class Suite:
    """A parsed, validated suite. ``models`` is expanded ("all" replaced by the registered names)."""

    name: str
    description: str
    models: list[str]
    datasets: list[DatasetEntry]
    tasks: list[str]
    seeds: list[int]
    budget: Budget = field(default_factory=Budget)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where each model's hyper-parameters were written: "hparams" ([hparams."name"]) or "models" ([models."name"])
    hparams_tables: dict[str, str] = field(default_factory=dict)
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout: float | None = None
    device: str = "auto"
    slurm: dict[str, Any] = field(default_factory=dict)
    #: scale every model's width hyper-parameter to within 10 % of this many trainable parameters (None: off)
    match_params: int | None = None
    source: str = "<suite>"
    #: expected outcomes ([[expect]]), judged by the report's findings table
    expectations: tuple[Expectation, ...] = ()

    def dataset(self, name: str) -> DatasetEntry:
        for entry in self.datasets:
            if entry.name == name:
                return entry
        raise KeyError(f"data set {name!r} is not in suite {self.name!r}")

    def budget_for(self, dataset: str) -> Budget:
        """The suite budget with the data set's overrides applied."""
        return replace(self.budget, **self.dataset(dataset).budget)

    def hparams_for(self, model: str, dataset: str) -> dict[str, Any]:
        """Hyper-parameter overrides for ``model`` on ``dataset`` (data-set level wins over model level)."""
        return {**self.model_options.get(model, {}), **self.dataset(dataset).models.get(model, {})}

    def options_for(self, task: str) -> dict[str, Any]:
        return dict(self.task_options.get(task, {}))

    def tasks_on(self, dataset: str) -> list[str]:
        """The suite's tasks that run on ``dataset`` (its ``tasks`` subset, else all)."""
        only = self.dataset(dataset).tasks
        return [t for t in self.tasks if only is None or t in only]

    def ordered_tasks(self) -> list[str]:
        """Tasks in run order: training tasks first (so the others reuse their checkpoints), then the rest."""
        from bench.tasks.registry import get_task

        train = [t for t in self.tasks if get_task(t).trains_model]
        return train + [t for t in self.tasks if t not in train]


# ----------------------------------------------------------------------------------------------- parsing
class _Ctx:
    """Builds one-line error messages: ``<where>: <field>: <problem>``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, problem: str) -> SuiteError:
        text = f"{self.where}: {path}: {problem}" if path else f"{self.where}: {problem}"
        return SuiteError(" ".join(text.split("\n")))


def _near(name: str, known: Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else ""


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _expect(c: _Ctx, path: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise c.fail(path, f"expected {what}, got {_type_name(value)} {value!r}")
    return value


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _names_and_tables(c: _Ctx, path: str, value: Any, *, allow_inline: bool = False
                      ) -> list[tuple[str, str, dict[str, Any]]]:
    """A list of names (optionally inline tables with ``name``) or a table name -> options table.

    Returns ``(field path, name, options)`` triples in file order.
    """
    out: list[tuple[str, str, dict[str, Any]]] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            p = f"{path}[{i}]"
            if allow_inline and isinstance(item, dict):
                if "name" not in item:
                    raise c.fail(p, "an inline table needs a 'name'")
                name = _expect(c, f"{p}.name", item["name"], (str,), "a string")
                out.append((p, name, {k: v for k, v in item.items() if k != "name"}))
            else:
                out.append((p, _expect(c, p, item, (str,), "a string"), {}))
    elif isinstance(value, dict):
        for name, opts in value.items():
            p = f"{path}.{_key(name)}"
            out.append((p, name, dict(_expect(c, p, opts, (dict,), "a table of options"))))
    else:
        raise c.fail(path, f"expected an array of names or a table, got {_type_name(value)} {value!r}")
    seen: set[str] = set()
    for p, name, _ in out:
        if not name:
            raise c.fail(p, "empty name")
        if name in seen:
            raise c.fail(p, f"{name!r} is listed twice")
        seen.add(name)
    return out


def _budget(c: _Ctx, path: str, table: Any) -> dict[str, Any]:
    table = _expect(c, path, table, (dict,), "a table")
    out: dict[str, Any] = {}
    for k, v in table.items():
        p = f"{path}.{k}"
        if k not in BUDGET_FIELDS:
            raise c.fail(p, f"unknown budget field {k!r}{_near(k, BUDGET_FIELDS)} (fields: {', '.join(BUDGET_FIELDS)})")
        if k == "schedule":
            if v not in SCHEDULES:
                raise c.fail(p, f"unknown schedule {v!r}{_near(str(v), SCHEDULES)} (known: {', '.join(SCHEDULES)})")
            out[k] = v
            continue
        if k == "steps":  # 0: measure the models as initialised (data_init only)
            _expect(c, p, v, (int,), "a non-negative integer")
            if v < 0:
                raise c.fail(p, f"must be >= 0 (0: the models as initialised), got {v!r}")
        elif k == "batch_size":
            _expect(c, p, v, (int,), "a positive integer")
        else:
            _expect(c, p, v, (int, float), "a positive number")
        if k != "steps" and not (v > 0 and math.isfinite(v)):
            raise c.fail(p, f"must be positive, got {v!r}")
        out[k] = float(v) if k in ("lr", "seconds") else int(v)
    return out


def _targets(c: _Ctx, path: str, table: Any) -> dict[str, float]:
    """A table metric name -> finite threshold (the names are checked by :func:`validate_names`)."""
    table = _expect(c, path, table, (dict,), "a table metric -> threshold, e.g. { kl_gap = 0.2 }")
    out: dict[str, float] = {}
    for k, v in table.items():
        _expect(c, f"{path}.{_key(k)}", v, (int, float), "a number")
        if not math.isfinite(v):
            raise c.fail(f"{path}.{_key(k)}", f"must be finite, got {v!r}")
        out[k] = float(v)
    return out


def _check_targets(c: _Ctx, suite: Suite, entry: DatasetEntry) -> None:
    """Each target names a metric that one of the tasks run on the data set reports ``time_to_target`` for
    (``Task.target_metrics``)."""
    from bench.tasks.registry import get_task

    judged = sorted({m for t in suite.tasks_on(entry.name) for m in get_task(t).target_metrics})
    for k in entry.targets:
        path = f"datasets.{_key(entry.name)}.targets.{_key(k)}"
        if k not in judged:
            known = f"(metrics with a time_to_target: {', '.join(judged)})" if judged else \
                "(no task run on it reports time_to_target)"
            raise c.fail(path, f"{k!r} is not a metric with a time_to_target in the tasks run on {entry.name}"
                               f"{_near(k, judged)} {known}")


def _expectations(c: _Ctx, value: Any) -> tuple[Expectation, ...]:
    """The ``[[expect]]`` array of tables: keys, types, ``op``, ``when`` and a finite ``value`` (the names are
    checked by :func:`_check_expectations`)."""
    items = _expect(c, "expect", value, (list,), "an array of tables ([[expect]])")
    out: list[Expectation] = []
    for i, item in enumerate(items):
        p = f"expect[{i}]"
        item = _expect(c, p, item, (dict,), "a table")
        for k in item:
            if k not in EXPECT_FIELDS:
                raise c.fail(f"{p}.{_key(k)}", f"unknown field{_near(k, EXPECT_FIELDS)} "
                                               f"(fields: {', '.join(EXPECT_FIELDS)})")
        for k in EXPECT_REQUIRED:
            if k not in item:
                raise c.fail(f"{p}.{k}", f"missing (required: {', '.join(EXPECT_REQUIRED)})")
        fields: dict[str, Any] = {}
        for k in EXPECT_FIELDS:
            if k in item and k != "value":
                fields[k] = _expect(c, f"{p}.{k}", item[k], (str,), "a string")
        for k in ("claim", "model", "dataset", "task", "metric"):
            if not fields[k].strip():
                raise c.fail(f"{p}.{k}", "empty")
        if fields["op"] not in OPS:
            raise c.fail(f"{p}.op", f"unknown comparison {fields['op']!r} (one of: {' '.join(OPS)})")
        when = fields.setdefault("when", "final")
        if when not in WHENS:
            raise c.fail(f"{p}.when", f"unknown {when!r}{_near(when, WHENS)} (one of: {', '.join(WHENS)})")
        v = _expect(c, f"{p}.value", item["value"], (int, float), "a number")
        if not math.isfinite(v):
            raise c.fail(f"{p}.value", f"must be finite, got {v!r}")
        out.append(Expectation(**fields, value=float(v)))
    return tuple(out)


def _check_expectations(c: _Ctx, suite: Suite, models: Sequence[str]) -> None:
    """Each expectation names one of the suite's models (``models``: expanded), data sets and tasks, a task run on
    that data set, and a metric that the task declares (``metric_specs``; not checked for a task class that cannot
    be imported)."""
    from bench.tasks.registry import get_task

    datasets = [d.name for d in suite.datasets]
    for i, e in enumerate(suite.expectations):
        p = f"expect[{i}]"
        for key, name, known in (("model", e.model, models), ("dataset", e.dataset, datasets),
                                 ("task", e.task, suite.tasks)):
            if name not in known:
                raise c.fail(f"{p}.{key}", f"{name!r} is not one of the suite's {key}s{_near(name, known)}")
        if e.task not in suite.tasks_on(e.dataset):
            raise c.fail(f"{p}.task", f"{e.task!r} does not run on {e.dataset} (its tasks: "
                                      f"{', '.join(suite.tasks_on(e.dataset))})")
        try:
            specs = get_task(e.task).metric_specs
        except Exception:
            continue
        metrics = [s.name for s in specs]
        if e.metric not in metrics:
            raise c.fail(f"{p}.metric", f"{e.metric!r} is not a metric of task {e.task}{_near(e.metric, metrics)} "
                                        f"(its metrics: {', '.join(metrics) or 'none declared'})")


def _seeds(c: _Ctx, value: Any) -> list[int]:
    if isinstance(value, list):
        if not value:
            raise c.fail("seeds", "empty list")
        seeds = [int(_expect(c, f"seeds[{i}]", s, (int,), "a non-negative integer")) for i, s in enumerate(value)]
        for i, s in enumerate(seeds):
            if s < 0:
                raise c.fail(f"seeds[{i}]", f"must be non-negative, got {s}")
        if len(set(seeds)) != len(seeds):
            raise c.fail("seeds", f"duplicate seeds in {seeds}")
        return seeds
    n = _expect(c, "seeds", value, (int,), "a seed count or an array of seeds")
    if n < 1:
        raise c.fail("seeds", f"need at least one seed, got {n}")
    return list(range(n))


def parse_suite(data: dict[str, Any], source: str = "<suite>") -> Suite:
    """Check structure and types of a decoded TOML document; names are checked by :func:`validate_names`."""
    c = _Ctx(f"suite {source}")
    for k in data:
        if k not in TOP_LEVEL:
            raise c.fail(k, f"unknown field{_near(k, TOP_LEVEL)} (fields: {', '.join(TOP_LEVEL)})")
    stem = Path(source).stem if source != "<suite>" else "suite"
    name = _expect(c, "name", data.get("name", stem), (str,), "a string")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise c.fail("name", f"use letters, digits, '-', '_' or '.', got {name!r}")
    description = _expect(c, "description", data.get("description", ""), (str,), "a string")

    models: list[str] = []
    model_options: dict[str, dict[str, Any]] = {}
    for p, m, opts in _names_and_tables(c, "models", data.get("models", ["all"])):
        if m == "all" and opts:
            raise c.fail(p, "'all' takes no hyper-parameters; give them per model")
        models.append(m)
        if opts:
            model_options[m] = opts
    hparams = _expect(c, "hparams", data.get("hparams", {}), (dict,), "a table model -> hyper-parameters")
    for m, hp in hparams.items():
        p = f"hparams.{_key(m)}"
        if m in model_options:
            raise c.fail(p, f"hyper-parameters of {m!r} are also given in [models.{_key(m)}]; keep one")
        if "all" not in models and m not in models:
            raise c.fail(p, f"{m!r} is not one of the suite's models{_near(m, models)}")
        model_options[m] = dict(_expect(c, p, hp, (dict,), "a table of hyper-parameters"))
    tables = {m: ("hparams" if m in hparams else "models") for m in model_options}

    if "datasets" not in data:
        raise c.fail("datasets", "missing (a list of data set names or a table of them)")
    datasets: list[DatasetEntry] = []
    for p, d, opts in _names_and_tables(c, "datasets", data["datasets"], allow_inline=True):
        overrides = _budget(c, f"{p}.budget", opts.pop("budget")) if "budget" in opts else {}
        per_model: dict[str, dict[str, Any]] = {}
        if "models" in opts:
            table = _expect(c, f"{p}.models", opts.pop("models"), (dict,), "a table model -> hyper-parameters")
            for m, hp in table.items():
                per_model[m] = dict(_expect(c, f"{p}.models.{_key(m)}", hp, (dict,), "a table of hyper-parameters"))
        only: list[str] | None = None
        if "tasks" in opts:
            only = list(_expect(c, f"{p}.tasks", opts.pop("tasks"), (list,), "a list of task names"))
        targets = _targets(c, f"{p}.targets", opts.pop("targets")) if "targets" in opts else {}
        datasets.append(DatasetEntry(d, opts, overrides, per_model, only, targets))
    if not datasets:
        raise c.fail("datasets", "empty")

    from bench.tasks.registry import default_task_names

    tasks: list[str] = []
    task_options: dict[str, dict[str, Any]] = {}
    for _p, t, opts in _names_and_tables(c, "tasks", data.get("tasks", default_task_names())):
        tasks.append(t)
        if opts:
            task_options[t] = opts
    if not tasks:
        raise c.fail("tasks", "empty")

    seeds = _seeds(c, data.get("seeds", 1))
    budget = Budget(**_budget(c, "budget", data.get("budget", {})))
    timeout = data.get("timeout")
    if timeout is not None:
        _expect(c, "timeout", timeout, (int, float), "seconds (a positive number)")
        if not timeout > 0:
            raise c.fail("timeout", f"must be positive, got {timeout!r}")
        timeout = float(timeout)
    device = _expect(c, "device", data.get("device", "auto"), (str,), "a string")
    if device not in DEVICES:
        raise c.fail("device", f"expected one of {', '.join(DEVICES)}, got {device!r}")
    match_params = data.get("match_params")
    if match_params is not None:
        _expect(c, "match_params", match_params, (int,), "a positive integer (trainable parameters per model)")
        if match_params < 1:
            raise c.fail("match_params", f"must be a positive number of parameters, got {match_params!r}")
    slurm = dict(_expect(c, "slurm", data.get("slurm", {}), (dict,), "a table"))
    for k in slurm:
        if k not in SLURM_FIELDS:
            raise c.fail(f"slurm.{k}", f"unknown field{_near(k, SLURM_FIELDS)} (fields: {', '.join(SLURM_FIELDS)})")
    expectations = _expectations(c, data["expect"]) if "expect" in data else ()
    return Suite(name=name, description=description, models=models, datasets=datasets, tasks=tasks, seeds=seeds,
                 budget=budget, model_options=model_options, hparams_tables=tables, task_options=task_options,
                 timeout=timeout, device=device, slurm=slurm, match_params=match_params, source=source,
                 expectations=expectations)


# ----------------------------------------------------------------------------------------------- names
@dataclass
class Known:
    """The names a suite may use; each is a callable so tests can inject their own lists."""

    models: Callable[[], Sequence[str]]
    tasks: Callable[[], Sequence[str]]
    datasets: Callable[[], Sequence[str]]

    @classmethod
    def default(cls) -> Known:
        def models() -> list[str]:
            from models.registry import names

            return names()

        def tasks() -> list[str]:
            from bench.tasks.registry import task_names

            return task_names()

        def datasets() -> list[str]:
            from bench.datasets import names

            return names()

        return cls(models, tasks, datasets)


def _check_target(c: _Ctx, path: str, target: str, kind: str, check: Callable[[Any], bool], want: str) -> None:
    try:
        obj = import_target(target)
    except ImportError as exc:
        raise c.fail(path, f"cannot import {kind} {target!r}: {exc}") from exc
    except AttributeError as exc:
        raise c.fail(path, f"{kind} {target!r} not found: {exc}") from exc
    if not check(obj):
        raise c.fail(path, f"{target!r} is not {want}")


def _check_named(c: _Ctx, path: str, name: str, known: Sequence[str], kind: str, base: type) -> None:
    """A registered ``kind`` name, or a ``module:Class`` target that is a subclass of ``base``."""
    if name in known:
        return
    if is_target(name):
        _check_target(c, path, name, kind, lambda o: isinstance(o, type) and issubclass(o, base),
                      f"a subclass of {base.__module__}.{base.__qualname__}")
        return
    raise c.fail(path, f"unknown {kind} {name!r}{_near(name, known)}")


def _check_model(c: _Ctx, path: str, name: str, known: Sequence[str]) -> None:
    from models.base import InvertibleModel

    _check_named(c, path, name, known, "model", InvertibleModel)


def _check_hparams(c: _Ctx, path: str, model: str, hparams: dict[str, Any]) -> None:
    """Hyper-parameter names against the model's constructor (skipped when it takes ``**kwargs``), and each value
    against the parameter's annotation where :func:`bench.options.checkable` knows it (``int``, ``float``, ``bool``,
    ``str``, ``Literal[...]``, ``X | None``, arrays; other annotations, and a constructor whose annotations do not
    resolve, are left to the runner's build check, :func:`bench.run.build_check.check_builds`).

    A model class that cannot be imported is not an error here: its cells get ``error`` rows at run time.
    """
    import inspect
    import typing

    from bench.options import OptionError, checkable, coerce
    from models.registry import get

    try:
        init = get(model).__init__
        params = inspect.signature(init).parameters
    except Exception:
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n not in ("self", "shape", "num_classes")]
    for k in hparams:
        if k not in names:
            raise c.fail(f"{path}.{k}", f"unknown hyper-parameter of {model}{_near(k, names)} "
                                        f"(takes: {', '.join(names) or 'none'})")
    try:
        hints = typing.get_type_hints(init)
    except Exception:
        return
    for k, value in hparams.items():
        if k in hints and checkable(hints[k]):
            try:
                coerce(hints[k], value, f"{path}.{k}")
            except OptionError as exc:
                raise c.fail("", str(exc)) from exc


def _check_task(c: _Ctx, path: str, name: str, known: Sequence[str]) -> None:
    from bench.tasks.base import Task

    _check_named(c, path, name, known, "task", Task)


def _check_task_options(c: _Ctx, task: str, options: dict[str, Any]) -> None:
    """The task's options against its ``Options`` dataclass (unknown keys, types, ranges)."""
    from bench.options import OptionError
    from bench.tasks.registry import get_task

    try:
        get_task(task).parse_options(options, f"tasks.{_key(task)}")
    except OptionError as exc:
        raise c.fail("", str(exc)) from exc


def _check_dataset(c: _Ctx, path: str, name: str, known: Callable[[], Sequence[str]],
                   options: dict[str, Any] | None = None) -> None:
    """A data set (a registered name, a ``"module:attr"`` plug-in or a path to a ``.npz`` / ``.npy`` file) and its
    loader options (``options``: the data set's table less ``budget``, ``models``, ``tasks``).

    No file is opened here: the runner reads every data set's metadata (``bench.datasets.info``) before any
    compute, and a missing one stops the run there.
    """
    from bench import datasets
    from bench.options import OptionError

    if is_target(name):
        _check_target(c, path, name, "data set", datasets.is_loader,
                      "a bench.datasets.DatasetSource or a function returning a Dataset")
    elif not datasets.is_path(name):
        names = known()
        if name not in names:
            raise c.fail(path, f"unknown data set {name!r}{_near(name, names)} "
                               "(or a path to a .npz/.npy file, or 'module:function')")
        if name not in datasets.registry:
            return  # a name a caller's Known lists without a source here: nothing to check its options against
    try:
        datasets.parse_options(name, options or {}, f"datasets.{_key(name)}")
    except OptionError as exc:
        raise c.fail("", str(exc)) from exc


def validate_names(suite: Suite, known: Known | None = None, where: str | None = None) -> Suite:
    """Check every model, task and data set name and expand ``"all"``; returns the expanded suite."""
    known = known or Known.default()
    c = _Ctx(where or f"suite {suite.source}")
    model_names = list(known.models())
    expanded: list[str] = []
    for i, m in enumerate(suite.models):
        path = f"models[{i}]"
        if m == "all":
            expanded.extend(model_names)
            continue
        _check_model(c, path, m, model_names)
        expanded.append(m)
    for m, hp in suite.model_options.items():
        table = suite.hparams_tables.get(m, "hparams")
        _check_model(c, f"{table}.{_key(m)}", m, model_names)
        _check_hparams(c, f"{table}.{_key(m)}", m, hp)
    models = list(dict.fromkeys(expanded))
    if not models:
        raise c.fail("models", "no models (the registry is empty?)")

    task_names_ = list(known.tasks())
    for i, t in enumerate(suite.tasks):
        _check_task(c, f"tasks[{i}]", t, task_names_)
        _check_task_options(c, t, suite.options_for(t))
    for i, d in enumerate(suite.datasets):
        _check_dataset(c, f"datasets[{i}]", d.name, known.datasets, d.options)
        for j, t in enumerate(d.tasks or []):
            if t not in suite.tasks:
                raise c.fail(f"datasets.{_key(d.name)}.tasks[{j}]",
                             f"{t!r} is not one of the suite's tasks{_near(t, suite.tasks)}")
        for m, hp in d.models.items():
            _check_model(c, f"datasets.{_key(d.name)}.models.{_key(m)}", m, model_names)
            _check_hparams(c, f"datasets.{_key(d.name)}.models.{_key(m)}", m, hp)
        _check_targets(c, suite, d)
    _check_expectations(c, suite, models)
    return replace(suite, models=models)


# ----------------------------------------------------------------------------------------------- loading
def bundled_suites() -> list[str]:
    """Names of the suites shipped in ``bench/suites/``."""
    folder = importlib.resources.files("bench.suites")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_suite_text(ref: str) -> tuple[str, str]:
    """``(text, source label)`` of a bundled suite name or a path to a TOML file."""
    path = Path(ref)
    looks_like_path = ref.endswith(".toml") or "/" in ref or "\\" in ref or path.exists()
    if looks_like_path:
        if not path.is_file():
            raise FileNotFoundError(f"suite file not found: {ref}")
        return path.read_text(encoding="utf-8"), path.name
    bundled = bundled_suites()
    if ref not in bundled:
        raise SuiteError(f"unknown suite {ref!r}{_near(ref, bundled)} (bundled: {', '.join(bundled)}; "
                         "or pass a path to a .toml file)")
    text = (importlib.resources.files("bench.suites") / f"{ref}.toml").read_text(encoding="utf-8")
    return text, f"{ref}.toml"


def load_suite(ref: str, known: Known | None = None, check_names: bool = True) -> Suite:
    """Read, parse and validate a suite (bundled name or path). Raises :class:`SuiteError` (one line)."""
    text, source = read_suite_text(ref)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite {source}: invalid TOML: {exc}") from exc
    suite = parse_suite(data, source)
    return validate_names(suite, known) if check_names else suite


def split_names(values: Sequence[str] | None, *, paths: bool = False) -> list[str] | None:
    """Command-line names given with spaces or commas (``--models a,b`` as ``--models a b``); with ``paths``, a
    value naming an existing file is kept whole (a path may hold a comma)."""
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        if paths and Path(value).expanduser().exists():
            out.append(value)
        else:
            out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def restrict(suite: Suite, *, models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
             datasets: Sequence[str] | None = None, seeds: int | None = None, timeout: float | None = None,
             device: str | None = None, known: Known | None = None) -> Suite:
    """Apply command-line choices. Names need not be in the suite (data sets not in it get default options); each
    list may be given with commas (:func:`split_names`)."""
    known = known or Known.default()
    models, tasks, datasets = split_names(models), split_names(tasks), split_names(datasets, paths=True)
    if models is not None:
        c = _Ctx("--models")
        known_models = list(known.models())
        chosen: list[str] = []
        for m in models:
            if m == "all":
                chosen.extend(known_models)
            else:
                _check_model(c, "", m, known_models)
                chosen.append(m)
        suite = replace(suite, models=list(dict.fromkeys(chosen)))
    if tasks is not None:
        c = _Ctx("--tasks")
        known_tasks = list(known.tasks())
        for t in tasks:
            _check_task(c, "", t, known_tasks)
        suite = replace(suite, tasks=list(dict.fromkeys(tasks)))
    if datasets is not None:
        c = _Ctx("--datasets")
        entries: list[DatasetEntry] = []
        by_name = {d.name: d for d in suite.datasets}
        for d in dict.fromkeys(datasets):
            if d not in by_name:
                _check_dataset(c, "", d, known.datasets)
            entries.append(by_name.get(d, DatasetEntry(d)))
        suite = replace(suite, datasets=entries)
    if seeds is not None:
        if seeds < 1:
            raise SuiteError(f"--seeds: need at least one seed, got {seeds}")
        suite = replace(suite, seeds=list(range(seeds)))
    if timeout is not None:
        if not timeout > 0:
            raise SuiteError(f"--timeout: must be positive, got {timeout}")
        suite = replace(suite, timeout=float(timeout))
    if device is not None:
        suite = replace(suite, device=device)
    return suite
