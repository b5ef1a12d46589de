"""The analysis plots: labelled axes and colorbars, one 0-1 scale for the accuracy matrices, a diverging and
symmetric scale for the signed specialization, and cell text that reads on its cell."""

import pytest

pytest.importorskip("matplotlib")

from orchestrator.analysis import ACCURACY, bars_figure, heatmap_figure, text_color  # noqa: E402


def _parts(fig):
    ax, cbar_ax = fig.axes
    return ax, ax.images[0], cbar_ax


def test_text_colour_flips_with_cell_luminance():
    assert text_color((1.0, 1.0, 1.0, 1.0)) == "black"
    assert text_color((0.0, 0.0, 0.0, 1.0)) == "white"
    assert text_color((0.993, 0.906, 0.144)) == "black"  # viridis' yellow end
    assert text_color((0.267, 0.005, 0.329)) == "white"  # viridis' purple end
    assert text_color((0.5, 0.5, 0.5)) == "black" and text_color((0.3, 0.3, 0.3)) == "white"


@pytest.mark.parametrize("matrix", [[[0.2, 0.3], [0.25, 0.31]], [[1.0, 0.0], [0.9, 0.95]]])
def test_accuracy_matrices_share_one_labelled_scale(matrix):
    fig = heatmap_figure(matrix, ["-a", "-b"], ["a", "b"], "t", xlabel="skill evaluated", ylabel="brick ablated",
                         **ACCURACY)
    ax, im, cbar_ax = _parts(fig)
    assert im.get_clim() == (0.0, 1.0)  # the same scale whatever the values
    assert ax.get_xlabel() == "skill evaluated" and ax.get_ylabel() == "brick ablated"
    assert cbar_ax.get_ylabel() == "exact-match accuracy"
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    for row in matrix:
        for v in row:
            assert colours[f"{v:.2f}"] == text_color(im.cmap(im.norm(v)))
    if matrix[0][0] == 1.0:
        assert colours["1.00"] == "black" and colours["0.00"] == "white"  # yellow cell, purple cell


def test_specialization_is_diverging_and_centred_at_zero():
    fig = heatmap_figure([[0.5, -1.5], [0.2, 0.0]], ["s1", "s2"], ["c0", "c1"], "t", xlabel="neuron cluster",
                         ylabel="skill", cbar_label="mean d' (signed)", cmap="RdBu_r", centered=True)
    ax, im, cbar_ax = _parts(fig)
    vmin, vmax = im.get_clim()
    assert vmin == -vmax == -1.5
    mid = im.cmap(0.5)
    assert abs(mid[0] - mid[2]) < 0.1 and min(mid[:3]) > 0.85  # a near-white midpoint: diverging
    assert im.norm(0.0) == pytest.approx(0.5)
    assert cbar_ax.get_ylabel() == "mean d' (signed)" and ax.get_xlabel() == "neuron cluster"
    flat = heatmap_figure([[0.0]], ["s"], ["c"], "t", xlabel="x", ylabel="y", cbar_label="d", centered=True)
    assert _parts(flat)[1].get_clim() == (-1.0, 1.0)  # all zeros: still a valid symmetric scale


def test_bars_have_labels():
    fig = bars_figure([0.1, 0.5], ["layer 0", "layer 1"], "t", xlabel="FFN layer", ylabel="share inactive")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_ylim()) == ("FFN layer", "share inactive", (0.0, 1.0))
