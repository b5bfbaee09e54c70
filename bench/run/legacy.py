"""Reading schema-1 result rows, whose metric identity was encoded in the metric name.

Schema 1 (stores written before the row gained ``input``, ``variant``, ``settings`` and ``direction``) wrote
``lip_forward@noise+reg`` for the forward Lipschitz constant on noise inputs of the regularised model and
``logdet_bias[terms=5,probes=1]`` for the estimator bias at 5 terms and 1 probe, and a boolean
``higher_is_better``. :func:`upgrade` turns such a JSON object into a schema-2 one; it is the only place that
reads a metric name apart, and only for old stores. The conversion:

- ``name[settings]@input+variant`` -> ``metric=name``, ``input``, ``variant``, ``settings`` (``k=v`` pairs;
  integers and floats as numbers; ``extra["settings"]`` wins when the row recorded it as a dict);
- ``higher_is_better`` True / False / None -> ``direction`` ``up`` / ``down`` / None, except the signed errors
  in :data:`ZERO_METRICS`, whose best is the one closest to zero (``zero``).
"""

from __future__ import annotations

import re
from typing import Any

#: schema-1 metrics judged by their distance from zero (schema 1 marked them higher_is_better=None)
ZERO_METRICS: frozenset[str] = frozenset({"logdet_bias"})


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A schema-2 row object from a schema-1 one (returns a new dict; ``d`` is not changed)."""
    out = dict(d)
    name = str(d.get("metric", ""))
    settings: dict[str, Any] = {}
    m = re.search(r"\[([^\]]*)\]", name)
    if m:
        for pair in filter(None, m.group(1).split(",")):
            k, _, v = pair.partition("=")
            if k and k != "default":
                settings[k] = _number(v)
        name = name[: m.start()] + name[m.end():]
    core, *tags = name.split("+")
    base, _, inp = core.partition("@")
    variants = []
    for tag in tags:
        tag_name, _, tag_input = tag.partition("@")
        inp = tag_input or inp
        variants.append(tag_name)
    extra = d.get("extra") or {}
    if isinstance(extra.get("settings"), dict):
        settings = dict(extra["settings"])
    out.update(metric=base, input=inp or str(extra.get("input", "") or ""), variant="+".join(variants),
               settings=settings, schema=2)
    hib = d.get("higher_is_better")
    direction = ("up" if hib else "down") if isinstance(hib, bool) else None
    out["direction"] = "zero" if base in ZERO_METRICS else direction
    out.pop("higher_is_better", None)
    return out
