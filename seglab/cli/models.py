"""`seglab models`: the registries, and params / GFLOPs per basenet x decoder (one flag per `ModelsConfig` field)."""

from __future__ import annotations

import argparse

from seglab import tables
from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import ModelsConfig
from seglab.data import DATASETS
from seglab.models import BASENETS, DECODERS
from seglab.models.basenets import FAMILIES
from seglab.models.complexity import complexity_rows
from seglab.plugins import load_plugins
from seglab.registry import Registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab models` flags."""
    add_config_arguments(parser, ModelsConfig)


def listing(registry: Registry) -> str:
    """Return a registry's names, each with its aliases."""
    return ", ".join(
        name + (f" (alias {', '.join(registry.aliases(name))})" if registry.aliases(name) else "")
        for name in registry.names()
    )


def main(args: argparse.Namespace) -> int:
    """Print the registries and the params / GFLOPs table."""
    cfg = config_from_args(ModelsConfig, args)
    load_plugins(cfg.plugins)
    tested = ", ".join(family.example for family in FAMILIES)
    print("basenets:", listing(BASENETS), f"+ any timm model (CNN, hierarchical transformer or ViT; tested: {tested})")
    print("decoders:", listing(DECODERS))
    print("datasets:", listing(DATASETS))
    if cfg.list:
        return 0
    rows = complexity_rows(cfg.basenets, cfg.decoders, cfg.size, cfg.num_classes)
    print()
    print(
        tables.markdown(
            ["basenet", "decoder", "params (M)", f"GFLOPs @ {cfg.size}x{cfg.size}"],
            [[r["basenet"], r["decoder"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.1f}"] for r in rows],
            left=2,
        )
    )
    print("\nGFLOPs count 2 FLOPs per multiply-add (torch.utils.flop_counter); GMACs = GFLOPs / 2.")
    return 0
