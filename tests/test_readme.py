"""README.md: every fenced block run (or, for a listing, checked against the real tool) as a
reader would; see tests/readme_blocks.py. A block without a handler here fails
``test_every_block_is_run_or_listed``.

Substitutions (all listed in the tests that use them):
- install and demo: the venv and ``pip install .`` are the test's own environment (it has
  the package installed); what ``pip install .`` must ship for ``tfue demo`` is checked in
  setup.cfg instead. ``tfue demo`` itself runs as written.
- the test command: not run (it runs this suite); checked to be what .ci/run runs.
- the PP-OCR example: run as written on the detector from rapidocr-onnxruntime and a
  rendered text image named page.png.
- the export example: run as written on a toy model named model.onnx.
- the evaluate listing: not a command; its synopsis options are checked against
  ``tfue evaluate --help`` and its output lines against a real run's (numbers masked).
- the command-line synopsis: its options are checked against each command's --help.
- the Ray examples: the local run and the Python one run as written on a toy model
  named model.onnx and arrays in frames/ (each starts its own local Ray); the cluster
  block is checked, not run (it needs a cluster): its tfue options against
  ``tfue run --help``, and that the ``ray`` command it starts is installed.
"""

import configparser
import json
import fnmatch
import os
import re
import shutil

import numpy as np
import pytest

import readme_blocks as rb
import toys

ROOT = rb.ROOT
PATH = os.path.join(ROOT, "README.md")
README = open(PATH).read()

INSTALL_DEMO = "python3 -m venv .venv && . .venv/bin/activate && pip install . && tfue demo"
TEST_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e"
HANDLED = {
    INSTALL_DEMO: "test_install_and_demo",
    TEST_COMMAND: "test_the_test_command_is_what_ci_runs",
    "tfue inspect MODEL": "test_command_line_synopsis",
    "tfue inspect ch_PP-OCRv4_det_infer.onnx": "test_ppocr_example",
    "tfue export model.onnx -o model_uncertainty.onnx": "test_export_example",
    "tfue evaluate MODEL INPUT...": "test_evaluate_listing",
    "import numpy as np": "test_python_example_runs",
    "tfue_onnx/": "test_module_map",
    "tfue run model.onnx frames/ --method noise": "test_ray_example",
    "ray start --head": "test_ray_cluster_commands",
    "import ray": "test_ray_python_example",
}


def test_every_block_is_run_or_listed():
    rb.check_all_handled(PATH, HANDLED)
    assert len(rb.blocks(PATH)) == len(HANDLED)
    for name in HANDLED.values():
        assert callable(globals().get(name)), name


def test_install_and_demo(tmp_path):
    text = rb.block(PATH, INSTALL_DEMO, "bash")
    # What `pip install .` must ship: the `tfue` command and the demo's model and images.
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "tfue = tfue_onnx.cli:main" in cfg["options.entry_points"]["console_scripts"]
    globs = [g.strip() for g in cfg["options.package_data"]["tfue_onnx"].split(",")]
    data = os.listdir(os.path.join(ROOT, "tfue_onnx", "data"))
    assert {"srresnet_x2.onnx", "sample_1.png"} <= set(data)
    assert all(any(fnmatch.fnmatch("data/" + f, g) for g in globs) for f in data), data
    r = rb.run_shell(rb.substitute(text, [(INSTALL_DEMO[:-len("tfue demo")], "")]), tmp_path)
    out = tmp_path / "tfue-demo"
    assert (out / "overview.png").stat().st_size > 0 and (out / "summary.json").exists()
    assert sorted(os.listdir(out / "dropout")) == sorted(os.listdir(out / "transform"))
    assert re.search(r"infer-dropout \(p=[\d.]+ at .*N=8\): mean variance per image "
                     r"[\d.e-]+, [\d.e-]+", r.stdout), r.stdout


def test_the_test_command_is_what_ci_runs():
    first, second = rb.blocks(PATH)[:2]
    assert first[1].strip() == INSTALL_DEMO
    command = rb.block(PATH, TEST_COMMAND, "bash").strip()
    assert "pip install -e \".[test,ray]\"" in command and command.endswith("pytest -q")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    test_command = command.split("&& ", 2)[2]  # after the venv is made and entered
    assert test_command in ci.splitlines()


