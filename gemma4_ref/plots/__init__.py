"""Pictures and widgets for the book's chapters (``notebooks/``), kept here so they are tested.

One module per chapter or idea: ``tour`` (chapter 0, and the token pictures of chapter 1),
``generation`` (chapter 7), ``ple``, ``attention``, ``rope`` and so on. Each draws with
matplotlib and builds widgets with ipywidgets, which come with the ``notebooks`` extra, not with
the package: nothing here is imported by ``import gemma4_ref``, and this file imports no
submodule, so ``import gemma4_ref.plots`` stays cheap. Import the chapter's module itself::

    from gemma4_ref.plots import tour
    fig = tour.forward_diagram(model.config)

Every drawing function returns a :class:`matplotlib.figure.Figure` made without pyplot's global
state (so tests run headless and notebooks decide when to show); widget builders return an
``ipywidgets`` box whose callbacks are plain functions of this package.
"""

from __future__ import annotations

from typing import Any


def new_figure(width: float, height: float, **kwargs: Any):
    """A matplotlib Figure not registered with pyplot (shown by Jupyter when it is returned)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=kwargs.pop("layout", "constrained"), **kwargs)


def figure_png(fig, dpi: int = 100) -> bytes:
    """The figure rendered to PNG bytes (for an ``ipywidgets.Image``)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
