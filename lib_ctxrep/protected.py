"""Protected sets for SPELL: loading them safely from a folder of images or a saved latent set.

A protected set may be named through the API of a webui exposed with ``--listen``, so what is read is restricted:

- only paths inside one root folder that the user configured (Forge: Settings, not settable through the API); the
  path is resolved (``..`` and symbolic links included) before it is compared with the root;
- saved latent sets are read only as ``.safetensors`` (a header of JSON and raw tensor bytes); pickle-based files
  (``.pt``, ``.ckpt``, ``.pkl``, ...) can run code when loaded and are refused with that reason, whatever their name;
- folders are read one level deep, image files only (PIL); other files are skipped and named in the notes.

Images are resized to cover the generation's resolution and centre-cropped, then encoded by the host's VAE callable,
so the set lives in the same latent space and shape as the samples. Nothing here imports a host; PIL and safetensors
are imported when first needed.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .spell import DEFAULT_EXACT_LIMIT, DEFAULT_NPROBE, ReferenceSet

#: Suffixes of files that are (or usually are) pickles: never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".joblib")
#: Suffixes read as images in a protected folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: ``format`` metadata of a latent set written by :func:`save_latent_set`.
LATENT_SET_FORMAT = "lib_ctxrep.latent_set"
#: Images encoded per VAE call: a few at a time, so a large folder never holds more than a few images' activations on
#: the model's device.
ENCODE_CHUNK = 4
#: A safetensors file starts with the length of its JSON header as a little-endian u64.
_HEADER_LENGTH_BYTES = 8
#: The shortest JSON header: ``{}``.
_SHORTEST_HEADER = 2
#: Bytes 0 .. 255 over this, minus 1, are the [-1, 1] pixel values a VAE encodes.
_HALF_BYTE_RANGE = 127.5
#: File names a note lists before "and N more", so that a large folder's note stays readable.
_NAMES_SHOWN = 5


class ProtectedSetError(ValueError):
    """A protected set cannot be used; the message says which path and why."""


@dataclass
class ProtectedSet:
    """A loaded protected set: its references, where it came from and what was noticed while loading it."""

    references: ReferenceSet
    source: str
    latent_space: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.references)


# ---- paths -------------------------------------------------------------------------------------------------------
def resolve_inside_root(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """``path`` (absolute, or relative to ``root``) resolved, if it exists and lies inside ``root``; otherwise a
    :class:`ProtectedSetError` saying why (no root configured, outside the root, not found)."""
    if not root or not str(root).strip():
        raise ProtectedSetError(
            "protected sets are off: no protected-set folder is configured (Forge: Settings > Contextual Repulsion "
            "> 'Folder that SPELL protected sets are read from'); the set was not read"
        )
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise ProtectedSetError(f"the protected-set folder {str(root)!r} configured in Settings is not a folder")
    text = str(path).strip()
    if not text:
        raise ProtectedSetError("no protected set given (a folder of images or a .safetensors latent set)")
    candidate = Path(text).expanduser()
    resolved = (candidate if candidate.is_absolute() else root_path / candidate).resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise ProtectedSetError(
            f"refused: {text!r} is outside the protected-set folder {str(root_path)!r} configured in Settings "
            "(only paths inside it are read)"
        )
    if not resolved.exists():
        raise ProtectedSetError(f"protected set {text!r} not found (looked for {str(resolved)!r})")
    return resolved


# ---- saved latent sets ---------------------------------------------------------------------------------------------
def _refuse_pickles(path: Path) -> None:
    name = path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ProtectedSetError(
            f"refused: {name!r} is a pickle-based file ({path.suffix}); pickled files can run code when loaded, so "
            "latent sets are read only as .safetensors (write one with lib_ctxrep.protected.save_latent_set)"
        )
    if path.suffix.lower() != ".safetensors":
        raise ProtectedSetError(f"{name!r} is neither a folder of images nor a .safetensors latent set")
    with open(path, "rb") as f:
        head = f.read(_HEADER_LENGTH_BYTES)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise ProtectedSetError(
                f"refused: {name!r} is a pickle (or a torch zip archive) renamed to .safetensors; it was not loaded"
            )
        length = struct.unpack("<Q", head)[0] if len(head) == _HEADER_LENGTH_BYTES else 0
        if not _SHORTEST_HEADER <= length <= path.stat().st_size - _HEADER_LENGTH_BYTES:
            raise ProtectedSetError(f"{name!r} is not a valid safetensors file (bad header)")
        try:
            json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            raise ProtectedSetError(f"{name!r} is not a valid safetensors file (unreadable header)") from None


#: Latent space of each Forge diffusion engine (backend/diffusion_engine/*.py): models sharing a VAE share it, so a
#: set made for one may protect the other.
FORGE_LATENT_SPACES = {
    "StableDiffusion": "sd1",
    "StableDiffusion2": "sd1",
    "StableDiffusionXL": "sdxl",
    "StableDiffusionXLRefiner": "sdxl",
    "StableDiffusion3": "sd3",
    "Flux": "flux",
    "Chroma": "flux",
}


def forge_latent_space(sd_model: Any) -> str:
    """The latent-space name of a Forge engine (``p.sd_model``): the engine's own class name unless it shares its VAE
    with another (:data:`FORGE_LATENT_SPACES`)."""
    name = type(sd_model).__name__
    return FORGE_LATENT_SPACES.get(name, name)


def save_latent_set(path: str | os.PathLike, latents: torch.Tensor, latent_space: str, **metadata: str) -> None:
    """Write ``latents`` [K, ...] (in the sampler's latent space of a model family, e.g. ``"flux"``) as a latent
    set that :func:`load_latent_set` reads. ``metadata`` adds free-form string entries (e.g. ``source=``)."""
    from safetensors.torch import save_file

    if latents.ndim < 2 or latents.shape[0] == 0:
        raise ValueError(f"save_latent_set: latents must be a non-empty [K, ...] tensor, got {tuple(latents.shape)}")
    meta = {"format": LATENT_SET_FORMAT, "latent_space": str(latent_space), **{k: str(v) for k, v in metadata.items()}}
    save_file({"latents": latents.detach().to("cpu").contiguous()}, str(path), metadata=meta)


def load_latent_set(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, str]]:
    """The latents [K, ...] and metadata of a latent set written by :func:`save_latent_set`. Only safetensors is
    read; pickle files are refused without being opened by a deserialiser."""
    from safetensors import safe_open

    path = Path(path)
    _refuse_pickles(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "latents" not in f.keys():
                found = sorted(f.keys())[:_NAMES_SHOWN]
                raise ProtectedSetError(
                    f"{path.name!r} has no 'latents' tensor (found {found}); write latent sets with "
                    "lib_ctxrep.protected.save_latent_set"
                )
            latents = f.get_tensor("latents")
    except ProtectedSetError:
        raise
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ProtectedSetError(f"{path.name!r} could not be read as safetensors: {error}") from None
    if latents.ndim < 2 or latents.shape[0] == 0 or not latents.is_floating_point():
        raise ProtectedSetError(f"{path.name!r}: 'latents' must be a non-empty float [K, ...] tensor")
    return latents, metadata


def check_latents(
    latents: torch.Tensor, metadata: dict[str, str], name: str, latent_space: str, sample_shape: tuple[int, ...]
) -> None:
    """Refuse a latent set made for another model (latent space or channel count) or another resolution."""
    made_for = metadata.get("latent_space")
    shape = tuple(latents.shape[1:])
    if made_for is not None and made_for != latent_space:
        raise ProtectedSetError(
            f"{name!r} holds {made_for} latents; this model's latents are {latent_space} (a set from another model)"
        )
    if shape[:1] != tuple(sample_shape[:1]) or len(shape) != len(sample_shape):
        raise ProtectedSetError(
            f"{name!r} holds latents of shape {shape}, this model's are {tuple(sample_shape)} (a set from another "
            "model: the channel counts differ)"
        )
    if shape != tuple(sample_shape):
        raise ProtectedSetError(
            f"{name!r} was made at latent size {shape[1:]}, this generation's latents are {tuple(sample_shape[1:])}: "
            "make the set at the generation's resolution, or use a folder of images (encoded at any resolution)"
        )


# ---- folders of images ---------------------------------------------------------------------------------------------
def _image_files(folder: Path) -> tuple[list[Path], list[str]]:
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as error:
        raise ProtectedSetError(f"cannot read the folder {folder.name!r}: {error.strerror or error}") from None
    if not entries:
        raise ProtectedSetError(f"the folder {folder.name!r} is empty (it needs images; subfolders are not read)")
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
    return images, others


def _fit(image, width: int, height: int):
    """Resize to cover width x height, then centre-crop (the generation's resolution)."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    size = (max(width, math.ceil(image.width * scale)), max(height, math.ceil(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def read_image_folder(folder: str | os.PathLike, width: int, height: int) -> tuple[torch.Tensor, list[str]]:
    """The images of ``folder`` as [N, 3, height, width] in [-1, 1] and notes on what was skipped or resized.
    Raises :class:`ProtectedSetError` for an empty or unreadable folder, or one without a single readable image."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    files, others = _image_files(folder)
    tensors, broken, resized = [], [], 0
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError):
            broken.append(path.name)
            continue
        if image.size != (width, height):
            resized += 1
            image = _fit(image, width, height)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
        tensors.append(data.permute(2, 0, 1).float() / _HALF_BYTE_RANGE - 1.0)
    skipped = others + broken
    notes = []
    if skipped:
        more = len(skipped) - _NAMES_SHOWN
        shown = ", ".join(skipped[:_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
        notes.append(f"skipped {len(skipped)} file(s) in {folder.name!r} that are not readable images: {shown}")
    if not tensors:
        raise ProtectedSetError(f"the folder {folder.name!r} has no readable images ({len(skipped)} other file(s))")
    if resized:
        notes.append(f"{resized} image(s) of another size were resized and centre-cropped to {width}x{height}")
    return torch.stack(tensors), notes


def encode_images(images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``encode`` (the host's VAE: [n, 3, H, W] in [-1, 1] -> sampler latents) over ``images`` in small chunks."""
    out = [encode(images[i : i + ENCODE_CHUNK]).detach().float().cpu() for i in range(0, len(images), ENCODE_CHUNK)]
    return torch.cat(out)


# ---- one entry point for hosts, with a cache ------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, ProtectedSet] = OrderedDict()
#: Protected sets kept loaded (e.g. one per tab); each holds its latents in CPU memory, so only a couple are kept.
_CACHE_ENTRIES = 2


def _signature(path: Path) -> tuple:
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir()) if p.is_file())


