"""Research probes behind docs/toy_world.md: not part of the installed ``ssrseg`` package.

Run from the repository root (``python -m research.<probe>``); see research/README.md.
"""
