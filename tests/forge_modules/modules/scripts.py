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


class OnComponent:
    """What an ``on_after_component`` callback gets (modules/scripts.py:49-50): the created ``component``."""

    def __init__(self, component):
        self.component = component


class PostprocessImageArgs:
    """``PostprocessImageArgs(image, index)`` (modules/scripts.py:32-35): ``index`` is the image's position in the
    job, ``i + p.iteration * p.batch_size`` (processing.py:1054)."""

    def __init__(self, image, index):
        self.image, self.index = image, index


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
    on_after_component_elem_id = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []

    def on_after_component(self, callback, *, elem_id):
        """modules/scripts.py:325-332: the runner calls ``callback(OnComponent(component))`` once the component
        with ``elem_id`` is created (``ScriptRunner.after_component``, :973-978)."""
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    # The always-on hooks process_images calls (modules/scripts.py:147-260), no-ops unless a script overrides them.
    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass
