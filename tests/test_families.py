"""Every family described once: one module of lib_ctxrep.families per family, whose entries and call readers are all
that the front ends know of it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from lib_ctxrep import RepulsionConfig, families
from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion

diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = sorted((ROOT / "lib_ctxrep" / "integrations").glob("*.py")) + [ROOT / "scripts" / "ctxrep.py"]
CONFIG = RepulsionConfig(strength=0.5, window=1.0, iterations=4)


def _code_strings(path: Path) -> set[str]:
    """The string constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: p.name)
def test_no_front_end_names_a_family_or_its_classes(path: Path) -> None:
    names = {f.name for f in families.FAMILIES} | {c for a in families.ARCHITECTURES for c in a.classes}
    named = sorted(s for s in _code_strings(path) if s in names)
    assert named == [], f"{path.name} names {named}: that knowledge belongs in the family's module"


def test_each_class_name_belongs_to_one_entry_per_host() -> None:
    for host in families.HOSTS:
        classes = [c for a in families.ARCHITECTURES if a.host == host for c in a.classes]
        assert len(classes) == len(set(classes)), host


def _outputs() -> list[torch.Tensor]:
    """Direct calls of families whose calls used to be read by their names (SD3's and Z-Image's time and rows
    arguments and token readers) and of one with sequence-first blocks, each with repulsion on."""
    from tests.test_blockmap_models import MODELS as CORE
    from tests.test_blockmap_more_models import MODELS as MORE

    out = []
    for model in (CORE["SD3"], CORE["Z-Image"], MORE["Ernie-Image"], MORE["Ideogram 4"]):
        if not hasattr(diffusers, model.cls):
            continue
        transformer = model.build()
        with apply_contextual_repulsion(transformer, CONFIG):
            out.append(model.run(transformer))
    return out


def test_renaming_a_family_changes_nothing_but_its_name(monkeypatch) -> None:
    before = _outputs()
    renamed = tuple(dataclasses.replace(a, family=f"renamed {a.family}") for a in families.ARCHITECTURES)
    monkeypatch.setattr(families, "ARCHITECTURES", renamed)
    assert families.families("diffusers")[0].startswith("renamed ")
    after = _outputs()
    assert before and len(after) == len(before)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_model_whose_text_never_passes_through_its_blocks_gets_one_line_saying_why() -> None:
    class Anima(torch.nn.Module):
        pass

    reason = families.unsupported_reason(Anima(), "forge")
    assert reason.startswith("Anima (Anima) cannot be repelled: its text enters by cross-attention only")
    assert "\n" not in reason


def test_an_unknown_model_is_named_with_the_families_the_host_supports() -> None:
    reason = families.unsupported_reason(torch.nn.Linear(2, 2), "comfyui")
    supported = ", ".join(families.families("comfyui"))
    assert reason == f"Linear is not supported by contextual repulsion (supported: {supported})"


def _failing_reader(*_: object) -> None:
    raise ZeroDivisionError("an unexpected call")


def test_a_reader_that_fails_unexpectedly_leaves_a_diffusers_call_unmodified_with_one_message(monkeypatch, caplog):
    from lib_ctxrep.families.readers import DiffusersCall
    from tests.test_blockmap_models import MODELS as CORE

    caplog.set_level("WARNING", logger="lib_ctxrep")
    model = CORE["SD3"]
    transformer = model.build()
    plain = model.run(transformer)
    broken = tuple(
        dataclasses.replace(a, reads=dataclasses.replace(a.reads, tokens=_failing_reader))
        if a.host == "diffusers" and isinstance(a.reads, DiffusersCall)
        else a
        for a in families.ARCHITECTURES
    )
    monkeypatch.setattr(families, "ARCHITECTURES", broken)
    with apply_contextual_repulsion(transformer, CONFIG):
        assert torch.equal(model.run(transformer), plain)
        model.run(transformer)
    messages = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(messages) == 1 and "SD3Transformer2DModel" in messages[0] and "ZeroDivisionError" in messages[0]


def test_a_reader_that_fails_unexpectedly_leaves_a_forge_call_unmodified_with_one_message(monkeypatch, caplog):
    from lib_ctxrep.integrations.forge import ForgeRepulsion
    from tests.test_forge_adapter import flux_unet, sample

    caplog.set_level("WARNING", logger="lib_ctxrep")
    plain = sample(flux_unet())
    broken = tuple(
        dataclasses.replace(a, reads=_failing_reader) if a.host == "forge" else a for a in families.ARCHITECTURES
    )
    monkeypatch.setattr(families, "ARCHITECTURES", broken)
    clone = flux_unet().clone()
    assert ForgeRepulsion(CONFIG).patch(clone)
    assert torch.equal(sample(clone), plain) and torch.equal(sample(clone), plain)
    messages = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(messages) == 1 and "IntegratedFluxTransformer2DModel" in messages[0]
