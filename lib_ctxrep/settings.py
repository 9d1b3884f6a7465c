"""Every user-facing setting, defined once and host-neutrally: its name, label, default, range or choices, tooltip,
and the validation that turns a set of values into a :class:`~lib_ctxrep.config.RepulsionConfig` and a
:class:`~lib_ctxrep.spell.SpellConfig`.

The Forge accordion (labels, ranges, tooltips), the Forge API (the names are its dict keys), the Forge infotext and
the ComfyUI nodes (input names, ranges, tooltips) all read this one definition, so a name means the same everywhere:
``step_strength`` is the push per step shared out over the repelled blocks (the control labelled "Step strength"),
``block_strength`` a strength per block. What only Forge has (positional order, infotext keys, the pasted-batch
record) is in :mod:`lib_ctxrep.integrations.forge_args`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW, RepulsionConfig
from .spell import DEFAULT_OVERCOMPENSATION, DEFAULT_RELATIVE_RADIUS, SpellConfig

TITLE = "Contextual Repulsion"

#: UI choices of the block preset, and what each means in RepulsionConfig.blocks.
BLOCK_PRESETS = {"all": "all", "middle third": "middle", "first third": "first", "last third": "last", "custom": None}
#: UI choices of the single-stream block mode.
SINGLE_MODES = {"all tokens": "all", "text only": "text", "off": "off"}


@dataclass(frozen=True)
class Setting:
    """One user-facing setting. ``bounds``: (minimum, maximum, step) of a slider or number input; ``choices``: the
    labels of a dropdown; ``group``: where a UI shows it ("repulsion", "advanced", "spell" or "job")."""

    name: str
    label: str
    default: Any
    tooltip: str
    bounds: tuple[float, float, float] | None = None
    choices: tuple[str, ...] | None = None
    group: str = "repulsion"


#: The controls' ranges. Step strength: up to about 5x the default push per step; window: a share of the steps;
#: iterations: up to twice the paper's M = 50; SPELL's radius: a share of the typical distance between two latents;
#: overcompensation: from the shield's exact boundary (1) to about twice the paper's 1.6.
_SETTINGS = (
    Setting(
        "enabled",
        "Contextual Repulsion",
        False,
        "Push the images of one batch apart in composition, pose and style. Off: output identical to not having the "
        "extension.",
        group="job",
    ),
    Setting(
        "repulsion",
        "Contextual repulsion",
        True,
        "Contextual repulsion itself (diffusion transformers with a text stream). Turn it off to run SPELL alone.",
    ),
    Setting(
        "step_strength",
        "Step strength",
        DEFAULT_STEP_STRENGTH,
        "How far each image's text-stream tokens turn away from the others in one step, summed over the repelled "
        "blocks. Means the same on every model, resolution and block choice. 2.85 is moderate; raise it for more "
        "variety, lower it if images drift from the prompt. 0: no effect.",
        bounds=(0.0, 15.0, 0.05),
    ),
    Setting(
        "window",
        "Window",
        DEFAULT_WINDOW,
        "Fraction of the sampling steps, from the first, during which repulsion acts. 0.05 = the first step of 20 "
        "(the paper's setting), 3 of 50; the first step is always included.",
        bounds=(0.01, 1.0, 0.01),
    ),
    Setting(
        "blocks",
        "Blocks",
        "all",
        "Which dual-stream blocks repel: all of them, one third of them (the paper finds the middle third the best "
        "trade-off between diversity and fidelity), or a custom range.",
        choices=tuple(BLOCK_PRESETS),
    ),
    Setting(
        "custom_blocks",
        "Block range",
        "",
        "With Blocks = custom: a block index range start:stop (stop excluded), e.g. 6:13 for the middle third of "
        "Flux's 19 double blocks.",
    ),
    Setting(
        "single_blocks",
        "Single-stream blocks",
        "all tokens",
        "Single-stream blocks of models that also have dual-stream ones (Flux.1, Chroma, Flux.2): repel all tokens "
        "(the paper's choice), only their text tokens, or none. Edit reference images are never repelled.",
        choices=tuple(SINGLE_MODES),
    ),
    Setting(
        "memory",
        "Cross-batch memory",
        True,
        "Later batches of the same job are also pushed away from earlier ones (up to 16 images), so batch size 1 "
        "gets diverse too.",
    ),
    Setting(
        "hires",
        "Apply on the hires pass",
        False,
        "Also repel during the hires-fix second pass (off: the second pass refines what the first produced).",
    ),
    Setting(
        "block_strength",
        "Per-block strength",
        # Empty, not None: Forge's API (modules/api/api.py apply_infotext) drops a pasted value whose component's
        # default is None.
        "",
        "For experts: a strength per repelled block instead of the step strength shared out over them. Empty: use "
        "the step strength.",
        bounds=(0.0, 10.0, 0.01),
        group="advanced",
    ),
    Setting(
        "eta",
        "Raw eta",
        0.0,
        "The paper's raw step size eta (e.g. 5e6 to 8e9 for Flux-dev, 5e2 to 5e6 for SD3.5-Large). 0 uses the "
        "strengths instead.",
        bounds=(0.0, 1e12, 1.0),
        group="advanced",
    ),
    Setting(
        "iterations",
        "Inner iterations M",
        RepulsionConfig.iterations,
        "Inner gradient steps per block (the paper: 50 on Flux, 100 on SD3.5). Costs only a little CPU time per "
        "block.",
        bounds=(1, 100, 1),
        group="advanced",
    ),
    Setting(
        "spell",
        "SPELL",
        False,
        "SPELL: when an image's predicted result comes within the shield radius of another image of the batch, an "
        "earlier batch or the protected set, it is pushed out. Works on every model. Does nothing where nothing is "
        "that close.",
        group="spell",
    ),
    Setting(
        "spell_radius",
        "Shield radius (relative)",
        DEFAULT_RELATIVE_RADIUS,
        "Shield radius as a fraction of the typical distance between two unrelated latents at this size. Larger: "
        "more images are pushed, further.",
        bounds=(0.01, 1.0, 0.01),
        group="spell",
    ),
    Setting(
        "spell_overcompensation",
        "Overcompensation",
        DEFAULT_OVERCOMPENSATION,
        "How far past the shield's edge a push goes: 1 lands exactly on the edge, the paper's 1.6 leaves it sooner.",
        bounds=(1.0, 3.0, 0.1),
        group="spell",
    ),
    Setting(
        "spell_protected",
        "Protected set (optional)",
        "",
        "Optional: a folder of images or a .safetensors latent set, inside the folder set in Settings > Contextual "
        "Repulsion. Images are encoded with this model's VAE at the generation size; outputs are kept away from them.",
        group="spell",
    ),
    Setting(
        "reproduce",
        "Reproduce pasted batch images",
        True,
        "When you paste the parameters of one image of a coupled batch at batch size and count 1, regenerate its "
        "batch (and the earlier batches its memory needs) and keep only that image, so it comes back exactly. Off: "
        "the image runs alone and differs from the original.",
        group="job",
    ),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _SETTINGS}
#: The default of every setting, by name.
DEFAULTS: dict[str, Any] = {s.name: s.default for s in _SETTINGS}

#: Keys that meant another thing before, refused with the key to use (never read with a changed meaning).
AMBIGUOUS = {
    "strength": "'strength' is ambiguous: write 'step_strength' for the Step strength control (the push per step, "
    "shared out over the repelled blocks) or 'block_strength' for a strength per block (what 'strength' meant in "
    "the Forge API before 0.3)",
}


class SettingError(ValueError):
    """A setting is invalid; the message names it and says what is accepted."""


@dataclass
class Settings:
    """Validated settings: the switches, the repulsion config, SPELL's config (None when off) and the protected set's
    path (when SPELL is on); ``values`` holds every setting as a UI shows it."""

    enabled: bool
    hires: bool
    config: RepulsionConfig
    values: dict[str, Any]
    repulsion: bool = True
    spell: SpellConfig | None = None
    protected: str = ""


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise SettingError(f"{TITLE}: '{name}' must be true or false, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{TITLE}: '{name}' must be a number, got {value!r}") from None


def _as_block_strength(value: Any) -> float | None:
    """None ("use the step strength") for an empty value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _as_float("block_strength", value)


