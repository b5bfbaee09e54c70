"""The registry: built-in names, near-match errors, users' classes by ``module:Class`` and by entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models import registry
from models.testing import CHECKS

USER_MODULE = '''
"""A user's own flow, outside this repo: an elementwise affine map z = exp(s) * x + b."""
import torch
from torch import nn
from models.base import Capabilities, InvertibleModel


class MyFlow(InvertibleModel):
    family = "elementwise"
    backend = "user"
    capabilities = Capabilities(inputs=("vector", "image"))

    def __init__(self, shape, num_classes=None, init_scale=0.3):
        super().__init__(shape, num_classes, init_scale=init_scale)
        self.log_scale = nn.Parameter(torch.full(tuple(shape), float(init_scale)))
        self.shift = nn.Parameter(torch.zeros(tuple(shape)))

    def forward(self, x):
        z = x * self.log_scale.exp() + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z):
        return (z - self.shift) * torch.exp(-self.log_scale)
'''


def test_builtin_names_are_kebab_case_and_include_the_library_adapters() -> None:
    names = registry.names()
    for expected in ["nice-nflows", "realnvp-nflows", "maf-nflows", "nice-freia", "realnvp-freia",
                     "glow-freia", "iresnet-freia"]:
        assert expected in names
    assert names == sorted(names)


def test_unknown_name_lists_near_matches() -> None:
    with pytest.raises(registry.UnknownModel, match="did you mean realnvp-nflows"):
        registry.get("realnvp-nflow")


def test_bad_module_class_strings_are_clear() -> None:
    with pytest.raises(registry.UnknownModel, match="cannot import module"):
        registry.get("no_such_module_xyz:Flow")
    with pytest.raises(registry.UnknownModel, match="not a subclass"):
        registry.get("collections:OrderedDict")


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_user_flows.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_class_loads_by_module_class_and_validates(user_module: Path) -> None:
    from models.testing import validate

    cls = registry.get("my_user_flows:MyFlow")
    assert cls.__name__ == "MyFlow"
    results = validate("my_user_flows:MyFlow")
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_invbench_validate_cli_on_a_user_module(user_module: Path) -> None:
    env = {"PYTHONPATH": str(user_module), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "validate", "my_user_flows:MyFlow", "--shape", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "roundtrip" in proc.stdout and f"{len(CHECKS)}/{len(CHECKS)} checks passed" in proc.stdout


def test_invbench_validate_exits_nonzero_on_failure(tmp_path: Path) -> None:
    bad = USER_MODULE.replace("return (z - self.shift) * torch.exp(-self.log_scale)",
                              "return (z - self.shift) * torch.exp(-self.log_scale) + 0.1")
    (tmp_path / "my_bad_flows.py").write_text(bad)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "validate", "my_bad_flows:MyFlow", "--shape", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "roundtrip" in proc.stdout and "FAIL" in proc.stdout


def test_entry_point_group_registers_third_party_models(user_module: Path) -> None:
    dist = user_module / "my_user_flows-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-user-flows\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""
        [{registry.ENTRY_POINT_GROUP}]
        elementwise-user = my_user_flows:MyFlow
        """))
    assert "elementwise-user" in registry.names()
    assert registry.get("elementwise-user").__name__ == "MyFlow"


def test_register_rejects_non_kebab_names() -> None:
    with pytest.raises(ValueError, match="kebab-case"):
        registry.register("MyFlow", "x:y")
