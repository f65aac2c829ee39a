"""`Normalizer`: per-channel standardisation fitted on the training images, kept in model files."""
from dataclasses import dataclass

import numpy as np

from slidenet.errors import DataError, ModelFileError


@dataclass
class Normalizer:
    """Per-channel standardisation fitted on the training images.

    mean, std: float32 (D,), statistics of x / 255 over all training pixels of each channel.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x, chunk=1024):
        """x: uint8 (N, H, W, D). Two passes in float64, `chunk` images at a time, so a large
        data set is never held as floats all at once."""
        count = x.shape[0] * x.shape[1] * x.shape[2]
        if count == 0:
            raise DataError("cannot fit a normalizer on an empty training set")
        total = sum(x[i:i + chunk].sum(axis=(0, 1, 2), dtype=np.float64)
                    for i in range(0, len(x), chunk))
        mean = total / count / 255
        squares = sum(((x[i:i + chunk] / 255.0 - mean) ** 2).sum(axis=(0, 1, 2))
                      for i in range(0, len(x), chunk))
        std = np.sqrt(squares / count)
        # A constant channel carries no information; only centre it instead of dividing by 0.
        std[std == 0] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def normalize(self, x, dtype=np.float32):
        """x: uint8 (N, H, W, D) -> `dtype` (N, H, W, D) equal to (x / 255 - mean) / std."""
        if x.shape[-1] != len(self.mean):
            raise DataError(f"images of depth {x.shape[-1]} given to a normalizer fitted on depth "
                            f"{len(self.mean)}")
        scale, shift = self.affine(dtype)
        if x.ndim < 2 or x.size == 0:
            return x.astype(dtype) * scale + shift
        # The same multiply-add on rows of W*D numbers, scale and shift repeated along them:
        # broadcast along D alone, NumPy's loops run 3 numbers at a time for RGB, several
        # times slower, and this runs on the calling thread before a prediction's kernels.
        width = x.shape[-2]
        scale, shift = self._tiled(scale, shift, width)
        out = np.multiply(x.reshape(-1, width * x.shape[-1]), scale, dtype=dtype)
        out += shift
        return out.reshape(x.shape)

    def _tiled(self, scale, shift, width):
        """`affine`'s (scale, shift) repeated `width` times, (width * D,) each; kept per pair."""
        kept = self.__dict__.get("_tiled_pair")
        if kept is None or kept[0] is not scale or kept[1] != width:
            kept = (scale, width, np.tile(scale, width), np.tile(shift, width))
            self.__dict__["_tiled_pair"] = kept
        return kept[2], kept[3]

    def affine(self, dtype=np.float32):
        """(scale, shift), each `dtype` (D,): normalize(x) is x * scale + shift, one multiply-add
        per pixel, since (x/255 - mean)/std = x * 1/(255 std) - mean/std. (An ONNX export
        writes these two arrays, so it computes exactly what `normalize` does.)

        The pair is kept for the statistics and dtype it was made from (read-only arrays):
        computing it is eight small NumPy calls, a few percent of a one-image prediction. The
        key is the statistics' bytes, so changing `mean` or `std`, even in place, makes a new
        pair."""
        dtype = np.dtype(dtype)
        key = (dtype, self.mean.dtype, self.mean.tobytes(), self.std.dtype, self.std.tobytes())
        kept = self.__dict__.get("_affine")
        if kept is not None and kept[0] == key:
            return kept[1]
        mean, std = self.mean.astype(np.float64), self.std.astype(np.float64)
        pair = ((1 / (255 * std)).astype(dtype), (-mean / std).astype(dtype))
        for a in pair:
            a.setflags(write=False)
        self.__dict__["_affine"] = (key, pair)
        return pair

    def to_arrays(self):
        """{"normalizer.mean": (D,), "normalizer.std": (D,)} for a model file."""
        return {"normalizer.mean": self.mean, "normalizer.std": self.std}

    @classmethod
    def from_arrays(cls, arrays):
        """The inverse of `to_arrays` (extra keys, such as the net's weights, are ignored)."""
        if "normalizer.mean" not in arrays or "normalizer.std" not in arrays:
            raise ModelFileError("the model file has no normalizer.mean and normalizer.std")
        return cls(np.asarray(arrays["normalizer.mean"], dtype=np.float32),
                   np.asarray(arrays["normalizer.std"], dtype=np.float32))
