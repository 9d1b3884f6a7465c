"""Reproducing one pasted image of a coupled Forge batch: the batch infotext keys written per image, and the rebuild
of a pasted image's batch (and the earlier batches its memory needs) that returns only that image.

The Forge script wires these into its hooks: ``Rebuild.start`` in ``before_process``, ``Rebuild.keep`` in
``postprocess_batch_list``, ``Rebuild.finish`` in ``postprocess``, ``batch_key`` as per-image infotext values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import forge_args

#: Forge's per-job lists (modules/processing.py setup_prompts / process_images_inner; Neo adds the comment-prompt
#: lists); a rebuild leaves only the pasted image's entry in each.
JOB_LISTS = (
    "all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds", "all_hr_prompts", "all_hr_negative_prompts",
    "_all_prompts_c", "_all_negative_prompts_c",
)  # fmt: skip
#: Forge's per-batch lists (processing.py's batch loop); an earlier batch of a rebuild empties them.
BATCH_LISTS = ("prompts", "negative_prompts", "seeds", "subseeds")
#: The job lists ``Processed`` copies from ``p`` (processing.py Processed.__init__), set again after a rebuild.
RESULT_LISTS = ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds")


def as_int(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (Forge passes seeds and sizes as int, float or str), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def own_seed_or_none(p: Any) -> int | None:
    """The job's seed as Forge will use it, or None when it is random (-1), a list, or not a number."""
    seed = as_int(getattr(p, "seed", None))
    return None if seed is None or seed == -1 else seed


def is_single(p: Any) -> bool:
    """Whether ``p`` is one image: batch size and batch count 1."""
    return as_int(getattr(p, "batch_size", 1)) == 1 and as_int(getattr(p, "n_iter", 1)) == 1


def is_img2img(p: Any) -> bool:
    """Whether ``p`` is an img2img / inpaint job (Forge's StableDiffusionProcessingImg2Img has init images)."""
    return bool(getattr(p, "init_images", None))


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _same_image_problem(p: Any, pasted: forge_args.PastedBatch) -> str | None:
    """rebuild_problem's checks that ``p`` still is the pasted image: "" when it is not (nothing to say), a note
    when it is but its batch would not give it (another variation strength, tab, size), else None."""
    if own_seed_or_none(p) != pasted.seed:
        return ""
    strength = _float_or_none(getattr(p, "subseed_strength", 0))
    if strength != pasted.subseed_strength:
        return (
            f"the variation strength differs from the pasted image's ({strength} vs {pasted.subseed_strength}), "
            "so its batch was not rebuilt"
        )
    if pasted.subseed_strength != 0 and as_int(getattr(p, "subseed", None)) != pasted.subseed:
        return ""  # another variation seed: another image
    if is_img2img(p) != pasted.img2img:
        made, this = ("img2img", "txt2img") if pasted.img2img else ("txt2img", "img2img")
        return f"the pasted image was made in {made}, this run is {this}, so its batch was not rebuilt"
    return None


def _size_problem(p: Any, pasted: forge_args.PastedBatch, max_images: int, max_batch_size: int) -> str | None:
    """rebuild_problem's checks of what the rebuild would cost and whether Forge could have made that batch."""
    if pasted.size > max_batch_size:
        return (
            f"the pasted image's batch size {pasted.size} is above the batch size maximum ({max_batch_size}), "
            "so its batch was not rebuilt"
        )
    if pasted.images > max_images:
        return (
            f"rebuilding would generate {pasted.images} images; the limit is {max_images} (Settings > "
            "Contextual Repulsion), so its batch was not rebuilt"
        )
    if -1 in pasted.first_seeds():
        return "the rebuilt batch would start at seed -1, which Forge makes random, so its batch was not rebuilt"
    size = (as_int(getattr(p, "width", None)), as_int(getattr(p, "height", None)))
    if pasted.width is not None and size != (pasted.width, pasted.height):
        return f"the pasted image is {pasted.width} by {pasted.height}, this run is {size[0]} by {size[1]}"
    return None


