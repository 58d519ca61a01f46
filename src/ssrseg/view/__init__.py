"""``ssrseg view``: a self-contained static site to look at an output folder image by image.

:mod:`~ssrseg.view.discover` learns what a folder holds (a reproduce / demo run, a
``pseudo-labels``, ``cams`` or ``predict`` folder, an ``evaluate`` result),
:mod:`~ssrseg.view.layers` holds the pure per-image maths (colour layers, per-image scores),
:mod:`~ssrseg.view.render` writes one image's tiles, :mod:`~ssrseg.view.build` runs the
incremental build and :mod:`~ssrseg.view.site` writes the page (``index.html`` + ``data.js``).
Only :mod:`ssrseg.commands.view` imports this package.
"""
