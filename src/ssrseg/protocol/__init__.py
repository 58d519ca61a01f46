"""The paper's protocol (``ssrseg reproduce`` / ``ssrseg demo``): resumable stages, the check
before any work, the report beside the paper's numbers and the Table 3 rows it scores.

Built on :mod:`ssrseg.engine` (training, inference, checkpoints, export) and
:mod:`ssrseg.pseudo` (the labeller); nothing below imports it.
"""
