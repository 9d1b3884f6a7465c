"""The Forge script's arguments: positional order, the API dict form, infotext keys, and their validation.

Pure Python (no Forge, no gradio), so the UI, the API (``alwayson_scripts``), paste / "Send to" and the XYZ axes all
go through the same conversions, and so they can be tested without a webui.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW, RepulsionConfig
from ..spell import DEFAULT_OVERCOMPENSATION, DEFAULT_RELATIVE_RADIUS, SpellConfig

TITLE = "Contextual Repulsion"

#: The controls' ranges (minimum, maximum, step), the Forge sliders' and the ComfyUI inputs'. Strength: up to about 5x
#: the default push per step; window: a share of the steps; iterations: up to twice the paper's M = 50; SPELL's radius:
#: a share of the typical distance between two latents; overcompensation: from the shield's exact boundary (1) to about
#: twice the paper's 1.6.
STEP_STRENGTH_RANGE = (0.0, 15.0, 0.05)
WINDOW_RANGE = (0.01, 1.0, 0.01)
ITERATIONS_RANGE = (1, 100, 1)
SPELL_RADIUS_RANGE = (0.01, 1.0, 0.01)
OVERCOMPENSATION_RANGE = (1.0, 3.0, 0.1)

#: UI choices of the block preset, and what each means in RepulsionConfig.blocks.
BLOCK_PRESETS = {"all": "all", "middle third": "middle", "first third": "first", "last third": "last", "custom": None}
#: UI choices of the Flux single-block mode.
SINGLE_MODES = {"all tokens": "all", "text only": "text", "off": "off"}

#: Positional order of the script's arguments (the ``ui()`` return order and the API's ``args`` list). New arguments
#: are appended, so positional API calls written for an older version keep their meaning.
ARG_NAMES = (
    "enabled",
    "strength",
    "window",
    "blocks",
    "custom_blocks",
    "single_blocks",
    "memory",
    "hires",
    "eta",
    "iterations",
    "repulsion",
    "spell",
    "spell_radius",
    "spell_overcompensation",
    "spell_protected",
    "step_strength",
    "reproduce",
    "pasted_batch",
)
DEFAULTS: dict[str, Any] = {
    "enabled": False,
    # Per block, as text: empty = the step strength shared out over the repelled blocks. Not None: Forge's API
    # (modules/api/api.py apply_infotext) drops a pasted value whose component's default is None.
    "strength": "",
    "window": DEFAULT_WINDOW,
    "blocks": "all",
    "custom_blocks": "",
    "single_blocks": "all tokens",
    "memory": True,
    "hires": False,
    "eta": 0.0,
    "iterations": RepulsionConfig.iterations,
    "repulsion": True,
    "spell": False,
    "spell_radius": DEFAULT_RELATIVE_RADIUS,
    "spell_overcompensation": DEFAULT_OVERCOMPENSATION,
    "spell_protected": "",
    "step_strength": DEFAULT_STEP_STRENGTH,
    # Pasting an image of a coupled batch regenerates that batch (and the earlier ones its memory needs) and keeps
    # the image. Not an infotext field: it is a choice of the user, not a property of the image.
    "reproduce": True,
    # A hidden field: the pasted image's batch record (JSON, see pasted_batch_record), "" when nothing was pasted.
    "pasted_batch": "",
}
#: Readable infotext keys (no ',' or ':' in keys), per argument; "enabled" is implied by the presence of the keys.
INFOTEXT_KEYS = {
    "enabled": "CtxRep",
    "strength": "CtxRep strength",
    "window": "CtxRep window",
    "blocks": "CtxRep blocks",
    "custom_blocks": "CtxRep block range",
    "single_blocks": "CtxRep single blocks",
    "memory": "CtxRep memory",
    "hires": "CtxRep hires",
    "eta": "CtxRep eta",
    "iterations": "CtxRep iterations",
    "repulsion": "CtxRep repulsion",
    "spell": "CtxRep SPELL",
    "spell_radius": "CtxRep SPELL radius",
    "spell_overcompensation": "CtxRep SPELL overcompensation",
    "spell_protected": "CtxRep SPELL protected",
    "step_strength": "CtxRep step strength",
}
#: Infotext keys written at sampling time (not arguments): SPELL's radius in latent units and its sparsity.
SPELL_RADIUS_ABS_KEY = "CtxRep SPELL radius abs"
#: Infotext key written at sampling time: the block-map family contextual repulsion ran on ("Flux.1", "SD3", ...).
ARCHITECTURE_KEY = "CtxRep model"
SPELL_PUSHED_KEY = "CtxRep SPELL pushed"


@dataclass
class ScriptSettings:
    """The script's settings after validation."""

    enabled: bool
    hires: bool
    config: RepulsionConfig
    values: dict[str, Any]
    repulsion: bool = True
    spell: SpellConfig | None = None
    protected: str = ""


