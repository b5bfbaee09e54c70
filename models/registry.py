"""One registry for names -> lazily imported objects, and its instance for models.

A :class:`Registry` maps names to ``"module:attr"`` strings imported on first use, so listing names costs
nothing and a broken optional backend only fails when asked for. Three sources of names:

1. the built-in entries given when the registry is made;
2. the package entry-point group (a third-party package declares ``my-flow = "my_pkg.flows:MyFlow"`` under
   ``[project.entry-points."invertible_bench.models"]`` in its ``pyproject.toml``);
3. :meth:`Registry.register` calls in this process.

A plug-in name (2 or 3) equal to a built-in one, or two plug-ins giving one name different targets, is a
:class:`NameClash` naming both targets, never a silent override. Any ``"module:attr"`` string is also accepted
where a name is expected (no registration needed). Unknown names raise the registry's :class:`UnknownName`
subclass listing the near matches (as lm-evaluation-harness's registry does).

Three instances: :data:`models` here (group ``invertible_bench.models``), the tasks in
``bench.tasks.registry`` (``invertible_bench.tasks``) and the data sets in ``bench.datasets``
(``invertible_bench.datasets``); :func:`import_target` is the one importer of ``"module:attr"`` strings.
This module never imports ``bench``.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar, cast

from models.base import InvertibleModel

T = TypeVar("T")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class RegistryError(KeyError):
    """A registry lookup that cannot be answered; the message is one line."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class UnknownName(RegistryError):
    """A name that is neither registered nor a loadable ``"module:attr"`` string."""


class NameClash(RegistryError):
    """A plug-in name that shadows a built-in name, or two plug-ins that give one name different targets."""


class UnknownModel(UnknownName):
    """A model name that is neither registered nor a loadable ``"module:Class"`` string."""


def is_target(name: str) -> bool:
    """Whether ``name`` is a ``"module:attr"`` import string (not a registry name, not a file path)."""
    return bool(_TARGET.match(name))