def _options(text: str) -> list:
    return re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text)


def _check_options(cli, command: str, options) -> None:
    r = cli(command, "--help")
    assert r.exit_code == 0
    for opt in options:
        assert re.search(rf"(?<![\w-]){re.escape(opt)}\b", r.output), (command, opt)


def test_command_line_synopsis(cli):
    text = rb.block(PATH, "tfue inspect MODEL", "")
    commands = {}
    for line in text.splitlines():
        if line.startswith("tfue "):
            current = line.split()[1]
            commands[current] = []
        commands[current] += _options(line)
    assert list(commands) == ["inspect", "run", "export", "evaluate", "calibrate", "sweep",
                              "rank", "demo"]
    assert "--max-memory" in commands["run"] and "-o" in commands["export"]
    for command, options in commands.items():
        _check_options(cli, command, options)
    r = cli("--help")
    listed = re.findall(r"^  (\w+)\s", r.output.split("Commands:")[1], re.M)
    assert sorted(listed) == sorted(commands)  # every command documented


def test_every_documented_command_exists(cli):
    r = cli("--help")
    for command in ("inspect", "run", "export", "evaluate", "sweep", "demo"):
        assert f"tfue {command}" in README
        assert re.search(rf"^\s+{command}\s", r.output, re.M), command


def test_ppocr_example(tmp_path, ppocr_det, text_image):
    from tfue_onnx import read_result

    text = rb.block(PATH, "tfue inspect ch_PP-OCRv4_det_infer.onnx", "bash")
    os.symlink(ppocr_det, tmp_path / "ch_PP-OCRv4_det_infer.onnx")
    shutil.copy(text_image, tmp_path / "page.png")
    r = rb.run_shell(text, tmp_path)
    assert re.search(r"^input\s+x\s+float32", r.stdout, re.M)
    assert "331 candidate locations" in r.stdout  # as the README's own count says
    res = read_result(tmp_path / "maps" / "page.npz")
    assert res.variance.shape == res.output.shape == (1, 1, 640, 640)
    assert float(res.variance.mean()) > 0 and np.isfinite(res.variance).all()
    meta = res.metadata
    assert (meta["method"], meta["level"], meta["seed"]) == ("noise", 0.5, 0)
    assert (tmp_path / "maps" / "page.variance.png").exists()


