"""The one definition of every user-facing setting, which the Forge accordion, the Forge API, the infotext and the
ComfyUI nodes all read."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lib_ctxrep import settings
from lib_ctxrep.integrations.comfyui_nodes import ContextualRepulsionNode, SpellNode

ROOT = Path(__file__).resolve().parents[1]


def _hints_tool():
    spec = importlib.util.spec_from_file_location("write_js_hints", ROOT / "tools" / "write_js_hints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_accordion_tooltips_are_the_settings_tooltips():
    assert (ROOT / "javascript" / "ctxrep_hints.js").read_text(encoding="utf-8") == _hints_tool().hints_script()


def test_the_comfyui_inputs_are_named_ranged_and_explained_as_the_settings_say():
    inputs = ContextualRepulsionNode.INPUT_TYPES()
    every = {**inputs["required"], **inputs["optional"]}
    for name in ("step_strength", "window", "iterations", "eta"):
        setting = settings.SETTINGS[name]
        options = every[name][1]
        assert (options["min"], options["max"], options["step"]) == setting.bounds, name
        assert options["default"] == setting.default and options["tooltip"] == setting.tooltip
    assert every["blocks"][0] == list(settings.SETTINGS["blocks"].choices)
    assert every["single_blocks"][0] == list(settings.SETTINGS["single_blocks"].choices)
    assert SpellNode.INPUT_TYPES()["required"]["overcompensation"][1]["tooltip"] == (
        settings.SETTINGS["spell_overcompensation"].tooltip
    )


def test_no_comfyui_input_is_named_strength_any_more():
    inputs = ContextualRepulsionNode.INPUT_TYPES()
    assert "strength" not in {**inputs["required"], **inputs["optional"]}


def test_the_ambiguous_name_strength_is_refused_with_the_names_to_use():
    with pytest.raises(settings.SettingError, match="'step_strength'.*'block_strength'"):
        settings.parse({"strength": 1.0})
