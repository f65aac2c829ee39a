"""PNG/JPEG images: the folder:DIR loader (one subfolder per class), `load_image` (a file) and
`decode_image` (bytes: an upload to `slidenet serve`)."""
import io
from pathlib import Path

import numpy as np

from slidenet.data.dataset import Dataset, _shape_text, _split_dataset
from slidenet.data.files import _BAD_FILE, _existing_dir, _existing_file, _reading, _required_arg
from slidenet.errors import DataError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
MAX_PIXELS = 4096 * 4096    # an image claiming more is refused before it is decoded


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def _image_errors(image_module):
    return _BAD_FILE + (image_module.DecompressionBombError,)


def _read_image(path):
    """uint8 (H, W, D): D = 1 for grayscale modes, else 3 (RGB; an alpha channel is dropped)."""
    image_module = _pillow()
    with _reading(path, _image_errors(image_module)):
        with image_module.open(path) as image:
            depth = 1 if image.mode in _GRAY_MODES else 3
            pixels = np.array(image.convert("L" if depth == 1 else "RGB"))
    return pixels.reshape(pixels.shape[0], pixels.shape[1], depth)


def _read_class_folders(directory, class_names=None):
    """Images (one subfolder per class) as a list of (path, uint8 (H, W, D)) and labels.

    class_names: the training set's classes (for a test folder); None takes the sorted
    subfolder names.
    """
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{directory} has no class subfolders (one folder of images per class)")
    names = [p.name for p in folders] if class_names is None else class_names
    images, labels = [], []
    for folder in folders:
        if folder.name not in names:
            raise DataError(f"{folder} is not one of the training classes: {', '.join(names)}")
        files = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"class folder {folder} has no PNG or JPEG images")
        images += [(f, _read_image(f)) for f in files]
        labels += [names.index(folder.name)] * len(files)
    return images, np.array(labels, dtype=np.int64), names


def _stack_images(images):
    """[(path, (H, W, D))] -> uint8 (N, H, W, D); grayscale joins RGB as three equal channels."""
    first_path, first = images[0]
    for path, pixels in images:
        if pixels.shape[:2] != first.shape[:2]:
            raise DataError(f"all images must have one size: {first_path} is "
                            f"{_shape_text(first.shape[:2])} but {path} is "
                            f"{_shape_text(pixels.shape[:2])}")
    depth = max(pixels.shape[2] for _, pixels in images)
    return np.stack([np.repeat(pixels, depth // pixels.shape[2], axis=2) for _, pixels in images])


def _load_folder(arg, spec):
    root = _existing_dir(_required_arg(arg, spec, "directory"))
    name = root.resolve().name
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, y_train, names = _read_class_folders(root / "train")
        test, y_test, _ = _read_class_folders(root / "test", names)
        x = _stack_images(train + test)
        return Dataset(x[:len(train)], y_train, x[len(train):], y_test, names, name, spec)
    images, labels, names = _read_class_folders(root)
    return _split_dataset(_stack_images(images), labels, names, name, spec)


def load_image(path, shape, resize=False):
    """One PNG/JPEG as uint8 (H, W, D) for a net whose INPUT is shape = (H, W, D).

    The colour mode is converted to match D (1: grayscale, 3: RGB). A different size is a
    DataError naming both shapes, unless resize=True stretches the image to H x W.
    """
    _input_depth(shape)
    path = _existing_file(Path(path))
    image_module = _pillow()
    with _reading(path, _image_errors(image_module)):
        with image_module.open(path) as image:
            return _fit(image, shape, resize, path, image_module)


def decode_image(data, shape, name="the upload"):
    """PNG or JPEG bytes (an upload, a drawing) as uint8 (H, W, D) for INPUT shape = (H, W, D),
    converted to D's colour mode and stretched to H x W.

    Raises DataError naming `name` for bytes that are not a PNG or JPEG, or whose header claims
    more than MAX_PIXELS pixels (checked before anything is decoded: a decompression bomb).
    """
    _input_depth(shape)
    image_module = _pillow()
    try:
        with image_module.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DataError(f"{name} is {image.width}x{image.height} pixels; at most "
                                f"{MAX_PIXELS:,} pixels are read")
            return _fit(image, shape, True, name, image_module)
    except image_module.UnidentifiedImageError:
        raise DataError(f"{name} is not a PNG or JPEG image ({len(data):,} bytes that read as "
                        "neither); send one of those") from None
    except _image_errors(image_module) as err:
        raise DataError(f"cannot read {name}: {err}") from None


def _input_depth(shape):
    if int(shape[2]) not in (1, 3):
        raise DataError(f"an image can feed an INPUT of depth 1 or 3, not {_shape_text(shape)}")


def _fit(image, shape, resize, name, image_module):
    """An open PIL image as uint8 (H, W, D) for INPUT `shape`, in its colour mode; a different
    size is stretched (bilinear) when `resize`, else a DataError naming `name`."""
    height, width, depth = (int(v) for v in shape)
    if image.size != (width, height) and not resize:
        own = 1 if image.mode in _GRAY_MODES else 3
        raise DataError(f"{name} is {image.height}x{image.width}x{own} but the net's "
                        f"INPUT is {_shape_text(shape)}: resize the image to "
                        f"{height}x{width}")
    image = image.convert("L" if depth == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), image_module.BILINEAR)
    return np.array(image).reshape(height, width, depth)