def rebuild_problem(
    p: Any, pasted: forge_args.PastedBatch, max_images: int, max_batch_size: int, *, video: bool = False
) -> str | None:
    """None when ``p`` is the pasted image alone and its batch can be rebuilt; "" when ``p`` is no longer that image
    (another seed, an upscale of a gallery image, a video model, ``video``): nothing to say; otherwise why it is not
    rebuilt. ``max_images``: the most images a rebuild may generate; ``max_batch_size``: the largest batch size
    allowed; ``video``: the model makes videos (Forge Neo's Wan: the batch is a video's frames)."""
    if getattr(p, "txt2img_upscale", False) or getattr(p, "firstpass_image", None) is not None:
        return ""
    if video:
        return ""
    problem = _same_image_problem(p, pasted)
    if problem is not None:
        return problem
    if not is_single(p):
        if p.batch_size == pasted.size and pasted.image == 0 and pasted.earlier == 0:
            return ""  # the run starts with the pasted batch itself
        return "batch size or batch count is not 1, so the pasted image's batch was not rebuilt (set both to 1)"
    return _size_problem(p, pasted, max_images, max_batch_size)


class Rebuild:
    """A pasted image regenerated with its batch: ``start`` (before_process) enlarges the job, ``keep``
    (postprocess_batch_list) drops every other image, ``finish`` (postprocess) gives ``p`` and the result back the
    shape of a single image; ``cancel`` (process) undoes ``start``. ``outcome`` says whether the image was
    reproduced: not when a batch was cut short (``keep``'s ``cut``) or the pasted image's batch never ran."""

    def __init__(self, pasted: forge_args.PastedBatch, seed: Any, subseed: Any) -> None:
        self.pasted, self.seed, self.subseed = pasted, seed, subseed
        self.kept = False  # the pasted image's batch went through keep()
        self.cut: str | None = None  # why a batch of the rebuild was cut short ("interrupted", "skipped", ...)

    @classmethod
    def start(cls, p: Any, pasted: forge_args.PastedBatch) -> Rebuild:
        """Make ``p`` the pasted image's job: its batch size, the batches up to its own, their first seeds."""
        rebuild = cls(pasted, p.seed, getattr(p, "subseed", -1))
        p.batch_size, p.n_iter = pasted.size, pasted.earlier + 1
        p.seed, subseed = pasted.first_seeds()
        if subseed is not None:
            p.subseed = subseed
        # Forge saves every image of the batch before the hires pass when this is on; only the pasted one counts.
        p.override_settings = {
            **(getattr(p, "override_settings", None) or {}),
            "save_images_before_highres_fix": False,
        }
        return rebuild

    def keep(self, p: Any, images: list, batch_number: int, cut: str | None = None) -> list:
        """The images of batch ``batch_number`` to give back: none of an earlier batch, the pasted one of the last.
        ``cut``: why this batch was cut short (an interrupt or skip while it sampled), None when it ran in full."""
        if cut is not None and self.cut is None:
            self.cut = f"{cut} during batch {batch_number + 1} of the {self.pasted.earlier + 1} rebuilt batch(es)"
        if batch_number < self.pasted.earlier:
            for name in BATCH_LISTS:
                setattr(p, name, [])
            return []
        self.kept = True
        k, first = self.pasted.image, batch_number * self.pasted.size
        for name in BATCH_LISTS:
            setattr(p, name, [getattr(p, name)[k]])
        for name in JOB_LISTS:  # other scripts read p.all_seeds[iteration * batch_size + batch_index]
            values = getattr(p, name, None)
            if isinstance(values, list) and len(values) > first + k:
                values[first], values[first + k] = values[first + k], values[first]
                values[0] = values[first]  # the grid's infotext (use_main_prompt) reads index 0
        return [images[k]]

    def outcome(self, hires: bool = False) -> str:
        """The note on the result: what was regenerated, or why the pasted image could not be reproduced."""
        pasted = self.pasted
        if self.cut is not None or not self.kept:
            why = self.cut or "the generation stopped before the pasted image's batch"
            return f"{why}, so image {pasted.image + 1} of batch {pasted.number + 1} could not be reproduced"
        each = " (each with its hires pass)" if hires and pasted.images > 1 else ""
        return (
            f"reproducing image {pasted.image + 1} of batch {pasted.number + 1}: regenerated {pasted.images} "
            f"images to reproduce 1{each}"
        )

    def _single(self, p: Any, index: int) -> None:
        for name in JOB_LISTS:
            values = getattr(p, name, None)
            if isinstance(values, list) and len(values) > index:
                setattr(p, name, [values[index]])
        p.batch_size, p.n_iter, p.seed, p.subseed = 1, 1, self.seed, self.subseed

    def cancel(self, p: Any) -> None:
        """Back to the pasted image alone, its own seeds, after Forge computed the enlarged job's lists."""
        self._single(p, self.pasted.position)

    def finish(self, p: Any, processed: Any) -> None:
        """``p`` and the result as a single-image run of the pasted image (X/Y/Z and the API read them)."""
        # keep() moved the image to its batch's first position; a job stopped before that batch left it in place
        self._single(p, self.pasted.earlier * self.pasted.size if self.kept else self.pasted.position)
        if processed is None:
            return
        for name in RESULT_LISTS:
            setattr(processed, name, list(getattr(p, name)))
        processed.seed, processed.subseed, processed.batch_size = p.all_seeds[0], p.all_subseeds[0], 1


