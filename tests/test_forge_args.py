"""Script arguments of the Forge extension: positional (UI, API) and dict (API) forms, validation, infotext."""

from __future__ import annotations

import json

import pytest

from lib_ctxrep.integrations import forge_args as fa
from lib_ctxrep.settings import SETTINGS


def test_positional_arguments_in_ui_order_become_a_config():
    s = fa.parse([True, 0.1, 0.2, "middle third", "", "text only", False, True, 0, 12])
    assert s.enabled and s.hires
    c = s.config
    assert (c.strength, c.window, c.blocks, c.single_blocks, c.memory, c.eta, c.iterations) == (
        0.1, 0.2, "middle", "text", False, None, 12
    )  # fmt: skip


def test_dict_form_fills_defaults_and_may_be_the_single_list_element():
    assert fa.parse({"enabled": True, "block_strength": 0.2}).config.strength == 0.2
    s = fa.parse([{"enabled": True, "blocks": "custom", "custom_blocks": "2:5"}])
    assert s.config.blocks == (2, 5) and s.config.strength is None


def ui_defaults() -> list:
    return [fa.DEFAULTS[name] for name in fa.ARG_NAMES]


def test_dict_first_then_the_ui_defaults_forge_pads_with_is_the_dict_alone():
    request = {"enabled": True, "block_strength": 0.08, "blocks": "middle third"}
    padded = fa.parse([request, *ui_defaults()[1:]])
    assert padded.enabled and padded.config == fa.parse(request).config
    assert padded.config.strength == 0.08 and padded.config.blocks == "middle"


def test_dict_keys_win_over_the_positions_after_it():
    padded = fa.parse([{"block_strength": 0.3}, 0.1, 0.4])
    assert (padded.config.strength, padded.config.window) == (0.3, 0.4)


def test_a_dict_without_enabled_asks_for_the_extension():
    assert fa.parse({"block_strength": 0.3}).enabled and fa.parse([{"block_strength": 0.3}]).enabled
    assert not fa.parse({"enabled": False}).enabled and not fa.is_enabled(fa.normalise([{"enabled": "false"}]))


def test_a_dict_after_the_first_position_is_refused():
    with pytest.raises(fa.ArgumentError, match=r"first element of 'args'.*\[1\]"):
        fa.parse([True, {"block_strength": 0.3}])


def test_an_unknown_dict_key_is_named_with_the_closest_known_one():
    with pytest.raises(fa.ArgumentError) as info:
        fa.parse([{"enabled": True, "strenght": 0.2, "colour": 1}, *ui_defaults()[1:]])
    message = str(info.value)
    assert "'colour'" in message and "'strenght' (did you mean 'step_strength'?)" in message
    assert "known: ['enabled', 'block_strength'" in message


def test_fewer_positional_arguments_take_defaults():
    s = fa.parse([True])
    assert s.enabled and s.config.window == fa.DEFAULTS["window"] and s.config.memory


def test_raw_eta_above_zero_replaces_strength():
    assert fa.parse({"enabled": True, "eta": 5e8}).config.eta == 5e8


def test_internal_names_are_accepted_for_choices():
    s = fa.parse({"enabled": True, "blocks": "middle", "single_blocks": "text"})
    assert s.values["blocks"] == "middle third" and s.values["single_blocks"] == "text only"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ({"enabled": "maybe"}, "'enabled'"),
        ({"block_strength": "strong"}, "'block_strength'"),
        ({"block_strength": -1}, "'block_strength'"),
        ({"window": 2}, "window"),
        ({"blocks": "half"}, "'blocks'"),
        ({"blocks": "custom"}, "'custom_blocks'"),
        ({"blocks": "custom", "custom_blocks": "9:2"}, "blocks"),
        ({"single_blocks": "some"}, "'single_blocks'"),
        ({"iterations": 2.5}, "'iterations'"),
        ({"colour": 1}, "unknown argument"),
        (list(range(len(fa.ARG_NAMES) + 1)), "positional arguments"),
        ({"spell_radius": 0}, "'spell_radius'"),
        ({"spell_radius": -0.2}, "'spell_radius'"),
        ({"spell_radius": "wide"}, "'spell_radius'"),
        ({"spell_overcompensation": 0}, "'spell_overcompensation'"),
        ({"spell": "yes"}, "'spell'"),
        ({"spell_protected": 3}, "'spell_protected'"),
        ("x", "must be a list or a dict"),
    ],
)
def test_invalid_arguments_raise_a_message_naming_them(args, names):
    with pytest.raises(fa.ArgumentError, match=names.replace("(", r"\(")) as info:
        fa.parse(args)
    assert str(info.value).startswith(fa.TITLE)


def test_infotext_has_readable_keys_without_separators_and_round_trips():
    s = fa.parse([True, 0.12, 0.1, "custom", "3:7", "off", False, True, 2e6, 20])
    text = fa.infotext(s)
    assert all("," not in k and ":" not in k for k in text)
    assert all(":" not in str(v) and "," not in str(v) for v in text.values())
    pasted = {k: json.loads(json.dumps(str(v))) for k, v in text.items()}  # infotext values come back as strings
    again = fa.parse(fa.from_infotext(pasted))
    assert again.config == s.config and again.enabled and again.hires


def test_pasting_infotext_without_our_keys_gives_disabled_defaults():
    values = fa.from_infotext({"Steps": "20"})
    assert values == {**fa.DEFAULTS, "enabled": False}


def test_positional_calls_written_before_spell_keep_their_meaning():
    s = fa.parse([True, 0.1, 0.2, "middle third", "", "text only", False, True, 0, 12])
    assert s.repulsion and s.spell is None and s.protected == ""
    assert fa.ARG_NAMES[:10] == (
        "enabled", "block_strength", "window", "blocks", "custom_blocks", "single_blocks", "memory", "hires", "eta",
        "iterations",
    )  # fmt: skip