def import_target(target: str) -> object:
    """Import ``"module:attr"`` (``attr`` may be dotted, e.g. ``"pkg.mod:Outer.Inner"``).

    Raises ValueError for a string of another form, ImportError when the module does not import and
    AttributeError when it lacks the attribute.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{target!r} is not of the form 'module:attr'")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _describe(target: object) -> str:
    """``"module:qualname"`` of a class or function; ``repr`` of anything else."""
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(target)


class Registry(Generic[T]):
    """Names -> lazily imported objects of one kind (models, tasks or data sets).

    Args:
        kind: what the entries are, for messages (``"model"``).
        group: the entry-point group of third-party entries (``"invertible_bench.models"``).
        builtins: name -> ``"module:attr"`` of the built-in entries.
        check: whether an imported object is acceptable; ``want`` says what is expected, for messages.
        name_rule: ``(regex, description)`` that :meth:`register` checks names against.
        error: the :class:`UnknownName` subclass raised for unknown names and unloadable targets.
        sort: list names sorted (True) or built-ins in table order, then plug-ins sorted (False).
        hint: what else may be passed, appended to "unknown name" messages.
    """

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str] | None = None, *,
                 check: Callable[[object], bool], want: str, name_rule: tuple[str, str] | None = None,
                 error: type[UnknownName] = UnknownName, sort: bool = True,
                 hint: str = "or pass 'module:attr'") -> None:
        self.kind, self.group, self.want, self.hint = kind, group, want, hint
        self._builtin: dict[str, str] = dict(builtins or {})
        self._registered: dict[str, object] = {}
        self._check = check
        self._rule = (re.compile(name_rule[0]), name_rule[1]) if name_rule else None
        self._error = error
        self._sort = sort

    # ------------------------------------------------------------------------------------------- sources
    def builtins(self) -> dict[str, str]:
        """The built-in entries, name -> ``"module:attr"``."""
        return dict(self._builtin)

    def _entry_points(self) -> dict[str, str]:
        found: dict[str, tuple[str, str]] = {}
        for ep in entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
            if ep.name in found and found[ep.name][0] != ep.value:
                other, other_dist = found[ep.name]
                raise NameClash(f"{self.kind} {ep.name!r}: entry point group {self.group} gives two targets, "
                                f"{other!r} (from {other_dist}) and {ep.value!r} (from {dist}); rename one")
            found[ep.name] = (ep.value, dist)
        for name, (value, dist) in found.items():
            if name in self._builtin:
                raise NameClash(f"{self.kind} {name!r}: the plug-in {value!r} (entry point group {self.group}, "
                                f"from {dist}) shadows the built-in {self._builtin[name]!r}; rename the plug-in")
        return {name: value for name, (value, _) in found.items()}

    def register(self, name: str, target: str | object) -> None:
        """Add ``name`` -> ``target`` for this process: a ``"module:attr"`` string (imported on first use) or the
        object itself (checked now). A name taken by a built-in or by an entry point is a :class:`NameClash`;
        registering a name again replaces the earlier registration. Worker processes start fresh: a name
        registered here is known there only if the worker's imports register it too (entry points are)."""
        if self._rule is not None and not self._rule[0].match(name):
            raise ValueError(f"{self.kind} names are {self._rule[1]}, got {name!r}")
        new = target if isinstance(target, str) else _describe(target)
        if name in self._builtin:
            raise NameClash(f"{self.kind} {name!r}: register({new!r}) would shadow the built-in "
                            f"{self._builtin[name]!r}; choose another name")
        plugged = self._entry_points()
        if name in plugged and plugged[name] != new:
            raise NameClash(f"{self.kind} {name!r}: register({new!r}) would shadow the plug-in {plugged[name]!r} "
                            f"(entry point group {self.group}); choose another name")
        if not isinstance(target, str) and not self._check(target):
            raise TypeError(f"{self.kind} {name!r}: {new} is not {self.want}")
        self._registered[name] = target

    def unregister(self, name: str) -> None:
        """Remove a :meth:`register` ed name (built-ins and entry points stay)."""
        self._registered.pop(name, None)

    # ------------------------------------------------------------------------------------------- lookup
    def entries(self) -> dict[str, str]:
        """Every name -> ``"module:attr"`` (objects registered directly: their import path or repr)."""
        plugins: dict[str, str] = self._entry_points()
        for name, target in self._registered.items():
            plugins[name] = target if isinstance(target, str) else _describe(target)
        if self._sort:
            return dict(sorted({**plugins, **self._builtin}.items()))
        return {**self._builtin, **{k: plugins[k] for k in sorted(plugins) if k not in self._builtin}}

    def names(self) -> list[str]:
        """Every registered name (see ``sort``)."""
        return list(self.entries())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.entries()

    def unknown(self, name: str) -> UnknownName:
        """The error for an unknown ``name``: near matches, or every known name when none is near."""
        table = self.names()
        near = difflib.get_close_matches(name, table, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(table)}"
        return self._error(f"unknown {self.kind} {name!r}{hint} ({self.hint})")

    def get(self, name: str) -> T:
        """The object for a registered name or a ``"module:attr"`` string."""
        if name in self._registered and not isinstance(self._registered[name], str):
            return cast(T, self._registered[name])
        table = self.entries()
        if name in table:
            return self.load(table[name])
        if is_target(name):
            return self.load(name)
        raise self.unknown(name)

    def load(self, target: str) -> T:
        """Import ``"module:attr"`` with :func:`import_target` and check it is what this registry holds."""
        module_name = target.partition(":")[0]
        try:
            obj = import_target(target)
        except ValueError as exc:
            raise self._error(str(exc)) from exc
        except ImportError as exc:
            raise self._error(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
        except AttributeError as exc:
            raise self._error(str(exc)) from exc
        if not self._check(obj):
            raise self._error(f"{target!r} is not {self.want}")
        return cast(T, obj)


ENTRY_POINT_GROUP = "invertible_bench.models"

_BUILTIN: dict[str, str] = {
    "nice-nflows": "models.nflows_flows:NiceNflows",
    "realnvp-nflows": "models.nflows_flows:RealNVPNflows",
    "maf-nflows": "models.nflows_flows:MAFNflows",
    "nice-freia": "models.freia_flows:NiceFreia",
    "realnvp-freia": "models.freia_flows:RealNVPFreia",
    "glow-freia": "models.freia_flows:GlowFreia",
    "glow-nflows": "models.nflows_glow:GlowNflows",
    "glow-native": "models.glow:GlowNative",
    "glow-additive-native": "models.glow:GlowAdditiveNative",
    "iresnet-freia": "models.freia_iresnet:IResNetFreia",
    "iresnet-native": "models.iresnet:IResNetNative",
    "resflow-native": "models.iresnet:ResFlowNative",
    "resflow-normflows": "models.normflows_flows:ResFlowNormflows",
    "glow-normflows": "models.normflows_flows:GlowNormflows",
    "revnet-native": "models.revnet:RevNetNative",
    "revnet-memcnn": "models.memcnn_revnet:RevNetMemcnn",
    "nsf-nflows": "models.nflows_flows:NSFNflows",
    "nsf-zuko": "models.zuko_flows:NSFZuko",
    "maf-zuko": "models.zuko_flows:MAFZuko",
    "realnvp-zuko": "models.zuko_flows:RealNVPZuko",
    "nice-zuko": "models.zuko_flows:NiceZuko",
    "gaussian-fit": "models.baselines:GaussianFit",
}


def _is_model_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, InvertibleModel)


#: the model registry: kebab-case names ``<architecture>-<backend>``, so two backends of one architecture sort
#: together
models: Registry[type[InvertibleModel]] = Registry(
    "model", ENTRY_POINT_GROUP, _BUILTIN, check=_is_model_class, want="a subclass of models.base.InvertibleModel",
    name_rule=(r"^[a-z0-9]+(-[a-z0-9]+)+$", "kebab-case '<architecture>-<backend>'"), error=UnknownModel,
    hint="or pass 'module:Class'")


def register(name: str, target: str | type[InvertibleModel]) -> None:
    """Add ``name`` -> ``"module:Class"`` (or a class) to the model registry for this process."""
    models.register(name, target)


def entries() -> dict[str, str]:
    """Every model name -> ``"module:Class"``, sorted by name."""
    return models.entries()


def names() -> list[str]:
    """Every registered model name, sorted (two backends of one architecture sort together)."""
    return models.names()


def load_target(target: str) -> type[InvertibleModel]:
    """Import ``"module:Class"`` and check it is an :class:`InvertibleModel` subclass."""
    return models.load(target)


def get(name: str) -> type[InvertibleModel]:
    """The class for a registered model name or a ``"module:Class"`` string."""
    return models.get(name)


def create(name: str, shape: tuple[int, ...], num_classes: int | None = None, **hparams: object
           ) -> InvertibleModel:
    """Build a model by name: ``get(name)(shape=shape, num_classes=num_classes, **hparams)``."""
    cls = get(name)
    return cls(shape=shape, num_classes=num_classes, **hparams)
