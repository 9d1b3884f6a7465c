"""Reproducing one image of a batch-coupled job with diffusers: the seeds of its batches, its place, the settings.

Contextual repulsion and SPELL couple the images of a batch, so an image's own seed no longer reproduces it: it
depends on the seeds of its whole batch, and with a cross-batch memory (``RepulsionConfig(memory=True)``, SPELL's
``cross_batch``) on every earlier batch of its job too. A :class:`BatchRecord` holds exactly that (every batch's seeds,
which batch and member the image is, the settings, the generator device), JSON-friendly for PNG metadata;
:func:`run_job` runs a job of several batches and returns its images with their records; :func:`reproduce` regenerates
one image from its record, bit-identical on the same hardware, software and call arguments.

The conventions both follow (follow them in a loop of your own and :func:`records` gives the records):

- each batch is one pipeline call, with ``generator=generators(seeds)``: one ``torch.Generator`` per image, seeded
  with that image's seed (diffusers then draws each image's noise from its own generator);
- a job starts from an empty memory (a freshly attached handle, or ``handle.new_job()``), runs its batches in order
  and marks each batch boundary (``handle.new_batch()``);
- every batch gets the same call arguments, plus ``num_images_per_prompt=len(seeds)`` (one prompt string) or what
  ``per_batch(batch, seeds)`` returns (e.g. prompt embeddings of ``len(seeds)`` rows).

Without a memory only the image's own batch is regenerated; with one, its job's earlier batches too (as latents: only
their effect on the memory is needed). diffusers itself is not imported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import RepulsionConfig
from ..spell import ReferenceSet, SpellConfig
from .diffusers import ContextualRepulsionHandle, apply_contextual_repulsion, attached_handle
from .diffusers_spell import SpellHandle, apply_spell, attached_spell

#: What ``to_dict`` writes under "kind" and "version"; ``from_dict`` refuses anything else.
RECORD_KIND = "lib_ctxrep.BatchRecord"
RECORD_VERSION = 1
#: The keys of ``to_dict``'s plain data, exactly.
RECORD_KEYS = frozenset(
    ("kind", "version", "batches", "batch", "index", "seed", "repulsion", "spell", "protected_size")
    + ("generator_device",)
)
#: ``torch.Generator.manual_seed`` takes seeds below 2**64; negative seeds are refused as ambiguous.
SEED_LIMIT = 2**64
#: The call arguments these functions set themselves.
_RESERVED = ("generator", "latents")

#: ``per_batch``: (batch number in the job, that batch's seeds) -> extra pipeline arguments for that batch.
PerBatch = Callable[[int, tuple[int, ...]], Mapping[str, Any]]


def _checked_seed(seed: Any, where: str) -> int:
    """``seed`` when it is a seed these functions take (an integer in [0, 2**64)), else a ValueError naming
    ``where``: the one check of every seed of a job."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{where}: seeds must be integers in [0, 2**64), got {seed!r}")
    return int(seed)


