"""Stand-in of Forge ``modules/scripts.py``: ``Script``, ``AlwaysVisible``, ``PostSampleArgs`` and ``scripts_data``."""

from __future__ import annotations

from collections import namedtuple

AlwaysVisible = object()

# Forge: ScriptClassData(script_class, path, basedir, module); scripts/xyz_grid.py loads with __module__ "xyz_grid.py"
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []


class PostSampleArgs:
    """What ``post_sample(p, ps, *args)`` gets after each batch's sampling (processing.py: ``ps.samples``)."""

    def __init__(self, samples):
        self.samples = samples


class Script:
    """Forge's base class: attributes the runner reads, and no-op default hooks."""

    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None
    sorting_priority = 0

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []
