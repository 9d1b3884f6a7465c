"""The commands of ``python -m lib_ctxrep`` run end to end (reduced sizes)."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("PIL")

from lib_ctxrep.__main__ import main  # noqa: E402
from lib_ctxrep.evaluation.bench import README_END, README_START, default_methods  # noqa: E402


def test_demo_writes_a_grid_and_reports_diversity_and_fidelity(capsys, tmp_path):
    out = tmp_path / "grid.png"
    main(["demo", "--classes", "1", "--batch", "2", "--steps", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert "mode recall" in text and "fidelity" in text and "repulsion" in text
    assert "higher is better" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("[demo] square ")]
    assert [r[2] for r in rows] == ["base", "repulsion"]
    assert all(r[-3] == "-" or float(r[-3]) >= 1 for r in rows)  # Vendi (modes): none, or at least 1
    from PIL import Image

    with Image.open(out) as grid:
        assert grid.size[0] > 2 * 16 * 6 and grid.size[1] >= 2 * 16 * 6  # 2 rows of 2 images scaled 6x


def test_demo_readme_writes_the_table_into_the_readme_and_the_picture_into_docs(capsys, tmp_path, monkeypatch):
    from lib_ctxrep.evaluation import demo

    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{demo.README_START}\nold\n{demo.README_END}\nafter\n")
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(demo, "README", readme)
    main(["demo", "--classes", "1", "--batch", "2", "--steps", "2", "--readme"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[demo] square ")]
    written = readme.read_text()
    assert written.startswith("before\n") and written.endswith("after\n") and "old" not in written
    assert all(row in written for row in rows) and len(rows) == 2
    assert (tmp_path / "docs" / "demo_grid.png").is_file()


def test_demo_runs_at_the_reference_models_setting_and_says_in_one_line_why_it_is_not_the_library_default(
    capsys, tmp_path
):
    from lib_ctxrep.config import DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW
    from lib_ctxrep.evaluation.reference.model import REPULSION_STEP_STRENGTH, REPULSION_WHY, REPULSION_WINDOW

    main(["demo", "--classes", "1", "--batch", "2", "--steps", "2", "--out", str(tmp_path / "g.png")])
    text = capsys.readouterr().out
    assert f"step strength {REPULSION_STEP_STRENGTH:g}, window {REPULSION_WINDOW}" in text
    why = [line for line in text.splitlines() if "not the library defaults" in line]
    assert len(why) == 1 and REPULSION_WHY in why[0] and f"window {DEFAULT_WINDOW}" in why[0]
    main(["demo", "--classes", "1", "--batch", "2", "--steps", "2", "--step-strength", str(DEFAULT_STEP_STRENGTH),
          "--window", str(DEFAULT_WINDOW), "--out", str(tmp_path / "g.png")])  # fmt: skip
    text = capsys.readouterr().out
    assert f"window {DEFAULT_WINDOW}" in text and "not the library defaults" not in text
    main(["demo", "--classes", "1", "--batch", "2", "--steps", "2", "--strength", "0.05", "--out",
          str(tmp_path / "g.png")])  # fmt: skip
    assert "strength 0.05 per block" in capsys.readouterr().out


def test_bench_covers_every_method_and_writes_plot_json_and_readme_table(capsys, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold\n{README_END}\nafter\n")
    main(
        [
            "bench", "--classes", "1", "--batches", "1", "--batch", "2", "--steps", "2", "--windows", "0.5",
            "--seed-sets", "2", "--out", str(tmp_path / "out"), "--readme", "--readme-path", str(readme),
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    families = {r["family"] for r in data["results"]}
    assert families == {"base", "ours", "memory", "memory_image", "spell", "pg", "cads"}
    assert len(data["results"]) == len(default_methods(0.05, (0.5,)))
    from lib_ctxrep.evaluation.reference.model import REPULSION_WINDOW

    assert {r["window"] for r in data["results"] if r["family"] == "ours"} == {0.05, 0.5}
    assert {r["window"] for r in data["results"] if r["family"] in ("memory", "memory_image")} == {REPULSION_WINDOW}
    assert all(len(r["per_set"]) == 2 and len(r["batch_recalls"]) == 2 for r in data["results"])
    assert [s["seed"] for s in data["results"][0]["per_set"]] == [0, 1000]
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "pareto.png").stat().st_size > 1000  # --readme: the plot beside the Markdown file
    assert "goal" in text and "| base |" in text
    written = readme.read_text()
    assert written.startswith("before\n") and written.endswith("after\n") and "| method |" in written
    assert "old" not in written and "--seed-sets 2" in written and "95 % CI" in written


def test_overhead_reports_ratio_cost_per_block_m_independence_and_spell_search(capsys):
    main(
        [
            "overhead",
            "--device", "cpu", "--heads", "1", "--double", "1", "--single", "1", "--batch", "2",
            "--text-tokens", "8", "--image-tokens", "4", "--repeats", "1", "--iterations", "3",
            "--spell-set", "3000", "--spell-dim", "8",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "ratio inside the window" in out and "ratio outside the window" in out
    assert "[overhead]" in out and "[bench]" not in out
    assert "M=1 -> 1 Gram + 1 combination, M=3 -> 1 Gram + 1 combination" in out
    assert re.search(
        r"per hooked block, inner loop (numba|numpy), Gram and combination torch: 1.00 device-to-host transfers "
        r"\(2 in a hooked forward of 2 blocks\)",
        out,
    )
    # the implementations that differ here, timed side by side in the same run (numpy's loop is always one)
    assert re.search(r"side by side, inner loop numpy, Gram and combination torch: inside the window .*; whole", out)
    for rows in (2, 4):  # the run's batch, and B = 4
        assert re.search(
            rf"host inner loop \(numpy, float64\), B={rows}: [\d.]+ us per iteration at M=8, [\d.]+ us per "
            "iteration at M=50",
            out,
        )
        assert f"device inner loop, B={rows}: not measured here (it runs on CUDA, with Triton)" in out
    assert re.search(r"stream \[2, 8, 128\] float32, torch: Gram [\d.]+ ms .* combination [\d.]+ ms", out)
    assert re.search(r"stream \[2, 12, 128\] float32, torch: Gram", out)  # the single block's whole sequence
    assert "SPELL search, 3000 latents x 8: exact" in out and "ms per query" in out
    stages = ["building a Flux transformer", "warm-up", "peak memory", "timing, round 1/1", "cost per block"]
    at = [out.index(f"[overhead] ... {stage}") for stage in stages]  # a line as each stage starts, in order
    assert at == sorted(at) and at[-1] < out.index("[overhead] forward, best of 1")
    assert not re.search(r"(?<![\w.])-\d", out)  # no negative figure (an exponent such as 5e-04 is no figure)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--strength", "-1"], "argument --strength: must be >= 0, got -1"),
        (["demo", "--out", "/nonexistent/dir/x.png"], "argument --out: the folder '/nonexistent/dir' does not exist"),
        (["demo", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
        (["demo", "--window", "2"], "argument --window: must be in (0, 1], got 2"),
        (["bench", "--batch", "1"], "argument --batch: must be >= 2, got 1"),
        (["overhead", "--heads", "x"], "argument --heads: must be a whole number, got 'x'"),
        (["demo", "--weights", "/nonexistent.safetensors"], "argument --weights: no such file"),
        (["bench", "--weights", "/nonexistent.safetensors"], "argument --weights: no such file"),
        (["overhead", "--device", "foo"], "argument --device: must be a torch device such as cpu or cuda, got 'foo'"),
        (["demo", "--classes", "9"], "argument --classes: must be from 1 to 4, got 9"),
        (["bench", "--classes", "5"], "argument --classes: must be from 1 to 4, got 5"),
        (["bench", "--methods", "ours,foo"], "argument --methods: unknown ['foo']; choose from"),
        (["bench", "--windows", "0.2,x"], "argument --windows: must be a number, got 'x'"),
        (["bench", "--windows", "0.2,2"], "argument --windows: must be in (0, 1], got 2"),
    ]
    + ([] if torch.cuda.is_available() else [(["overhead", "--device", "cuda"], "this torch has no CUDA device")]),
)
def test_an_argument_error_is_one_line_naming_the_argument(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--help" in err and "Traceback" not in err


def test_every_option_shows_its_default_once_and_the_help_is_plain_text(capsys):
    for command in (None, "demo", "bench", "overhead"):
        with pytest.raises(SystemExit):
            main([command, "--help"] if command else ["--help"])
        text = capsys.readouterr().out
        assert "``" not in text  # no reST markup
        for entry in re.split(r"\n  (?=-)", text)[1:]:  # one option's help, wrapped over lines
            flat = " ".join(entry.split())
            assert flat.count("default") <= 1, flat
            if entry.startswith("--") and not entry.startswith(("--help", "--readme ")):
                assert "default" in flat, flat


def test_a_batch_of_one_is_named(capsys, tmp_path):
    main(["demo", "--classes", "1", "--batch", "1", "--steps", "1", "--out", str(tmp_path / "g.png")])
    assert "--batch 1: contextual repulsion acts within a batch" in capsys.readouterr().out


def test_no_command_says_it_runs_the_demo(capsys, tmp_path):
    main(["--classes", "1", "--batch", "2", "--steps", "1", "--out", str(tmp_path / "g.png")])
    assert "no command given: running 'demo'" in capsys.readouterr().out


def test_the_test_run_names_what_it_skipped_and_how_to_run_it(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_forge():\n    pytest.skip(\"could not import 'gradio': No module named 'gradio'\")\n"
        "def test_new_class():\n    pytest.skip('diffusers 0.31.0 has no ZImageTransformer2DModel')\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    ).stdout  # fmt: skip
    assert (
        "[tests] the Forge script's tests (real gradio 4.40) were skipped" in out and "requirements-test-forge" in out
    )
    assert "[tests] 1 tests of model classes this diffusers lacks were skipped" in out


def test_bench_jobs_give_the_numbers_of_a_one_thread_run(tmp_path, capsys):
    argv = ["bench", "--classes", "1", "--batches", "1", "--batch", "2", "--steps", "1", "--seed-sets", "1",
            "--methods", "spell", "--out"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([*argv, str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    main([*argv, str(tmp_path / "two"), "--jobs", "2"])
    capsys.readouterr()
    one, two = (json.loads((tmp_path / d / "bench.json").read_text())["results"] for d in ("one", "two"))
    keys = ("name", "recall", "fidelity", "vendi_pixels", "batch_recalls")
    assert [[r[k] for k in keys] for r in one] == [[r[k] for k in keys] for r in two]
