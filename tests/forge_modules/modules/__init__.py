"""Stand-ins of the parts of Forge's ``modules`` package that scripts/ctxrep.py uses (Forge main, dfdcbab6)."""
