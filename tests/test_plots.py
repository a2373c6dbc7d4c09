"""Pictures (plots.py) and the pictures of a run (report.py): labelled, with colour bars
in their units, outputs drawn as images, one shared colour scale, an overlay."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfue_onnx import plots, report
from tfue_onnx.results import OutputStats, Result


def _rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _count(pixels, colour, tol=3):
    """Pixels of ``pixels`` ([H, W, 3] ints) within ``tol`` of ``colour`` (0..255)."""
    return int(np.count_nonzero(np.abs(pixels - np.asarray(colour)).max(axis=-1) <= tol))


def _magma(t):
    import matplotlib

    return np.round(np.asarray(matplotlib.colormaps["magma"](t)[:3]) * 255).astype(int)


def test_an_image_cell_is_drawn_as_the_image_itself(tmp_path):
    """An output image is drawn in its own colours (red stays red), not false-coloured."""
    red = np.zeros((40, 40, 3))
    red[..., 0] = 1.0
    grey = np.full((40, 40), 0.5)
    plots.panels(str(tmp_path / "p.png"), [[("image", red, ""), ("image", grey, "")]],
                 ["a", "b"], "title")
    px = _rgb(tmp_path / "p.png")
    assert px.shape == (300, 640, 3)  # two 3.2 x 3.0 inch cells at 100 dpi
    # Each image fills most of its (about 230 x 230 pixel) axes.
    assert _count(px, (255, 0, 0)) > 150 * 150
    assert _count(px, (128, 128, 128), tol=2) > 150 * 150


def test_map_picture_colours_follow_the_range_it_is_given(tmp_path):
    """A constant map of 1 drawn on the range (0, 2) is magma's middle colour; on its
    own range it would be another: the range really reaches the colour bar."""
    m = np.ones((50, 60))
    plots.map_picture(str(tmp_path / "shared.png"), m, "variance, (output units)²", "t",
                      vrange=(0.0, 2.0))
    px = _rgb(tmp_path / "shared.png")
    assert _count(px, _magma(0.5)) > 150 * 100  # the map area
    plots.map_picture(str(tmp_path / "top.png"), m, "variance, (output units)²", "t",
                      vrange=(0.0, 1.0))
    px = _rgb(tmp_path / "top.png")
    assert _count(px, _magma(1.0)) > 150 * 100 and _count(px, _magma(0.5)) < 2000


def test_map_picture_is_as_large_as_the_map_needs(tmp_path):
    small, large = tmp_path / "s.png", tmp_path / "l.png"
    plots.map_picture(str(small), np.zeros((8, 8)), "variance, (output units)²", "t")
    plots.map_picture(str(large), np.zeros((400, 600)), "variance, (output units)²", "t")
    with Image.open(small) as a, Image.open(large) as b:
        assert a.size == (440, 400)  # the smallest cell
        assert b.size == (720, 480)  # 6 inches for the map: 600 x 400 shown at 1 : 1.1


def test_overlay_blends_the_map_over_the_input(tmp_path):
    red = np.zeros((60, 60, 3))
    red[..., 0] = 1.0
    plots.overlay_picture(str(tmp_path / "o.png"), red, np.ones((60, 60)),
                          "variance, (output units)²", "t", vrange=(0.0, 2.0))
    px = _rgb(tmp_path / "o.png")
    a = plots.OVERLAY_ALPHA * 0.5  # opacity grows with the value: half-way up the range
    blended = np.round(a * _magma(0.5) + (1 - a) * np.array([255, 0, 0])).astype(int)
    assert _count(px, blended, tol=4) > 150 * 150
    assert _count(px, (255, 0, 0)) < 100  # the input is under the map, not beside it
    # Where the map is at the bottom of its range, the input shows through unchanged.
    plots.overlay_picture(str(tmp_path / "z.png"), red, np.zeros((60, 60)),
                          "variance, (output units)²", "t", vrange=(0.0, 2.0))
    assert _count(_rgb(tmp_path / "z.png"), (255, 0, 0), tol=2) > 150 * 150


def test_output_image_draws_images_of_one_or_three_channels_only():
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 3, 6, 5))
    np.testing.assert_allclose(plots.output_image(rgb, (2, 3)), rgb[0].transpose(1, 2, 0))
    np.testing.assert_allclose(plots.output_image(rgb[:, :1]), rgb[0, 0])  # guessed NCHW
    features = rng.random((1, 16, 6, 5))
    assert plots.output_image(features, (2, 3)) is None  # 16 channels: not an image
    cell = plots.output_cell(features, (2, 3))  # drawn as its channel mean, a map
    assert cell[0] == "map" and "channel mean" in cell[2]
    np.testing.assert_allclose(cell[1], features[0].mean(axis=0))
    hwc = rng.random((6, 5, 3))  # H on axis 0: no batch axis, 3 channels
    np.testing.assert_allclose(plots.output_image(hwc, (0, 1)), hwc)
    assert plots.output_image(np.zeros((1, 10)), False) is None
    assert plots.output_cell(np.zeros((1, 10)), False) is None


def _result(variance, entropy=None, name="y"):
    out = np.random.default_rng(1).random((1, 3, 40, 60)).astype(np.float32)
    stats = OutputStats(out, out if variance is not None else None, variance,
                        entropy=entropy)
    return Result({name: stats}, {"method": "noise", "at": "r1", "level": 0.2,
                                  "samples": 8})


def test_picture_of_names_the_output_method_level_n_and_units():
    var = np.random.default_rng(0).random((1, 3, 40, 60))
    shown = report.picture_of(_result(var, name="sr_out"), "img")
    assert shown["title"] == "img: variance of output 'sr_out', noise at r1, level 0.2, N = 8"
    assert shown["label"] == "variance, (output units)²" and shown["kind"] == "variance"
    assert shown["map"].shape == (40, 60) and shown["output"][0] == "image"
    m = var[0].mean(axis=0)
    assert shown["extent"] == [pytest.approx(m.min()), pytest.approx(m.max())]
    top = np.percentile(m[m > m.min()], 99.5)  # among the pixels above the minimum
    assert shown["range"] == [pytest.approx(m.min()), pytest.approx(top)]
    assert shown["background"] is None  # no overlay asked
    ent = report.picture_of(_result(None, entropy=np.ones((1, 40, 60))), "img")
    assert ent["label"] == "entropy, nats" and ent["kind"] == "entropy"


def test_a_shared_scale_spans_every_map_of_the_run(tmp_path):
    """Two maps, one with values 1, one with values 3: on the shared range (1, 3) the first
    is magma's lowest colour, the second its highest; the summary records the range."""
    pictures = report.Pictures(str(tmp_path), shared_scale=True)
    items = [report.write_result(str(tmp_path), f"m{k}", _result(np.full((1, 3, 40, 60), v)),
                                 f"m{k}.npy", pictures=pictures) for k, v in ((0, 1.0),
                                                                            (1, 3.0))]
    assert [i["files"] for i in items] == [[str(tmp_path / "m0.npz")],
                                          [str(tmp_path / "m1.npz")]]  # drawn at the end
    assert pictures.finish() == {"shared": True, "range": [1.0, 3.0], "overlay": False}
    assert items[1]["files"][-1] == str(tmp_path / "m1.variance.png")
    assert _count(_rgb(tmp_path / "m0.variance.png"), _magma(0.0)) > 150 * 100
    assert _count(_rgb(tmp_path / "m1.variance.png"), _magma(1.0)) > 150 * 100
    # Each on its own range (the default) both are constant maps: one colour each.
    item = report.write_result(str(tmp_path), "own", _result(np.full((1, 3, 40, 60), 3.0)),
                               "own.npy")
    assert item["heatmap_range"] == [3.0, 3.0] and item["files"][-1].endswith("own.variance.png")


