"""Image files: the folder:DIR loader (one subfolder per class), `load_image` (a file) and
`decode_image` (bytes: an upload to `slidenet serve`).

Any format Pillow reads is welcome in files (PNG, JPEG, BMP, GIF, WebP, TIFF); uploads are PNG
or JPEG. Hidden files (".name", macOS's "._name") are not data and are left out; other files
are left out with a note. Images with transparency are composited onto a background (black for
training folders, like MNIST's; for `load_image`, the background the model was trained on)
before the alpha is dropped. Every file, and the pixels it decodes to, must fit the input
budget (`slidenet.storage.limits`).
"""
import io
import warnings
from pathlib import Path

import numpy as np

from slidenet.data.dataset import Dataset, _shape_text, _split_dataset
from slidenet.data.files import _BAD_FILE, _existing_dir, _existing_file, _reading, _required_arg
from slidenet.errors import DataError
from slidenet.storage import limits
from slidenet.storage.limits import MAX_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def _image_errors(image_module):
    # SyntaxError: what Pillow's PNG reader raises for a broken chunk found while decoding.
    return _BAD_FILE + (image_module.DecompressionBombError, SyntaxError)


def _has_alpha(image):
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (image.mode == "P" and "transparency" in image.info)


def _pixels(image_module, image, depth, background=0, size=None):
    """A Pillow image as uint8 (H, W, depth): grayscale for depth 1, RGB for 3; transparency
    composited onto `background` (0 black, 255 white) first; stretched to size (H, W) if given."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        under = image_module.new("RGBA", rgba.size, (background,) * 3 + (255,))
        under.alpha_composite(rgba)
        image = under
    image = image.convert("L" if depth == 1 else "RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), image_module.BILINEAR)
    return np.array(image).reshape(image.height, image.width, depth)


def _open(image_module, path):
    """Pillow's Image for the file at `path`, read from memory.

    Pillow reads some chunks at the length their header claims (a PNG's last IDAT chunk, in
    `load_end`); from a file, Python allocates that length before reading, which a flipped byte
    makes gigabytes. From memory a read returns what there is. The file itself must fit the
    input budget. Pillow's decompression-bomb warning is not shown: the budget is checked
    (`_decoded_bytes`), and Pillow's error for twice its limit still applies.
    """
    limits.check_claim(path.stat().st_size, str(path))
    raw = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
        return image_module.open(io.BytesIO(raw))


def _decoded_bytes(image):
    """Bytes Pillow needs to decode `image` (it keeps up to 4 bytes a pixel), read from the
    header before any pixel is decoded."""
    return image.width * image.height * 4


def _read_image(path, size=None, before=0):
    """uint8 (H, W, D): D = 1 for grayscale modes, else 3 (RGB; transparency composited onto
    black). size (H, W): stretch the image to it.

    before: bytes of images already read for the same data set; with this image they must fit
    the input budget (`slidenet.storage.limits`), checked before it is decoded.
    """
    image_module = _pillow()
    with _reading(path, _image_errors(image_module)):
        with _open(image_module, path) as image:
            limits.check_claim(before + _decoded_bytes(image),
                               f"{path} ({image.width}x{image.height} pixels)" if not before
                               else f"the images up to {path}")
            return _pixels(image_module, image, 1 if image.mode in _GRAY_MODES else 3, 0, size)


def _image_files(folder, skipped):
    """The image files of a folder, sorted; hidden files are no data, other files are counted
    into `skipped` (a list of paths)."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            skipped.append(p)
    return files


