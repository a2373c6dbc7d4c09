"""The Python face has every capability of the CLI (issue 12): memory sizes, ensemble
folders, mc-dropout node lists, --at auto (choose_location), io_binding; errors read
with Python's spellings and are ValueErrors where an argument is bad."""

import json
import os

import numpy as np
import pytest

import toys
import tfue_onnx
from tfue_onnx import (ArgumentError, Ensemble, Estimator, MCDropout, Noise, TfueError,
                       choose_location, ensemble_from_paths, parse_bytes, split_models)


def test_memory_sizes_parse_in_the_library(toy, x8):
    assert parse_bytes("2G") == 2 * 1024**3 and parse_bytes("512M") == 512 * 1024**2
    assert parse_bytes("1.5g") == int(1.5 * 1024**3) and parse_bytes("64KB") == 65536
    assert parse_bytes(4096) == 4096 and parse_bytes(" 3000 ") == 3000
    for bad in ("lots", "0", "-1G", "inf", "nan", "2X", True, None, [1]):
        with pytest.raises(ArgumentError) as err:
            parse_bytes(bad)
        assert isinstance(err.value, ValueError)
        assert str(err.value).startswith("max_memory must be a size like 512M or 2G")
        assert "max_memory='2G'" in str(err.value)  # the Python face's hint
        assert "--max-memory 2G" in err.value.cli_text()  # the CLI's
    # The Estimator takes the same texts: 8K fits 4 samples of the toy (2048 bytes each).
    est = Estimator(toy(), Noise(0.1, at="r1"), samples=10, seed=0, max_memory="8K",
                    strategy="shared-prefix")
    assert est.max_memory == 8192 and est.chunk_sizes({"x": x8}) == [4, 4, 2]
    with pytest.raises(ValueError, match="got '8 apples'"):
        Estimator(toy(), Noise(0.1, at="r1"), max_memory="8 apples")


def test_mc_dropout_nodes_from_a_comma_separated_text(toy, x8):
    assert MCDropout(nodes="a, b,,c").nodes == ("a", "b", "c")
    assert MCDropout(nodes=["a", " b "]).nodes == ("a", "b") and MCDropout().nodes == ()
    assert MCDropout(nodes="").nodes == ()
    with pytest.raises(ArgumentError, match="Dropout node names must be strings, got 3"):
        MCDropout(nodes=["a", 3])
    model = toy(dropout_ratio=0.3)
    one = Estimator(model, MCDropout(nodes="drop1"), samples=4, seed=0)(x8)
    two = Estimator(model, MCDropout(nodes=("drop1",)), samples=4, seed=0)(x8)
    np.testing.assert_array_equal(one.variance, two.variance)
    assert float(one.variance.max()) > 0
    with pytest.raises(TfueError, match="drop2"):
        Estimator(model, MCDropout(nodes="drop1,drop2"), samples=4)(x8)


def test_ensembles_from_files_and_folders(toy, tmp_path, x8):
    members = tmp_path / "members"
    members.mkdir()
    first = toy("first")
    for k, name in enumerate(("a", "b"), start=1):
        os.replace(toy(name, seed=k), members / f"{name}.onnx")
    model, spec = ensemble_from_paths([first, members, members / "a.onnx"])
    assert model == str(first) and isinstance(spec, Ensemble)
    assert [m.path for m in spec.members] == [str(members / "a.onnx"), str(members / "b.onnx")]
    assert len(spec.notes) == 1 and "counted once" in spec.notes[0]
    res = Estimator(model, spec)(x8)
    assert res.metadata["samples"] == 3 and res.variance.shape == (1, 2, 8, 8)
    assert res.metadata["member_notes"] == list(spec.notes)
    with pytest.raises(ArgumentError, match="at least 2 models, got 1"):
        ensemble_from_paths([first])
    with pytest.raises(ArgumentError, match="a list of paths, got one path"):
        ensemble_from_paths(str(members))
    # A folder in Ensemble(...) itself is expanded the same way: same members, same numbers.
    direct = Estimator(first, Ensemble((members,)))
    res2 = direct(x8)
    assert res2.metadata["samples"] == 3
    assert res2.metadata["members"] == [str(first), str(members / "a.onnx"),
                                        str(members / "b.onnx")]
    np.testing.assert_array_equal(res2.variance, res.variance)
    # What 'tfue run --method ensemble' does with its arguments: models apart from inputs.
    np.save(tmp_path / "x.npy", x8)
    assert split_models([members, tmp_path / "x.npy", first]) == (
        [str(members), str(first)], [str(tmp_path / "x.npy")])
    with pytest.raises(ArgumentError, match="no inputs given besides the ensemble's models"):
        split_models([members])


