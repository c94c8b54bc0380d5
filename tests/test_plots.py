"""Figures of a run: laid out so that nothing covers anything else."""

from matplotlib.backends.backend_agg import FigureCanvasAgg

from cxrlab.evaluation.plots import _image_grid


def test_an_image_grids_titles_stay_clear_of_the_row_above():
    """Each row's two-line titles sit between its images and the row above (tight_layout let them overlap the images
    above, which square images made smaller than their cells)."""
    fig, axes = _image_grid(5, title_lines=(2, 2))
    for ax in axes.flat:
        ax.imshow([[0, 1], [1, 0]], cmap="gray")
        ax.set_title("pred pneumothorax\nP=0.658  true cardiomegaly", fontsize=7)
    fig.suptitle("model: random val images\nPHANTOM data", fontsize=10)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for upper, lower in zip(axes[0], axes[1]):
        title = lower.title.get_window_extent(renderer)
        assert title.y0 >= lower.get_window_extent(renderer).y1 - 1  # above its own image
        assert title.y1 <= upper.get_window_extent(renderer).y0  # below the image above
    top_titles = max(ax.title.get_window_extent(renderer).y1 for ax in axes[0])
    assert top_titles <= fig._suptitle.get_window_extent(renderer).y0  # below the figure's title
