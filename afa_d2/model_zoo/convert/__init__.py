"""Converters: weights that already exist, as afa_d2 models' weights, with a report of what happened.

Training a detector from nothing takes days on GPUs; a detectron2 FPN detector, an ImageNet ResNet or
Swin that someone else trained is the realistic start. One module a source format:

* :mod:`.detectron2_fpn`: :func:`convert_detectron2_fpn`, a detectron2 FPN detector (its model-zoo
  ``.pkl``, or a ``.pth``) into an :class:`~afa_d2.modeling.AttentionFPN` detector of any operator:
  every shared weight loads by name, only the operators' own blocks are new, and MSSA / concat can
  start as FPN's sum (``start_as_fpn``);
* :mod:`.torchvision_resnet`: :func:`convert_torchvision_resnet`, torchvision's ResNet weights under
  detectron2's ``ResNet`` names, with the config overrides they need
  (:func:`torchvision_resnet_overrides`);
* :mod:`.swin`: :func:`convert_swin`, an official (microsoft/Swin-Transformer) or timm Swin checkpoint
  into :class:`~afa_d2.modeling.SwinBottomUp`'s keys;

and what they share: :mod:`.reading` (:func:`load_weights`: any checkpoint file, a ``.pkl`` read
without running code it may hold) and :mod:`.common` (:class:`ConversionReport`, the converted file
written atomically by :func:`save_converted`, the commands' parser and one-line errors). Each format
module's ``main(argv)`` is its ``tools/convert_*.py`` command.
"""
from .common import ConversionReport, converter_parser, run_converter, save_converted
from .detectron2_fpn import convert_detectron2_fpn
from .reading import load_weights
from .swin import convert_swin
from .torchvision_resnet import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    TORCHVISION_SETTINGS,
    convert_torchvision_resnet,
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
