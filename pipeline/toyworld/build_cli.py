"""The shared command line of the toy-world build scripts: ``--out`` plus one flag per scalar config field."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any


def build_main(
    config_cls: type,
    build: Callable[[Any, str], dict],
    description: str,
    default_out: str,
    argv: list[str] | None = None,
) -> dict:
    """Parse ``--out`` and ``--<field>`` flags for ``config_cls``, run ``build(cfg, out)`` and write its
    summary to ``<out>/build_info.json``; return the summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, help="folder to write")
    scalar_types = {"int": int, "float": float}
    for f in dataclasses.fields(config_cls):
        if f.type in scalar_types:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=scalar_types[f.type], default=f.default)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    summary = build(config_cls(**args), out)
    with open(os.path.join(out, "build_info.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary
