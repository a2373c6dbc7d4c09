import itertools

import numpy as np
import pytest

from tfue_onnx import TfueError
from tfue_onnx.transforms import ELEMENTS, SETS, parse_transforms, usable_sets


@pytest.mark.parametrize("name", list(ELEMENTS))
@pytest.mark.parametrize("axes", [(-2, -1), (1, 2)])
def test_round_trip(name, axes):
    x = np.arange(2 * 5 * 7 * 3).reshape(2, 5, 7, 3)
    e = ELEMENTS[name]
    np.testing.assert_array_equal(e.inverse(e.forward(x, axes), axes), x)


def test_elements_match_numpy():
    x = np.arange(12).reshape(3, 4)
    f = {n: e.forward(x, (0, 1)) for n, e in ELEMENTS.items()}
    np.testing.assert_array_equal(f["rot90"], np.rot90(x, 1))
    np.testing.assert_array_equal(f["rot180"], np.rot90(x, 2))
    np.testing.assert_array_equal(f["rot270"], np.rot90(x, 3))
    np.testing.assert_array_equal(f["hflip"], x[:, ::-1])
    np.testing.assert_array_equal(f["vflip"], x[::-1])
    np.testing.assert_array_equal(f["transpose"], x.T)
    np.testing.assert_array_equal(f["antitranspose"], np.rot90(x, 2).T)
    # Eight distinct elements, closed under composition: the dihedral group.
    sq = np.arange(16).reshape(4, 4)
    images = {e.forward(sq, (0, 1)).tobytes() for e in ELEMENTS.values()}
    assert len(images) == 8
    for a, b in itertools.product(ELEMENTS.values(), repeat=2):
        assert b.forward(a.forward(sq, (0, 1)), (0, 1)).tobytes() in images


def test_named_sets():
    assert [e.name for e in parse_transforms("hflip")] == ["identity", "hflip"]
    assert len(parse_transforms("d4")) == 8 and len(parse_transforms("rot")) == 4
    assert [e.name for e in parse_transforms("identity, rot90")] == ["identity", "rot90"]
    assert usable_sets(square=False) == ["flips", "hflip", "rot180"]
    assert set(usable_sets(square=True)) == set(SETS)


@pytest.mark.parametrize("text,message", [("spin", "unknown transform"),
                                          ("hflip,hflip", "repeats"),
                                          ("rot90", "gives no variance")])
def test_bad_transform_lists(text, message):
    with pytest.raises(TfueError, match=message):
        parse_transforms(text)
