"""The demo's picture explains itself and its numbers are possible ones; overhead prints no negative cost."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("PIL")

from lib_ctxrep.evaluation import demo  # noqa: E402
from lib_ctxrep.evaluation.bench import evaluate  # noqa: E402
from lib_ctxrep.evaluation.overhead import Timing, format_cost, noise  # noqa: E402
from lib_ctxrep.evaluation.reference.data import render  # noqa: E402

SQUARE = 0
SAME = [(0, 0, 0, 0), (1, 1, 0, 0)]
"""Two modes (position, colour, variant, background) of the class "square"."""
OTHER = [(0, 0, 0, 0), (2, 2, 0, 1)]
"""The same first mode, another second one."""


def _batch(method: str, modes: list[tuple[int, int, int, int]]) -> demo.Batch:
    """A batch of the canonical images of ``modes`` (all accepted by the classifier)."""
    images = render([SQUARE] * len(modes), torch.tensor(modes), jitter=False)
    return demo.read_batch(method, images, SQUARE)


def _rejected(method: str, n: int) -> demo.Batch:
    """A batch of uniform noise: no image is a clean shape, the classifier rejects all."""
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return demo.read_batch(method, images, SQUARE)


def _picture(repulsion: demo.Batch, title: list[str] | None = None, scale: int = 6):
    prompt = demo.Prompt("square", [0, 1], _batch("base", SAME), repulsion)
    return demo.grid_image([prompt], title if title is not None else ["Title", "settings"], scale)


def _count(image, colour: tuple[int, int, int]) -> int:
    import numpy as np

    return int((np.asarray(image.convert("RGB")) == np.array(colour, dtype=np.uint8)).all(-1).sum())


def test_the_picture_has_a_title_band_above_tiles_scaled_up():
    picture = _picture(_batch("repulsion", SAME), ["Contextual repulsion on the reference model", "20 steps"])
    assert picture.width > 2 * 16 * 6 and picture.height > 2 * 16 * 6  # two upscaled tiles per row, two rows
    band = picture.convert("L").crop((0, 0, picture.width, 40))
    assert band.getextrema()[0] < 100  # dark text in the band above the prompts
    untitled = _picture(_batch("repulsion", SAME), [""])
    assert untitled.convert("L").crop((0, 0, untitled.width, 40)).getextrema()[0] > 200
    red = (242, 38, 38)  # the palette's red, that of both images of the first mode
    assert _count(picture, red) == 6 * 6 * _count(_picture(_batch("repulsion", SAME), scale=1), red) > 0


def test_an_image_in_another_mode_than_its_seeds_base_image_is_framed():
    changed = demo.changed_modes(_batch("base", SAME), _batch("repulsion", OTHER))
    assert changed.tolist() == [False, True]
    unchanged = _count(_picture(_batch("repulsion", SAME)), demo.CHANGED)  # the legend's swatch only
    assert _count(_picture(_batch("repulsion", OTHER)), demo.CHANGED) - unchanged >= 4 * 96 * 4  # a frame of 4 px


def test_a_rejected_image_is_marked_as_rejected_not_as_changed():
    accepted = _picture(_batch("repulsion", SAME))
    rejected = _picture(_rejected("repulsion", 2))
    assert _count(rejected, demo.REJECTED) - _count(accepted, demo.REJECTED) >= 2 * 2 * 96 * 4  # two frames of 2 px
    assert _count(rejected, demo.CHANGED) == _count(accepted, demo.CHANGED)


def test_the_picture_is_drawn_with_a_pillow_without_sized_fonts(monkeypatch):
    from PIL import ImageFont

    bitmap = ImageFont.load_default

    def old_load_default():  # Pillow < 10.1 takes no size
        return bitmap()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    assert _picture(_batch("repulsion", OTHER)).width > 2 * 16 * 6


def test_vendi_over_the_modes_of_no_accepted_image_is_none_not_zero():
    numbers = _rejected("base", 4).numbers
    assert numbers["fidelity"] == 0 and math.isnan(numbers["vendi_modes"]) and numbers["vendi_pixels"] >= 1
    measurable = _batch("base", OTHER)
    images = torch.cat([_rejected("base", 2).images, measurable.images])
    mixed = evaluate(images, torch.full((4,), SQUARE), 2)  # one batch without and one with accepted images
    assert mixed["vendi_modes"] == pytest.approx(measurable.numbers["vendi_modes"])  # not averaged with a 0


def test_the_table_prints_no_vendi_below_one_and_says_which_way_is_better():
    prompt = demo.Prompt("square", [0, 1], _rejected("base", 2), _batch("repulsion", OTHER))
    lines = demo.table_lines([prompt])
    assert "higher is better" in lines[0]
    assert lines[1].split()[-5:] == ["Vendi", "modes", "Vendi", "pixels", "fidelity"]
    row = {line.split()[2]: line.split() for line in lines[2:4]}  # [demo] prompt method ...
    assert row["base"][-3] == "-" and float(row["repulsion"][-3]) >= 1
    assert any('"-": none accepted' in line for line in lines)


@pytest.mark.parametrize(
    ("cost", "spread", "shown"),
    [
        (-0.12456, 0.01, "below measurement noise"),
        (-0.004, 0.01, "below measurement noise (+/- 10.00 ms)"),
        (0.004, 0.01, "below measurement noise (+/- 10.00 ms)"),
        (-0.1, None, "below measurement noise (one repeat"),
        (0.05, 0.01, "+50.00 ms (noise +/- 10.00 ms)"),
    ],
)
def test_a_cost_is_never_printed_as_a_negative_figure(cost, spread, shown):
    text = format_cost(cost, spread)
    assert text.startswith(shown) and "-1" not in text and "-0" not in text and "-4" not in text


def test_the_noise_of_a_difference_is_the_spread_of_the_repeats():
    plain, hooked = Timing([1.0, 1.2, 1.1]), Timing([1.05, 1.1, 1.07])
    assert plain.best == 1.0 and noise(plain, hooked) == pytest.approx(0.2)
    assert noise(Timing([1.0]), hooked) is None  # one repeat: no spread to estimate the noise from
