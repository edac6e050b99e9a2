"""Heatmap rendering: 0 is white, signs are red/blue, per-sample scaling, overlays, grids, PNG,
and the matplotlib figures."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import relprop
from relprop import render

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def test_zero_is_exactly_white_and_signs_are_red_and_blue():
    R = np.array([[0.0, 2.0, -2.0], [1.0, -0.5, 0.0]])
    rgb = render.heatmap(R)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == WHITE and tuple(rgb[1, 2]) == WHITE
    assert tuple(rgb[0, 1]) == RED and tuple(rgb[0, 2]) == BLUE
    r, g, b = (int(c) for c in rgb[1, 0])  # +half: red hue, lighter
    assert r == 255 and g == b and 0 < g < 255
    r, g, b = (int(c) for c in rgb[1, 1])  # -quarter: blue hue, lighter still
    assert b == 255 and r == g and g > int(rgb[1, 0][1])


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=3, max_dims=3, max_side=6),
                  elements=st.floats(-1e3, 1e3) | st.just(0.0)))
def test_colours_follow_the_sign(R):
    rgb = render.heatmap(R).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    zero, pos, neg = R == 0, R > 0, R < 0
    assert (rgb[zero] == 255).all()
    assert (r[pos] == 255).all() and (g[pos] == b[pos]).all()
    assert (b[neg] == 255).all() and (r[neg] == g[neg]).all()
    # lightness falls with |R| / max|R| of each sample (0 -> 255, the maximum -> 0)
    m = np.abs(R).max(axis=(1, 2), keepdims=True)
    want = np.rint(255 * (1 - np.abs(R) / np.where(m > 0, m, 1)))
    np.testing.assert_array_equal(np.where(pos, g, np.where(neg, r, 255)), want)


def test_all_zero_map_is_white():
    assert (render.heatmap(np.zeros((2, 5, 4))) == 255).all()


def test_bwr_matches_matplotlib():
    mpl = pytest.importorskip("matplotlib")
    v = np.linspace(-1, 1, 201).reshape(1, 201)
    ours = render.heatmap(v).astype(int)
    theirs = np.rint(mpl.colormaps["bwr"]((v + 1) / 2)[..., :3] * 255).astype(int)
    assert np.abs(ours - theirs[0]).max() <= 2  # matplotlib quantizes to a 256-entry table


def test_scaled_per_sample():
    R = np.zeros((2, 4, 4))
    R[0, 1, 1], R[1, 2, 2] = 1e-3, -50.0
    rgb = render.heatmap(R)
    assert tuple(rgb[0, 1, 1]) == RED and tuple(rgb[1, 2, 2]) == BLUE


def test_channels_pooled_with_pool_channels():
    R = np.random.default_rng(0).standard_normal((3, 4, 5, 6))
    for how in ("sum", "abs", "max"):
        np.testing.assert_array_equal(render.heatmap(R, pool=how),
                                      render.heatmap(relprop.pool_channels(R, how)))
    with pytest.raises(ValueError, match="how"):
        render.heatmap(R, pool="mean")


def test_symmetric_false_spans_min_to_max():
    R = np.array([[1.0, 2.0, 3.0]])
    rgb = render.heatmap(R, symmetric=False)
    assert tuple(rgb[0, 0]) == BLUE and tuple(rgb[0, 1]) == WHITE and tuple(rgb[0, 2]) == RED


def test_overlay_shows_image_where_relevance_is_zero():
    x = np.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    R = np.zeros((1, 1, 4, 4))
    R[0, 0, 0, 0] = 1.0
    out = render.heatmap(R, overlay=x, alpha=1.0)
    gray = render.image(x)
    np.testing.assert_array_equal(out[0, 1:], gray[0, 1:])
    assert tuple(out[0, 0, 0]) == RED  # alpha 1 at the strongest relevance: pure colour
    half = render.heatmap(R, overlay=x, alpha=0.5)
    np.testing.assert_array_equal(half[0, 0, 0], np.rint((np.array(RED) + gray[0, 0, 0]) / 2))
    with pytest.raises(ValueError, match="overlay"):
        render.heatmap(R, overlay=np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="alpha"):
        render.heatmap(R, overlay=x, alpha=2)


def test_image_gray_rgb_and_invert():
    x = np.array([[0.0, 0.5], [1.0, 0.25]])
    np.testing.assert_array_equal(render.image(x)[..., 0], [[0, 128], [255, 64]])
    np.testing.assert_array_equal(render.image(x, invert=True)[..., 0], [[255, 128], [0, 191]])
    rgb = np.random.default_rng(1).uniform(size=(2, 3, 4, 5))
    out = render.image(rgb)
    assert out.shape == (2, 4, 5, 3)
    assert not np.array_equal(out[..., 0], out[..., 1])


def test_other_colormaps():
    R = np.array([[-1.0, 0.0, 1.0]])
    g = render.heatmap(R, cmap="gray")
    assert tuple(g[0, 0]) == (0, 0, 0) and tuple(g[0, 2]) == WHITE
    pytest.importorskip("matplotlib")
    assert render.heatmap(R, cmap="viridis").shape == (1, 3, 3)
    with pytest.raises(ValueError, match="unknown colormap"):
        render.heatmap(R, cmap="no-such-map")


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        render.heatmap(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        render.heatmap(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="dtype"):
        render.heatmap(np.array([["a"]]))


def test_grid_layout():
    imgs = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
    g = render.grid(imgs, ncols=3, pad=1, scale=2)
    assert g.shape == (2 * (4 + 1) + 1, 3 * (6 + 1) + 1, 3)
    assert (g[1:5, 1:7] == 0).all() and (g[1:5, 8:14] == 1).all() and (g[6:10, 8:14] == 4).all()
    assert (g[6:10, 15:21] == 255).all()  # the empty sixth cell is padding
    rows = np.zeros((2, 3, 4, 4, 3), np.uint8)
    assert render.grid(rows, pad=0).shape == (8, 12, 3)
    with pytest.raises(TypeError, match="uint8"):
        render.grid(np.zeros((2, 3, 3, 3)))


@pytest.mark.parametrize("shape", [(7, 9, 3), (5, 4), (1, 1, 3)])
def test_save_png_round_trip_through_pillow(tmp_path, shape):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "h.png"
    render.save_png(path, rgb)
    with Image.open(path) as im:
        im.load()  # decodes and checks every chunk's CRC
        assert im.mode == ("RGB" if len(shape) == 3 else "L")
        np.testing.assert_array_equal(np.asarray(im), rgb)


def test_save_png_refuses_bad_images(tmp_path):
    path = tmp_path / "h.png"
    with pytest.raises(TypeError, match="uint8"):
        render.save_png(path, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        render.save_png(path, np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        render.save_png(path, np.zeros((0, 2, 3), np.uint8))
    assert not path.exists()


def test_heatmap_of_bundled_model_explanation():
    net = relprop.models.digits_cnn()
    x, y = relprop.models.digits_data()
    R = relprop.gradient_x_input(net, x[:4], y[:4])
    rgb = render.heatmap(R)
    assert rgb.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(rgb[R[:, 0] == 0], 255)  # blank pixels stay white
    pos, neg = rgb[R[:, 0] > 0], rgb[R[:, 0] < 0]
    assert len(pos) and len(neg)
    assert (pos[:, 0] == 255).all() and (pos[:, 1] == pos[:, 2]).all()  # shades of red
    assert (neg[:, 2] == 255).all() and (neg[:, 0] == neg[:, 1]).all()  # shades of blue


# ------------------------------------------------------------------------------------ plot --
def test_plot_explanations_and_features(tmp_path):
    pytest.importorskip("matplotlib")
    from relprop import plot

    x = np.random.default_rng(3).uniform(size=(3, 1, 8, 8))
    R = {"a": x - 0.5, "b": 0.5 - x}
    fig = plot.explanations(x, R, labels=["1", "2", "3"])
    assert len(fig.axes) == 3 * 3
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="samples"):
        plot.explanations(x, {"a": x[:2]})

    r = np.array([0.5, -0.25, 0.0, 1.0])
    ax = plot.features(r, ["age", "bmi", "bp", "s1"])
    heights = [p.get_width() for p in ax.patches]
    np.testing.assert_allclose(heights, r)
    colors = [p.get_facecolor()[:3] for p in ax.patches]
    assert colors[0][0] > colors[0][2] and colors[1][2] > colors[1][0]  # red, then blue
    pie = plot.features(r, kind="pie")
    assert len(pie.patches) == 3  # the zero feature has no wedge
    with pytest.raises(ValueError, match="one sample"):
        plot.features(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="kind"):
        plot.features(r, kind="donut")
