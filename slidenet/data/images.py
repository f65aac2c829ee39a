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
from slidenet.data.files import _BAD_FILE, _existing_dir, _existing_file, _required_arg
from slidenet.errors import DataError
from slidenet.storage import limits
from slidenet.storage.limits import MAX_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
DECODE_COPIES = 3           # full-size images alive at once while an image is decoded
ROW_BYTES = 8               # Pillow's bookkeeping per row of an image (a pointer)
REDUCING_GAP = 3.0          # downscales beyond 3 x 2 reduce by box averages first (Pillow's)


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
    composited onto `background` (0 black, 255 white); stretched to size (H, W) if given.

    The image is stretched before it is composited: Pillow resizes RGBA with premultiplied
    alpha, so this is the same picture (to rounding), and the composite then costs the small
    image's memory, not the upload's. A large downscale is first reduced by whole factors
    (box averages, `reducing_gap`), so the bilinear filter's weights do not grow with the
    image: without it, a 1 x 16,777,216 upload needed a gigabyte of them.
    """
    alpha = _has_alpha(image)
    mode = "RGBA" if alpha else "L" if depth == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), image_module.BILINEAR, reducing_gap=REDUCING_GAP)
    if alpha:
        under = image_module.new("RGBA", image.size, (background,) * 3 + (255,))
        under.alpha_composite(image)
        image = under.convert("L" if depth == 1 else "RGB")
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
    """Bytes decoding `image` and making it the net's pixels (`_pixels`) may take at their
    peak, from the header before any pixel is decoded: DECODE_COPIES full-size images of up to
    4 bytes a pixel (Pillow's decoded image, its RGBA conversion, the premultiplied copy its
    resize makes), each with a pointer per row, which for a tall thin image is most of it
    (tests/test_data.py measures the peak against this)."""
    return DECODE_COPIES * image.height * (image.width * 4 + ROW_BYTES)


def _read_image(path, size=None, before=0, broken=None, depth=None, converted=None):
    """uint8 (H, W, D): D = 1 for grayscale modes, else 3 (RGB; transparency composited onto
    black). size (H, W): stretch the image to it.

    before: bytes of images already read for the same data set; with this image they must fit
    the input budget (`slidenet.storage.limits`), checked before it is decoded.
    broken: a list; a file that cannot be read as an image is then appended to it as (path,
    why) and None returned, instead of a DataError (a folder goes on without it).
    depth: 1 or 3, convert the image to it (grayscale or RGB), as Keras's color_mode does;
    then `converted` (a list) gets the path of an image whose own depth was the other one.
    """
    image_module = _pillow()
    try:
        with _open(image_module, path) as image:
            limits.check_claim(before + _decoded_bytes(image),
                               f"{path} ({image.width}x{image.height} pixels)" if not before
                               else f"the images up to {path}")
            own = 1 if image.mode in _GRAY_MODES else 3
            if depth is not None and depth != own and converted is not None:
                converted.append(path)
            return _pixels(image_module, image, depth or own, 0, size)
    except _image_errors(image_module) as err:
        if broken is None:
            raise DataError(f"cannot read {path}: {_why(err, image_module)}") from None
        broken.append((path, _why(err, image_module)))
        return None


def _why(err, image_module):
    """Why Pillow could not read a file, in words (its own message names a BytesIO object)."""
    if isinstance(err, image_module.UnidentifiedImageError):
        return "not an image Pillow can read (damaged, or another kind of file)"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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


def _read_class_folders(directory, size, skipped, class_names=None, broken=None, depth=None,
                        converted=None):
    """Images (one subfolder per class) as a list of (path, uint8 (H, W, D)) and labels.

    class_names: the training set's classes (for a test folder); None takes the sorted
    subfolder names. size (H, W): stretch every image to it (None: keep their sizes).
    broken: a list that collects (path, why) of the image files that cannot be read, which
    are left out. depth, converted: see `_read_image`.
    """
    broken = [] if broken is None else broken
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
        read = 0
        for f in files:
            pixels = _read_image(f, size, before=total, broken=broken, depth=depth,
                                 converted=converted)
            if pixels is not None:
                images.append((f, pixels))
                total += pixels.nbytes
                read += 1
        if not read:
            why = f"; {len(files)} could not be read, e.g. {broken[-1][0]}: {broken[-1][1]}" \
                if files else ""
            raise DataError(f"class folder {folder} has no images "
                            f"({', '.join(s[1:].upper() for s in IMAGE_SUFFIXES[:5])}, ...){why}")
        labels += [names.index(folder.name)] * read
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


def _load_folder(arg, spec, size=None, depth=None):
    """A folder of class folders as a Dataset. size (H, W): stretch every image to it; depth
    (1 or 3): convert every image to grayscale or RGB (None: colour wins, grayscale images
    join it as three equal channels)."""
    root = _existing_dir(_required_arg(arg, spec, "directory"))
    name = root.resolve().name
    skipped, broken, converted = [], [], []
    read = dict(broken=broken, depth=depth, converted=converted)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, y_train, names = _read_class_folders(root / "train", size, skipped, None, **read)
        test, y_test, _ = _read_class_folders(root / "test", size, skipped, names, **read)
        x = _stack_images(train + test)
        dataset = Dataset(x[:len(train)], y_train, x[len(train):], y_test, names, name, spec)
    else:
        images, labels, names = _read_class_folders(root, size, skipped, None, **read)
        dataset = _split_dataset(_stack_images(images), labels, names, name, spec)
    if converted:
        kind = "colour" if depth == 1 else "grayscale"
        dataset.notes.append(f"converted {len(converted)} {kind} image"
                             f"{'s' * (len(converted) > 1)} to "
                             f"{'grayscale' if depth == 1 else 'RGB'} for the net's INPUT depth "
                             f"{depth}, e.g. {converted[0]}")
    if broken:
        path, why = broken[0]
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        dataset.notes.append(f"left out {len(broken)} image file{'s' * (len(broken) > 1)} that "
                             f"could not be read: {path}: {why}{more}")
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
    try:
        with _open(image_module, path) as image:
            limits.check_claim(_decoded_bytes(image), f"{path} ({image.width}x{image.height} pixels)")
            if _has_alpha(image) and notes is not None:
                notes.append(f"{path} has transparent pixels: composited onto "
                             f"{'black' if background < 128 else 'white'}, the background of "
                             "the images the model was trained on")
            return _fit(image, shape, resize, path, image_module, background)
    except _image_errors(image_module) as err:
        raise DataError(f"cannot read {path}: {_why(err, image_module)}") from None


def decode_cost(data, name="the upload"):
    """Bytes decoding the PNG or JPEG `data` will take at its peak (`_decoded_bytes`), read from
    its header alone; DataError as `decode_image` gives it for bytes it would refuse."""
    image_module = _pillow()
    try:
        with image_module.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
            _check_upload(image, name)
            return _decoded_bytes(image)
    except image_module.UnidentifiedImageError:
        raise DataError(f"{name} is not a PNG or JPEG image ({len(data):,} bytes that read as "
                        "neither); send one of those") from None
    except _image_errors(image_module) as err:
        raise DataError(f"cannot read {name}: {err}") from None


def _check_upload(image, name):
    """DataError for an upload claiming more than MAX_PIXELS pixels, or more memory to decode
    than the input budget, from its header."""
    if image.width * image.height > MAX_PIXELS:
        raise DataError(f"{name} is {image.width}x{image.height} pixels; at most "
                        f"{MAX_PIXELS:,} pixels are read")
    limits.check_claim(_decoded_bytes(image), f"{name} ({image.width}x{image.height} pixels)")


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
            _check_upload(image, name)
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
