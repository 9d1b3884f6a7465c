"""Write ``javascript/ctxrep_hints.js``, the Forge accordion's tooltips, from the one definition of every setting
(``lib_ctxrep.settings``). ``tests/test_settings.py`` checks that the file is what this writes.

Usage: ``python tools/write_js_hints.py`` (from the repository root).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_ctxrep.settings import SETTINGS  # noqa: E402

TARGET = ROOT / "javascript" / "ctxrep_hints.js"


def hints_script() -> str:
    """The JavaScript that sets each accordion control's tooltip (``title``) in txt2img and img2img."""
    hints = "\n".join(f"        {name}: {json.dumps(s.tooltip)}," for name, s in SETTINGS.items())
    return (
        "// Tooltips for the Contextual Repulsion accordion (txt2img and img2img). Forge loads every javascript/*.js\n"
        "// file. Written by tools/write_js_hints.py from lib_ctxrep/settings.py: edit the tooltips there.\n"
        "(function () {\n"
        "    const hints = {\n"
        f"{hints}\n"
        "    };\n"
        "    onUiLoaded(function () {\n"
        '        for (const tab of ["txt2img", "img2img"]) {\n'
        "            for (const [name, text] of Object.entries(hints)) {\n"
        "                const element = gradioApp().getElementById(`ctxrep_${tab}_${name}`);\n"
        "                if (element) {\n"
        "                    element.title = text;\n"
        "                }\n"
        "            }\n"
        "        }\n"
        "    });\n"
        "})();\n"
    )


if __name__ == "__main__":
    TARGET.write_text(hints_script(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
