"""models/README.md: every fenced block run or checked; see tests/readme_blocks.py.

The blocks train the reference models with torch in the build venv the README names
(/work/models-venv) and take 30-80 minutes as written. Substitutions:
- default run (cheap, no torch): every ``--flag`` given to models/build_srresnet.py is
  one of its options, every bash block and build script parses (``bash -n``), and the
  dropout-tolerance check (step 2 of its block) runs as written on the four models but
  with ``--samples 2`` and the demo's two images as crops (``--crops /tmp/tfue-dt`` ->
  a temporary folder); the models, tensors and rates it prints are the README table's.
- ``-m slow`` (needs the build venv with torch; skipped with that reason without it):
  every training block runs in a temporary copy of the repository (the real models
  are never overwritten) with ``--steps 2000``/``3000`` -> ``--steps 2``, ``STEPS=2``
  ``ENS_STEPS=2`` for the scripts, no venv creation or ``pip install`` (the build venv
  is used as it is), ``.venv/bin/python`` -> the test's python, ``PY=...`` set first for
  the wide block's last command (a reader has it from the first block), the crops written
  into a temporary folder; the dropout check then runs on those crops with ``--samples 2``.
- the training log excerpt (a listing): each line's mean gain is the mean of its three.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

import readme_blocks as rb

PATH = os.path.join(rb.ROOT, "models", "README.md")
BUILD_PY = "/work/models-venv/bin/python"

TRAIN = "python3 -m venv /work/models-venv"
ALL = "PY=/work/models-venv/bin/python CHECK_PY=.venv/bin/python models/build_all.sh"
WIDE = "PY=/work/models-venv/bin/python CHECK_PY=.venv/bin/python models/build_wide.sh"
TOLERANCE = "/work/models-venv/bin/python tools/dropout_tolerance.py --write-crops"
LOG = "step  500"
HANDLED = {TRAIN: "test_training_commands", ALL: "test_build_all", WIDE: "test_build_wide",
           TOLERANCE: "test_dropout_tolerance", LOG: "test_training_log_excerpt"}


def test_every_block_is_run_or_listed():
    rb.check_all_handled(PATH, HANDLED)
    for name in HANDLED.values():
        assert callable(globals().get(name)), name


def _options(script: str) -> set:
    with open(os.path.join(rb.ROOT, script)) as f:
        return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", f.read()))


def test_flags_and_syntax_of_every_block():
    train_options = _options("models/build_srresnet.py")
    tolerance_options = _options("tools/dropout_tolerance.py")
    assert {"--variant", "--steps", "--channels", "--out"} <= train_options
    used = {}
    for lang, text in rb.blocks(PATH):
        if lang != "bash":
            continue
        r = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
        assert r.returncode == 0, (text, r.stderr)
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            script = "models/build_srresnet.py" if "build_srresnet.py" in line else \
                "tools/dropout_tolerance.py" if "dropout_tolerance.py" in line else None
            if script:
                used.setdefault(script, set()).update(re.findall(r"(?<![\w-])(--[\w-]+)", line))
    assert used["models/build_srresnet.py"] <= train_options
    assert used["tools/dropout_tolerance.py"] <= tolerance_options
    for script in ("models/build_all.sh", "models/build_wide.sh"):
        r = subprocess.run(["bash", "-n", os.path.join(rb.ROOT, script)], capture_output=True)
        assert r.returncode == 0, script
    # The defaults the README states are the scripts'.
    build_all = open(os.path.join(rb.ROOT, "models", "build_all.sh")).read()
    assert "LOGDIR=${LOGDIR:-/tmp/srlogs}" in build_all and "`$LOGDIR`, default `/tmp/srlogs`" \
        in open(PATH).read()


def _table_rows() -> dict:
    """model file stem -> (method word, tensor or None, rate) from the README's table."""
    rows = {}
    for m in re.finditer(r"^\| `(srresnet\w*)` \| (MC-dropout|infer-dropout at `([^`]+)`, "
                         r"([\d.]+)) \|", open(PATH).read(), re.M):
        rows[m.group(1)] = (m.group(2).split()[0], m.group(3), m.group(4))
    return rows


def _check_tolerance_output(stdout: str) -> None:
    rows = _table_rows()
    assert len(rows) == 4
    printed = re.findall(r"^(\S+)\.onnx\s+(\S+)\s+at (\S+) rate ([\d.]+) N=2: per-image corr "
                         r"(-?[\d.]+|nan)", stdout, re.M)
    assert len(printed) == 4, stdout
    mc_at = {}
    for model, method, at, rate, corr in printed:
        word, tensor, table_rate = rows[model]
        if method == "mc-dropout":
            assert word == "MC-dropout"
            mc_at[model.replace("_mcdropout", "")] = at
        else:
            assert (word, tensor, float(table_rate)) == ("infer-dropout", at, float(rate))
            assert mc_at[model] == at  # the plain model is perturbed at the same tensor
        assert corr == "nan" or -1 <= float(corr) <= 1


def test_dropout_tolerance(tmp_path):
    text = rb.block(PATH, TOLERANCE, "bash")
    second = text.split("\n", 1)[1]  # step 1 writes the crops with torch: see the slow test
    crops = tmp_path / "crops"
    crops.mkdir()
    for k in (1, 2):
        shutil.copy(os.path.join(rb.ROOT, "tfue_onnx", "data", f"sample_{k}.png"), crops)
    second = rb.substitute(second, [("--crops /tmp/tfue-dt", f"--crops {crops}"),
                                    (".venv/bin/python tools/dropout_tolerance.py",
                                     "python tools/dropout_tolerance.py --samples 2")])
    r = rb.run_shell(second, rb.ROOT, timeout=120)
    _check_tolerance_output(r.stdout)


