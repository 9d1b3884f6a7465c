"""Argument types of the command line (``python -m lib_ctxrep``): each refuses a bad value with one line naming it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= ``minimum`` (and <= ``maximum``: a value above it is refused, never clamped)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def fractions(text: str) -> str:
    """A comma-separated list of numbers in (0, 1] (kept as the text)."""
    for item in (w for w in text.split(",") if w.strip()):
        fraction(item.strip())
    return text


def one_of_each(known: set[str]) -> Callable[[str], str]:
    """A comma-separated list of names from ``known`` (kept as the text)."""

    def parse(text: str) -> str:
        unknown = sorted({w.strip() for w in text.split(",") if w.strip()} - known)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {sorted(known)}")
        return text

    return parse


def existing_file(text: str) -> str:
    """The path of a file that exists."""
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def device(text: str) -> str:
    """A torch device this torch can use ("cpu", "cuda", "cuda:1", "mps")."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a torch device such as cpu or cuda, got {text!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this torch has no CUDA device (a CPU build?); use cpu")
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: no MPS device here; use cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: the benchmark runs on cpu, cuda or mps")
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: not when its help already says it, and not for a default of None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.option_strings == []:
            return text
        return super()._get_help_string(action)


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]: a share of the sampling trajectory."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def new_file(text: str) -> str:
    """A file path whose folder exists."""
    folder = Path(text).expanduser().resolve().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(folder)!r} does not exist (create it first)")
    return text


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value
