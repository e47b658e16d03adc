"""png_figure: a report figure is written where asked and never left open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from hearth.observability.figures import png_figure


def test_a_figure_is_written_at_its_dpi_into_a_new_folder_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "plot.png"
    with png_figure(path, save_dpi=50, figsize=(4, 2)) as (fig, ax):
        ax.plot([0, 1], [1, 0])
        number = fig.number
    assert Image.open(path).size == (200, 100)  # 4 x 2 inches at 50 dpi
    assert number not in plt.get_fignums()


def test_a_plot_that_fails_writes_nothing_and_leaks_no_figure(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    with pytest.raises(ZeroDivisionError), png_figure(path) as (fig, _):
        number = fig.number
        _ = 1 / 0
    assert not path.exists()
    assert number not in plt.get_fignums()
