"""Report figures (PNG): drawn headless, laid out, written and always closed, the same way
for the training, drift, rollout and benchmark reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextmanager
def png_figure(
    path: Path, *, save_dpi: float | None = None, **subplots: Any
) -> Iterator[tuple[Figure, Any]]:
    """A new figure and its axes (`plt.subplots(**subplots)`) to draw on.

    On a clean exit the figure is laid out and written to `path` (its folder made; `save_dpi`
    for the file, else the figure's own); it is closed in every case, so a plot that fails
    leaks no figure into a long-lived process.
    """
    # lazy: matplotlib takes about a second to import and only the reports draw
    import matplotlib

    matplotlib.use("Agg")  # headless: flows and servers run without a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, **({} if save_dpi is None else {"dpi": save_dpi}))
    finally:
        plt.close(fig)