def load_protected_set(
    path: str | os.PathLike,
    root: str | os.PathLike | None,
    *,
    latent_space: str,
    sample_shape: tuple[int, ...],
    width: int,
    height: int,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    nprobe: int = DEFAULT_NPROBE,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    progress: Callable[[int, int], None] | None = None,
) -> ProtectedSet:
    """Load the protected set at ``path`` (inside ``root``) for samples of ``sample_shape`` in ``latent_space``.

    A folder of images is encoded with ``encode`` at ``width`` x ``height``; a ``.safetensors`` latent set is checked
    against the latent space and shape. Above ``exact_limit`` latents an approximate (faiss) index is built and saved
    beside a latent set as ``<name>.faiss``, and reloaded from there next time. Results are cached while the files
    are unchanged. Raises :class:`ProtectedSetError` with the reason when the set cannot be used.
    """
    resolved = resolve_inside_root(path, root)
    try:
        key = (str(resolved), _signature(resolved), tuple(sample_shape), latent_space, width, height, nprobe)
    except OSError as error:
        raise ProtectedSetError(f"cannot read {Path(path).name!r}: {error.strerror or error}") from None
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    notes: list[str] = []
    latent_set = None
    if resolved.is_dir():
        if encode is None:
            raise ProtectedSetError("a folder of images needs the model's VAE to encode it; none was given")
        images, notes = read_image_folder(resolved, width, height)
        latents = encode_images(images, encode)
        if tuple(latents.shape[1:]) != tuple(sample_shape):
            raise ProtectedSetError(
                f"the VAE encoded {resolved.name!r} to latents of shape {tuple(latents.shape[1:])}, the samples are "
                f"{tuple(sample_shape)}"
            )
    else:
        latents, metadata = load_latent_set(resolved)
        check_latents(latents, metadata, resolved.name, latent_space, sample_shape)
        latent_set = resolved
    references = _reference_set(latents, nprobe, exact_limit, progress, latent_set)
    loaded = ProtectedSet(references, resolved.name, latent_space, notes)
    _CACHE[key] = loaded
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return loaded


