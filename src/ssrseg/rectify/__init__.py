"""Rectification of CAMs: attention affinity (``affinity``), superpixel-guided correction
(``sgc``), pixel-adaptive refinement (``par``), labels (``labels``) and CMPA (``cmpa``).
Import the submodules directly; this package imports nothing so that each stays light."""
