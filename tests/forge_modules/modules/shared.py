"""Stand-in of Forge ``modules/shared.py`` (``opts``, ``OptionInfo``, ``state``), mirroring ``modules/options.py``:
``OptionInfo(default, label, component, component_args, onchange, section, ..., restrict_api=False, ...)`` and
``Options.add_option`` / attribute reads that fall back to the default / ``set(key, value, is_api)``, which ignores
``restrict_api`` options when called from the API (``/sdapi/v1/options`` and ``override_settings``); ``state``
mirrors the flags of ``modules/shared_state.py`` State (:17-19) that the generation loop reads."""

from __future__ import annotations

from typing import Any


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):  # fmt: skip
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.restrict_api = restrict_api
        self.do_not_save = False


class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def __getattr__(self, item: str) -> Any:
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def get_default(self, key: str) -> Any:
        """``Options.get_default`` (options.py:173-180): the registered default, None for an unknown key."""
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        option = self.data_labels[key]
        if self.data.get(key) == value or option.do_not_save or (is_api and option.restrict_api):
            return False
        self.data[key] = value
        return True


class State:
    """``shared_state.State``'s flags: "Interrupt" (``interrupt``), "Skip" (``skip``) and "Stop generating"
    (``stop_generating``) set them (shared_state.py:84-92)."""

    skipped = False
    interrupted = False
    stopping_generation = False


opts = Options()
state = State()
#: Forge's own options the stand-ins read (modules/shared_options.py:45, :55, :313, :365), with Forge's defaults.
for _key, _default in (
    ("grid_only_if_multiple", True),
    ("save_images_before_highres_fix", False),
    ("return_grid", True),
    ("add_model_hash_to_info", True),
):
    opts.add_option(_key, OptionInfo(_default))
