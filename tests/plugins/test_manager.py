"""Plugin registration: validation, global vs per-evaluation plugins, entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

from daglite import evaluate, task
from daglite.plugins.hooks import hook_impl
from daglite.plugins.manager import get_plugin_manager, register_plugins, unregister_plugins


class Counting:
    def __init__(self) -> None:
        self.nodes: list[str] = []

    @hook_impl
    def after_node_execute(self, key):
        self.nodes.append(key)


@task
def one() -> int:
    return 1


def test_registering_a_class_raises_type_error_with_hint():
    with pytest.raises(TypeError, match=r"Counting\(\)"):
        register_plugins(Counting)


def test_passing_a_class_per_evaluation_raises_type_error_with_hint():
    with pytest.raises(TypeError, match=r"Counting\(\)"):
        evaluate(one(), plugins=[Counting])


def test_misspelled_hook_name_rejected_at_registration():
    class Typo:
        @hook_impl
        def after_node_executed(self, key):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="after_node_executed"):
        register_plugins(Typo())
    assert not any(isinstance(p, Typo) for _, p in get_plugin_manager().list_name_plugin())


def test_misspelled_parameter_name_rejected_at_registration():
    class Typo:
        @hook_impl
        def after_node_execute(self, key, durration):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="durration"):
        register_plugins(Typo())


def test_misspelled_hook_name_rejected_per_evaluation():
    class Typo:
        @hook_impl
        def before_graph_executes(self):
            pass

    with pytest.raises(pluggy.PluginValidationError):
        evaluate(one(), plugins=[Typo()])


def test_global_plugin_sees_every_evaluation_until_unregistered(backend):
    plugin = Counting()
    register_plugins(plugin)
    evaluate(one(), backend=backend)
    evaluate(one(), backend=backend)
    assert plugin.nodes == ["one", "one"]
    unregister_plugins(plugin)
    evaluate(one(), backend=backend)
    assert plugin.nodes == ["one", "one"]


def test_registering_the_same_instance_twice_calls_it_once():
    plugin = Counting()
    register_plugins(plugin, plugin)
    register_plugins(plugin)
    evaluate(one())
    assert plugin.nodes == ["one"]


def test_unregistering_an_unknown_plugin_is_ignored():
    unregister_plugins(Counting())


def test_per_evaluation_plugins_do_not_leak(backend):
    plugin = Counting()
    evaluate(one(), backend=backend, plugins=[plugin])
    evaluate(one(), backend=backend)
    assert plugin.nodes == ["one"]
    assert not any(p is plugin for _, p in get_plugin_manager().list_name_plugin())


def test_global_and_per_evaluation_plugins_both_run():
    global_plugin, local_plugin = Counting(), Counting()
    register_plugins(global_plugin)
    evaluate(one(), plugins=[local_plugin])
    assert global_plugin.nodes == local_plugin.nodes == ["one"]


def test_plugin_both_global_and_per_evaluation_is_called_once():
    plugin = Counting()
    register_plugins(plugin)
    evaluate(one(), plugins=[plugin])
    assert plugin.nodes == ["one"]


# -- entry points ---------------------------------------------------------------------------------

PLUGIN_MODULES = {
    "myplug_cls.py": """
        from daglite.plugins.hooks import hook_impl

        SEEN = []
        INSTANCES = []

        class ClassPlugin:
            def __init__(self):
                INSTANCES.append(self)

            @hook_impl
            def after_node_execute(self, key):
                SEEN.append(key)
    """,
    "myplug_inst.py": """
        from daglite.plugins.hooks import hook_impl

        SEEN = []

        class _Plugin:
            def __init__(self, label):
                self.label = label

            @hook_impl
            def before_node_execute(self, key):
                SEEN.append((self.label, key))

        INSTANCE = _Plugin("configured")
    """,
    "myplug_mod.py": """
        from daglite.plugins.hooks import hook_impl

        SEEN = []

        @hook_impl
        def after_graph_execute(result):
            SEEN.append(result)
    """,
}

ENTRY_POINTS = """\
[daglite.hooks]
by_class = myplug_cls:ClassPlugin
by_instance = myplug_inst:INSTANCE
by_module = myplug_mod
"""

DRIVER = """
import json
from daglite import evaluate, task
from daglite.plugins.manager import get_plugin_manager
import myplug_cls, myplug_inst, myplug_mod

@task
def add(x, y):
    return x + y

first = evaluate(add(1, 2), backend="{backend}")
second = evaluate(add(add(1, 2), 3), backend="{backend}")
names = sorted(n for n, _ in get_plugin_manager().list_name_plugin())
print(json.dumps({{
    "results": [first, second],
    "instances": len(myplug_cls.INSTANCES),
    "class_seen": myplug_cls.SEEN,
    "instance_seen": myplug_inst.SEEN,
    "module_seen": myplug_mod.SEEN,
    "names": names,
}}))
"""


def _make_distribution(root: Path) -> None:
    dist = root / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    for name, source in PLUGIN_MODULES.items():
        (root / name).write_text(textwrap.dedent(source))


@pytest.mark.parametrize("backend", ["inline", "processes"])
def test_entry_point_plugins_load_automatically_once(tmp_path, backend):
    _make_distribution(tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER.format(backend=backend)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["results"] == [3, 6]
    assert seen["instances"] == 1  # the class was instantiated once, with no arguments
    assert seen["class_seen"] == ["add", "add", "add-2"]
    assert seen["instance_seen"] == [
        ["configured", "add"],
        ["configured", "add"],
        ["configured", "add-2"],
    ]
    assert seen["module_seen"] == [3, 6]
    assert {"by_class", "by_instance", "by_module"} <= set(seen["names"])
