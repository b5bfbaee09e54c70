"""The model registry: kebab-case names ``<architecture>-<backend>`` mapped lazily to classes.

Entries are ``"module:Class"`` strings imported on first use, so listing names costs nothing and a
broken optional backend only fails when asked for. Three sources, in this order of precedence:

1. the built-in entries below;
2. the package entry-point group ``invertible_bench.models`` (a third-party package declares
   ``my-flow = "my_pkg.flows:MyFlow"`` in its ``pyproject.toml``);
3. any ``"module:Class"`` string passed where a name is expected (no registration needed).

Unknown names raise :class:`UnknownModel` listing the near matches (as lm-evaluation-harness does).
"""

from __future__ import annotations

import difflib
import importlib
import re
from importlib.metadata import entry_points

from models.base import InvertibleModel

ENTRY_POINT_GROUP = "invertible_bench.models"
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")

_BUILTIN: dict[str, str] = {
    "nice-nflows": "models.nflows_flows:NiceNflows",
    "realnvp-nflows": "models.nflows_flows:RealNVPNflows",
    "maf-nflows": "models.nflows_flows:MAFNflows",
    "nice-freia": "models.freia_flows:NiceFreia",
    "realnvp-freia": "models.freia_flows:RealNVPFreia",
    "glow-freia": "models.freia_flows:GlowFreia",
    "iresnet-freia": "models.freia_iresnet:IResNetFreia",
    "iresnet-native": "models.iresnet:IResNetNative",
    "resflow-native": "models.iresnet:ResFlowNative",
    "revnet-native": "models.revnet:RevNetNative",
    "nsf-nflows": "models.nflows_flows:NSFNflows",
}
_extra: dict[str, str] = {}


class UnknownModel(KeyError):
    """A model name that is neither registered nor a loadable ``module:Class`` string."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register(name: str, target: str | type[InvertibleModel]) -> None:
    """Add ``name`` -> ``"module:Class"`` (or a class) to the registry for this process."""
    if not _NAME.match(name):
        raise ValueError(f"model names are kebab-case '<architecture>-<backend>', got {name!r}")
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _extra[name] = target


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def entries() -> dict[str, str]:
    """Every registered name -> ``"module:Class"``, sorted by name."""
    merged = {**_entry_point_targets(), **_extra, **_BUILTIN}
    return dict(sorted(merged.items()))


def names() -> list[str]:
    """Every registered model name, sorted (two backends of one architecture sort together)."""
    return list(entries())


def load_target(target: str) -> type[InvertibleModel]:
    """Import ``"module:Class"`` (``Class`` may be dotted) and check it is an :class:`InvertibleModel`."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownModel(f"{target!r} is not of the form 'module:Class'")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModel(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownModel(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, InvertibleModel)):
        raise UnknownModel(f"{target!r} is not a subclass of models.base.InvertibleModel")
    return obj


def get(name: str) -> type[InvertibleModel]:
    """The class for a registered name or a ``"module:Class"`` string."""
    table = entries()
    if name in table:
        return load_target(table[name])
    if ":" in name:
        return load_target(name)
    near = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(table)}"
    raise UnknownModel(f"unknown model {name!r}{hint} (or pass 'module:Class')")


def create(name: str, shape: tuple[int, ...], num_classes: int | None = None, **hparams: object
           ) -> InvertibleModel:
    """Build a model by name: ``get(name)(shape=shape, num_classes=num_classes, **hparams)``."""
    cls = get(name)
    return cls(shape=shape, num_classes=num_classes, **hparams)
