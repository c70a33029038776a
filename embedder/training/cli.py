"""Command-line pieces every training command shares: the data flags, and one flag per field
of a recipe dataclass."""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from embedder.training.calibrate import DEFAULT_TARGET_PRECISION

R = TypeVar("R")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --held-out-fraction, --target-precision, --limit."""
    parser.add_argument(
        "--data", type=Path, required=True, help="JSON lines: text_a, text_b, label"
    )
    parser.add_argument("--held-out-fraction", type=float, default=0.2)
    parser.add_argument("--target-precision", type=float, default=DEFAULT_TARGET_PRECISION)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")


def add_recipe_arguments(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """One `--field-name` flag per field of the recipe dataclass `defaults`."""
    for name, value in asdict(defaults).items():
        kind = type(value) if value is not None else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)


def recipe_from(args: argparse.Namespace, recipe: type[R]) -> R:
    return recipe(**{f.name: getattr(args, f.name) for f in fields(recipe)})  # type: ignore[arg-type]
