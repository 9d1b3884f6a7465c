"""Specification of lib_ctxrep.config.RepulsionConfig: validation naming the field, block selection, plain data."""

from __future__ import annotations

import json
import math

import pytest

from lib_ctxrep import RepulsionEngine
from lib_ctxrep.config import DEFAULT_STEP_STRENGTH, DEFAULT_STRENGTH, DEFAULT_WINDOW, RepulsionConfig, as_config

INVALID = [
    ("enabled", 1),
    ("strength", -0.1),
    ("strength", math.nan),
    ("strength", math.inf),
    ("strength", "0.1"),
    ("step_strength", -1.0),
    ("step_strength", None),
    ("step_strength", math.inf),
    ("eta", 0.0),
    ("eta", -5.0),
    ("eta", math.nan),
    ("iterations", 0),
    ("iterations", True),
    ("iterations", 2.0),
    ("iterations", 10_001),
    ("window", 0),
    ("window", 1.5),
    ("window", -0.1),
    ("window", True),
    ("blocks", "bogus"),
    ("blocks", "5:2"),
    ("blocks", "a:b"),
    ("blocks", (3, 3)),
    ("blocks", (-1, 4)),
    ("blocks", (True, 4)),
    ("single_blocks", "x"),
    ("branches", ("foo",)),
    ("branches", "cond"),
    ("chunks", ()),
    ("chunks", ("cond", "bar")),
    ("group_size", 0),
    ("group_size", True),
    ("memory", "yes"),
    ("memory_image", 1),
    ("memory_image", True),  # without memory=True
    ("memory_size", 0),
    ("memory_size", 1025),
    ("memory_mb", 0),
    ("memory_mb", 1e6),
]


def test_defaults_are_valid():
    cfg = RepulsionConfig()
    assert cfg.enabled and cfg.eta is None and not cfg.memory
    assert cfg.strength is None and cfg.step_strength == DEFAULT_STEP_STRENGTH and cfg.window == DEFAULT_WINDOW
    assert cfg.branches == ("cond", "uncond") and cfg.chunks is None and cfg.group_size is None


def test_the_step_strength_is_shared_out_over_the_repelled_blocks():
    cfg = RepulsionConfig()
    assert math.isclose(cfg.block_strength(19 + 38), DEFAULT_STRENGTH)  # Flux-dev: the per-block default of old
    assert math.isclose(cfg.block_strength(4) * 4, cfg.block_strength(60) * 60)
    assert RepulsionConfig(step_strength=1.2).block_strength(0) == 1.2


def test_a_per_block_strength_overrides_the_step_strength():
    assert RepulsionConfig(strength=0.3, step_strength=9.0).block_strength(57) == 0.3


@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_invalid_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"RepulsionConfig\.{field}\b"):
        RepulsionConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strength", 0),
        ("eta", 8e9),
        ("iterations", 1),
        ("window", 1),
        ("single_blocks", "text"),
        ("branches", ()),
        ("chunks", ("uncond", "cond")),
        ("group_size", 3),
        ("memory_size", 1024),
        ("memory_mb", 1),
    ],
)
def test_boundary_values_are_accepted(field, value):
    assert getattr(RepulsionConfig(**{field: value}), field) == value


def test_lists_of_branches_and_chunks_are_normalised_to_tuples():
    cfg = RepulsionConfig(branches=["cond"], chunks=["uncond", "cond"])
    assert cfg.branches == ("cond",) and cfg.chunks == ("uncond", "cond")


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        ("all", list(range(19))),
        ("first", list(range(6))),
        ("middle", list(range(6, 13))),
        ("last", list(range(13, 19))),
        ("2:5", [2, 3, 4]),
        ((2, 5), [2, 3, 4]),
        ("17:40", [17, 18]),
        ((30, 40), []),
    ],
)
def test_block_indices_for_19_blocks(blocks, expected):
    assert RepulsionConfig(blocks=blocks).block_indices(19) == expected


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 19, 57])
def test_thirds_partition_all_blocks_in_order(num_blocks):
    thirds = [RepulsionConfig(blocks=b).block_indices(num_blocks) for b in ("first", "middle", "last")]
    assert thirds[0] + thirds[1] + thirds[2] == list(range(num_blocks))


def test_range_string_is_parsed_to_a_tuple():
    assert RepulsionConfig(blocks="2:5").blocks == (2, 5)


def test_to_dict_from_dict_round_trip_through_json():
    cfg = RepulsionConfig(
        enabled=False,
        strength=0.2,
        eta=5e6,
        iterations=7,
        window=0.3,
        blocks="2:9",
        single_blocks="text",
        branches=("cond",),
        chunks=("uncond", "cond"),
        group_size=2,
        memory=True,
        memory_size=4,
        memory_mb=64.0,
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert RepulsionConfig.from_dict(data) == cfg


def test_default_round_trip():
    assert RepulsionConfig.from_dict(json.loads(json.dumps(RepulsionConfig().to_dict()))) == RepulsionConfig()


def test_from_dict_unknown_key_raises_naming_it():
    data = RepulsionConfig().to_dict()
    data["bogus_key"] = 1
    with pytest.raises(ValueError, match="bogus_key"):
        RepulsionConfig.from_dict(data)


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match=r"RepulsionConfig\.window"):
        RepulsionConfig.from_dict({"window": 2.0})


def test_from_dict_does_not_mutate_its_argument():
    data = {"branches": ["cond"], "blocks": [1, 3]}
    RepulsionConfig.from_dict(data)
    assert data == {"branches": ["cond"], "blocks": [1, 3]}


@pytest.mark.parametrize(
    ("label", "preset"), [("first third", "first"), ("middle third", "middle"), ("last third", "last")]
)
def test_the_forge_accordion_preset_names_are_accepted(label, preset):
    assert RepulsionConfig(blocks=label).blocks == preset


def test_a_list_of_blocks_is_refused_because_it_reads_like_a_list_of_blocks():
    with pytest.raises(ValueError, match=r"blocks must be .*a list is not read as a range.*\(0, 3\).*got \[0, 2\]"):
        RepulsionConfig(blocks=[0, 2])
    assert RepulsionConfig.from_dict(RepulsionConfig(blocks=(0, 2)).to_dict()).blocks == (
        0,
        2,
    )  # JSON lists still load


def test_a_dict_in_place_of_a_config_says_how_to_build_one():
    with pytest.raises(TypeError, match=r"got a dict; build one with RepulsionConfig\(\*\*settings\).*from_dict"):
        as_config({"strength": 0.1}, "apply_contextual_repulsion")


def test_the_config_class_in_place_of_an_instance_says_to_call_it():
    with pytest.raises(
        TypeError, match=r"got the class RepulsionConfig itself; pass an instance: RepulsionConfig\(\.\.\.\)"
    ):
        RepulsionEngine(RepulsionConfig)


def test_a_mistyped_field_is_named_with_the_closest_one():
    with pytest.raises(TypeError, match=r"unknown field\(s\) 'strenght' \(did you mean 'strength'\?\)"):
        RepulsionConfig(strenght=3)
    with pytest.raises(ValueError, match=r"'windw' \(did you mean 'window'\?\)"):
        RepulsionConfig.from_dict({"windw": 0.1})


def test_a_mistyped_spell_field_is_named_with_the_closest_one():
    from lib_ctxrep.spell import SpellConfig

    with pytest.raises(TypeError, match=r"'overcompensaton' \(did you mean 'overcompensation'\?\)"):
        SpellConfig(overcompensaton=1.2)