def test_export_example(tmp_path, toy):
    import onnxruntime as ort

    text = rb.block(PATH, "tfue export model.onnx -o model_uncertainty.onnx", "bash")
    shutil.copy(toy(), tmp_path / "model.onnx")
    r = rb.run_shell(text, tmp_path)
    assert r.stdout.strip().splitlines()[-1] == "['y', 'y.mean', 'y.variance']"
    s = ort.InferenceSession(str(tmp_path / "model_uncertainty.onnx"),
                             providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    y, mean, var = s.run(None, {"x": x})
    assert y.shape == mean.shape == var.shape == (1, 2, 8, 8) and var.min() >= 0 < var.max()


def _masked(line: str) -> str:
    """A line with its numbers (and the verdict's above/below) masked."""
    line = re.sub(r"\b(above|below) the baseline", "? the baseline", line)
    return " ".join(re.sub(r"-?\d+(\.\d+)?", "N", line).split())


def test_evaluate_listing(cli, toy, tmp_path):
    text = rb.block(PATH, "tfue evaluate MODEL INPUT...", "")
    synopsis, *shown = text.strip().splitlines()
    _check_options(cli, "evaluate", _options(synopsis))
    folder = toys.npz_pairs(tmp_path / "pairs")
    r = cli("evaluate", toy(), folder, "--method", "noise", "-n", "2", "--seed", "0",
            "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    real = [_masked(line) for line in r.stdout.splitlines()]
    at = 0
    for line in shown:  # in the real output's order; "..." stands for lines left out
        if line.strip() == "...":
            continue
        assert _masked(line) in real[at:], (line, r.stdout)
        at = real.index(_masked(line), at) + 1


def test_python_example_runs(toy, tmp_path, monkeypatch, capsys):
    example = rb.block(PATH, "import numpy as np", "python")
    monkeypatch.chdir(tmp_path)
    os.replace(toy(), tmp_path / "model.onnx")
    namespace = {}
    exec(example, namespace)  # as written: nothing defined beforehand
    res = namespace["res"]
    assert res.variance.shape == (1, 2, 64, 64) and float(res.variance.mean()) > 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(float(line.split()[0]) > 0 for line in printed)
    assert (tmp_path / "model_uncertainty.onnx").exists()
    t = namespace["t"]
    assert t["images"] == 1 and -1 <= t["l1"]["pixel"] <= 1
    lo, hi = t["intervals"]["l1"]["pixel"]
    assert lo == hi == t["l1"]["pixel"]  # one image: nothing to resample
    assert "gradient energy" in t["baseline"]["map"]


def test_help_is_instant_without_heavy_imports():
    import subprocess
    import sys
    code = ("import sys, tfue_onnx.cli as c; from click.testing import CliRunner; "
            "r = CliRunner().invoke(c.main, ['--help']); assert r.exit_code == 0; "
            "print(sorted(m for m in ('onnxruntime', 'onnx_graphsurgeon', 'onnx', 'scipy', "
            "'matplotlib') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("broken", ["new block", "changed start"])
def test_an_unhandled_block_fails(tmp_path, broken):
    text = README + "\n```bash\ntfue frobnicate\n```\n" if broken == "new block" else \
        README.replace("tfue export model.onnx -o", "tfue export other.onnx -o")
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(AssertionError, match="no test runs or lists"):
        rb.check_all_handled(tmp_path / "README.md", HANDLED)


def test_module_map():
    # The import order and the list itself: tests/test_architecture.py.
    from test_architecture import module_map, package_modules

    assert sorted(module_map()) == package_modules()


def _frames(tmp_path, toy, names=("a", "b", "c")):
    """model.onnx and frames/NAME.npy in ``tmp_path``; returns the frames' arrays."""
    os.replace(toy(), tmp_path / "model.onnx")
    (tmp_path / "frames").mkdir()
    arrays = {}
    for k, name in enumerate(names):
        arrays[name] = np.random.default_rng(k).random((1, 3, 8, 8), dtype=np.float32)
        np.save(tmp_path / "frames" / f"{name}.npy", arrays[name])
    return arrays


def test_ray_example(tmp_path, toy):
    from tfue_onnx import Estimator, Noise, read_result

    arrays = _frames(tmp_path, toy)
    rb.run_shell(rb.block(PATH, "tfue run model.onnx frames/ --method noise", "bash"),
                 tmp_path)
    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())
    assert summary["engine"]["done"] == 3 and summary["engine"]["actors"] == 2
    assert summary["failures"] == []
    est = Estimator(str(tmp_path / "model.onnx"), Noise(sigma=0.1, at="0.5"), seed=0)
    for name, x in arrays.items():  # the local engine's numbers
        assert read_result(tmp_path / "maps" / f"{name}.npz").variance.tobytes() == \
            est(x).variance.tobytes()


def test_ray_cluster_commands(cli):
    text = rb.block(PATH, "ray start --head", "bash")
    lines = [line for line in text.splitlines() if line.startswith("tfue run ")]
    assert len(lines) == 2
    for line in lines:
        assert "--engine ray --ray-address auto" in line
        _check_options(cli, "run", _options(line))
    assert shutil.which("ray", path=rb.BIN), "the [ray] extra installs the ray command"


def test_ray_python_example(toy, tmp_path, monkeypatch):
    import ray

    example = rb.block(PATH, "import ray", "python")
    monkeypatch.chdir(tmp_path)
    _frames(tmp_path, toy, ("a", "b"))
    namespace = {}
    try:
        exec(example, namespace)  # as written
    finally:
        ray.shutdown()
    assert [r["status"] for r in namespace["rows"]] == ["done", "done"]
    assert namespace["failed"] == []
    assert sorted(os.listdir(tmp_path / "maps")) == ["a.npz", "a.variance.png", "b.npz",
                                                    "b.variance.png"]