def test_training_log_excerpt():
    text = rb.block(PATH, LOG, "")
    lines = text.strip().splitlines()
    assert [int(line.split()[1]) for line in lines] == [500, 1000, 1500, 2000]
    for line in lines:
        m = re.fullmatch(r"step\s+\d+\s+([+-][\d.]+)\s+\(([+-][\d.]+) ([+-][\d.]+) ([+-][\d.]+)\)",
                         line.strip())
        assert m, line
        mean, *three = (float(v) for v in m.groups())
        assert abs(mean - sum(three) / 3) <= 0.0055, line  # the three are rounded to 0.01


# The training blocks, run for real with the build venv (slow).

def _build_venv():
    if not os.path.exists(BUILD_PY):
        pytest.skip(f"the build venv of models/README.md ({BUILD_PY}) is not here")
    r = subprocess.run([BUILD_PY, "-c", "import torch, skimage, sklearn, onnx"],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"{BUILD_PY} lacks torch/scikit-image/scikit-learn/onnx")


def _repo_copy(tmp_path):
    dest = tmp_path / "repo"
    shutil.copytree(rb.ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".downloads", "*.egg-info", "__pycache__", "docs", "tests"))
    return dest


def _onnx_files(folder) -> list:
    return sorted(f for f in os.listdir(folder) if f.endswith(".onnx"))


NO_INSTALL = [("python3 -m venv /work/models-venv\n", ""),
              ("/work/models-venv/bin/pip install torch==2.13.0 scikit-image scikit-learn "
               "onnx numpy pillow\n", "")]


def test_training_commands():
    """The cheap part: the install line names the packages the build scripts ask for."""
    text = rb.block(PATH, TRAIN, "bash")
    header = open(os.path.join(rb.ROOT, "models", "build_all.sh")).read()
    for package in re.search(r"pip install (.*)", text).group(1).split():
        assert package.split("==")[0].replace("-", "") in header.replace("-", ""), package


@pytest.mark.slow
def test_training_commands_slow(tmp_path):
    _build_venv()
    repo = _repo_copy(tmp_path)
    before = _onnx_files(repo / "models")
    for f in before:
        os.remove(repo / "models" / f)
    text = rb.substitute(rb.block(PATH, TRAIN, "bash"),
                         NO_INSTALL + [("--steps 2000", "--steps 2")])
    rb.run_shell(text, repo, timeout=900)
    assert _onnx_files(repo / "models") == ["srresnet_x2.onnx", "srresnet_x2_ensemble_0.onnx",
                                            "srresnet_x2_ensemble_1.onnx",
                                            "srresnet_x2_ensemble_2.onnx",
                                            "srresnet_x2_ensemble_3.onnx",
                                            "srresnet_x2_mcdropout.onnx"]


def test_build_all():
    """The cheap part: the script builds the files the README's table lists."""
    script = open(os.path.join(rb.ROOT, "models", "build_all.sh")).read()
    assert 'build srresnet_x2 --variant plain --seed 0' in script
    assert "cp models/srresnet_x2.onnx tfue_onnx/data/srresnet_x2.onnx" in script


@pytest.mark.slow
def test_build_all_slow(tmp_path):
    _build_venv()
    repo = _repo_copy(tmp_path)
    text = rb.substitute(rb.block(PATH, ALL, "bash"),
                         [("CHECK_PY=.venv/bin/python", f"CHECK_PY={sys.executable}")])
    r = rb.run_shell(text, repo, env={"STEPS": "2", "LOGDIR": str(tmp_path / "logs")},
                     timeout=900)
    assert r.stdout.count("== srresnet_x2") == 6
    assert (repo / "tfue_onnx" / "data" / "sample_1.png").exists()


def test_build_wide():
    """The cheap part: the wide script builds 64 channels and 6 blocks, as the README says."""
    script = open(os.path.join(rb.ROOT, "models", "build_wide.sh")).read()
    assert "--channels 64 --blocks 6" in script and "--channels 64 --blocks 6" in \
        rb.block(PATH, WIDE, "bash")


@pytest.mark.slow
def test_build_wide_slow(tmp_path):
    _build_venv()
    repo = _repo_copy(tmp_path)
    text = rb.substitute(rb.block(PATH, WIDE, "bash"),
                         [("CHECK_PY=.venv/bin/python", f"CHECK_PY={sys.executable}"),
                          ("--steps 3000", "--steps 2")])
    text = "PY=/work/models-venv/bin/python\n" + text  # the first block set PY for the shell
    r = rb.run_shell(text, repo, env={"STEPS": "2", "ENS_STEPS": "2",
                                      "LOGDIR": str(tmp_path / "logs")}, timeout=1200)
    assert r.stdout.count("== srresnet64_x2") == 6


@pytest.mark.slow
def test_dropout_tolerance_slow(tmp_path):
    _build_venv()
    crops = tmp_path / "dt"
    text = rb.substitute(rb.block(PATH, TOLERANCE, "bash"),
                         [("/tmp/tfue-dt", str(crops)),
                          (".venv/bin/python tools/dropout_tolerance.py",
                           "python tools/dropout_tolerance.py --samples 2")])
    r = rb.run_shell(text, rb.ROOT, timeout=900)
    assert len(os.listdir(crops)) == 18  # 6 crops of each held-out photo
    _check_tolerance_output(r.stdout)
