"""The repository as a ComfyUI node pack: registry metadata and example workflows that match the nodes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lib_ctxrep.integrations.comfyui_nodes import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def widget_inputs(node_class: type) -> list[tuple[str, tuple]]:
    """The inputs the ComfyUI frontend shows as widgets, in order (combos are lists of choices)."""
    spec = node_class.INPUT_TYPES()
    inputs = [*spec["required"].items(), *spec.get("optional", {}).items()]
    return [(name, s) for name, s in inputs if isinstance(s[0], list) or s[0] in WIDGET_TYPES]


def test_pyproject_has_the_comfy_registry_metadata():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert "comfyui" not in data["project"]["name"].lower()  # the registry refuses node ids naming ComfyUI


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 2


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflow_uses_our_nodes_with_valid_widget_values(path: Path):
    workflow = json.loads(path.read_text())
    ours = [n for n in workflow["nodes"] if n["type"] in NODE_CLASS_MAPPINGS]
    assert ours, f"{path.name} uses none of the nodes"
    for node in ours:
        widgets = widget_inputs(NODE_CLASS_MAPPINGS[node["type"]])
        values = node["widgets_values"]
        assert len(values) == len(widgets), f"{path.name}: {node['type']} has {len(values)} widget values"
        for (name, (kind, *options)), value in zip(widgets, values, strict=True):
            if isinstance(kind, list):
                assert value in kind, f"{path.name}: {name}={value!r} not in {kind}"
            elif kind in ("INT", "FLOAT"):
                assert options[0]["min"] <= value <= options[0]["max"], f"{path.name}: {name}={value!r}"
        if node["type"] == "ContextualRepulsion":
            named = dict(zip([name for name, _ in widgets], values, strict=True))
            valid = NODE_CLASS_MAPPINGS[node["type"]].VALIDATE_INPUTS(named["blocks"], named["custom_blocks"])
            assert valid is True, f"{path.name}: {valid}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflow_links_are_consistent(path: Path):
    workflow = json.loads(path.read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        assert nodes[source]["outputs"][slot]["type"] == kind
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


def test_the_test_run_loads_no_second_copy_of_the_library_through_the_root_package():
    copies = [m for m in sys.modules if m.endswith(".lib_ctxrep") or ".lib_ctxrep." in m]
    assert not copies, f"the root __init__.py loaded the library again: {copies[:3]}"
