"""Procedural data of the reference model: 16x16 RGB images of one coloured shape, with known, unevenly frequent modes.

What it is for: batch-diversity methods need a model whose output distribution is known exactly, so that "the batch
collapsed onto the frequent modes" (typicality bias) and "the method recovered the rare modes" can be measured
rather than eyeballed. Every image is drawn from a known distribution over *modes*, and :func:`classify` recovers an
image's mode analytically (no learning), so a generated sample can be mapped back to the mode it landed on.

An image shows one shape of the prompt's class (``CLASSES``) on a background. Its **mode** is the tuple of four
attributes, each drawn independently with unequal probabilities:

========== ======================================================== ==============================
attribute  values                                                   probabilities
========== ======================================================== ==============================
position   top-left, top-right, bottom-left, bottom-right           0.55/0.25/0.15/0.05, rotated
colour     red, blue, green, yellow                                 0.55/0.25/0.15/0.05, rotated
variant    large (9 px), small (5 px)                               0.70/0.30
background dark, light, gradient                                    0.60/0.30/0.10
========== ======================================================== ==============================

"rotated": for class ``k`` the position and colour probabilities are shifted by ``k`` places (class 0's most frequent
position is top-left, class 1's is top-right, ...), so that the frequent modes depend on the prompt. Each class has
``4 * 4 * 2 * 3 = 96`` modes; :data:`MODE_PROBS` ``[4, 96]`` holds their probabilities. Within a mode, images vary by
a slight colour shift of the shape and background and faint pixel noise, so the data is not a finite set of pictures;
the shape sits exactly at its position (data version 1 also jittered it by +-1 px, which a small model learnt as a
blur: half its samples were not clean). The classifier still accepts a shape shifted by 1 px as its position.

Pixel values are in [-1, 1], layout ``[N, 3, 16, 16]``. Everything here is pure torch and deterministic for a given
``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DATA_VERSION = 2
"""Bumped whenever the distribution or the rendering changes (stored in the weights' metadata)."""

SIZE = 16
CLASSES: tuple[str, ...] = ("square", "diamond", "triangle", "cross")
"""Object classes; a prompt names one of them. "cross" is a diagonal cross (an X)."""
POSITIONS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
POSITION_CENTRES: tuple[tuple[int, int], ...] = ((5, 5), (5, 10), (10, 5), (10, 10))
"""(row, column) of each position's centre."""
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow")
PALETTE = torch.tensor(
    [[0.9, -0.7, -0.7], [-0.7, -0.5, 0.9], [-0.7, 0.8, -0.7], [0.9, 0.8, -0.7]], dtype=torch.float32
)
"""RGB in [-1, 1] of each colour of ``COLOURS``."""
VARIANTS: tuple[str, ...] = ("large", "small")
VARIANT_HALF_SIZES: tuple[int, ...] = (4, 2)
BACKGROUNDS: tuple[str, ...] = ("dark", "light", "gradient")

BASE_PROBS = (0.55, 0.25, 0.15, 0.05)
VARIANT_PROBS = (0.7, 0.3)
BACKGROUND_PROBS = (0.6, 0.3, 0.1)
ATTRIBUTES: tuple[str, ...] = ("position", "colour", "variant", "background")
ATTRIBUTE_SIZES: tuple[int, ...] = (len(POSITIONS), len(COLOURS), len(VARIANTS), len(BACKGROUNDS))
NUM_MODES = ATTRIBUTE_SIZES[0] * ATTRIBUTE_SIZES[1] * ATTRIBUTE_SIZES[2] * ATTRIBUTE_SIZES[3]
"""Modes per class (96)."""

JITTERS: tuple[tuple[int, int], ...] = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
"""Shifts of a shape's centre that the classifier reads as the same position (the data draws none)."""
COLOUR_JITTER = 0.04
"""Standard deviation of the per-image shift of the shape's colour and of the background's brightness."""
PIXEL_NOISE = 0.015
"""Standard deviation of the per-pixel noise."""


def attribute_probs(class_id: int) -> list[torch.Tensor]:
    """Probabilities of each attribute's values for one class: [position, colour, variant, background]."""
    base = torch.tensor(BASE_PROBS, dtype=torch.float64)
    k = int(class_id) % len(CLASSES)
    return [
        torch.roll(base, k),
        torch.roll(base, k),
        torch.tensor(VARIANT_PROBS, dtype=torch.float64),
        torch.tensor(BACKGROUND_PROBS, dtype=torch.float64),
    ]


def mode_index(modes: torch.Tensor) -> torch.Tensor:
    """Flat mode index in [0, 96) of attribute tuples ``[..., 4]`` (position, colour, variant, background)."""
    modes = modes.long()
    index = modes[..., 0]
    for a in range(1, 4):
        index = index * ATTRIBUTE_SIZES[a] + modes[..., a]
    return index


def mode_tuple(index: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mode_index`: attribute tuples ``[..., 4]`` of flat mode indices."""
    index = torch.as_tensor(index).long()
    out = []
    for a in reversed(range(4)):
        out.append(index % ATTRIBUTE_SIZES[a])
        index = index // ATTRIBUTE_SIZES[a]
    return torch.stack(out[::-1], dim=-1)


def mode_name(class_id: int, mode: torch.Tensor | tuple[int, int, int, int]) -> str:
    """Human-readable name of one mode, e.g. ``"square large red top-left dark"``."""
    p, c, v, b = (int(x) for x in mode)
    return f"{CLASSES[class_id]} {VARIANTS[v]} {COLOURS[c]} {POSITIONS[p]} {BACKGROUNDS[b]}"


def _mode_probs() -> torch.Tensor:
    rows = []
    for k in range(len(CLASSES)):
        pos, col, var, bg = attribute_probs(k)
        joint = (
            pos[:, None, None, None] * col[None, :, None, None] * var[None, None, :, None] * bg[None, None, None, :]
        )
        rows.append(joint.reshape(-1))
    return torch.stack(rows)


MODE_PROBS: torch.Tensor = _mode_probs()
"""``[4, 96]`` float64: probability of each mode (flat index, :func:`mode_index`) given each class."""


def sample_modes(n: int, class_id: int | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` modes ``[n, 4]`` (position, colour, variant, background) from the data distribution.

    ``class_id`` is one class for all, or a LongTensor ``[n]`` of classes.
    """
    classes = torch.as_tensor(class_id).long()
    classes = classes.expand(n) if classes.ndim == 0 else classes
    if classes.shape != (n,):
        raise ValueError(f"class_id must be an int or a tensor of shape [{n}], got {tuple(classes.shape)}")
    columns = []
    for a in range(4):
        table = torch.stack([attribute_probs(k)[a] for k in range(len(CLASSES))])  # [classes, values]
        probs = table[classes]
        columns.append(torch.multinomial(probs, 1, generator=generator)[:, 0] if n else torch.zeros(0).long())
    return torch.stack(columns, dim=1)


def _shape_mask(class_id: int, half: int, cy: int, cx: int) -> torch.Tensor:
    r = torch.arange(SIZE, dtype=torch.float32)
    y = r[:, None] - cy
    x = r[None, :] - cx
    inside = (x.abs() <= half) & (y.abs() <= half)
    name = CLASSES[class_id]
    if name == "square":
        return inside
    if name == "diamond":
        return x.abs() + y.abs() <= half
    if name == "triangle":  # apex up, base at the bottom
        return inside & (x.abs() <= (y + half) / 2 + 0.25)
    if name == "cross":  # diagonal cross (X); strokes 1 px wide when small, 3 px when large
        w = half // 4
        return inside & (((x - y).abs() <= w) | ((x + y).abs() <= w))
    raise AssertionError(name)


def _template_bank() -> torch.Tensor:
    """Boolean masks ``[class, variant, position, jitter, 16, 16]`` of every renderable shape placement."""
    bank = torch.zeros(len(CLASSES), len(VARIANTS), len(POSITIONS), len(JITTERS), SIZE, SIZE, dtype=torch.bool)
    for k in range(len(CLASSES)):
        for v, half in enumerate(VARIANT_HALF_SIZES):
            for p, (cy, cx) in enumerate(POSITION_CENTRES):
                for j, (dy, dx) in enumerate(JITTERS):
                    bank[k, v, p, j] = _shape_mask(k, half, cy + dy, cx + dx)
    return bank


TEMPLATES: torch.Tensor = _template_bank()


def background_images() -> torch.Tensor:
    """The three backgrounds ``[3, 3, 16, 16]``: dark grey, light grey, and a vertical grey gradient (dark at top)."""
    ramp = torch.linspace(-0.6, 0.6, SIZE)[:, None].expand(SIZE, SIZE)
    flats = [torch.full((SIZE, SIZE), -0.75), torch.full((SIZE, SIZE), 0.75), ramp]
    return torch.stack([f[None].expand(3, SIZE, SIZE) for f in flats]).clone()


BACKGROUND_IMAGES: torch.Tensor = background_images()


def render(
    class_ids: torch.Tensor | list[int],
    modes: torch.Tensor,
    generator: torch.Generator | None = None,
    jitter: bool = True,
) -> torch.Tensor:
    """Render images ``[N, 3, 16, 16]`` in [-1, 1] of classes ``[N]`` in modes ``[N, 4]``.

    With ``jitter`` (the training data) the shape's colour and the background's brightness are shifted slightly and
    faint pixel noise is added, all drawn from ``generator``; without it the mode's canonical image is returned.
    """
    class_ids = torch.as_tensor(class_ids).long().reshape(-1)
    modes = torch.as_tensor(modes).long().reshape(-1, 4)
    n = class_ids.shape[0]
    if modes.shape[0] != n:
        raise ValueError(f"{n} class ids but {modes.shape[0]} modes")
    pos, col, var, bg = modes.unbind(1)
    j = torch.full((n,), JITTERS.index((0, 0)), dtype=torch.long)
    if jitter:
        colour_shift = torch.randn(n, 3, generator=generator) * COLOUR_JITTER
        bg_shift = torch.randn(n, 1, generator=generator) * COLOUR_JITTER
        noise = torch.randn(n, 3, SIZE, SIZE, generator=generator) * PIXEL_NOISE
    else:
        colour_shift = torch.zeros(n, 3)
        bg_shift = torch.zeros(n, 1)
        noise = torch.zeros(n, 3, SIZE, SIZE)
    mask = TEMPLATES[class_ids, var, pos, j][:, None].float()  # [N, 1, 16, 16]
    colour = (PALETTE[col] + colour_shift)[:, :, None, None]
    background = BACKGROUND_IMAGES[bg] + bg_shift[:, :, None, None]
    images = mask * colour + (1 - mask) * background + noise
    return images.clamp(-1, 1)


def make_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of the data stream: ``(images [n,3,16,16], class_ids [n], modes [n,4])``, classes uniform."""
    class_ids = torch.randint(len(CLASSES), (n,), generator=generator)
    modes = sample_modes(n, class_ids, generator)
    return render(class_ids, modes, generator), class_ids, modes


def make_dataset(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` samples of the data distribution, deterministic for ``seed``: ``(images, class_ids, modes)``."""
    return make_batch(n, torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# Analytic classifier
# ----------------------------------------------------------------------------------------------------------------

MIN_IOU = 0.75
"""Least IoU between the image's foreground and the best-matching shape placement for a valid image."""
MIN_MARGIN = 0.12
"""Least IoU lead of the best class over the best other class for a valid image."""
MIN_PURITY = 0.85
"""Least share of foreground pixels whose nearest palette colour is the shape's colour, for a valid image."""
MAX_RESIDUAL = 0.3
"""Largest RMS difference between the image and its clean reconstruction (mode rendered without noise), if valid."""


@dataclass
class ClassifierResult:
    """What :func:`classify` read in each image (all tensors ``[N]``).

    ``class_id``, ``position``, ``colour``, ``variant``, ``background``: the best-matching class and attributes
    (always filled in, even for invalid images). ``valid``: the image is a clean, recognisable instance of one mode:
    the best shape placement matches the foreground with IoU >= ``MIN_IOU``, leads every other class by
    ``MIN_MARGIN``, the shape is one palette colour (purity >= ``MIN_PURITY``) and the whole image is within
    ``MAX_RESIDUAL`` RMS of the mode's clean rendering. ``iou``, ``margin``, ``purity``, ``residual``: the scores.
    """

    class_id: torch.Tensor
    position: torch.Tensor
    colour: torch.Tensor
    variant: torch.Tensor
    background: torch.Tensor
    valid: torch.Tensor
    iou: torch.Tensor
    margin: torch.Tensor
    purity: torch.Tensor
    residual: torch.Tensor

    @property
    def modes(self) -> torch.Tensor:
        """Attribute tuples ``[N, 4]`` (position, colour, variant, background)."""
        return torch.stack([self.position, self.colour, self.variant, self.background], dim=1)

    @property
    def mode(self) -> torch.Tensor:
        """Flat mode indices ``[N]`` in [0, 96) (see :func:`mode_index`)."""
        return mode_index(self.modes)


def classify(images: torch.Tensor, chunk: int = 512) -> ClassifierResult:
    """Read class, mode and validity of images ``[N, 3, 16, 16]`` in [-1, 1] analytically (no learning).

    Background: the candidate that explains the image best, pixel by pixel, against the palette colours. Foreground:
    the pixels nearer to a palette colour than to that background. Colour: the palette colour nearest to the
    foreground. Class, variant and position: the shape placement (of every class, variant, position and jitter)
    whose mask has the highest IoU with the foreground.
    """
    images = torch.as_tensor(images).float()
    if images.ndim != 4 or images.shape[1:] != (3, SIZE, SIZE):
        raise ValueError(f"expected images [N, 3, {SIZE}, {SIZE}], got {tuple(images.shape)}")
    parts = [_classify(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
    if not parts:
        empty = torch.zeros(0)
        return ClassifierResult(*([empty.long()] * 5), empty.bool(), empty, empty, empty, empty)
    return ClassifierResult(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ClassifierResult.__dataclass_fields__)
    )


def _classify(images: torch.Tensor) -> ClassifierResult:
    n = images.shape[0]
    pixels = images.reshape(n, 3, -1)  # [N, 3, P]
    d_col = ((pixels[:, None] - PALETTE[None, :, :, None]) ** 2).sum(2)  # [N, C, P]
    bgs = BACKGROUND_IMAGES.reshape(len(BACKGROUNDS), 3, -1)
    d_bg = ((pixels[:, None] - bgs[None]) ** 2).sum(2)  # [N, B, P]
    d_col_min, nearest_col = d_col.min(1)  # [N, P]
    score = torch.minimum(d_bg, d_col_min[:, None]).mean(2)  # [N, B]
    background = score.argmin(1)
    d_bg_best = d_bg[torch.arange(n), background]  # [N, P]
    fg = d_col_min < d_bg_best  # [N, P]
    fgf = fg.float()
    colour = (d_col * fgf[:, None]).sum(2).argmin(1)
    count = fgf.sum(1)
    purity = ((nearest_col == colour[:, None]) & fg).float().sum(1) / count.clamp(min=1)

    bank = TEMPLATES.reshape(-1, SIZE * SIZE).float()  # [T, P]
    inter = fgf @ bank.T  # [N, T]
    union = count[:, None] + bank.sum(1)[None] - inter
    iou = (inter / union.clamp(min=1)).reshape(n, len(CLASSES), -1)  # [N, K, V*Pos*J]
    per_class, _ = iou.max(2)  # [N, K]
    best_iou, class_id = per_class.max(1)
    others = per_class.scatter(1, class_id[:, None], -1.0)
    margin = best_iou - others.max(1).values
    flat = iou[torch.arange(n), class_id].argmax(1)
    variant, rest = flat // (len(POSITIONS) * len(JITTERS)), flat % (len(POSITIONS) * len(JITTERS))
    position, jitter = rest // len(JITTERS), rest % len(JITTERS)

    mask = TEMPLATES[class_id, variant, position, jitter][:, None].float()
    clean = mask * PALETTE[colour][:, :, None, None] + (1 - mask) * BACKGROUND_IMAGES[background]
    residual = ((images - clean) ** 2).mean((1, 2, 3)).sqrt()
    valid = (count > 0) & (best_iou >= MIN_IOU) & (margin >= MIN_MARGIN) & (purity >= MIN_PURITY)
    valid &= residual <= MAX_RESIDUAL
    return ClassifierResult(class_id, position, colour, variant, background, valid, best_iou, margin, purity, residual)
