"""SPELL's repellency (lib_ctxrep.spell) against a plain reference, its sparsity, and its guarantee on a toy model."""

from __future__ import annotations

import math

import pytest
import torch

from lib_ctxrep.spell import SpellStats, repellency, typical_distance


def reference_delta(x0, refs, radius, lam, exclude_self):
    """Plain float64 loops: delta_i = lam * sum_j ReLU(r / ||x_i - z_j|| - 1) (x_i - z_j)."""
    x, z = x0.reshape(x0.shape[0], -1).double(), refs.reshape(refs.shape[0], -1).double()
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(z.shape[0]):
            if exclude_self and i == j:
                continue
            d = (x[i] - z[j]).norm()
            if d > 0:
                out[i] += lam * max(radius / d.item() - 1.0, 0.0) * (x[i] - z[j])
    return out.reshape(x0.shape)


@pytest.mark.parametrize("seed", range(4))
def test_repellency_matches_the_plain_formula(seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    refs = x0[torch.randint(0, 5, (7,), generator=g)] + 0.5 * torch.randn(7, 3, 4, 4, generator=g, dtype=torch.float64)
    radius = 4.0
    delta = repellency(x0, refs, radius, 1.6)
    torch.testing.assert_close(delta, reference_delta(x0, refs, radius, 1.6, False), rtol=1e-12, atol=1e-12)


def test_intra_batch_call_leaves_out_each_samples_own_row():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    delta = repellency(x0, x0, 5.0)
    torch.testing.assert_close(delta, reference_delta(x0, x0, 5.0, 1.6, True), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(delta).all()


def test_delta_is_exactly_zero_without_a_reference_within_the_radius():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 16, generator=g)
    refs = torch.full((3, 16), 100.0)  # every reference at distance > 390
    delta = repellency(x0, refs, radius=300.0)
    assert torch.equal(delta, torch.zeros_like(x0))


def test_only_samples_inside_a_shield_move():
    x0 = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    refs = torch.tensor([[0.5, 0.0]])
    delta = repellency(x0, refs, radius=1.0, overcompensation=1.0)
    assert torch.equal(delta[1], torch.zeros(2))
    torch.testing.assert_close(x0[0] + delta[0], torch.tensor([-0.5, 0.0]))  # exactly on the shield's boundary


def test_low_precision_inputs_keep_their_dtype():
    x0 = torch.randn(3, 10).to(torch.bfloat16)
    delta = repellency(x0, x0, 10.0)
    assert delta.dtype == torch.bfloat16 and delta.shape == x0.shape and torch.isfinite(delta.float()).all()


@pytest.mark.parametrize("radius", [0, -1.0, float("nan"), float("inf")])
def test_invalid_radius_is_refused_with_its_name(radius):
    with pytest.raises(ValueError, match="radius"):
        repellency(torch.zeros(2, 3), torch.ones(1, 3), radius)


def test_references_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        repellency(torch.zeros(2, 3), torch.ones(1, 4), 1.0)


def test_typical_distance_is_that_of_two_independent_samples():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(64, 4, 16, 16, generator=g), torch.randn(64, 4, 16, 16, generator=g)
    measured = (a - b).reshape(64, -1).norm(dim=1).median().item()
    assert measured == pytest.approx(typical_distance((4, 16, 16)), rel=0.05)


def test_stats_count_pushed_samples_and_steps():
    stats = SpellStats()
    stats.record(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    stats.record(torch.zeros(2, 2))
    assert (stats.calls, stats.samples_seen, stats.samples_pushed, stats.steps_with_push) == (2, 4, 1, 1)
    assert stats.share_pushed == 0.25


def test_stats_summary_counts_each_sample_pushed_at_least_once():
    stats = SpellStats()
    stats.record(torch.tensor([[1.0], [0.0], [0.0]]))
    stats.record(torch.tensor([[1.0], [0.0], [2.0]]))
    stats.record(torch.zeros(3, 1))
    assert stats.summary() == "2/3 samples in 2/3 steps (3/9 sample-steps)"


def test_engine_end_batch_returns_that_batchs_sparsity_and_starts_afresh():
    from lib_ctxrep.spell import SpellConfig, SpellEngine

    engine = SpellEngine(SpellConfig(radius=1.0))
    engine.correct(torch.tensor([[0.0, 0.0], [0.5, 0.0]]))
    first = engine.end_batch(torch.zeros(2, 2))
    assert first.samples_pushed == 2 and engine.batch_stats.calls == 0 and engine.stats.calls == 1


def gaussian_denoiser(mean: torch.Tensor, std: float):
    """Exact E[x0 | x_t] for x0 ~ N(mean, std^2 I) under the flow x_t = (1 - t) x0 + t eps."""

    def x0_hat(x_t: torch.Tensor, t: float) -> torch.Tensor:
        var = (1 - t) ** 2 * std**2 + t**2
        return mean + (1 - t) * std**2 / var * (x_t - (1 - t) * mean)

    return x0_hat


def sample_with_spell(x0_hat, noise, refs, radius, lam, steps=40, intra=False):
    x = noise
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t, t_next = ts[i].item(), ts[i + 1].item()
        pred = x0_hat(x, t)
        shields = torch.cat([refs, pred]) if intra else refs
        delta = repellency(pred, shields, radius, lam, exclude_self=False) if not intra else (
            repellency(pred, refs, radius, lam) + repellency(pred, pred, radius, lam)
        )  # fmt: skip
        target = pred + delta
        x = target + (t_next / t) * (x - target) if t > 0 else target  # Euler step of the flow towards target
    return x


def test_final_samples_land_outside_every_disjoint_shield_on_an_analytic_model():
    g = torch.Generator().manual_seed(4)
    dim = 2
    mean = torch.zeros(dim, dtype=torch.float64)
    x0_hat = gaussian_denoiser(mean, std=1.0)
    refs = torch.stack([mean, mean + 3.0 * torch.eye(dim, dtype=torch.float64)[0]])  # shields of radius 1: disjoint
    noise = torch.randn(64, dim, generator=g, dtype=torch.float64)
    plain = sample_with_spell(x0_hat, noise, refs[:0], 1.0, 1.0)
    shielded = sample_with_spell(x0_hat, noise, refs, 1.0, 1.0)
    inside_before = (torch.cdist(plain, refs) < 1.0).any(dim=1).sum().item()
    assert inside_before > 0  # without SPELL some samples land in a shield
    assert torch.cdist(shielded, refs).min().item() >= 1.0 - 1e-9
    untouched = (torch.cdist(plain, refs) >= 1.0 + 1e-6).all(dim=1)
    assert untouched.any()


def test_overcompensation_also_lands_outside_and_pushes_further():
    g = torch.Generator().manual_seed(5)
    x0_hat = gaussian_denoiser(torch.zeros(4, dtype=torch.float64), std=1.0)
    refs = torch.zeros(1, 4, dtype=torch.float64)
    noise = torch.randn(32, 4, generator=g, dtype=torch.float64)
    exact = sample_with_spell(x0_hat, noise, refs, 1.0, 1.0)
    over = sample_with_spell(x0_hat, noise, refs, 1.0, 1.6)
    assert torch.cdist(over, refs).min().item() >= 1.0 - 1e-9
    assert math.isfinite(over.abs().max().item())
    assert torch.cdist(over, refs).mean() >= torch.cdist(exact, refs).mean()


def test_no_reference_within_the_radius_gives_bit_identical_samples():
    g = torch.Generator().manual_seed(6)
    x0_hat = gaussian_denoiser(torch.zeros(3, dtype=torch.float64), std=1.0)
    noise = torch.randn(16, 3, generator=g, dtype=torch.float64)
    far = torch.full((2, 3), 50.0, dtype=torch.float64)
    assert torch.equal(
        sample_with_spell(x0_hat, noise, far, 1.0, 1.6), sample_with_spell(x0_hat, noise, far[:0], 1.0, 1.6)
    )


def test_reference_set_exact_search_matches_full_repellency():
    from lib_ctxrep.spell import ReferenceSet

    g = torch.Generator().manual_seed(7)
    refs = torch.randn(500, 2, 4, 4, generator=g)
    x0 = refs[:6] + 0.3 * torch.randn(6, 2, 4, 4, generator=g)
    store = ReferenceSet(refs)
    assert not store.approximate
    torch.testing.assert_close(store.repellency(x0, 4.0, k=500), repellency(x0, refs, 4.0), rtol=1e-5, atol=1e-5)


def test_reference_set_refuses_samples_of_another_shape():
    from lib_ctxrep.spell import ReferenceSet

    store = ReferenceSet(torch.randn(10, 4, 8, 8))
    with pytest.raises(ValueError, match="another model or resolution"):
        store.repellency(torch.randn(2, 4, 16, 16), 1.0)


def test_approximate_index_recall_on_200k_latents_and_reload(tmp_path):
    pytest.importorskip("faiss")
    from lib_ctxrep.spell import ReferenceSet

    g = torch.Generator().manual_seed(8)
    centres = torch.randn(400, 64, generator=g) * 3
    refs = centres[torch.randint(0, 400, (200_000,), generator=g)] + torch.randn(200_000, 64, generator=g)
    seen = []
    store = ReferenceSet(refs, exact_limit=100_000, nprobe=16, progress=lambda done, total: seen.append((done, total)))
    assert store.approximate and seen[-1] == (200_000, 200_000)
    queries = refs[torch.randint(0, 200_000, (200,), generator=g)] + 0.5 * torch.randn(200, 64, generator=g)
    exact = ReferenceSet(refs, exact_limit=10**9).search(queries, 1)[:, 0]
    recall = (store.search(queries, 1)[:, 0] == exact).float().mean().item()
    assert recall >= 0.95
    store.save_index(tmp_path / "refs.faiss")
    reloaded = ReferenceSet(refs[:50_000])
    with pytest.raises(ValueError, match="holds 200000"):
        reloaded.load_index(tmp_path / "refs.faiss")


def test_spell_config_names_the_invalid_field():
    from lib_ctxrep.spell import SpellConfig

    for field, value in (("relative_radius", 0), ("radius", -1.0), ("overcompensation", float("nan")),
                         ("memory_size", -1), ("neighbours", 0), ("intra_batch", "yes")):  # fmt: skip
        with pytest.raises(ValueError, match=f"SpellConfig.{field}"):
            SpellConfig(**{field: value})


def test_relative_radius_scales_with_the_latent_shape_and_absolute_overrides_it():
    from lib_ctxrep.spell import SpellConfig

    cfg = SpellConfig(relative_radius=0.5)
    assert cfg.absolute_radius((4, 8, 8)) == pytest.approx(0.5 * math.sqrt(2 * 256))
    assert SpellConfig(radius=3.0).absolute_radius((4, 8, 8)) == 3.0


def test_engine_repels_later_batches_from_earlier_final_latents():
    from lib_ctxrep.spell import SpellConfig, SpellEngine

    engine = SpellEngine(SpellConfig(radius=1.0, intra_batch=False))
    first = torch.zeros(1, 4)
    assert torch.equal(engine.correct(first), first)  # nothing remembered yet
    engine.end_batch(first)
    second = torch.full((1, 4), 0.1)
    moved = engine.correct(second)
    assert (moved - first).norm() > (second - first).norm()
    assert engine.stats.samples_pushed == 1 and engine.stats.calls == 2
    engine.new_job()
    assert engine.remembered == 0 and torch.equal(engine.correct(second), second)


def test_engine_memory_is_bounded_and_can_be_off():
    from lib_ctxrep.spell import SpellConfig, SpellEngine

    engine = SpellEngine(SpellConfig(memory_size=3))
    for _ in range(5):
        engine.end_batch(torch.randn(2, 4))
    assert engine.remembered == 3
    off = SpellEngine(SpellConfig(cross_batch=False))
    off.end_batch(torch.randn(2, 4))
    assert off.remembered == 0


def test_engine_combines_intra_batch_and_protected_set():
    from lib_ctxrep.spell import ReferenceSet, SpellConfig, SpellEngine

    protected = ReferenceSet(torch.tensor([[0.0, 0.0]]))
    engine = SpellEngine(SpellConfig(radius=1.0, overcompensation=1.0, cross_batch=False), protected)
    x0 = torch.tensor([[0.2, 0.0], [5.0, 5.0]])
    out = engine.correct(x0)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0]))  # pushed to the protected shield's boundary
    assert torch.equal(out[1], x0[1])


