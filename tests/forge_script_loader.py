"""Load ``scripts/ctxrep.py`` the way Forge does (a file module, the stand-in ``modules`` package on the path), and
the tiny Flux UNet the script tests sample with."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

from tests.forge_standins import IntegratedFluxTransformer2DModel, KModel, PredictionFlux, UnetPatcher

ROOT = Path(__file__).resolve().parents[1]
FORGE_MODULES = str(ROOT / "tests" / "forge_modules")


@contextmanager
def forge_script() -> Iterator[ModuleType]:
    """The extension's script module, importable only while the stand-in ``modules`` package is on ``sys.path``."""
    sys.path.insert(0, FORGE_MODULES)
    try:
        spec = importlib.util.spec_from_file_location("ctxrep.py", ROOT / "scripts" / "ctxrep.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(FORGE_MODULES)


def flux_unet() -> UnetPatcher:
    """A seeded tiny Flux model in Forge's patcher, as ``p.sd_model.forge_objects.unet`` holds it."""
    torch.manual_seed(0)
    return UnetPatcher(KModel(IntegratedFluxTransformer2DModel(), PredictionFlux()))
