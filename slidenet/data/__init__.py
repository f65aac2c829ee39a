"""Offline data sets, normalisation and augmentation.

`load(spec)` reads a data set named by a spec string:

    mnist5k               5,000 real MNIST digits shipped inside slidenet (default)
    fashion-mnist[:DIR]   Fashion-MNIST IDX files (Debian: /usr/share/datasets/fashion-mnist/)
    mnist:DIR             any MNIST-style IDX files (train-/t10k- images and labels, .gz or not)
    cifar10:DIR           CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta)
    folder:DIR            one subfolder of images per class (DIR/train + DIR/test, or a fixed
                          80/20 split); any format Pillow reads; hidden files left out
    npz:FILE              arrays x, y (optionally x_test, y_test, class_names)

Images stay uint8 `(N, H, W, D)`, channels last, until `Normalizer.normalize` turns a batch into
floats. Anything wrong with a file (missing, truncated, the wrong format, a pickle that asks for
more than a CIFAR batch contains) raises `DataError` naming the file.
"""
from slidenet.data.batching import augment, batches, crop_padding, erase, split_validation
from slidenet.data.dataset import Dataset, check_fits
from slidenet.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx
from slidenet.data.images import decode_image, load_image
from slidenet.data.normalize import Normalizer
from slidenet.data.specs import SPECS, class_count, load, resized, resolve

__all__ = ["Dataset", "load", "resolve", "resized", "class_count", "SPECS", "FASHION_MNIST_DIR",
           "FASHION_MNIST_CLASSES", "read_idx", "load_image", "decode_image", "Normalizer",
           "check_fits", "batches", "augment", "crop_padding", "erase", "split_validation"]
