"""Core: import weight, the error tree, registries and plugin discovery."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest

from blackbox import errors
from blackbox.registry import Registry, optimizers


def test_import_blackbox_does_not_import_heavy_libraries():
    code = textwrap.dedent(
        """
        import sys
        import blackbox, blackbox.optim, blackbox.runs, blackbox.registry, blackbox.testing, blackbox.cli
        from blackbox.registry import optimizers
        optimizers.names()
        heavy = sorted(m for m in ("torch", "transformers", "openai", "sklearn") if m in sys.modules)
        print(",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (errors.ConfigError, ValueError),
        (errors.UnknownComponentError, LookupError),
        (errors.BudgetError, ValueError),
        (errors.ObjectiveError, ValueError),
        (errors.ObjectiveImportError, ImportError),
        (errors.RunError, ValueError),
    ],
)
def test_errors_subclass_the_matching_builtin(cls, builtin):
    assert issubclass(cls, errors.BlackboxError)
    assert issubclass(cls, builtin)


def test_bad_value_names_parameter_expected_and_received():
    msg = str(errors.bad_value("alpha", "a number in [0, 1]", 3.5))
    assert msg == "alpha: expected a number in [0, 1], received 3.5"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(errors.UnknownComponentError) as exc:
        optimizers.get("adam")
    msg = str(exc.value)
    for name in ("spsa", "spsa-gc", "zo-sgd", "cma-es"):
        assert name in msg
    assert "adam" in msg


def test_register_rejects_a_different_object_under_a_taken_name():
    reg: Registry = Registry("widget", "blackbox.tests.none")
    reg.register("a", object)
    reg.register("a", object)  # same object: fine
    with pytest.raises(errors.ConfigError, match="already registered"):
        reg.register("a", int)
    reg.unregister("a")
    assert "a" not in reg
    reg.register("a", int)  # the name is free again
    with pytest.raises(errors.UnknownComponentError, match="'b'"):
        reg.unregister("b")


def _fake_distribution(tmp_path, name, group, entries):
    """A minimal installed distribution (dist-info with entry points) on sys.path."""
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_plugins_are_discovered_lazily_and_broken_ones_warn(tmp_path, monkeypatch):
    pkg = tmp_path / "bbplugin_demo.py"
    pkg.write_text("class Widget:\n    '''A demo widget plugin.'''\n")
    _fake_distribution(
        tmp_path, "bbplugin-demo", "blackbox.tests.widgets",
        {"good": "bbplugin_demo:Widget", "broken": "bbplugin_missing_module:Nothing"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("widget", "blackbox.tests.widgets")
    reg.register("builtin-widget", object)
    assert not reg._plugins_loaded  # lazy: nothing scanned yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget = reg.get("good")
    assert widget.__name__ == "Widget"
    assert any(issubclass(w.category, errors.PluginWarning) and "broken" in str(w.message) for w in caught)
    sources = {e.name: e.source for e in reg.entries()}
    assert sources == {"builtin-widget": "builtin", "good": "plugin"}
    with pytest.raises(errors.UnknownComponentError, match="builtin-widget, good"):
        reg.get("broken")


def test_a_plugin_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    (tmp_path / "bbplugin_shadow.py").write_text("X = 1\n")
    _fake_distribution(tmp_path, "bbplugin-shadow", "blackbox.tests.shadow", {"spsa": "bbplugin_shadow:X"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("optimizer", "blackbox.tests.shadow")
    reg.register("spsa", str)
    assert reg.names() == ["spsa"]
    assert reg.get("spsa") is str
