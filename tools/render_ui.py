"""Render the Forge accordion outside Forge and check it in a headless browser.

Hosts ``scripts/ctxrep.py``'s ``ui()`` in a small gradio app (with the stand-ins of Forge's ``modules`` from
tests/forge_modules, and the extension's javascript/ loaded the way Forge loads it), opens it in headless Chromium,
checks that every control and its tooltip is present, and writes a screenshot.

    python tools/render_ui.py docs/forge_accordion.png   # needs gradio 4.40 (Forge's), playwright and chromium

Exit status 0 when every control and hint was found in the rendered page.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Forge defines these globals in its own javascript (script.js); the extension's hints file relies on them.
FORGE_JS_SHIMS = """
window.gradioApp = () => document;
window.onUiLoaded = (callback) => {
  const start = Date.now();
  const poll = () => document.getElementById('ctxrep_txt2img_block_strength') ? setTimeout(callback, 200)
                     : (Date.now() - start < 20000 ? setTimeout(poll, 100) : null);
  poll();
};
"""
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    """Path of a Chromium to drive (Debian's package by default)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        raise SystemExit("render_ui: no chromium found (apt-get install chromium)")
    return found


def load_script():
    sys.path.insert(0, str(ROOT / "tests" / "forge_modules"))
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("ctxrep.py", ROOT / "scripts" / "ctxrep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: str) -> int:
    import gradio as gr

    ctxrep = load_script()
    from lib_ctxrep.integrations import forge_args

    ids = [f"ctxrep_txt2img_{name}" for name in forge_args.ARG_NAMES]
    hints = (ROOT / "javascript" / "ctxrep_hints.js").read_text()
    head = f"<script>{FORGE_JS_SHIMS}</script><script>{hints}</script>"
    with gr.Blocks(title="Contextual Repulsion (Forge accordion)", head=head) as app:
        ctxrep.ContextualRepulsionScript().ui(is_img2img=False)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    time.sleep(2)
    url = f"http://127.0.0.1:{port}/"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.on("response", lambda r: print("render_ui: HTTP", r.status, r.url) if r.status >= 400 else None)
        page.goto(url)
        try:
            page.wait_for_selector("#ctxrep_txt2img_block_strength", state="attached", timeout=60000)
        except Exception:
            page.screenshot(path=out)
            print(f"render_ui: the controls never appeared; see {out}")
            raise
        page.wait_for_timeout(1500)  # onUiLoaded callbacks
        page.click("#ctxrep_txt2img_enabled .label-wrap")  # open the accordion for the screenshot
        page.wait_for_timeout(500)
        page.click("#ctxrep_txt2img_spell_group .label-wrap")  # and its SPELL section
        page.wait_for_timeout(500)
        found = page.evaluate(
            "ids => ids.map(id => { const el = document.getElementById(id); return [id, !!el, el ? el.title : '']; })",
            ids,
        )
        page.screenshot(path=out, full_page=True)
        browser.close()
    app.close()
    missing = [i for i, present, _ in found if not present]
    no_hint = [i for i, present, title in found if present and not title]
    for element_id, present, title in found:
        print(f"{element_id:32} {'ok' if present else 'MISSING':8} {title[:70]}")
    print(f"screenshot: {out}")
    return 1 if missing or no_hint else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "forge_accordion.png")))