class BatchKeys:
    """What the batch infotext keys of a job are computed from: batch ``size``, the job's first variation seed
    ``base`` (image g of the job has variation seed ``base + g``, whatever the variation strength), the batch the job
    starts at, whether it is an img2img job, and whether the images were coupled (within the batch, across
    batches)."""

    def __init__(self, size: int, base: int, first_batch: int = 0, img2img: bool = False) -> None:
        self.size, self.base, self.first_batch, self.img2img = size, base, first_batch, img2img
        self.coupled = self.cross_batch = False

    @classmethod
    def start(cls, p: Any) -> BatchKeys | None:
        """In process(), after Forge computed the job's seeds; None when its variation seeds were given as a list."""
        subseeds = getattr(p, "all_subseeds", None)
        if isinstance(getattr(p, "subseed", None), list) or not subseeds or as_int(subseeds[0]) is None:
            return None
        rebuild = getattr(p, "_ctxrep_rebuild", None)
        first = 0 if rebuild is None else rebuild.pasted.number - rebuild.pasted.earlier
        return cls(int(p.batch_size), int(subseeds[0]), first, is_img2img(p))

    def values(self, seed: int, subseed: int, strength: float) -> dict[str, Any] | None:
        """The batch keys of the image with these seeds; None when it was coupled to no other image."""
        if not self.coupled:
            return None
        return forge_args.batch_infotext(
            self.size, subseed - self.base, self.first_batch, self.cross_batch, seed, strength, self.img2img
        )


def batch_key(key: str) -> Callable[..., Any]:
    """An infotext value Forge computes per image (processing.py create_infotext calls a callable value with its
    locals): the image is found by its own variation seed, which is right at every call site (per image, the
    params.txt and Processed.infotext job lists, after a rebuild); the grid gets none."""

    def value(p: Any = None, index: Any = None, all_seeds: Any = None, all_subseeds: Any = None, **kwargs: Any) -> Any:
        record = getattr(p, "_ctxrep_batch", None)
        if record is None or index is None or kwargs.get("use_main_prompt"):
            return None
        try:
            values = record.values(int(all_seeds[index]), int(all_subseeds[index]), float(p.subseed_strength))
        except (TypeError, ValueError, IndexError):
            return None
        return None if values is None else values.get(key)

    return value