def test_run_shared_scale_and_overlay_from_the_cli(cli, tmp_path):
    """tfue run --shared-scale --overlay: every map on one range (in summary.json), an
    overlay per input over the input image."""
    from toys import pointwise_net

    model = tmp_path / "m.onnx"
    pointwise_net(model)
    rng = np.random.default_rng(0)
    for k, size in enumerate(((24, 32), (16, 20))):
        Image.fromarray((rng.random(size + (3,)) * 255).astype(np.uint8)).save(
            tmp_path / f"in{k}.png")
    out = tmp_path / "out"
    r = cli("run", model, tmp_path / "in0.png", tmp_path / "in1.png", "--method", "noise",
            "--at", "input", "--sigma", 0.5, "--shared-scale", "--overlay", "--out", out,
            "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["color_scale"]["shared"] and s["color_scale"]["overlay"]
    lo, hi = s["color_scale"]["range"]
    ranges = [i["heatmap_range"] for i in s["inputs"]]  # each map's [min, max]
    # The colours span the lowest minimum to the highest 99.5th percentile of the maps.
    tops = [plots.display_range(report.read_result(out / f"in{k}.npz").variance[0]
                                .mean(axis=0))[1] for k in range(2)]
    assert lo == min(a for a, _ in ranges) and hi == pytest.approx(max(tops)) and lo < hi
    assert hi <= max(b for _, b in ranges)
    assert [i["heatmap_shape"] for i in s["inputs"]] == [[24, 32], [16, 20]]
    for k in range(2):
        assert sorted(f.rsplit("/", 1)[-1] for f in s["inputs"][k]["files"]) == \
            [f"in{k}.npz", f"in{k}.overlay.png", f"in{k}.variance.png"]
        with Image.open(out / f"in{k}.overlay.png") as im:
            assert im.size[0] >= 400 and im.size[1] >= 300
    assert json.loads((out / "summary.json").read_text())["color_scale"] == s["color_scale"]
    # Without the flags: each map on its own scale, no overlay.
    r = cli("run", model, tmp_path / "in0.png", "--method", "noise", "--at", "input",
            "--out", tmp_path / "plain", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["color_scale"] == {"shared": False, "overlay": False}
    assert not list((tmp_path / "plain").glob("*.overlay.png"))


def test_overlay_background_from_an_array_input_or_none():
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 10, 12)).astype(np.float32)
    bg = report._background(None, {"x": x}, (20, 24))  # resized to the map (x2 SR)
    assert bg.shape == (20, 24, 3) and 0 <= bg.min() and bg.max() <= 1
    assert report._background("x.npy", {"x": rng.random((1, 16, 10, 12))}, (10, 12)) is None