class ArgumentError(ValueError):
    """A script argument is invalid; the message names it and says what is accepted."""


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ArgumentError(f"{TITLE}: '{name}' must be true or false, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{TITLE}: '{name}' must be a number, got {value!r}") from None


def _as_optional_float(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _as_float(name, value)


def _as_choice(name: str, value: Any, choices: dict[str, Any]) -> str:
    if isinstance(value, str):
        if value in choices:
            return value
        for label, internal in choices.items():  # also accept the internal names ("middle", "text")
            if internal == value:
                return label
    raise ArgumentError(f"{TITLE}: '{name}' must be one of {list(choices)}, got {value!r}")


def normalise(args: list | tuple | dict) -> dict[str, Any]:
    """Script arguments as a dict of every argument, defaults filled in.

    Accepts the UI / API positional list, the API dict form ``{"enabled": true, "strength": 0.1, ...}``, and the dict
    as the first element of the list. Forge's API (``modules/api/api.py`` ``init_script_args``) always sends a full
    list: the request's ``args`` in the first positions, then the UI default (or the value pasted from an
    ``infotext``) of every other argument. So with a dict first, the dict's keys win and the positions after it fill
    the rest. In the dict form "enabled" defaults to true: naming the script with settings asks for it.
    """
    if isinstance(args, dict):
        args = [args]
    if not isinstance(args, (list, tuple)):
        raise ArgumentError(f"{TITLE}: arguments must be a list or a dict, got {type(args).__name__}")
    if len(args) > len(ARG_NAMES):
        raise ArgumentError(
            f"{TITLE}: got {len(args)} positional arguments, expected at most {len(ARG_NAMES)}: {list(ARG_NAMES)}"
        )
    dicts = [i for i, value in enumerate(args) if isinstance(value, dict)]
    if dicts and dicts != [0]:
        raise ArgumentError(
            f"{TITLE}: a dict of arguments must be the first element of 'args' and the only dict, got one at "
            f"position(s) {dicts}"
        )
    if dicts:
        rest = dict(zip(ARG_NAMES[1:], args[1:], strict=False))
        return {**DEFAULTS, **rest, "enabled": True, **_known(args[0])}
    return {**DEFAULTS, **dict(zip(ARG_NAMES, args, strict=False))}


def _known(values: dict) -> dict[str, Any]:
    """The dict form's values, refusing unknown keys with the closest known name."""
    unknown = sorted(str(key) for key in set(values) - set(ARG_NAMES))
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key, ARG_NAMES, 1))
            else repr(key)
            for key in unknown
        ]
        raise ArgumentError(f"{TITLE}: unknown argument(s) {', '.join(hints)}; known: {list(ARG_NAMES)}")
    return dict(values)


def is_enabled(values: dict[str, Any]) -> bool:
    """Whether normalised arguments ask for the extension (``"enabled"`` read as :func:`parse` reads it)."""
    return _as_bool("enabled", values["enabled"])


def reproduce_requested(values: dict[str, Any]) -> bool:
    """Whether normalised arguments ask to reproduce a pasted image of a batch (``"reproduce"``)."""
    return _as_bool("reproduce", values["reproduce"])


