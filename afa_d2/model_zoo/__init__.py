"""afa_d2.model_zoo: configs by name, published checkpoints (hash-checked), converters.

detectron2's ``model_zoo`` API over afa_d2's configs and checkpoints::

    from afa_d2 import model_zoo
    cfg = model_zoo.get_config("COCO/cascade_mask_rcnn_R_50_msca_1x.py")        # a LazyConfig
    model = model_zoo.get("shapes/mask_rcnn_R_18_msca.py", trained=True)      # built, weights loaded
    url = model_zoo.get_checkpoint_url("shapes/mask_rcnn_R_18_msca.py")       # <zoo>/<name>-<hash>.pth

* :mod:`.catalog`: the shipped configs by name (they travel with the package);
* ``afa_d2.hub`` (below the engine, which loads URLs too): checkpoints by path or URL, cached, checked against
  the sha256 prefix in their name
  on every load;
* :mod:`.zoo`: the zoo URL (``$AFA_D2_ZOO_URL``), its index, ``get_checkpoint_url`` and ``get``;
* :mod:`.publish`: publishing a training checkpoint, the index, ``MODEL_ZOO.md``;
* :mod:`.train`: training and publishing the built-in-dataset zoo in one command;
* :mod:`.convert`: detectron2 FPN, torchvision ResNet and Swin checkpoints into afa_d2's models;
* :mod:`.paper`: the paper's numbers per config.
"""
from afa_d2.hub import ChecksumError, FetchError, fetch_checkpoint

from .catalog import UnknownConfigError, configs_root, get_config_file, list_configs
from .zoo import (
    ZOO_URL_ENV,
    CheckpointMismatchError,
    NotInZooError,
    get,
    get_checkpoint_url,
    get_config,
    load_fitting,
    read_index,
    zoo_url,
)

__all__ = [
    "ChecksumError",
    "CheckpointMismatchError",
    "FetchError",
    "NotInZooError",
    "UnknownConfigError",
    "ZOO_URL_ENV",
    "configs_root",
    "fetch_checkpoint",
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "list_configs",
    "load_fitting",
    "read_index",
    "zoo_url",
]