def _sweep_folder(model, tmp_path, x8):
    """A real sweep (noise and dropout at r1, two levels each) on one (input, target) pair."""
    from tfue_onnx.evaluate import make_pairs
    from tfue_onnx.model import inspect_model
    from tfue_onnx.sweep import sweep

    target = np.random.default_rng(1).random((1, 2, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "p.npz", x=x8, target=target)
    pairs = make_pairs(inspect_model(model), [tmp_path / "p.npz"])
    out = tmp_path / "sweep"
    out.mkdir()
    summary = sweep(model, pairs, at="r1,c2", sigmas=(0.05, 0.2), rates=(0.1, 0.3),
                    samples=4, out_dir=str(out), bootstrap=0, provider="cpu")
    return out, summary


def test_choose_location_from_a_sweep_takes_the_requested_method(toy, tmp_path, x8):
    model = toy()
    out, summary = _sweep_folder(model, tmp_path, x8)
    seed = summary["config"]["seed"]
    assert isinstance(seed, int)  # --seed left out: random, recorded ...
    from tfue_onnx.sweep import _sweep_seed, metric_value

    assert _sweep_seed(None, str(out)) == seed  # ... and kept when the sweep resumes
    for method in ("noise", "dropout"):
        at, level, report = choose_location(model, method, sweep_result=str(out))
        mine = [p for p in summary["points"] if p["method"] == method]
        best = min(mine, key=lambda p: -metric_value(p["table"], "pixel_l1"))
        assert (at, level) == (best["at"], best["level"]) and report["from"] == "sweep"
        assert report["reason"].startswith(f"the best {method} pixel_l1 (")
        assert report["sweep_result"] == os.path.abspath(out)
    with pytest.raises(ArgumentError, match="noise or dropout, not transform"):
        choose_location(model, "transform", sweep_result=str(out))
    with pytest.raises(ArgumentError, match="needs inputs to choose on"):
        choose_location(model, "noise")


def test_choose_location_without_a_sweep(tmp_path):
    model = str(tmp_path / "conv.onnx")
    toys.conv_net(model, channels=3)
    xs = [np.random.default_rng(k).random((1, 3, 8, 8), dtype=np.float32) for k in range(2)]
    said = []
    at, level, report = choose_location(model, "dropout", xs, tolerance=0.5, seed=3,
                                        provider="cpu",
                                        progress=lambda *a: said.append(a))
    assert report["from"] == "agreement" and report["at"] == at and report["level"] == level
    assert "points" not in report and "agrees best with infer-transformation" in \
        report["reason"]
    assert said and said[-1][0] == said[-1][1]  # one call per location, the last done
    assert choose_location(model, "dropout", xs, tolerance=0.5, seed=3,
                           provider="cpu")[:2] == (at, level)


def test_io_binding_reaches_the_estimator_and_changes_nothing_on_the_cpu(toy, x8):
    model = toy()
    on = Estimator(model, Noise(0.1, at="r1"), samples=4, seed=0, io_binding=True)
    off = Estimator(model, Noise(0.1, at="r1"), samples=4, seed=0, io_binding=False)
    assert on.io_binding is True and off.io_binding is False
    np.testing.assert_allclose(on(x8).variance, off(x8).variance, rtol=1e-6)


def test_argument_errors_are_value_errors_with_the_python_spelling(toy):
    for make, text in ((lambda: Noise(-1), "sigma must be >= 0"),
                       (lambda: tfue_onnx.Dropout(1.0), "rate must be in [0, 1)"),
                       (lambda: Estimator(toy(), Noise(0.1), samples=1), "samples must be"),
                       (lambda: Estimator(toy(), Noise(0.1), seed=-1), "seed must be in")):
        with pytest.raises(ValueError, match=text.replace("[", r"\[").replace(")", r"\)")) \
                as err:
            make()
        assert isinstance(err.value, TfueError) and "--" not in str(err.value)
    with pytest.raises(ValueError) as err:
        Noise(0.1, mode="percent")
    assert str(err.value) == ("unknown sigma mode 'percent'. Hint: use mode='absolute' or "
                              "mode='relative'")
    assert err.value.cli_text() == ("unknown sigma mode 'percent'. Hint: use --sigma-mode "
                                    "absolute or --sigma-mode relative")


def test_the_package_exports_the_library_functions():
    from tfue_onnx import choose

    assert tfue_onnx.choose_location is choose.choose_location
    assert {"choose_location", "ensemble_from_paths", "split_models", "parse_bytes",
            "ArgumentError"} <= set(tfue_onnx.__all__)
    json.dumps(tfue_onnx.__all__)