def parse(args: list | tuple | dict) -> ScriptSettings:
    """Validate script arguments into settings; raises :class:`ArgumentError` naming the bad argument."""
    v = normalise(args)
    enabled = _as_bool("enabled", v["enabled"])
    hires = _as_bool("hires", v["hires"])
    memory = _as_bool("memory", v["memory"])
    blocks_label = _as_choice("blocks", v["blocks"], BLOCK_PRESETS)
    single_label = _as_choice("single_blocks", v["single_blocks"], SINGLE_MODES)
    eta = _as_float("eta", v["eta"])
    iterations = _as_float("iterations", v["iterations"])
    if not iterations.is_integer():
        raise ArgumentError(f"{TITLE}: 'iterations' must be a whole number, got {v['iterations']!r}")
    blocks: Any = BLOCK_PRESETS[blocks_label]
    if blocks is None:
        blocks = str(v["custom_blocks"]).strip()
        if not blocks:
            raise ArgumentError(f"{TITLE}: 'custom_blocks' must be a range 'start:stop' when blocks is 'custom'")
    try:
        config = RepulsionConfig(
            strength=_as_optional_float("strength", v["strength"]),
            step_strength=_as_float("step_strength", v["step_strength"]),
            eta=eta if eta > 0 else None,
            iterations=int(iterations),
            window=_as_float("window", v["window"]),
            blocks=blocks,
            single_blocks=SINGLE_MODES[single_label],
            memory=memory,
        )
    except ValueError as error:
        raise ArgumentError(f"{TITLE}: {error}") from None
    repulsion = _as_bool("repulsion", v["repulsion"])
    spell_on = _as_bool("spell", v["spell"])
    radius = _as_float("spell_radius", v["spell_radius"])
    if not radius > 0:
        raise ArgumentError(f"{TITLE}: 'spell_radius' (SPELL's relative shield radius) must be > 0, got {radius!r}")
    overcompensation = _as_float("spell_overcompensation", v["spell_overcompensation"])
    try:
        spell = SpellConfig(relative_radius=radius, overcompensation=overcompensation)
    except ValueError as error:
        message = str(error).replace("SpellConfig.overcompensation", "'spell_overcompensation'")
        raise ArgumentError(f"{TITLE}: {message}") from None
    protected = v["spell_protected"]
    if protected is None:
        protected = ""
    if not isinstance(protected, str):
        raise ArgumentError(f"{TITLE}: 'spell_protected' must be a path (text), got {type(protected).__name__}")
    values = {**v, "enabled": enabled, "hires": hires, "memory": memory, "blocks": blocks_label}
    values.update(single_blocks=single_label, repulsion=repulsion, spell=spell_on, spell_radius=radius)
    values.update(spell_overcompensation=overcompensation, spell_protected=protected.strip())
    values.update(strength="" if config.strength is None else config.strength, step_strength=config.step_strength)
    values.update(reproduce=_as_bool("reproduce", v["reproduce"]), pasted_batch=str(v["pasted_batch"] or ""))
    return ScriptSettings(
        enabled, hires, config, values, repulsion, spell if spell_on else None, protected.strip() if spell_on else ""
    )


def infotext(settings: ScriptSettings, *, repulsion: bool = True, spell: bool = True) -> dict[str, Any]:
    """Infotext entries for an enabled run, for the methods that ran (``repulsion`` / ``spell``, each also only if
    enabled in ``settings``): readable keys, optional ones only when they differ from the default."""
    v = settings.values
    out: dict[str, Any] = {INFOTEXT_KEYS["enabled"]: True}
    if repulsion and settings.repulsion:
        for name in ("step_strength", "window", "blocks", "single_blocks", "memory", "hires", "iterations"):
            out[INFOTEXT_KEYS[name]] = v[name]
        if settings.config.strength is not None:
            out[INFOTEXT_KEYS["strength"]] = settings.config.strength
        if v["blocks"] == "custom":
            out[INFOTEXT_KEYS["custom_blocks"]] = str(v["custom_blocks"]).replace(":", "-")
        if settings.config.eta is not None:
            out[INFOTEXT_KEYS["eta"]] = settings.config.eta
    else:
        out[INFOTEXT_KEYS["repulsion"]] = False
    if spell and settings.spell is not None:
        out[INFOTEXT_KEYS["spell"]] = True
        out[INFOTEXT_KEYS["spell_radius"]] = v["spell_radius"]
        out[INFOTEXT_KEYS["spell_overcompensation"]] = v["spell_overcompensation"]
        if settings.protected:
            out[INFOTEXT_KEYS["spell_protected"]] = settings.protected
    return out


def from_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """Argument values recovered from pasted infotext ``params`` (missing keys give defaults; absent = disabled)."""
    values = dict(DEFAULTS)
    values["enabled"] = str(params.get(INFOTEXT_KEYS["enabled"], "False")).strip().lower() == "true"
    for name, key in INFOTEXT_KEYS.items():
        if name == "enabled" or key not in params:
            continue
        raw = params[key]
        if name == "custom_blocks":
            values[name] = str(raw).replace("-", ":")
        elif name in ("memory", "hires", "repulsion", "spell"):
            values[name] = str(raw).strip().lower() == "true"
        elif name in ("step_strength", "window", "eta", "spell_radius", "spell_overcompensation"):
            values[name] = float(raw)
        elif name == "iterations":
            values[name] = int(float(raw))
        else:
            values[name] = str(raw)
    values["pasted_batch"] = pasted_batch_record(params)
    return values


# ---- reproducing one image of a coupled batch ----------------------------------------------------------------------
#: Infotext keys that say which batch an image of a coupled generation belonged to. Positions are 1-based (the
#: third image of the batch: "CtxRep batch image: 3"). Never the bare "Batch size" (a Forge paste field) and never an
#: "NxM" value (Forge's parser splits those into two keys). "source" is written only for img2img jobs
#: ("CtxRep batch source: img2img"); a record without it is a txt2img batch.
BATCH_KEYS = {
    "size": "CtxRep batch size",
    "image": "CtxRep batch image",
    "number": "CtxRep batch number",
    "seed": "CtxRep batch seed",
    "earlier": "CtxRep earlier batches",
    "source": "CtxRep batch source",
}
#: The "source" value of an img2img batch (txt2img writes none).
IMG2IMG_SOURCE = "img2img"
#: Forge's own infotext keys the record also keeps, to check the run against the pasted image ("Size" is split by
#: Forge's parser into "Size-1" (width) and "Size-2" (height)).
IMAGE_KEYS = ("Seed", "Variation seed", "Variation seed strength", "Size-1", "Size-2", "Model hash")


def batch_first_seed(seed: int, index: int, subseed_strength: float) -> int:
    """The first seed of the images before and including one with ``seed`` at ``index`` (0-based) of a Forge job:
    image g gets ``first + g`` without a variation strength, and every image gets the same seed with one
    (modules/processing.py process_images_inner: ``seed + (x if p.subseed_strength == 0 else 0)``)."""
    return seed - index if subseed_strength == 0 else seed


@dataclass(frozen=True)
class PastedBatch:
    """The batch a pasted image belonged to, checked for consistency.

    ``size`` images per batch; the image is number ``image`` (0-based) of batch ``number`` (0-based) of its
    generation, whose earliest ``earlier`` batches before it must be regenerated too (cross-batch memory, SPELL);
    ``seed`` / ``subseed`` are the image's own seeds, ``subseed_strength`` its variation strength; ``img2img``:
    the batch was made in img2img (it had init images).
    """

    size: int
    image: int
    number: int
    earlier: int
    batch_seed: int
    seed: int
    subseed: int | None = None
    subseed_strength: float = 0.0
    width: int | None = None
    height: int | None = None
    model_hash: str | None = None
    img2img: bool = False

    @property
    def images(self) -> int:
        """How many images the rebuild generates."""
        return self.size * (self.earlier + 1)

    @property
    def position(self) -> int:
        """The image's position in the rebuilt job (batch ``earlier``, image ``image``)."""
        return self.earlier * self.size + self.image

    def first_seeds(self) -> tuple[int, int | None]:
        """The rebuilt job's seed and variation seed: Forge gives image g of a job ``seed + g`` (variation strength
        0) or ``seed`` and ``subseed + g`` (modules/processing.py process_images_inner)."""
        seed = batch_first_seed(self.seed, self.position, self.subseed_strength)
        if self.subseed_strength == 0 or self.subseed is None:
            return seed, self.subseed
        return seed, self.subseed - self.position


def pasted_batch_record(params: dict[str, Any]) -> str:
    """The hidden "pasted batch" field's value from pasted infotext ``params``: JSON of the batch keys and the
    image's own keys when any batch key is present, else "" (which also clears an earlier paste)."""
    if not any(key in params for key in BATCH_KEYS.values()):
        return ""
    keys = (*BATCH_KEYS.values(), *IMAGE_KEYS)
    return json.dumps({key: str(params[key]) for key in keys if key in params}, sort_keys=True)


