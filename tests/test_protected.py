"""Protected sets for SPELL: paths confined to the configured root, safetensors-only latent sets, image folders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lib_ctxrep import protected as ps

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("safetensors")


@pytest.fixture(autouse=True)
def _fresh_cache():
    ps.clear_cache()
    yield
    ps.clear_cache()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "protected"
    r.mkdir()
    return r


def image(path: Path, size=(16, 8), colour=(200, 30, 30)) -> Path:
    PIL.new("RGB", size, colour).save(path)
    return path


def pool_encode(images: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 4 channels at 1/4 resolution (the first three are the pooled colours)."""
    pooled = torch.nn.functional.avg_pool2d(images, 4)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


# ---- paths ---------------------------------------------------------------------------------------------------------
def test_no_configured_root_refuses_every_path(root):
    with pytest.raises(ps.ProtectedSetError, match="no protected-set folder is configured"):
        ps.resolve_inside_root(root, "")


def test_a_path_inside_the_root_resolves_relative_or_absolute(root):
    (root / "faces").mkdir()
    assert ps.resolve_inside_root("faces", root) == (root / "faces").resolve()
    assert ps.resolve_inside_root(str(root / "faces"), root) == (root / "faces").resolve()


@pytest.mark.parametrize("escape", ["..", "../other", "faces/../../other", "/etc"])
def test_paths_leaving_the_root_are_refused_with_the_reason(root, escape):
    (root.parent / "other").mkdir(exist_ok=True)
    (root / "faces").mkdir(exist_ok=True)
    with pytest.raises(ps.ProtectedSetError, match="refused: .* is outside the protected-set folder"):
        ps.resolve_inside_root(escape, root)


def test_a_symbolic_link_out_of_the_root_is_refused(root):
    outside = root.parent / "secret"
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(ps.ProtectedSetError, match="outside"):
        ps.resolve_inside_root("link", root)


def test_a_missing_path_says_not_found(root):
    with pytest.raises(ps.ProtectedSetError, match="not found"):
        ps.resolve_inside_root("nothing-here", root)


# ---- latent sets ---------------------------------------------------------------------------------------------------
def test_latent_set_round_trips_with_its_latent_space(root):
    latents = torch.randn(5, 4, 2, 2)
    ps.save_latent_set(root / "set.safetensors", latents, "flux", source="test")
    loaded, meta = ps.load_latent_set(root / "set.safetensors")
    assert torch.equal(loaded, latents) and meta["latent_space"] == "flux" and meta["source"] == "test"


