"""Every supported model family, each described once in a module of this package.

A family's module holds one :class:`Family`: its display name, its place in lists (``order``), and an
:class:`~lib_ctxrep.blockmap.Architecture` per host that runs it ("diffusers", "forge" for Forge main and Neo,
"comfyui"), with beside it the small functions that read that host's calls of it where the usual reader
(:mod:`.readers`) does not fit. The front ends name no family: they recognise a model here and read the entry.
Adding a family is adding a module here (and its tests); nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from ..blockmap import Architecture

HOSTS = ("diffusers", "forge", "comfyui")


@dataclass(frozen=True)
class Family:
    """One model family: its display name, its rank in lists (lower first) and its entry per host (None where the
    host does not run it, or its blocks carry no text stream). A family whose text never passes through its blocks
    names its classes in ``no_text_stream`` instead, and ``why`` says in one line why repulsion cannot apply."""

    name: str
    order: int
    diffusers: Architecture | None = None
    forge: Architecture | None = None
    comfyui: Architecture | None = None
    no_text_stream: tuple[str, ...] = ()
    why: str = ""

    def entries(self) -> list[Architecture]:
        """The family's per-host entries, each knowing its family name and host."""
        out = []
        for host in HOSTS:
            entry = getattr(self, host)
            if entry is not None:
                out.append(dataclasses.replace(entry, family=self.name, host=host))
        return out


def _load() -> tuple[Family, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "readers" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.FAMILY)
    return tuple(sorted(found, key=lambda family: (family.order, family.name)))


FAMILIES: tuple[Family, ...] = _load()
ARCHITECTURES: tuple[Architecture, ...] = tuple(entry for family in FAMILIES for entry in family.entries())


def recognise(model: Any, host: str) -> Architecture | None:
    """The entry of ``model`` in ``host`` ("diffusers", "forge" or "comfyui"), or None if it is not supported: by
    class name (anywhere in the MRO), else by the block lists a renamed copy of a class still has (``duck``)."""
    names = {cls.__name__ for cls in type(model).__mro__}
    entries = [a for a in ARCHITECTURES if a.host == host]
    for arch in entries:
        if names.intersection(arch.classes):
            return arch
    for arch in entries:
        if arch.duck and all(hasattr(model, attr) for attr in arch.duck):
            return arch
    return None


def unsupported_reason(model: Any, host: str) -> str:
    """One line on why contextual repulsion cannot apply to ``model`` in ``host``, for messages (SPELL still can)."""
    names = {cls.__name__ for cls in type(model).__mro__}
    name = type(model).__name__
    for family in FAMILIES:
        if names.intersection(family.no_text_stream):
            return f"{name} ({family.name}) cannot be repelled: {family.why}"
    return f"{name} is not supported by contextual repulsion (supported: {', '.join(families(host))})"


def families(host: str) -> list[str]:
    """The model families ``host`` supports, in the map's order, each once: ['Flux.1', 'Chroma', 'SD3', ...]."""
    return list(dict.fromkeys(a.family for a in ARCHITECTURES if a.host == host))


def supported(host: str) -> list[str]:
    """Readable list of what ``host`` supports, for messages: 'Flux.1 (FluxTransformer2DModel), ...'."""
    return [f"{a.family} ({', '.join(a.classes)})" for a in ARCHITECTURES if a.host == host]