def seed_batches(first_seed: int, batch_size: int, batch_count: int) -> tuple[tuple[int, ...], ...]:
    """The seeds of a job by Forge's convention: image i of the job (batch by batch) gets ``first_seed + i``."""
    for name, value in (("batch_size", batch_size), ("batch_count", batch_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"seed_batches: {name} must be an integer >= 1, got {value!r}")
    _checked_seed(first_seed, "seed_batches: first_seed")
    _checked_seed(first_seed + batch_size * batch_count - 1, "seed_batches: the job's last seed")
    return tuple(
        tuple(range(first_seed + b * batch_size, first_seed + (b + 1) * batch_size)) for b in range(batch_count)
    )


def generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator(device)`` per image, seeded with its seed: the ``generator=`` of one batch's call."""
    return [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]


def _seeds(value: Any) -> tuple[tuple[int, ...], ...]:
    """``value`` as the seeds of a job (non-empty batches of integers in [0, 2**64)), or a ValueError saying why."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"BatchRecord.batches must be a non-empty sequence of batches of seeds, got {value!r}")
    batches = []
    for b, batch in enumerate(value):
        if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence) or not batch:
            raise ValueError(f"BatchRecord.batches[{b}] must be a non-empty sequence of seeds, got {batch!r}")
        batches.append(tuple(_checked_seed(seed, f"BatchRecord.batches[{b}]") for seed in batch))
    return tuple(batches)


def _remembers(repulsion: RepulsionConfig | None, spell: SpellConfig | None) -> bool:
    """Whether these settings carry anything from one batch of a job to the next."""
    if repulsion is not None and repulsion.enabled and repulsion.memory:
        return True
    return spell is not None and spell.enabled and spell.cross_batch and spell.memory_size > 0


@dataclass(frozen=True)
class BatchRecord:
    """What regenerates one image of a job: the seeds of every batch of the job (in order), which batch and member
    the image is, the settings of contextual repulsion and of SPELL (None: not used), the size of SPELL's protected
    set (0: none) and the device of the generators.

    The call arguments (prompt, size, steps, guidance, ...) are not part of it: store them as usual.
    """

    batches: tuple[tuple[int, ...], ...]
    batch: int
    index: int
    repulsion: RepulsionConfig | None = None
    spell: SpellConfig | None = None
    protected_size: int = 0
    generator_device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", _seeds(self.batches))
        count = len(self.batches)
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 0 <= self.batch < count:
            raise ValueError(f"BatchRecord.batch must be a batch number in [0, {count}) (the job has {count} "
                             f"batches), got {self.batch!r}")  # fmt: skip
        size = len(self.batches[self.batch])
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < size:
            raise ValueError(f"BatchRecord.index must be a member of batch {self.batch} in [0, {size}) (it has {size} "
                             f"seeds), got {self.index!r}")  # fmt: skip
        if self.repulsion is not None and not isinstance(self.repulsion, RepulsionConfig):
            raise ValueError(f"BatchRecord.repulsion must be None or a RepulsionConfig, got {self.repulsion!r}")
        if self.spell is not None and not isinstance(self.spell, SpellConfig):
            raise ValueError(f"BatchRecord.spell must be None or a SpellConfig, got {self.spell!r}")
        size = self.protected_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or (size and self.spell is None):
            raise ValueError(f"BatchRecord.protected_size must be an integer >= 0 (0 without SPELL), got {size!r}")
        try:
            object.__setattr__(self, "generator_device", str(torch.device(self.generator_device)))
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"BatchRecord.generator_device must name a torch device: {error}") from None

    @property
    def seed(self) -> int:
        """The image's own seed."""
        return self.batches[self.batch][self.index]

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds of the image's batch."""
        return self.batches[self.batch]

    @property
    def regenerated(self) -> tuple[int, ...]:
        """The batches :func:`reproduce` runs: the image's own, and with a memory every earlier one of its job."""
        return tuple(range(self.batch + 1)) if _remembers(self.repulsion, self.spell) else (self.batch,)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable, e.g. ``json.dumps`` into PNG metadata), the inverse of :meth:`from_dict`.
        "seed" (the image's own) is written for readers and checked against "batches" on the way back."""
        return {
            "kind": RECORD_KIND,
            "version": RECORD_VERSION,
            "batches": [list(batch) for batch in self.batches],
            "batch": self.batch,
            "index": self.index,
            "seed": self.seed,
            "repulsion": None if self.repulsion is None else self.repulsion.to_dict(),
            "spell": None if self.spell is None else dataclasses.asdict(self.spell),
            "protected_size": self.protected_size,
            "generator_device": self.generator_device,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRecord:
        """The record :meth:`to_dict` wrote; a ValueError naming what is missing, unknown or inconsistent."""
        if not isinstance(data, Mapping):
            raise ValueError(f"BatchRecord.from_dict: expected the dict that to_dict wrote, got {type(data).__name__}")
        expected = set(RECORD_KEYS)
        missing, unknown = sorted(expected - set(data)), sorted(set(data) - expected)
        if missing or unknown:
            raise ValueError(f"BatchRecord.from_dict: missing key(s) {missing}, unknown key(s) {unknown}; a record "
                             f"has exactly {sorted(expected)}")  # fmt: skip
        if data["kind"] != RECORD_KIND or data["version"] != RECORD_VERSION:
            raise ValueError(f"BatchRecord.from_dict: kind {data['kind']!r} version {data['version']!r} is not this "
                             f"library's {RECORD_KIND!r} version {RECORD_VERSION}")  # fmt: skip
        record = cls(
            batches=data["batches"],
            batch=data["batch"],
            index=data["index"],
            repulsion=_settings_from_dict(RepulsionConfig, data["repulsion"], "repulsion"),
            spell=_settings_from_dict(SpellConfig, data["spell"], "spell"),
            protected_size=data["protected_size"],
            generator_device=data["generator_device"],
        )
        if data["seed"] != record.seed:
            raise ValueError(f"BatchRecord.from_dict: seed {data['seed']!r} does not match batches[{record.batch}]"
                             f"[{record.index}] = {record.seed}; the seeds were edited inconsistently")  # fmt: skip
        return record


def _settings_from_dict(cls: type, data: Any, key: str) -> Any:
    """``cls`` (RepulsionConfig or SpellConfig) from a record's ``key`` entry (None stays None)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ValueError(
            f"BatchRecord.from_dict: {key!r} must be null or a dict of {cls.__name__} fields, got {data!r}"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"BatchRecord.from_dict: {key!r} has unknown {cls.__name__} field(s) {unknown}")
    if cls is RepulsionConfig:
        return RepulsionConfig.from_dict(dict(data))
    return cls(**data)


@dataclass
class Job:
    """What :func:`run_job` returns: the job's images in order (batch by batch) and the record of each."""

    images: list[Any]
    records: list[BatchRecord]


def _resolve(
    repulsion: RepulsionConfig | ContextualRepulsionHandle | None,
    spell: SpellConfig | SpellHandle | None,
    protected: ReferenceSet | None,
) -> tuple[RepulsionConfig | None, SpellConfig | None, ReferenceSet | None]:
    """The settings (copies) behind configs or handles; a SPELL handle also gives its protected set."""
    if isinstance(repulsion, ContextualRepulsionHandle):
        repulsion = repulsion.config
    if isinstance(spell, SpellHandle):
        protected = protected if protected is not None else spell.engine.protected
        spell = spell.config
    if repulsion is not None and not isinstance(repulsion, RepulsionConfig):
        raise TypeError(f"repulsion must be a RepulsionConfig, a handle or None, got {type(repulsion).__name__}")
    if spell is not None and not isinstance(spell, SpellConfig):
        raise TypeError(f"spell must be a SpellConfig, a SpellHandle or None, got {type(spell).__name__}")
    if protected is not None and spell is None:
        raise ValueError("a protected set is only used by SPELL: pass spell= settings with it")
    copy = dataclasses.replace
    return (
        None if repulsion is None else copy(repulsion),
        None if spell is None else copy(spell),
        protected,
    )


def records(
    batches: Sequence[Sequence[int]],
    *,
    repulsion: RepulsionConfig | ContextualRepulsionHandle | None = None,
    spell: SpellConfig | SpellHandle | None = None,
    protected: ReferenceSet | None = None,
    generator_device: str | torch.device = "cpu",
) -> list[BatchRecord]:
    """The record of every image of a job run by the conventions above (batch by batch, in order), e.g. by a loop of
    your own; settings from configs or handles (a SPELL handle also gives its protected set)."""
    repulsion, spell, protected = _resolve(repulsion, spell, protected)
    seeds = _seeds(batches)
    size = 0 if protected is None else len(protected)
    return [
        BatchRecord(seeds, b, i, repulsion, spell, size, str(generator_device))
        for b, batch in enumerate(seeds)
        for i in range(len(batch))
    ]


@contextlib.contextmanager
def _attached(
    pipe: Any, repulsion: RepulsionConfig | None, spell: SpellConfig | None, protected: ReferenceSet | None
) -> Iterator[ContextualRepulsionHandle | None]:
    """Fresh handles (empty memories) on ``pipe`` for one job, removed on exit; refuses a pipeline that has one."""
    for what, handle in (("contextual repulsion", attached_handle(pipe)), ("SPELL", attached_spell(pipe))):
        if handle is not None:
            raise RuntimeError(
                f"the pipeline already has {what} attached; remove that handle first (handle.remove()): a job is "
                "run, and reproduced, on handles of its own that start from an empty memory"
            )
    with contextlib.ExitStack() as stack:
        handle = None
        if repulsion is not None:
            handle = stack.enter_context(apply_contextual_repulsion(pipe, repulsion))
        if spell is not None:
            stack.enter_context(apply_spell(pipe, spell, protected))
        yield handle


def _call_arguments(pipeline_kwargs: Mapping[str, Any], extra: Any, who: str) -> dict[str, Any]:
    """The call's arguments: the job's and the batch's, which must not overlap or set what the seeds decide."""
    if not isinstance(extra, Mapping):
        raise TypeError(f"{who}: per_batch must return a mapping of pipeline arguments, got {type(extra).__name__}")
    reserved = sorted(set(_RESERVED) & (set(pipeline_kwargs) | set(extra)))
    if reserved:
        raise ValueError(f"{who}: {reserved} must not be passed: each image's noise comes from its seed in batches")
    both = sorted(set(pipeline_kwargs) & set(extra))
    if both:
        raise ValueError(f"{who}: {both} given both as a call argument and by per_batch; give each in one place")
    return {**pipeline_kwargs, **extra}


def _one_image_per_prompt(batch: int, seeds: tuple[int, ...]) -> dict[str, Any]:
    """The default ``per_batch``: one prompt, one image per seed."""
    return {"num_images_per_prompt": len(seeds)}


def _run(
    pipe: Any,
    job: BatchRecord,
    numbers: Sequence[int],
    keep: Sequence[int],
    protected: ReferenceSet | None,
    per_batch: PerBatch | None,
    pipeline_kwargs: Mapping[str, Any],
    who: str,
) -> dict[int, list[Any]]:
    """Run the batches ``numbers`` of ``job`` (its seeds, settings and generator device) in order on fresh handles;
    the images of the batches in ``keep``, one per seed. The others (memory only) return latents, never decoded."""
    per_batch = per_batch or _one_image_per_prompt
    out: dict[int, list[Any]] = {}
    with _attached(pipe, job.repulsion, job.spell, protected) as handle:
        for b in numbers:
            seeds = job.batches[b]
            kwargs = _call_arguments(pipeline_kwargs, per_batch(b, seeds), who)
            if b not in keep:
                kwargs["output_type"] = "latent"
            result = pipe(**kwargs, generator=generators(seeds, job.generator_device))
            images = result[0] if isinstance(result, tuple) else result.images
            if len(images) != len(seeds):
                raise ValueError(f"{who}: batch {b} gave {len(images)} images for its {len(seeds)} seeds; the call "
                                 "arguments (or per_batch) must ask for one image per seed")  # fmt: skip
            if b in keep:
                out[b] = [images[i] for i in range(len(seeds))]
            if handle is not None:
                handle.new_batch()
    return out


def run_job(
    pipe: Any,
    batches: Sequence[Sequence[int]],
    *,
    repulsion: RepulsionConfig | ContextualRepulsionHandle | None = None,
    spell: SpellConfig | SpellHandle | None = None,
    protected: ReferenceSet | None = None,
    generator_device: str | torch.device = "cpu",
    per_batch: PerBatch | None = None,
    **pipeline_kwargs: Any,
) -> Job:
    """Generate a job of several batches with contextual repulsion and/or SPELL; every image with its record.

    Args:
        pipe: a diffusers pipeline that :func:`apply_contextual_repulsion` (and, with ``spell``, :func:`apply_spell`)
            accepts, with nothing of this library attached: the job attaches handles of its own and removes them.
        batches: the seeds of each batch, in order, e.g. ``seed_batches(10, 4, 2)`` = ((10, .., 13), (14, .., 17)).
        repulsion, spell: the settings, as configs or handles (their settings only: remove a handle first); None:
            not used. ``protected``: SPELL's protected set (a SPELL handle brings its own).
        generator_device: where each image's ``torch.Generator`` lives ("cpu": the same noise on every machine).
        per_batch: ``(batch number, seeds) -> pipeline arguments`` of that batch (e.g. prompt embeddings of
            ``len(seeds)`` rows); default ``num_images_per_prompt=len(seeds)``, for one prompt.
        **pipeline_kwargs: the arguments of every batch's call (prompt, height, width, num_inference_steps,
            guidance_scale, output_type, ...); never ``generator`` or ``latents``.

    Returns:
        A :class:`Job`: ``images`` (``images[i]`` of each call's output, batch by batch) and ``records`` (one each).
    """
    job_records = records(
        batches, repulsion=repulsion, spell=spell, protected=protected, generator_device=generator_device
    )
    job = job_records[0]
    if protected is None and isinstance(spell, SpellHandle):
        protected = spell.engine.protected
    every = range(len(job.batches))
    out = _run(pipe, job, every, every, protected, per_batch, pipeline_kwargs, "run_job")
    return Job([image for b in every for image in out[b]], job_records)


def reproduce(
    pipe: Any,
    record: BatchRecord,
    *,
    protected: ReferenceSet | None = None,
    per_batch: PerBatch | None = None,
    **pipeline_kwargs: Any,
) -> Any:
    """Regenerate the image ``record`` describes: its batch, after every earlier batch of its job when the settings
    have a memory, on fresh handles (empty memories, as the job began), with the record's settings and seeds.

    Args:
        pipe: the pipeline of the job (same weights, scheduler, device, dtype), with nothing of this library
            attached.
        record: the image's :class:`BatchRecord` (from :func:`run_job`, :func:`records` or ``BatchRecord.from_dict``).
        protected: SPELL's protected set, when the job had one (``record.protected_size`` says its size).
        per_batch, **pipeline_kwargs: the job's call arguments, exactly as it was run (see :func:`run_job`).

    Returns:
        ``images[record.index]`` of the batch's output (a PIL image, an array or a tensor, by ``output_type``):
        bit-identical to the job's on the same hardware and software.
    """
    if not isinstance(record, BatchRecord):
        raise TypeError(f"reproduce: record must be a BatchRecord (BatchRecord.from_dict(...)), got {record!r}")
    given = 0 if protected is None else len(protected)
    if given != record.protected_size:
        raise ValueError(f"reproduce: the job's SPELL protected set had {record.protected_size} samples, "
                         f"got {'none' if protected is None else given}")  # fmt: skip
    out = _run(pipe, record, record.regenerated, (record.batch,), protected, per_batch, pipeline_kwargs, "reproduce")
    return out[record.batch][record.index]
