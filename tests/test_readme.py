"""The README's promises: its first two commands, its CLI tour and its Python example."""

import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_first_two_commands():
    first, second = _blocks("bash")[:2]
    assert first.strip().endswith("pip install . && tfue demo")
    assert "pip install -e \".[test]\"" in second and second.strip().endswith("pytest -q")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    test_command = second.strip().split("&& ", 2)[2]  # after the venv is made and entered
    assert test_command in ci


def test_every_documented_command_exists(cli):
    r = cli("--help")
    for command in ("inspect", "run", "export", "evaluate", "sweep", "demo"):
        assert f"tfue {command}" in README
        assert re.search(rf"^\s+{command}\s", r.output, re.M), command


def test_python_example_runs(toy, tmp_path, monkeypatch, capsys):
    [example] = _blocks("python")
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