def _as_choice(name: str, value: Any, choices: dict[str, Any]) -> str:
    if isinstance(value, str):
        if value in choices:
            return value
        for label, internal in choices.items():  # also accept the internal names ("middle", "text")
            if internal == value:
                return label
    raise SettingError(f"{TITLE}: '{name}' must be one of {list(choices)}, got {value!r}")


def refuse_ambiguous(names: Any) -> None:
    """Raise :class:`SettingError` for a key among ``names`` whose meaning changed (see :data:`AMBIGUOUS`)."""
    for name in names:
        if name in AMBIGUOUS:
            raise SettingError(f"{TITLE}: {AMBIGUOUS[name]}")


def parse(values: dict[str, Any]) -> Settings:
    """Validate setting values (missing ones take their default) into :class:`Settings`; raises
    :class:`SettingError` naming the bad setting and what it accepts."""
    refuse_ambiguous(values)
    v = {**DEFAULTS, **values}
    enabled = as_bool("enabled", v["enabled"])
    hires = as_bool("hires", v["hires"])
    memory = as_bool("memory", v["memory"])
    blocks_label = _as_choice("blocks", v["blocks"], BLOCK_PRESETS)
    single_label = _as_choice("single_blocks", v["single_blocks"], SINGLE_MODES)
    eta = _as_float("eta", v["eta"])
    iterations = _as_float("iterations", v["iterations"])
    if not iterations.is_integer():
        raise SettingError(f"{TITLE}: 'iterations' must be a whole number, got {v['iterations']!r}")
    blocks: Any = BLOCK_PRESETS[blocks_label]
    if blocks is None:
        blocks = str(v["custom_blocks"]).strip()
        if not blocks:
            raise SettingError(f"{TITLE}: 'custom_blocks' must be a range 'start:stop' when blocks is 'custom'")
    try:
        config = RepulsionConfig(
            strength=_as_block_strength(v["block_strength"]),
            step_strength=_as_float("step_strength", v["step_strength"]),
            eta=eta if eta > 0 else None,
            iterations=int(iterations),
            window=_as_float("window", v["window"]),
            blocks=blocks,
            single_blocks=SINGLE_MODES[single_label],
            memory=memory,
        )
    except ValueError as error:
        message = str(error).replace("RepulsionConfig.strength", "'block_strength'")
        raise SettingError(f"{TITLE}: {message}") from None
    repulsion = as_bool("repulsion", v["repulsion"])
    spell_on = as_bool("spell", v["spell"])
    radius = _as_float("spell_radius", v["spell_radius"])
    if not radius > 0:
        raise SettingError(f"{TITLE}: 'spell_radius' (SPELL's relative shield radius) must be > 0, got {radius!r}")
    overcompensation = _as_float("spell_overcompensation", v["spell_overcompensation"])
    try:
        spell = SpellConfig(relative_radius=radius, overcompensation=overcompensation)
    except ValueError as error:
        message = str(error).replace("SpellConfig.overcompensation", "'spell_overcompensation'")
        raise SettingError(f"{TITLE}: {message}") from None
    protected = v["spell_protected"]
    if protected is None:
        protected = ""
    if not isinstance(protected, str):
        raise SettingError(f"{TITLE}: 'spell_protected' must be a path (text), got {type(protected).__name__}")
    out = {**v, "enabled": enabled, "hires": hires, "memory": memory, "blocks": blocks_label}
    out.update(single_blocks=single_label, repulsion=repulsion, spell=spell_on, spell_radius=radius)
    out.update(spell_overcompensation=overcompensation, spell_protected=protected.strip())
    out.update(block_strength="" if config.strength is None else config.strength, step_strength=config.step_strength)
    out.update(reproduce=as_bool("reproduce", v["reproduce"]))
    return Settings(
        enabled, hires, config, out, repulsion, spell if spell_on else None, protected.strip() if spell_on else ""
    )