def test_engine_skips_a_protected_set_of_another_shape_with_one_warning():
    from lib_ctxrep.spell import ReferenceSet, SpellConfig, SpellEngine

    engine = SpellEngine(SpellConfig(radius=10.0, intra_batch=False), ReferenceSet(torch.zeros(2, 3)))
    with pytest.warns(UserWarning, match="do not match the protected set"):
        assert torch.equal(engine.delta(torch.ones(1, 4)), torch.zeros(1, 4))


@pytest.mark.parametrize(
    "config, named",
    [({"relative_radius": 0.3}, "SpellConfig(**settings)"), ("0.3", "got str"), (None, None)],
    ids=["dict", "string", "none"],
)
def test_spell_refuses_a_config_that_is_not_a_spell_config_when_it_is_set_up(config, named):
    from lib_ctxrep.spell import SpellConfig, SpellEngine

    if named is None:
        assert SpellEngine(config).config == SpellConfig()
        return
    with pytest.raises(TypeError, match=named.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        SpellEngine(config)
    with pytest.raises(TypeError, match="pass an instance"):
        SpellEngine(SpellConfig)


def test_spell_refuses_a_protected_set_that_is_not_a_reference_set():
    from lib_ctxrep.spell import SpellEngine

    with pytest.raises(TypeError, match=r"ReferenceSet\(latents\)"):
        SpellEngine(None, torch.zeros(3, 4))


def test_a_reference_set_of_a_list_says_how_to_build_a_tensor():
    from lib_ctxrep.spell import ReferenceSet

    with pytest.raises(TypeError, match=r"torch.tensor\(...\) or torch.stack"):
        ReferenceSet([[1.0, 2.0]])
