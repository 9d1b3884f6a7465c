"""Evaluation code: a user of the library, never imported by it.

- :mod:`.reference`: the reference model (a tiny Flux-architecture model with known modes) and its training.
- :mod:`.demo`: one batch with and without repulsion, as a labelled picture and a table (``python -m lib_ctxrep``).
- :mod:`.bench`: every method side by side on the reference model.
- :mod:`.overhead`: the time and memory cost of the hooks at realistic widths.
- :mod:`.baselines`: CADS and particle guidance, for comparison.
- :mod:`.diffusers_tiny`: tiny diffusers transformers and pipelines built from small configs, for tests and tools.
- :mod:`.cli`: argument types shared by these commands.
"""