def test_spell_arguments_become_a_spell_config():
    s = fa.parse({"enabled": True, "repulsion": False, "spell": True, "spell_radius": 0.2, "spell_protected": " a "})
    assert not s.repulsion and s.spell.relative_radius == 0.2 and s.spell.overcompensation == 1.6
    assert s.protected == "a"


def test_spell_infotext_round_trips_and_omits_repulsion_keys_when_it_is_off():
    s = fa.parse({"enabled": True, "repulsion": False, "spell": True, "spell_radius": 0.25, "spell_protected": "x"})
    text = fa.infotext(s)
    assert text["CtxRep SPELL"] is True and text["CtxRep repulsion"] is False and "CtxRep block strength" not in text
    again = fa.parse(fa.from_infotext({k: str(v) for k, v in text.items()}))
    assert again.spell == s.spell and again.protected == "x" and not again.repulsion


def test_infotext_of_repulsion_alone_has_no_spell_keys():
    text = fa.infotext(fa.parse({"enabled": True}))
    assert not any(k.startswith("CtxRep SPELL") for k in text) and "CtxRep repulsion" not in text


def test_an_infotext_from_before_the_step_strength_keeps_its_per_block_strength():
    old = {"CtxRep": "True", "CtxRep strength": "0.08", "CtxRep window": "0.05", "CtxRep blocks": "middle third"}
    config = fa.parse(fa.from_infotext(old)).config
    assert config.strength == 0.08 and config.block_strength(57) == 0.08


def test_a_positional_api_call_from_before_the_step_strength_keeps_its_per_block_strength():
    old_call = [True, 0.08, 0.05, "all", "", "all tokens", True, False, 0, 8, True, False, 0.35, 1.6, ""]
    padded = [*old_call, *ui_defaults()[len(old_call) :]]  # Forge pads the new argument with its UI default
    assert fa.parse(padded).config.strength == 0.08


def test_the_ui_defaults_share_the_step_strength_over_the_blocks():
    config = fa.parse([True, *ui_defaults()[1:]]).config
    assert config.strength is None and config.step_strength == fa.DEFAULTS["step_strength"]


def test_a_new_infotext_records_the_step_strength_and_round_trips():
    settings = fa.parse({"step_strength": 4.2, "blocks": "middle third"})
    text = fa.infotext(settings)
    assert text["CtxRep step strength"] == 4.2 and "CtxRep block strength" not in text
    assert fa.parse(fa.from_infotext({k: str(v) for k, v in text.items()})).config == settings.config


def test_an_empty_per_block_strength_means_the_step_strength():
    assert fa.parse({"block_strength": ""}).config.strength is None
    assert fa.parse({"block_strength": "0.2"}).config.strength == 0.2


# ---- issue 15: reproducing one pasted image of a batch ------------------------------------------------------------
def test_the_reproduce_arguments_are_appended_so_older_positional_calls_keep_their_meaning():
    assert fa.ARG_NAMES[:16][-1] == "step_strength" and fa.ARG_NAMES[16:] == (
        "reproduce",
        "pasted_batch",
    )
    old = [True, 0.2]  # an older positional call: enabled, per-block strength
    values = fa.normalise(old)
    assert values["block_strength"] == 0.2 and values["reproduce"] is True and values["pasted_batch"] == ""


def test_the_dict_form_accepts_reproduce_false():
    assert fa.parse([{"reproduce": False}]).values["reproduce"] is False


def test_an_infotext_without_batch_keys_clears_the_pasted_record():
    assert fa.from_infotext({"Seed": "5", "CtxRep": "True"})["pasted_batch"] == ""


def test_a_pasted_record_round_trips_through_the_batch_keys():
    keys = fa.batch_infotext(4, 6, 0, True, seed=106, subseed_strength=0)
    params = {**{k: str(v) for k, v in keys.items()}, "Seed": "106", "Size-1": "64", "Size-2": "48"}
    pasted = fa.parse_pasted_batch(fa.from_infotext(params)["pasted_batch"])
    assert (pasted.size, pasted.image, pasted.number, pasted.earlier, pasted.batch_seed) == (4, 2, 1, 1, 104)
    assert pasted.first_seeds() == (100, None) and pasted.images == 8 and (pasted.width, pasted.height) == (64, 48)


def test_the_api_key_strength_is_refused_naming_the_two_keys_it_could_mean():
    with pytest.raises(fa.ArgumentError) as info:
        fa.parse([{"strength": 1.0}, *ui_defaults()[1:]])
    assert "'strength' is ambiguous" in str(info.value)
    assert "'step_strength'" in str(info.value) and "'block_strength'" in str(info.value)


def test_an_infotext_style_key_in_the_dict_form_is_refused_with_the_argument_it_stands_for():
    with pytest.raises(fa.ArgumentError, match=r"'CtxRep window' \(an infotext key: the argument is 'window'\)"):
        fa.parse({"CtxRep window": 0.2})


def test_the_api_keys_are_the_settings_names_and_the_slider_label_says_step_strength():
    assert set(fa.ARG_NAMES) - {"pasted_batch"} == set(SETTINGS)
    assert SETTINGS["step_strength"].label == "Step strength"
    assert SETTINGS["block_strength"].label == "Per-block strength"


def test_a_new_per_block_strength_is_recorded_under_its_own_key_and_round_trips():
    text = fa.infotext(fa.parse({"block_strength": 0.07}))
    assert text["CtxRep block strength"] == 0.07
    assert fa.parse(fa.from_infotext({k: str(v) for k, v in text.items()})).config.strength == 0.07
