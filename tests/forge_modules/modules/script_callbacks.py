"""Stand-in of Forge ``modules/script_callbacks.py``: the ``on_before_ui`` registry."""

from __future__ import annotations

callbacks_before_ui: list = []


def on_before_ui(callback) -> None:
    callbacks_before_ui.append(callback)


def before_ui_callback() -> None:
    for callback in callbacks_before_ui:
        callback()
