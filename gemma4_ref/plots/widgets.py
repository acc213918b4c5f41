"""The plumbing the chapters' explorers share: a row of controls above a figure that redraws.

An explorer is a class with a ``draw(*values) -> Figure`` callback, which works on its own (tests
call it, and the notebooks call it once for a static figure the book can show), and a list of
ipywidgets controls whose values ``draw`` takes, in order. :class:`Explorer` holds the rest: it
builds the controls only when the widget is first shown (ipywidgets comes with the ``notebooks``
extra), redraws on every change, and keeps the last figure in ``figure`` so a test can change a
control and look at what was drawn::

    class MyExplorer(Explorer):
        def make_controls(self, widgets):
            return {"layer": widgets.IntSlider(0, 0, 9, description="layer")}

        def draw(self, layer):
            self.figure = plot_something(layer)
            return self.figure
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Explorer:
    """Controls in a row, the figure of ``draw(*their values)`` below, redrawn on each change.

    Subclasses implement :meth:`make_controls` and :meth:`draw` (which stores what it drew in
    ``self.figure``); ``controls`` holds the built controls by name once ``widget`` was read.
    """

    def __init__(self) -> None:
        self.figure: Figure | None = None
        self.controls: dict[str, Any] = {}
        self._widget: Any = None

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        """The controls by name, in the order :meth:`draw` takes their values (``widgets`` is
        the ``ipywidgets`` module, imported only when a widget is built)."""
        raise NotImplementedError

    def draw(self, *values: Any) -> Figure:
        """The figure for these control values; the widget's callback, usable without widgets."""
        raise NotImplementedError

    @property
    def widget(self) -> Any:
        """The ipywidgets box: the controls in a row and, below, the figure for their values."""
        if self._widget is None:
            import ipywidgets as widgets
            from IPython.display import display

            self.controls = self.make_controls(widgets)
            out = widgets.Output()

            def redraw(_change: Any = None) -> None:
                fig = self.draw(*(control.value for control in self.controls.values()))
                with out:
                    # wait=True keeps the old figure until the new one is ready: no flicker
                    out.clear_output(wait=True)
                    display(fig)

            for control in self.controls.values():
                control.observe(redraw, names="value")
            redraw()
            self._widget = widgets.VBox([widgets.HBox(list(self.controls.values())), out])
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def token_dropdown(widgets: Any, labels: Sequence[str]) -> Any:
    """A dropdown over a prompt's tokens, ``"i: label"``, valued by position; it starts at the
    first token after BOS, the first one with something to look at."""
    return widgets.Dropdown(
        options=[(f"{i}: {s}", i) for i, s in enumerate(labels)],
        value=min(1, len(labels) - 1),
        description="token",
    )
