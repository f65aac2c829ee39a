"""Training-time data: the validation split, a shuffled minibatch order, random crop/flip
augmentation and random erasing."""
import numpy as np


def split_validation(n, fraction, seed):
    """Fixed (train_idx, val_idx) of range(n): the same split for the same seed, every run."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def batches(n, batch_size, rng):
    """Index arrays covering range(n) once in a random order, `batch_size` at a time (the last
    batch may be smaller). rng: a numpy Generator."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def crop_padding(size):
    """How far random crops may shift an image of size (H, W): 2 pixels for MNIST's 28 x 28
    and CIFAR's 32 x 32, 1 for small images (16 x 16), where 2 would move a pattern by an
    eighth of the image."""
    return max(1, round(min(size) / 14))


def augment(x, rng, crop_pad=4, flip=True, part=None):
    """Random crops and mirror images of a batch, one independent draw per image.

    x: float (N, H, W, D). Each image is zero-padded by `crop_pad` on every side and an H x W
    window is cut at a random offset in 0..2*crop_pad along each axis; with flip=True, half the
    images (on average) are mirrored left to right. Returns a new (N, H, W, D) array.
    part: None, or (a `slidenet.ops.shard.Part`, data-parallel training) x holds rows
    part.start:part.stop of a batch of part.total: the draws are made for the whole batch and
    these rows' draws used, so every rank advances `rng` as one process would.
    """
    n, height, width, _ = x.shape
    drawn, mine = (n, slice(None)) if part is None else (part.total, part.rows)
    rows = np.broadcast_to(np.arange(height), (n, height))
    cols = np.broadcast_to(np.arange(width), (n, width))
    if crop_pad:
        x = np.pad(x, ((0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)))
        rows = rows + rng.integers(0, 2 * crop_pad + 1, size=(drawn, 1))[mine]
        cols = cols + rng.integers(0, 2 * crop_pad + 1, size=(drawn, 1))[mine]
    if flip:
        mirrored = (rng.random(drawn) < 0.5)[mine]
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    # One gather does crop and flip: out[i, r, c] = x[i, rows[i, r], cols[i, c]].
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


# Random erasing (Zhong et al. 2017): the erased rectangle covers this share of the image's
# area, with a height / width ratio in this range (drawn on a log scale, so tall and wide
# rectangles are as likely).
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase(x, rng, p, part=None):
    """Random erasing: with probability p, one random rectangle of each image set to 0.

    x: float (N, H, W, D), normalised, so 0 is the training images' mean: the rectangle hides
    what was there without adding an edge of its own colour. Each image draws whether it is
    erased, the rectangle's area (ERASE_AREA of the image), aspect (ERASE_ASPECT) and place;
    a rectangle that does not fit is clipped to the image. Returns a new (N, H, W, D) array.
    part: as `augment`'s (the draws are made for the whole batch, these rows' used).
    """
    n, height, width, _ = x.shape
    drawn, mine = (n, slice(None)) if part is None else (part.total, part.rows)
    chosen = (rng.random(drawn) < p)[mine]
    area = rng.uniform(*ERASE_AREA, size=drawn)[mine] * height * width
    aspect = np.exp(rng.uniform(*np.log(ERASE_ASPECT), size=drawn))[mine]
    h = np.clip(np.rint(np.sqrt(area * aspect)), 1, height).astype(int)
    w = np.clip(np.rint(np.sqrt(area / aspect)), 1, width).astype(int)
    top = np.floor(rng.random(drawn)[mine] * (height - h + 1)).astype(int)
    left = np.floor(rng.random(drawn)[mine] * (width - w + 1)).astype(int)
    rows, cols = np.arange(height), np.arange(width)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])             # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])           # (N, W)
    inside = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
    return np.where(inside[..., None], x.dtype.type(0), x)
