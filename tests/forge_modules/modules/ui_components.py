"""Stand-in of Forge ``modules/ui_components.py`` ``InputAccordion`` (Forge main dfdcbab6): a hidden gr.Checkbox
(the enabled flag, elem_id ``<elem_id>-checkbox``) plus a gr.Accordion (elem_id ``<elem_id>``, open = value); used as
a context manager it enters the accordion; ``get_block_name()`` is "checkbox" so gradio renders it as a checkbox."""

from __future__ import annotations

import gradio as gr


class InputAccordionImpl(gr.Checkbox):
    webui_do_not_create_gradio_pyi_thank_you = True

    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get("elem_id") or "input-accordion-0"
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(
            **{**kwargs, "elem_id": self.accordion_id, "label": kwargs.get("label", "Accordion"),
               "elem_classes": ["input-accordion"], "open": value}
        )  # fmt: skip

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):  # noqa: N802 (Forge's name)
    return InputAccordionImpl(value=value, setup=True, **kwargs)