def _record_int(record: dict[str, Any], key: str, low: int | None, high: int | None = None) -> int:
    """The whole number under ``key`` of a pasted record, from ``low`` to ``high`` (None: unbounded)."""
    if key not in record:
        raise ArgumentError(f"the pasted infotext has no '{key}'")
    try:
        value = float(record[key])
    except (TypeError, ValueError):
        raise ArgumentError(f"'{key}: {record[key]}' is not a number") from None
    in_range = (low is None or value >= low) and (high is None or value <= high)
    if not value.is_integer() or not in_range:
        if high is not None:
            bounds = f"a whole number from {low} to {high}"
        else:
            bounds = "a whole number" if low is None else f"a whole number >= {low}"
        raise ArgumentError(f"'{key}: {record[key]}' must be {bounds}")
    return int(value)


def _record_source(record: dict[str, Any]) -> bool:
    """Whether a pasted record is of an img2img batch (no "source" key: txt2img, as written before it existed)."""
    source = str(record.get(BATCH_KEYS["source"], "txt2img")).strip()
    if source not in ("txt2img", IMG2IMG_SOURCE):
        raise ArgumentError(f"'{BATCH_KEYS['source']}: {source}' must be {IMG2IMG_SOURCE} (or absent: txt2img)")
    return source == IMG2IMG_SOURCE


def _record_strength(record: dict[str, Any]) -> float:
    """The pasted image's variation strength (absent: 0)."""
    value = record.get("Variation seed strength", 0.0)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"'Variation seed strength: {value}' is not a number") from None


def parse_pasted_batch(text: str) -> PastedBatch:
    """Validate the hidden field's record; raises :class:`ArgumentError` saying which key is missing or wrong."""
    try:
        record = json.loads(text)
    except ValueError:
        raise ArgumentError(f"the pasted batch record is not readable: {text[:80]!r}") from None
    if not isinstance(record, dict):
        raise ArgumentError(f"the pasted batch record is not readable: {text[:80]!r}")
    size = _record_int(record, BATCH_KEYS["size"], 1)
    image = _record_int(record, BATCH_KEYS["image"], 1, size) - 1
    number = _record_int(record, BATCH_KEYS["number"], 1) - 1
    earlier = _record_int(record, BATCH_KEYS["earlier"], 0, number)
    if earlier not in (0, number):
        raise ArgumentError(f"'{BATCH_KEYS['earlier']}: {earlier}' must be 0 or {number} (the batches before it)")
    seed = _record_int(record, "Seed", None)
    batch_seed = _record_int(record, BATCH_KEYS["seed"], None)
    strength = _record_strength(record)
    subseed = _record_int(record, "Variation seed", None) if strength != 0 else None
    if batch_seed != batch_first_seed(seed, image, strength):
        raise ArgumentError(
            f"'{BATCH_KEYS['seed']}: {batch_seed}' does not match 'Seed: {seed}' of image {image + 1} (edited?)"
        )
    width = _record_int(record, "Size-1", 1) if "Size-1" in record else None
    height = _record_int(record, "Size-2", 1) if "Size-2" in record else None
    model_hash = str(record["Model hash"]) if "Model hash" in record else None
    img2img = _record_source(record)
    return PastedBatch(
        size, image, number, earlier, batch_seed, seed, subseed, strength, width, height, model_hash, img2img
    )


def batch_infotext(
    size: int,
    position: int,
    first_batch: int,
    cross_batch: bool,
    seed: int,
    subseed_strength: float,
    img2img: bool = False,
) -> dict[str, Any] | None:
    """The batch keys of one image: ``position`` in its job (``batch * size + image``), the job starting at batch
    ``first_batch`` of its generation (0 except in a rebuild without memory), ``seed`` the image's own seed,
    ``img2img`` whether the job had init images; None when the image was coupled to no other (a batch of 1 without
    cross-batch coupling)."""
    image, number = position % size, position // size + first_batch
    earlier = number if cross_batch else 0
    if size == 1 and earlier == 0:
        return None
    values: dict[str, Any] = {"size": size, "image": image + 1, "number": number + 1}
    values.update(seed=batch_first_seed(seed, image, subseed_strength), earlier=earlier)
    if img2img:
        values["source"] = IMG2IMG_SOURCE
    return {BATCH_KEYS[name]: value for name, value in values.items()}
