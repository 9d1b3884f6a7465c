"""The benchmark judges the issue's three goals from its results (``evaluation.bench.goals``), on made-up numbers."""

from __future__ import annotations

from lib_ctxrep.evaluation.bench import Result, goals, pareto_front


def _r(name: str, family: str, recall: float, fidelity: float, knob: float | None = None, window=None) -> Result:
    return Result(name, family, knob, recall, recall, 1.0, 1.0, fidelity, 1.0, 1.0, window=window)


BASE = _r("base", "base", 0.100, 0.50)


def test_recall_goal_needs_25_percent_within_2_fidelity_points():
    strong_but_lossy = _r("ours a", "ours", 0.200, 0.47, 1.0, 0.3)  # 3 points below base: not eligible
    modest = _r("ours b", "ours", 0.124, 0.49, 0.5, 0.3)
    checks = goals([BASE, strong_but_lossy, modest])
    assert not checks[0][1] and "ours b" in checks[0][2]
    checks = goals([BASE, _r("ours c", "ours", 0.126, 0.48, 0.5, 0.3)])
    assert checks[0][1]


def test_dominance_goal_fails_when_a_baseline_is_on_the_front():
    ours = _r("ours", "ours", 0.12, 0.50, 0.5, 0.3)
    assert goals([BASE, ours, _r("PG", "pg", 0.11, 0.45, 2.0)])[1][1]
    checks = goals([BASE, ours, _r("CADS", "cads", 0.13, 0.40, 0.1)])
    assert not checks[1][1] and "CADS" in checks[1][2]


def test_memory_goal_compares_with_the_batch_run_of_the_same_strength_and_window():
    batch = _r("ours", "ours", 0.120, 0.50, 0.7, 0.3)
    kept = _r("memory", "memory", 0.117, 0.50, 0.7, 0.3)  # 85 % of +0.020
    lost = _r("memory", "memory", 0.108, 0.50, 0.7, 0.3)  # 40 %
    assert goals([BASE, batch, kept])[-1][1]
    assert not goals([BASE, batch, lost])[-1][1]
    assert len(goals([BASE, batch, _r("memory", "memory", 0.2, 0.5, 0.7, 0.05)])) == 1  # no batch run to compare


def test_memory_goal_is_met_by_either_memory_variant_and_reports_both():
    batch = _r("ours", "ours", 0.120, 0.50, 0.7, 0.3)
    text = _r("memory text", "memory", 0.104, 0.50, 0.7, 0.3)  # 20 %
    every = _r("memory all", "memory_image", 0.118, 0.50, 0.7, 0.3)  # 90 %
    check = goals([BASE, batch, text, every])[-1]
    assert check[1] and "text tokens +0.004 (20%)" in check[2] and "all tokens +0.018 (90%)" in check[2]
    assert not goals([BASE, batch, text])[-1][1]


def test_goals_whose_methods_were_not_run_are_left_out_not_judged_on_nothing():
    assert goals([BASE, _r("SPELL", "spell", 0.2, 0.6, 0.3)]) == []
    checks = goals([BASE, _r("ours", "ours", 0.12, 0.5, 0.5, 0.3)])
    assert len(checks) == 1 and "recall" in checks[0][0]


def test_pareto_front_keeps_only_undominated_points():
    a, b, c = _r("a", "ours", 0.12, 0.50), _r("b", "pg", 0.10, 0.55), _r("c", "cads", 0.09, 0.45)
    assert {r.name for r in pareto_front([a, b, c])} == {"a", "b"}


def _sets(r: Result, recalls: list[float], gain_ci: tuple[float, float] = (0.01, 0.04)) -> Result:
    r.per_set = [{"seed": 1000 * j, "recall": v, "fidelity": r.fidelity} for j, v in enumerate(recalls)]
    r.gain, r.gain_ci = r.recall - BASE.recall, gain_ci
    return r


def test_the_recall_goal_reports_the_gains_interval_and_each_seed_sets_gain():
    base = _sets(_r("base", "base", 0.100, 0.50), [0.1, 0.1, 0.1], (0.0, 0.0))
    ours = _sets(_r("ours", "ours", 0.130, 0.50, 0.5, 0.3), [0.12, 0.13, 0.14])
    (check,) = goals([base, ours])
    assert check[1] and "95 % CI [+10%, +40%]" in check[2] and "per seed set +20%, +30%, +40%" in check[2]


def test_the_memory_goal_reports_each_seed_sets_share_of_the_batch_gain():
    base = _sets(_r("base", "base", 0.100, 0.50), [0.1, 0.1], (0.0, 0.0))
    batch = _sets(_r("ours", "ours", 0.120, 0.50, 0.7, 0.3), [0.12, 0.12])
    memory = _sets(_r("memory", "memory", 0.117, 0.50, 0.7, 0.3), [0.11, 0.124])
    check = goals([base, batch, memory])[-1]
    assert check[1] and "per seed set (text tokens): 50%, 120%" in check[2]