def test_plots_does_not_import_sweep_and_metric_direction_lives_in_metrics():
    code = ("import sys, tfue_onnx.plots, tfue_onnx.report; "
            "print('tfue_onnx.sweep' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    from tfue_onnx import metrics, sweep

    assert sweep.metric_value is metrics.metric_value
    table = {"l1": {"pixel": 0.4, "ause": 0.2}, "intervals": {"l1": {"pixel": [0.3, 0.5]}}}
    assert metrics.metric_value(table, "pixel_l1") == 0.4
    assert metrics.metric_interval(table, "pixel_l1") == [0.3, 0.5]
    assert metrics.metric_interval(table, "ause_l1") is None
    assert metrics.higher_is_better("pixel") and metrics.higher_is_better("pixel_l2")
    assert not metrics.higher_is_better("ause") and not metrics.higher_is_better("ause_l1")


def test_titles_and_ranges_a_person_reads_rightly(tmp_path):
    assert plots.method_words({"method": "ensemble", "members": ["a/m0.onnx", "b", "c"],
                               "at": "a/m0.onnx, b, c"}) == "ensemble of 3 models"
    assert plots.method_words({"method": "transform", "transforms": ["identity", "hflip"],
                               "samples": 2}) == "transform (2: identity, hflip)"
    # A probability map with one faint pixel stays black: its range is [0, 1].
    assert plots._grey_range(np.array([[0.0, 3e-8]])) == [0.0, 1.0]
    assert plots._grey_range(np.array([[0.0, 4.0]])) == [0.0, 4.0]  # not in [0, 1]
    # A hot pixel does not set the top of a map's colours: the 99.5th percentile does.
    m = np.zeros((40, 40))
    m[:20] = 1.0
    m[0, 0] = 1000.0
    assert plots.display_range(m) == [0.0, 1.0]
    # A sparse map (a detector's: mostly 0) keeps the scale of the pixels that carry
    # something: the percentile is taken among them, not among the zeros.
    sparse = np.zeros((100, 100))
    sparse[:5, :5] = np.linspace(0.1, 0.4, 25).reshape(5, 5)
    assert plots.display_range(sparse) == [0.0, pytest.approx(np.percentile(sparse[:5, :5],
                                                                            99.5))]
    assert plots.display_range(np.full((3, 3), 2.0)) == [2.0, 2.0]
    # A very tall map is drawn in a bounded figure, not a strip thousands of pixels high.
    plots.map_picture(str(tmp_path / "tall.png"), np.zeros((1280, 10)), "variance", "t")
    with Image.open(tmp_path / "tall.png") as im:
        assert im.size[1] <= 800 and im.size[0] >= 400
