"""The Forge script's arguments: positional order, the API dict form, infotext keys, and the pasted-batch record.

What every host shares (names, labels, ranges, tooltips, validation) is in :mod:`lib_ctxrep.settings`; this module
adds only what Forge has: the positional order of the script's arguments, the API's dict form over the defaults Forge
pads it with, the infotext keys, and the hidden record of a pasted image's batch. Pure Python (no Forge, no gradio),
so the UI, the API (``alwayson_scripts``), paste / "Send to" and the XYZ axes all go through the same conversions,
and so they can be tested without a webui.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from ..settings import BLOCK_PRESETS, SETTINGS, SINGLE_MODES, TITLE, SettingError, Settings, as_bool, refuse_ambiguous
from ..settings import DEFAULTS as _SETTING_DEFAULTS
from ..settings import parse as _parse_settings

__all__ = ["BLOCK_PRESETS", "SINGLE_MODES", "TITLE", "ArgumentError", "ScriptSettings"]

#: The validation error (the message names the argument and what it accepts).
ArgumentError = SettingError
#: Validated settings of the script.
ScriptSettings = Settings

#: Positional order of the script's arguments (the ``ui()`` return order and the API's ``args`` list). New arguments
#: are appended, so positional API calls written for an older version keep their meaning (position 1, the per-block
#: strength, was named "strength" before 0.3).
ARG_NAMES = (
    "enabled",
    "block_strength",
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
    **{name: _SETTING_DEFAULTS[name] for name in ARG_NAMES if name in SETTINGS},
    # A hidden field: the pasted image's batch record (JSON, see pasted_batch_record), "" when nothing was pasted.
    # "reproduce" is not an infotext field: it is a choice of the user, not a property of the image.
    "pasted_batch": "",
}
#: Readable infotext keys (no ',' or ':' in keys), per argument; "enabled" is implied by the presence of the keys.
INFOTEXT_KEYS = {
    "enabled": "CtxRep",
    "block_strength": "CtxRep block strength",
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
#: Infotext keys written before 0.3, read with the meaning they had then: "CtxRep strength" was always the per-block
#: strength.
OLD_INFOTEXT_KEYS = {"CtxRep strength": "block_strength"}
#: Infotext keys written at sampling time (not arguments): SPELL's radius in latent units and its sparsity.
SPELL_RADIUS_ABS_KEY = "CtxRep SPELL radius abs"
#: Infotext key written at sampling time: the family contextual repulsion ran on ("Flux.1", "Krea 2", ...).
ARCHITECTURE_KEY = "CtxRep model"
SPELL_PUSHED_KEY = "CtxRep SPELL pushed"


def normalise(args: list | tuple | dict) -> dict[str, Any]:
    """Script arguments as a dict of every argument, defaults filled in.

    Accepts the UI / API positional list, the API dict form ``{"enabled": true, "step_strength": 4.0, ...}``, and the
    dict as the first element of the list. Forge's API (``modules/api/api.py`` ``init_script_args``) always sends a
    full list: the request's ``args`` in the first positions, then the UI default (or the value pasted from an
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
    """The dict form's values, refusing ambiguous keys with the ones to use, infotext-style keys with the argument
    they stand for, and unknown keys with the closest known name."""
    refuse_ambiguous(values)
    by_infotext = {label: name for name, label in INFOTEXT_KEYS.items()}
    by_infotext.update(OLD_INFOTEXT_KEYS)
    unknown = sorted(str(key) for key in set(values) - set(ARG_NAMES))
    if unknown:
        hints = []
        for key in unknown:
            if key in by_infotext:
                hints.append(f"{key!r} (an infotext key: the argument is {by_infotext[key]!r})")
            elif close := difflib.get_close_matches(key, ARG_NAMES, 1):
                hints.append(f"{key!r} (did you mean {close[0]!r}?)")
            else:
                hints.append(repr(key))
        raise ArgumentError(f"{TITLE}: unknown argument(s) {', '.join(hints)}; known: {list(ARG_NAMES)}")
    return dict(values)


def is_enabled(values: dict[str, Any]) -> bool:
    """Whether normalised arguments ask for the extension (``"enabled"`` read as :func:`parse` reads it)."""
    return as_bool("enabled", values["enabled"])


def reproduce_requested(values: dict[str, Any]) -> bool:
    """Whether normalised arguments ask to reproduce a pasted image of a batch (``"reproduce"``)."""
    return as_bool("reproduce", values["reproduce"])


def parse(args: list | tuple | dict) -> ScriptSettings:
    """Validate script arguments into settings; raises :class:`ArgumentError` naming the bad argument."""
    v = normalise(args)
    settings = _parse_settings({name: value for name, value in v.items() if name in SETTINGS})
    settings.values["pasted_batch"] = str(v["pasted_batch"] or "")
    return settings


def infotext(settings: ScriptSettings, *, repulsion: bool = True, spell: bool = True) -> dict[str, Any]:
    """Infotext entries for an enabled run, for the methods that ran (``repulsion`` / ``spell``, each also only if
    enabled in ``settings``): readable keys, optional ones only when they differ from the default."""
    v = settings.values
    out: dict[str, Any] = {INFOTEXT_KEYS["enabled"]: True}
    if repulsion and settings.repulsion:
        for name in ("step_strength", "window", "blocks", "single_blocks", "memory", "hires", "iterations"):
            out[INFOTEXT_KEYS[name]] = v[name]
        if settings.config.strength is not None:
            out[INFOTEXT_KEYS["block_strength"]] = settings.config.strength
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
    """Argument values recovered from pasted infotext ``params`` (missing keys give defaults; absent = disabled);
    keys written by older versions keep their meaning."""
    values = dict(DEFAULTS)
    values["enabled"] = str(params.get(INFOTEXT_KEYS["enabled"], "False")).strip().lower() == "true"
    keys = [(name, key) for name, key in INFOTEXT_KEYS.items() if name != "enabled"]
    keys += [(name, key) for key, name in OLD_INFOTEXT_KEYS.items()]
    for name, key in keys:
        if key not in params:
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
