"""Streaming statistics: mean and variance merged across chunks of samples.

Chunks report (count, mean, variance) computed in the graph; the merge is Chan
et al.'s parallel update of Welford's algorithm, in float64, so memory does not
grow with the number of samples and the result does not drift with it.
"""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Mean and population variance (ddof=0) of samples seen in chunks.

    ``count`` is the number of samples merged; ``mean`` (float64, the samples' shape)
    is None until the first one, and so is ``variance`` (float64, squared units of
    the samples). Chan, Golub & LeVeque's pairwise update of Welford's algorithm.
    """

    def __init__(self):
        """Empty statistics: no sample seen yet."""
        self.count = 0
        self.mean = None
        self._m2 = None

    def add_chunk(self, count: int, mean, variance) -> None:
        """Merge a chunk of samples (Chan et al.'s pairwise update, float64).

        Args:
            count: how many samples the chunk holds; <= 0: the chunk is ignored.
            mean: their mean, an array of the samples' shape.
            variance: their population variance (ddof=0), same shape.
        """
        if count <= 0:
            return
        mean = np.asarray(mean, dtype=np.float64)
        m2 = np.asarray(variance, dtype=np.float64) * count
        if self.count == 0:
            self.count, self.mean, self._m2 = count, mean.copy(), m2.copy()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self._m2 = self._m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total

    def add_each(self, samples) -> None:
        """Merge samples stacked along axis 0 one at a time (Welford, float64).

        The same samples in the same order give bit-identical statistics however
        they are split into calls, unlike chunk statistics merged with Chan's update.
        """
        buffers = None
        for x in samples:
            if self.count == 0:
                x = np.asarray(x, dtype=np.float64)
                self.count, self.mean, self._m2 = 1, x.copy(), np.zeros_like(x)
                continue
            if buffers is None:  # the same arithmetic as below, without new arrays
                buffers = [np.empty_like(self.mean) for _ in range(3)]
            x64, delta, step = buffers
            np.copyto(x64, x)
            self.count += 1
            np.subtract(x64, self.mean, out=delta)
            np.divide(delta, self.count, out=step)
            self.mean += step
            np.subtract(x64, self.mean, out=step)
            step *= delta
            self._m2 += step

    def add_samples(self, samples) -> None:
        """Merge samples stacked along axis 0 (``[n, *shape]``, any float dtype) as one
        chunk (computed in float64)."""
        samples = np.asarray(samples, dtype=np.float64)
        self.add_chunk(len(samples), samples.mean(axis=0), samples.var(axis=0))

    @property
    def variance(self):
        """Population variance (float64, squared units of the samples) of all samples
        merged so far; None before the first."""
        if self.count == 0:
            return None
        return self._m2 / self.count


def entropy(p, axis) -> np.ndarray:
    """Shannon entropy (nats) of probabilities ``p`` along ``axis``; 0 log 0 = 0.

    ``axis`` is an int or a tuple of axes that together hold the classes.
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    return -terms.sum(axis=axis if np.ndim(axis) == 0 else tuple(axis))


def winning_class_variance(mean, variance, axis) -> np.ndarray:
    """The variance of the class with the highest mean probability.

    Args:
        mean, variance: arrays of one shape, float.
        axis: the class axis (int), or a tuple of axes that together hold the
            classes (a Softmax over several axes before opset 13).

    Returns:
        ``variance`` at the winning class: the shape of ``mean`` without the class
        axes.
    """
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    mean, variance = np.asarray(mean), np.asarray(variance)
    keep = [k for k in range(mean.ndim) if k not in axes]
    # Class axes last and flattened into one.
    flat_shape = [mean.shape[k] for k in keep] + [-1]
    m = np.transpose(mean, keep + list(axes)).reshape(flat_shape)
    v = np.transpose(variance, keep + list(axes)).reshape(flat_shape)
    win = np.expand_dims(np.argmax(m, axis=-1), -1)
    return np.take_along_axis(v, win, axis=-1).squeeze(-1)
