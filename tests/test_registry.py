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


# ----------------------------------------------------------------------------------------------- the generic registry
def _dist(folder: Path, name: str, group: str, lines: str) -> None:
    """A fake installed distribution in ``folder`` (on sys.path) declaring entry points."""
    dist = folder / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


def _small() -> registry.Registry[type]:
    return registry.Registry("widget", "invertible_bench.test_widgets",
                             {"ordered-dict": "collections:OrderedDict", "broken-one": "no_such_module_xyz:W"},
                             check=lambda o: isinstance(o, type), want="a class", sort=False)


def test_registry_entries_are_lazy_and_errors_say_what_failed() -> None:
    r = _small()
    assert r.names() == ["ordered-dict", "broken-one"]  # listing imports nothing, a broken entry included
    import collections

    assert r.get("ordered-dict") is collections.OrderedDict and r.get("collections:Counter") is collections.Counter
    with pytest.raises(registry.UnknownName, match="cannot import module 'no_such_module_xyz'"):
        r.get("broken-one")
    with pytest.raises(registry.UnknownName, match="has no attribute 'Nope'"):
        r.get("collections:Nope")
    with pytest.raises(registry.UnknownName, match="'collections:namedtuple' is not a class"):
        r.get("collections:namedtuple")
    with pytest.raises(registry.UnknownName, match=r"unknown widget 'ordered-dic'; did you mean ordered-dict\?"):
        r.get("ordered-dic")
    with pytest.raises(KeyError, match="known: ordered-dict, broken-one"):
        r.get("zzz")


def test_register_adds_and_a_builtin_name_cannot_be_shadowed() -> None:
    r = _small()
    r.register("my-dict", "collections:UserDict")
    r.register("my-list", list)
    assert r.names() == ["ordered-dict", "broken-one", "my-dict", "my-list"]
    assert r.get("my-list") is list and r.entries()["my-list"] == "builtins:list"
    with pytest.raises(registry.NameClash) as info:
        r.register("ordered-dict", "collections:UserDict")
    assert "'collections:UserDict'" in str(info.value) and "'collections:OrderedDict'" in str(info.value)
    with pytest.raises(TypeError, match="is not a class"):
        r.register("not-a-class", 3)
    r.unregister("my-dict")
    assert "my-dict" not in r


def test_an_entry_point_that_shadows_a_builtin_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _dist(tmp_path, "shadowing-models", registry.ENTRY_POINT_GROUP, "nice-nflows = my_flows:Nice")
    with pytest.raises(registry.NameClash) as info:
        registry.names()
    msg = str(info.value)
    assert "'my_flows:Nice'" in msg and "'models.nflows_flows:NiceNflows'" in msg and "shadowing-models" in msg


def test_two_plugins_giving_one_name_two_targets_name_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _dist(tmp_path, "first-pkg", registry.ENTRY_POINT_GROUP, "twin-flow = first_pkg:Flow")
    _dist(tmp_path, "second-pkg", registry.ENTRY_POINT_GROUP, "twin-flow = second_pkg:Flow")
    with pytest.raises(registry.NameClash, match=r"first_pkg:Flow.*second_pkg:Flow|second_pkg:Flow.*first_pkg:Flow"):
        registry.get("twin-flow")


def test_register_cannot_shadow_a_builtin_model() -> None:
    with pytest.raises(registry.NameClash, match=r"models\.nflows_flows:RealNVPNflows"):
        registry.register("realnvp-nflows", "my_pkg:RealNVP")
    assert registry.get("realnvp-nflows").__name__ == "RealNVPNflows"


# ----------------------------------------------------------------------------------------------- tasks and data sets
TASK_MODULE = '''
from bench.tasks.base import Task


class MyTask(Task):
    name = "my_task"

    def run(self, ctx):
        return []
'''

DATA_MODULE = '''
import torch
from bench.datasets.base import Dataset


def load_ring(seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    return Dataset(name="ring", kind="vector", train_x=torch.randn(size, 2, generator=g), test_x=torch.randn(size, 2))
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A task and a data-set module on sys.path, declared by a fake distribution's entry points."""
    (tmp_path / "my_bench_plugins.py").write_text(TASK_MODULE + DATA_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_task_entry_points_and_module_class_strings(plugins: Path) -> None:
    from bench.tasks.registry import ENTRY_POINT_GROUP, get_task, task_names

    builtin = task_names()
    _dist(plugins, "my-bench-plugins", ENTRY_POINT_GROUP, "my_task = my_bench_plugins:MyTask")
    assert task_names() == [*builtin, "my_task"]  # built-ins keep their run order, plug-ins come after
    assert get_task("my_task").__name__ == "MyTask"
    assert get_task("my_bench_plugins:MyTask") is get_task("my_task")
    with pytest.raises(KeyError, match=r"not a subclass of bench\.tasks\.base\.Task"):
        get_task("my_bench_plugins:load_ring")
    with pytest.raises(KeyError, match=r"did you mean stability\?"):
        get_task("stabilty")


def test_a_task_plugin_named_like_a_builtin_names_both(plugins: Path) -> None:
    from bench.tasks.registry import ENTRY_POINT_GROUP, task_names

    _dist(plugins, "my-bench-plugins", ENTRY_POINT_GROUP, "stability = my_bench_plugins:MyTask")
    with pytest.raises(registry.NameClash) as info:
        task_names()
    assert "my_bench_plugins:MyTask" in str(info.value) and "bench.tasks.stability:StabilityTask" in str(info.value)


def test_dataset_entry_points_load_and_shadowing_names_both(plugins: Path) -> None:
    from bench import datasets

    _dist(plugins, "my-bench-plugins", datasets.ENTRY_POINT_GROUP, "ring-plugin = my_bench_plugins:load_ring")
    assert "ring-plugin" in datasets.names()
    ds = datasets.load("ring-plugin", seed=3, size=5)
    assert ds.name == "ring" and ds.train_x.shape == (5, 2)
    assert datasets.info("ring-plugin", {"size": 5}) == ds.info
    with pytest.raises(ValueError, match=r"unknown option 'sise'; did you mean size"):
        datasets.load("ring-plugin", sise=5)
    _dist(plugins, "other-plugins", datasets.ENTRY_POINT_GROUP, "moons = my_bench_plugins:load_ring")
    with pytest.raises(registry.NameClash) as info:
        datasets.load("moons")
    assert "my_bench_plugins:load_ring" in str(info.value) and "bench.datasets.toy2d:moons" in str(info.value)


def test_one_importer_for_models_tasks_and_data_sets() -> None:
    import bench.suite

    assert bench.suite.import_target is registry.import_target and bench.suite.is_target is registry.is_target
    assert registry.is_target("pkg.mod:Cls.Inner") and not registry.is_target("data/x.npz")
    assert not registry.is_target("/abs/x.npz") and not registry.is_target("moons")
    with pytest.raises(ValueError, match="not of the form"):
        registry.import_target("collections")
