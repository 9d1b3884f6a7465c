"""Stand-in of Forge ``modules/script_callbacks.py``: the ``on_before_ui`` and ``on_ui_settings`` registries."""

from __future__ import annotations

callbacks_before_ui: list = []
callbacks_ui_settings: list = []


def on_before_ui(callback) -> None:
    callbacks_before_ui.append(callback)


def before_ui_callback() -> None:
    for callback in callbacks_before_ui:
        callback()


def on_ui_settings(callback, *, name=None) -> None:
    callbacks_ui_settings.append(callback)


def ui_settings_callback() -> None:
    for callback in callbacks_ui_settings:
        callback()
