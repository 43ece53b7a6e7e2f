"""Extensions without forking: modules that register basenets, decoders or datasets when imported.

Three ways to make a plugin module known, all loaded before a command runs:

- an installed package's entry point in the group ``seglab.plugins`` (pyproject.toml:
  ``[project.entry-points."seglab.plugins"] my_decoders = "my_package.decoders"``), loaded by every
  command and on the first lookup of a name no registry knows (so `seglab.build_model` finds it too);
- the environment variable ``SEGLAB_PLUGINS=module_a,module_b``;
- the flag ``--plugins module_a module_b`` of every command (the `plugins` key of a config file).

`seglab train` records the modules of the last two in runargs.yaml (`plugins`), and loading a run's
checkpoint imports them again, so `seglab test`, `export` and `predict` rebuild a run whose decoder lives
outside seglab. A plugin is imported as any Python module is (by name, from sys.path); no code is ever
read from a checkpoint.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable

from seglab.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "seglab.plugins"
ENV = "SEGLAB_PLUGINS"

_entry_points_loaded = False


def load_entry_points() -> list[str]:
    """Import (once per process) the plugin modules installed packages declare; return their names."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as err:  # a broken plugin must name itself, whatever it raised
            raise PluginError(
                f"plugin entry point {entry.name!r} ({entry.value}, group {ENTRY_POINT_GROUP}) "
                f"fails to load: {type(err).__name__}: {err}"
            ) from err
        if callable(loaded):  # "package.module:register" names a function that registers
            loaded()
        names.append(entry.value)
    return names


def env_modules() -> list[str]:
    """Return the module names in SEGLAB_PLUGINS (comma-separated)."""
    return [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]


def import_module(name: str, why: str = "") -> None:
    """Import plugin module `name`; raise a PluginError saying what to do when it cannot be imported."""
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError as err:
        if getattr(err, "name", None) and name.startswith(err.name):  # the plugin itself is not importable
            raise PluginError(
                f"plugin module {name!r}{why} cannot be imported ({err}): install it, or put its folder on PYTHONPATH"
            ) from err
        raise


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import the installed entry points, the SEGLAB_PLUGINS modules and `modules`; return the module names
    of the last two (what a run records in runargs.yaml), without duplicates."""
    load_entry_points()
    names = list(dict.fromkeys([*env_modules(), *modules]))
    for name in names:
        import_module(name)
    return names


def optional_import(module: str, extra: str, why: str):
    """Import an optional dependency; a missing one is an error saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{why} needs {module}: pip install 'seglab[{extra}]'") from err
