"""Flags from config dataclasses: each field of a `seglab.config` class becomes one flag (or positional).

The flag of field `learnrate` is `--learnrate`; bools get `--x/--no-x`; lists take values separated by
spaces or commas (`--scales 0.5,1,1.5` or `--crop 512 1024`; lists of paths are never split at commas);
dicts take KEY=VALUE pairs. Flags left out stay out of the namespace, so that `config_from_args` can apply
defaults < `--config FILE` < flags given.
"""

from __future__ import annotations

import argparse
from typing import Any

from seglab import config as cfg_mod
from seglab.errors import ConfigError


def _split(values: list[str], commas: bool) -> list[str]:
    return [part for value in values for part in (value.split(",") if commas else [value]) if part != ""]


class _ListAction(argparse.Action):
    """Collects a list flag's values (spaces or commas between them), converted to the field's item type."""

    def __init__(self, *args, item: type, commas: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.item, self.commas = item, commas

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = _split(list(values), self.commas)
        try:
            setattr(namespace, self.dest, [self.item(v) for v in items])
        except ValueError:
            parser.error(
                f"{option_string or self.metavar}: expected {self.item.__name__} values separated by "
                f"spaces or commas, got {' '.join(values)!r}"
            )


class _KeyValues(argparse.Action):
    """Collects KEY=VALUE pairs into a dict, each value read as YAML (true, 3, 0.5, [1, 2], text)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        out = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string}: expected KEY=VALUE, got {item!r}")
            out[key] = cfg_mod.parse_value(value)
        setattr(namespace, self.dest, out)


def _describe(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None or default == "" or default == [] or default == {}:
        return "none"
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, config_file: bool = True) -> None:
    """Add one flag (or positional) per field of `cls`, and `--config FILE` (YAML of the same keys)."""
    if config_file:
        parser.add_argument(
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="YAML file of config keys (for train, e.g. a runargs.yaml); flags override it",
        )
    for name, f in cfg_mod.fields_of(cls).items():
        kind, meta = cfg_mod.kind_of(cls, name), f.metadata
        kwargs: dict[str, Any] = {"help": meta["help"].replace("%", "%%")}  # argparse %-formats help
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind.base is list:
            kwargs.update(
                nargs="+" if meta.get("positional") and meta.get("required") else "*",
                action=_ListAction,
                item=kind.item,
                commas=not meta.get("paths"),
            )
        elif kind.base is dict:
            kwargs.update(nargs="*", action=_KeyValues)
        elif kind.base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind.base
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        if kind.base is list and meta.get("choices"):
            kwargs["help"] += f" (from {', '.join(meta['choices'])})"
        notes = [cfg_mod.allowed_range(meta)] if cfg_mod.allowed_range(meta) else []
        if not meta.get("positional") and not meta.get("required") and "default" not in meta["help"]:
            notes.append(f"default: {_describe(cfg_mod.default_of(f))}")
        if notes:
            kwargs["help"] += f" ({'; '.join(notes)})"
        if meta.get("positional"):
            parser.add_argument(name, **kwargs)
            continue
        parser.add_argument(cfg_mod.flag(name), dest=name, default=argparse.SUPPRESS, **kwargs)
        for alias in meta.get("aliases", ()):  # an old spelling: accepted, hidden from --help
            parser.add_argument(
                alias, **{**kwargs, "dest": name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
            )


def explicit_values(cls: type, args: argparse.Namespace) -> dict:
    """Return the config keys given on the command line (flags left out are not in the namespace)."""
    known = cfg_mod.fields_of(cls)
    return {
        k: cfg_mod.check_value(cls, k, v, cfg_mod.flag(k) if not known[k].metadata.get("positional") else k)
        for k, v in vars(args).items()
        if k in known
    }


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Return the `cls` of defaults, overridden by `--config FILE`, overridden by explicit flags."""
    values = cfg_mod.read_yaml(cls, args.config) if getattr(args, "config", None) else {}
    values.update(explicit_values(cls, args))
    missing = [
        cfg_mod.flag(k)
        for k, f in cfg_mod.fields_of(cls).items()
        if f.metadata.get("required") and not f.metadata.get("positional") and not values.get(k)
    ]
    if missing:
        raise ConfigError(f"{', '.join(missing)} is required (see --help)")
    return cls(**values)