class _Payload:
    """Unpickling this creates a file: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["set.pt", "set.ckpt", "set.pkl", "set.safetensors"])
def test_pickles_are_refused_without_being_unpickled(root, name):
    marker = root / "unpickled"
    (root / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ps.ProtectedSetError, match="refused: .*pickle"):
        ps.load_latent_set(root / name)
    assert not marker.exists()


def test_a_torch_save_file_renamed_to_safetensors_is_refused(root):
    torch.save({"latents": torch.zeros(2, 4, 2, 2)}, root / "set.safetensors")
    with pytest.raises(ps.ProtectedSetError, match="pickle"):
        ps.load_latent_set(root / "set.safetensors")


def test_garbage_with_a_safetensors_name_is_not_a_valid_file(root):
    (root / "set.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ps.ProtectedSetError, match="not a valid safetensors file"):
        ps.load_latent_set(root / "set.safetensors")


def test_a_safetensors_file_without_latents_is_explained(root):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(root / "model.safetensors"))
    with pytest.raises(ps.ProtectedSetError, match="no 'latents' tensor"):
        ps.load_latent_set(root / "model.safetensors")


@pytest.mark.parametrize(
    ("space", "shape", "reason"),
    [
        ("sdxl", (4, 2, 2), "holds sdxl latents; this model's latents are flux"),
        ("flux", (16, 2, 2), "another model: the channel counts differ"),
        ("flux", (4, 3, 3), "made at latent size"),
    ],
)
def test_a_latent_set_from_another_model_or_resolution_is_refused(root, space, shape, reason):
    ps.save_latent_set(root / "set.safetensors", torch.randn(3, *shape), space)
    with pytest.raises(ps.ProtectedSetError, match=reason.replace("(", r"\(")):
        ps.load_protected_set("set.safetensors", root, latent_space="flux", sample_shape=(4, 2, 2), width=8, height=8)


# ---- folders of images ---------------------------------------------------------------------------------------------
def test_an_empty_folder_is_explained(root):
    (root / "empty").mkdir()
    with pytest.raises(ps.ProtectedSetError, match="is empty"):
        ps.read_image_folder(root / "empty", 8, 8)


def test_an_unreadable_folder_is_explained(root, monkeypatch):
    (root / "locked").mkdir()

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(ps.ProtectedSetError, match="cannot read the folder 'locked': Permission denied"):
        ps.read_image_folder(root / "locked", 8, 8)


def test_files_that_are_not_images_are_skipped_and_named(root):
    folder = root / "mixed"
    folder.mkdir()
    image(folder / "a.png", (8, 8))
    (folder / "notes.txt").write_text("hello")
    (folder / "broken.png").write_bytes(b"not a png")
    images, notes = ps.read_image_folder(folder, 8, 8)
    assert images.shape == (1, 3, 8, 8)
    assert any("skipped 2 file(s)" in n and "notes.txt" in n and "broken.png" in n for n in notes)


def test_a_folder_without_a_single_image_is_refused(root):
    folder = root / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(ps.ProtectedSetError, match="no readable images"):
        ps.read_image_folder(folder, 8, 8)


def test_images_of_other_sizes_are_fitted_to_the_generation_resolution_and_noted(root):
    folder = root / "sizes"
    folder.mkdir()
    image(folder / "wide.png", (32, 8), (255, 0, 0))
    image(folder / "exact.png", (8, 8), (0, 0, 255))
    images, notes = ps.read_image_folder(folder, 8, 8)
    assert images.shape == (2, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert torch.allclose(images[0, 2], torch.full((8, 8), 1.0))  # exact.png (sorted first): blue = +1
    assert any("1 image(s) of another size were resized and centre-cropped to 8x8" in n for n in notes)


def test_a_folder_is_encoded_at_the_generation_resolution_into_a_reference_set(root):
    folder = root / "refs"
    folder.mkdir()
    for i in range(3):
        image(folder / f"{i}.png", (16, 16), (80 * i, 0, 0))
    seen = []

    def encode(images):
        seen.append(tuple(images.shape))
        return pool_encode(images)

    loaded = ps.load_protected_set(
        "refs", root, latent_space="flux", sample_shape=(4, 2, 2), width=8, height=8, encode=encode
    )
    assert len(loaded) == 3 and loaded.references.sample_shape == (4, 2, 2)
    assert seen == [(3, 3, 8, 8)]
    again = ps.load_protected_set(
        "refs", root, latent_space="flux", sample_shape=(4, 2, 2), width=8, height=8, encode=encode
    )
    assert again is loaded and len(seen) == 1  # cached while the files are unchanged


def test_a_large_latent_set_saves_its_index_beside_it_and_reloads_it(root):
    pytest.importorskip("faiss")
    ps.save_latent_set(root / "big.safetensors", torch.randn(400, 4, 2, 2), "flux")
    first = ps.load_protected_set(
        "big.safetensors", root, latent_space="flux", sample_shape=(4, 2, 2), width=8, height=8, exact_limit=100
    )
    assert first.references.approximate and (root / "big.safetensors.faiss").is_file()
    ps.clear_cache()
    calls = []
    second = ps.load_protected_set(
        "big.safetensors", root, latent_space="flux", sample_shape=(4, 2, 2), width=8, height=8, exact_limit=100,
        progress=lambda done, total: calls.append(done),
    )  # fmt: skip
    assert second.references.approximate and calls == []  # reloaded, not rebuilt
    q = torch.randn(2, 4, 2, 2)
    assert torch.equal(first.references.search(q, 4), second.references.search(q, 4))
