"""The README shows what the demo really prints: its table is the default demo's output, line for line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("PIL")

ROOT = Path(__file__).resolve().parents[1]
# The numbers are deterministic for a seed and a thread count; CI and the README's run use two threads.
DEMO = (
    "import sys, torch; torch.set_num_threads(2); from lib_ctxrep.__main__ import main; "
    "sys.exit(main(['demo', '--out', sys.argv[1]]))"
)


def readme_demo_table() -> list[str]:
    """The README's block of the demo's table rows (the ```text block that starts with '[demo] prompt')."""
    blocks = re.findall(r"```text\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    tables = [b for b in blocks if b.startswith("[demo] prompt")]
    assert len(tables) == 1, "the README should show the demo's table once, in a ```text block"
    return tables[0].strip().splitlines()


def test_readme_demo_table_is_what_the_default_demo_prints(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", DEMO, str(tmp_path / "grid.png")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    expected = readme_demo_table()
    start = out.index(expected[0])
    assert out[start : start + len(expected)] == expected, (
        "the README's demo table is stale: run 'python -m lib_ctxrep demo --readme' (writes the table and picture)"
    )
    assert (tmp_path / "grid.png").is_file()


def test_readme_shows_the_demo_picture_and_the_command_that_regenerates_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/demo_grid.png)" in readme and (ROOT / "docs" / "demo_grid.png").is_file()
    assert "python -m lib_ctxrep demo --readme" in readme
