"""Converters: weights that already exist, as afa_d2 models' weights (see :mod:`.common`)."""
from .common import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    TORCHVISION_SETTINGS,
    ConversionReport,
    convert_detectron2_fpn,
    convert_swin,
    convert_torchvision_resnet,
    converter_parser,
    load_weights,
    run_converter,
    save_converted,
    torchvision_resnet_overrides,
)

__all__ = [
    "ConversionReport",
    "converter_parser",
    "run_converter",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "TORCHVISION_SETTINGS",
    "convert_detectron2_fpn",
    "convert_swin",
    "convert_torchvision_resnet",
    "load_weights",
    "save_converted",
    "torchvision_resnet_overrides",
]
