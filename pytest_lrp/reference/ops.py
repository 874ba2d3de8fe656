"""Linear maps of the layers with windows (convolutions, pooling), forward and transposed.

Every LRP rule is "forward with some variant of the weights, divide, multiply by the
transpose". The transposes here are written as the adjoint of the forward (sum over the
kernel offsets of strided slices), so sum(x * transpose(g)) == sum(forward(x) * g) holds
exactly up to rounding; tests/test_reference.py checks that identity on random shapes.
Channels-last layout, batch first, like tf.keras' default.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: output ceil(size / stride), the odd pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class Windows:
    """Geometry of a sliding window over the spatial axes 1..n of a channels-last tensor."""

    def __init__(self, kernel, strides, padding, dilation=None):
        self.kernel = tuple(int(k) for k in kernel)
        self.strides = tuple(int(s) for s in strides)
        self.dilation = tuple(int(d) for d in (dilation or (1,) * len(self.kernel)))
        self.padding = padding

    def pads(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        if isinstance(self.padding, (list, tuple)):  # explicit (before, after) per spatial axis, as torch's
            return [(int(lo), int(hi)) for lo, hi in self.padding]
        if self.padding == "valid":
            return [(0, 0)] * len(spatial)
        if self.padding == "causal":
            return [((self.kernel[0] - 1) * self.dilation[0], 0)]
        return [same_padding(n, k, s, d) for n, k, s, d in zip(spatial, self.kernel, self.strides, self.dilation)]

    def out_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        pads = self.pads(spatial)
        return tuple(
            (n + lo + hi - ((k - 1) * d + 1)) // s + 1
            for n, (lo, hi), k, s, d in zip(spatial, pads, self.kernel, self.strides, self.dilation)
        )

    def pad(self, x: np.ndarray, value: float = 0.0) -> np.ndarray:
        pads = [(0, 0), *self.pads(x.shape[1:-1]), (0, 0)]
        if not any(lo or hi for lo, hi in pads):
            return x
        return np.pad(x, pads, constant_values=value)

    def view(self, padded: np.ndarray, out: tuple[int, ...]) -> np.ndarray:
        """(batch, *out, channels, *kernel) view of the windows of a padded input."""
        n = len(self.kernel)
        effective = tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))
        # numpy's stubs type axis as one index; it takes a tuple, one per window dimension
        win = sliding_window_view(padded, effective, axis=tuple(range(1, n + 1)))  # type: ignore[call-overload]
        index = (
            slice(None),
            *tuple(slice(None, o * s, s) for o, s in zip(out, self.strides)),
            slice(None),
            *tuple(slice(None, None, d) for d in self.dilation),
        )
        return win[index]

    def offsets(self):
        """Each kernel offset with the strided slice of the padded input it touches."""
        yield from itertools.product(*(range(k) for k in self.kernel))

    def slices(self, offset, out):
        return (
            slice(None),
            *tuple(
                slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, n, s in zip(offset, self.dilation, out, self.strides)
            ),
            slice(None),
        )

    def padded_zeros(self, batch: int, x_shape, dtype) -> np.ndarray:
        """Zeros shaped like the padded input, for a transpose to scatter into."""
        spatial = tuple(x_shape[1:-1])
        sizes = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, self.pads(spatial)))
        return np.zeros((batch, *sizes, x_shape[-1]), dtype=dtype)

    def crop(self, padded: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
        pads = self.pads(spatial)
        index = (slice(None), *tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial)), slice(None))
        return padded[index]


class Dense:
    """x @ W on the last axis (Keras applies Dense to the last axis of any rank).

    W may also be a rules.KernelPart (anything with .slices() of rows): the products are then
    summed (forward) or assembled (transpose) slice by slice."""

    def forward(self, x, kernel):
        if not hasattr(kernel, "slices"):
            return np.tensordot(x, kernel, axes=([-1], [0]))
        out = None
        for start, stop, rows in kernel.slices():
            part = np.tensordot(x[..., start:stop], rows, axes=([-1], [0]))
            out = part if out is None else np.add(out, part, out=out)
        return out

    def transpose(self, g, kernel, x_shape):
        if not hasattr(kernel, "slices"):
            return np.tensordot(g, kernel, axes=([-1], [1]))
        out = np.empty((*tuple(g.shape[:-1]), kernel.shape[0]), dtype=np.result_type(g, kernel.dtype))
        for start, stop, rows in kernel.slices():
            out[..., start:stop] = np.tensordot(g, rows, axes=([-1], [1]))
        return out


class Conv:
    """Convolution (Conv1D/Conv2D, any strides/padding/dilation; depthwise if multiplier).

    Forward and transpose both loop over the kernel offsets, one matrix product over all
    positions each, rather than an im2col tensordot over sliding_window_view, which copies every window.
    """

    def __init__(self, windows: Windows, depthwise: bool = False):
        self.w = windows
        self.depthwise = depthwise

    def forward(self, x, kernel):
        out = self.w.out_shape(x.shape[1:-1])
        padded = self.w.pad(x)
        channels = kernel.shape[-2] * kernel.shape[-1] if self.depthwise else kernel.shape[-1]
        shape = (x.shape[0], *out, channels)
        z = None
        for offset in self.w.offsets():
            window = padded[self.w.slices(offset, out)]
            if self.depthwise:
                # kernel (*k, c, m): each input channel has its own m filters; output c*m, c-major
                product = (window[..., :, None] * kernel[offset]).reshape(shape)
            else:
                product = window @ kernel[offset]
            z = product if z is None else np.add(z, product, out=z)
        return z

    def transpose(self, g, kernel, x_shape):
        spatial = tuple(x_shape[1:-1])
        out = g.shape[1:-1]
        grad = self.w.padded_zeros(g.shape[0], x_shape, np.result_type(g, kernel))
        if self.depthwise:
            g = g.reshape(g.shape[:-1] + kernel.shape[-2:])
        for offset in self.w.offsets():
            k = kernel[offset]
            if self.depthwise:
                contribution = np.einsum("...cm,cm->...c", g, k)
            else:
                contribution = g @ k.T
            grad[self.w.slices(offset, out)] += contribution
        return self.w.crop(grad, spatial)


class Scale:
    """Elementwise x * k along one axis: the linear form of BatchNormalization."""

    def __init__(self, axis: int, rank: int):
        self.shape = [1] * rank
        self.axis = axis % rank

    def _b(self, k):
        shape = list(self.shape)
        shape[self.axis] = -1
        return np.reshape(k, shape)

    def forward(self, x, kernel):
        return x * self._b(kernel)

    def transpose(self, g, kernel, x_shape):
        return g * self._b(kernel)


class AveragePool:
    """Average pooling as the linear map with weights 1/n (n = window cells inside the
    input: TensorFlow's 'same' average pooling does not count the padding)."""

    def __init__(self, windows: Windows):
        self.w = windows

    def _counts(self, x_shape):
        ones = np.ones((1, *tuple(x_shape[1:-1]), 1))
        out = self.w.out_shape(ones.shape[1:-1])
        view = self.w.view(self.w.pad(ones), out)
        n = len(out)
        return view.sum(axis=tuple(range(n + 2, 2 * n + 2)))

    def forward(self, x, kernel=None):
        out = self.w.out_shape(x.shape[1:-1])
        view = self.w.view(self.w.pad(x), out)
        n = len(out)
        return view.sum(axis=tuple(range(n + 2, 2 * n + 2))) / self._counts(x.shape)

    def transpose(self, g, kernel, x_shape):
        g = g / self._counts(x_shape)
        return _scatter_ones(self.w, g, x_shape)


def _scatter_ones(windows: Windows, g, x_shape):
    """Transpose of the window sum: every window cell receives its window's value."""
    spatial = tuple(x_shape[1:-1])
    padded = windows.padded_zeros(g.shape[0], x_shape, g.dtype)
    out = g.shape[1:-1]
    for offset in windows.offsets():
        padded[windows.slices(offset, out)] += g
    return windows.crop(padded, spatial)


class MaxPool:
    """Max pooling; its gradient goes to the first maximum of each window in row-major
    order (what TensorFlow's MaxPoolGrad does; relevance follows the gradient)."""

    def __init__(self, windows: Windows):
        self.w = windows

    def forward(self, x):
        out = self.w.out_shape(x.shape[1:-1])
        view = self.w.view(self.w.pad(x, -np.inf), out)
        flat = view.reshape((*view.shape[: len(out) + 2], -1))
        return flat.max(axis=-1), flat.argmax(axis=-1)

    def transpose(self, g, argmax, x_shape):
        spatial = tuple(x_shape[1:-1])
        padded = self.w.padded_zeros(g.shape[0], x_shape, g.dtype)
        out = g.shape[1:-1]
        for flat_index, offset in enumerate(self.w.offsets()):
            padded[self.w.slices(offset, out)] += np.where(argmax == flat_index, g, 0.0)
        return self.w.crop(padded, spatial)