def _reference_set(
    latents: torch.Tensor,
    nprobe: int,
    exact_limit: int,
    progress: Callable[[int, int], None] | None,
    latent_set: Path | None,
) -> ReferenceSet:
    """The set's search structure; for a saved latent set above ``exact_limit``, its index is kept beside it."""
    index_file = None if latent_set is None else latent_set.with_name(latent_set.name + ".faiss")
    reuse = (
        index_file is not None
        and len(latents) > exact_limit
        and index_file.is_file()
        and index_file.stat().st_mtime_ns >= latent_set.stat().st_mtime_ns
    )
    if reuse:
        references = ReferenceSet(latents, exact_limit=len(latents), nprobe=nprobe)
        try:
            references.load_index(str(index_file))
            return references
        except (ValueError, RuntimeError):
            pass  # stale or foreign index: rebuilt below
    references = ReferenceSet(latents, exact_limit=exact_limit, nprobe=nprobe, progress=progress)
    if references.approximate and index_file is not None:
        try:
            references.save_index(str(index_file))
        except (OSError, RuntimeError):
            pass  # a read-only folder: the index is rebuilt next time
    return references


def clear_cache() -> None:
    """Forget cached protected sets (tests; or after editing a folder in place with unchanged sizes and times)."""
    _CACHE.clear()
