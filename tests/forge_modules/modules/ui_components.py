"""Stand-in of Forge ``modules/ui_components.py`` ``InputAccordion``: a gr.Checkbox (its value is the enabled flag)
that, used as a context manager, opens a gr.Accordion holding the controls."""

from __future__ import annotations

import gradio as gr


class InputAccordionImpl(gr.Checkbox):
    def __init__(self, value=None, label="", elem_id=None, **kwargs):
        super().__init__(value=value, label=label, elem_id=elem_id, visible=False)
        self.accordion = gr.Accordion(label=label, open=False, elem_id=f"{elem_id}-accordion" if elem_id else None)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        self.accordion.__exit__(*exc)


def InputAccordion(value=None, **kwargs):  # noqa: N802 (Forge's name)
    return InputAccordionImpl(value=value, **kwargs)