def _read_class_folders(directory, size, skipped, class_names=None):
    """Images (one subfolder per class) as a list of (path, uint8 (H, W, D)) and labels.

    class_names: the training set's classes (for a test folder); None takes the sorted
    subfolder names. size (H, W): stretch every image to it (None: keep their sizes).
    """
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{directory} has no class subfolders: folder:DIR wants one folder of "
                        "images per class (DIR/cat/*.png, DIR/dog/*.png), or DIR/train/<class> "
                        "and DIR/test/<class>")
    names = [p.name for p in folders] if class_names is None else class_names
    images, labels, total = [], [], 0
    for folder in folders:
        if folder.name not in names:
            raise DataError(f"{folder} is not one of the training classes: {', '.join(names)}")
        files = _image_files(folder, skipped)
        if not files:
            raise DataError(f"class folder {folder} has no images "
                            f"({', '.join(s[1:].upper() for s in IMAGE_SUFFIXES[:5])}, ...)")
        for f in files:
            images.append((f, _read_image(f, size, before=total)))
            total += images[-1][1].nbytes
        labels += [names.index(folder.name)] * len(files)
    return images, np.array(labels, dtype=np.int64), names


def _stack_images(images):
    """[(path, (H, W, D))] -> uint8 (N, H, W, D); grayscale joins RGB as three equal channels."""
    first_path, first = images[0]
    for path, pixels in images:
        if pixels.shape[:2] != first.shape[:2]:
            raise DataError(f"all images must have one size: {first_path} is "
                            f"{_shape_text(first.shape[:2])} but {path} is "
                            f"{_shape_text(pixels.shape[:2])}; train with --resize to stretch "
                            "every image to the net's INPUT size")
    depth = max(pixels.shape[2] for _, pixels in images)
    return np.stack([np.repeat(pixels, depth // pixels.shape[2], axis=2) for _, pixels in images])


def _load_folder(arg, spec, size=None):
    root = _existing_dir(_required_arg(arg, spec, "directory"))
    name = root.resolve().name
    skipped = []
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, y_train, names = _read_class_folders(root / "train", size, skipped)
        test, y_test, _ = _read_class_folders(root / "test", size, skipped, names)
        x = _stack_images(train + test)
        dataset = Dataset(x[:len(train)], y_train, x[len(train):], y_test, names, name, spec)
    else:
        images, labels, names = _read_class_folders(root, size, skipped)
        dataset = _split_dataset(_stack_images(images), labels, names, name, spec)
    if skipped:
        dataset.notes.append(f"left out {len(skipped)} file{'s' * (len(skipped) > 1)} that "
                             f"{'are' if len(skipped) > 1 else 'is'} not an image (.png, .jpg, "
                             f".bmp, .gif, ...), e.g. {skipped[0]}")
    return dataset


def load_image(path, shape, resize=False, background=0, notes=None):
    """One image file as uint8 (H, W, D) for a net whose INPUT is shape = (H, W, D).

    The colour mode is converted to match D (1: grayscale, 3: RGB). Transparency is composited
    onto `background` (0 black, 255 white: the background of the training images), with a
    line saying so appended to `notes` (a list) when given. A different size is a DataError
    naming both shapes, unless resize=True stretches the image to H x W.
    """
    _input_depth(shape)
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file")
    path = _existing_file(path)
    image_module = _pillow()
    with _reading(path, _image_errors(image_module)):
        with _open(image_module, path) as image:
            limits.check_claim(_decoded_bytes(image), f"{path} ({image.width}x{image.height} pixels)")
            if _has_alpha(image) and notes is not None:
                notes.append(f"{path} has transparent pixels: composited onto "
                             f"{'black' if background < 128 else 'white'}, the background of "
                             "the images the model was trained on")
            return _fit(image, shape, resize, path, image_module, background)


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


def _fit(image, shape, resize, name, image_module, background=0):
    """An open PIL image as uint8 (H, W, D) for INPUT `shape`, in its colour mode, transparency
    composited onto `background`; a different size is stretched (bilinear) when `resize`,
    else a DataError naming `name`."""
    height, width, depth = (int(v) for v in shape)
    if image.size != (width, height) and not resize:
        own = 1 if image.mode in _GRAY_MODES else 3
        raise DataError(f"{name} is {image.height}x{image.width}x{own} but the net's "
                        f"INPUT is {_shape_text(shape)}: pass --resize to stretch it to "
                        f"{height}x{width}, or resize the image yourself")
    return _pixels(image_module, image, depth, background, (height, width))
