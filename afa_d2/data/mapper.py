"""detectron2's ``DatasetMapper`` with errors that name the file, and RLE masks that just work.

Use it wherever detectron2's mapper goes::

    from afa_d2.data import DatasetMapper
    dataloader.train.mapper = L(DatasetMapper)(is_train=True, augmentations=[...], image_format="BGR",
                                                use_instance_mask=True)

Two differences from ``detectron2.data.DatasetMapper``, nothing else:

- a missing image raises :class:`ImageReadError` (a ``FileNotFoundError``) and an image
  that cannot be decoded (corrupt, truncated, not an image) raises :class:`ImageReadError`,
  both naming the file and the record's ``image_id``. detectron2's own message is PIL's,
  which for a truncated file does not say which file it was.
- annotations with RLE masks (``shapes`` stores the visible part of each instance, holes
  included, as RLE) are read as bitmasks even when ``instance_mask_format`` is
  ``"polygon"`` (detectron2 would stop with "Failed to use mask_format=='polygon'").
  Set ``instance_mask_format="bitmask"`` (``INPUT.MASK_FORMAT``) to skip the per-image check.
"""
from __future__ import annotations

import logging
import os

from detectron2.data import DatasetMapper as _D2DatasetMapper

__all__ = ["DatasetMapper", "ImageReadError", "read_image"]

logger = logging.getLogger(__name__)


class ImageReadError(FileNotFoundError):
    """An image of a dataset record is missing or cannot be decoded; the message names the file.

    (A ``FileNotFoundError``, i.e. an ``OSError``, so that code catching either keeps working.)
    """


def read_image(path: str, input_format: str = "BGR"):
    """An image file as an (H, W, 3) uint8 array in ``input_format`` ("BGR" or "RGB"), EXIF-rotated: what
    a config's ``input_format`` expects (the tools that read one image: export, visualize, the predictor).

    Raises:
        ImageReadError: one line naming the file, when it is missing, not a readable image, or not 3-channel.
    """
    from detectron2.data.detection_utils import read_image as d2_read_image

    if not os.path.isfile(path):
        raise ImageReadError("image {!r}: no such file (cwd: {})".format(path, os.getcwd()))
    try:
        image = d2_read_image(path, format=input_format)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError, a truncated file, ...
        raise ImageReadError("image {!r} is not a readable image file ({}: {}): give a PNG or JPEG file".format(
            path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")) from None
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageReadError("image {!r} has shape {}; expected (H, W, 3)".format(path, image.shape))
    return image


class DatasetMapper(_D2DatasetMapper):
    """``detectron2.data.DatasetMapper`` whose image errors name the file (see module doc)."""

    _warned_rle = False

    def __call__(self, dataset_dict):
        path = dataset_dict.get("file_name")
        where = "(dataset record image_id={})".format(dataset_dict.get("image_id", "?"))
        if path is not None and "://" not in str(path) and not os.path.isfile(path):
            raise ImageReadError(
                "Image file not found: '{}' {}. Check the dataset's image root "
                "(for COCO/LVIS: $DETECTRON2_DATASETS/coco/<split>2017/).".format(path, where))
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated file, bad header
            if isinstance(e, ImageReadError):
                raise
            raise ImageReadError(
                "Could not read image file '{}' {}: {}: {}. The file is corrupt or not an image; "
                "delete it (for `shapes`, delete its cache folder to regenerate).".format(
                    path, where, type(e).__name__, e)) from e

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        if self.instance_mask_format == "polygon" and any(
            isinstance(a.get("segmentation"), dict) for a in dataset_dict.get("annotations", ())
        ):
            if not DatasetMapper._warned_rle:
                logger.info("Annotations with RLE masks: reading them as bitmasks "
                            "(set instance_mask_format='bitmask' to make it explicit).")
                DatasetMapper._warned_rle = True
            self.instance_mask_format = "bitmask"
            try:
                return super()._transform_annotations(dataset_dict, transforms, image_shape)
            finally:
                self.instance_mask_format = "polygon"
        return super()._transform_annotations(dataset_dict, transforms, image_shape)
