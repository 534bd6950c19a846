"""The training data stream: resumable, identical on any number of processes.

* :class:`DeterministicTrainingSampler`: detectron2's ``TrainingSampler`` stream
  (``shuffle(range(n)) + shuffle(range(n)) + ...``, rank ``r`` of ``W`` taking every ``W``-th
  item), but each epoch's permutation is a function of ``(seed, epoch)`` and the stream can
  start at any position. On resume it starts at ``start_iter * total_batch``, so the resumed
  run sees the batches the uninterrupted run would have seen (detectron2's sampler restarts
  its stream at the beginning).
* :class:`DeferredLoader`: the data loader is only iterated at the first step, after the
  checkpoint (and with it the start iteration) has been loaded; its torch ``DataLoader`` gets
  its own generator, so creating it mid-run does not draw from the global RNG.
* :func:`build_train_loader`: ``cfg.dataloader.train`` with that sampler.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Dict, Iterator, List, Optional

import torch
from detectron2.config import instantiate
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler

__all__ = ["DeterministicTrainingSampler", "DeferredLoader", "build_train_loader", "mix_seed"]

logger = logging.getLogger(__name__)


class DeterministicTrainingSampler(Sampler):
    """An infinite, resumable stream of dataset indices shared by all ranks.

    The global stream is ``perm(0) + perm(1) + ...`` where ``perm(e)`` is a permutation of
    ``range(size)`` drawn from a generator seeded with ``(seed, e)`` (or ``range(size)`` when
    ``shuffle=False``). Rank ``r`` of ``W`` yields global positions ``start + r, start + r + W,
    ...``; with ``B = total_batch / W`` items per rank and step, the union of the ranks' k-th
    batches is positions ``start + k*total_batch ... + total_batch - 1``, i.e. the same images a
    single process with the whole batch takes (before aspect-ratio grouping).

    Args:
        size (int): dataset length.
        shuffle (bool): shuffle each epoch.
        seed (int): shared by all ranks; ``None``: a random seed shared by all ranks.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"DeterministicTrainingSampler(size=) expects a positive int, got {size!r}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_start(self, position: int) -> None:
        """Start the global stream at ``position`` (= ``start_iter * total_batch``)."""
        if position < 0:
            raise ValueError(f"start position must be >= 0, got {position}")
        self._start = int(position)

    def _permutation(self, epoch: int) -> List[int]:
        if not self._shuffle:
            return list(range(self._size))
        g = torch.Generator()
        g.manual_seed(mix_seed(self._seed, epoch))
        return torch.randperm(self._size, generator=g).tolist()

    def global_stream(self, start: int = 0) -> Iterator[int]:
        """Every index from global position ``start`` on (all ranks together)."""
        epoch, offset = divmod(start, self._size)
        while True:
            perm = self._permutation(epoch)
            yield from perm[offset:]
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        stream = self.global_stream(self._start)
        for i, index in enumerate(stream):
            if i % self._world_size == self._rank:
                yield index


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (python's hash() of ints is not a mixer)."""
    digest = hashlib.sha256(":".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DeferredLoader:
    """Wraps a data loader so that ``iter()`` does nothing until the first item is asked for.

    detectron2's ``SimpleTrainer`` calls ``iter(data_loader)`` in its constructor, before the
    checkpoint (and with it the start iteration) is known; worker processes would start
    sampling from position 0. The generator returned here creates the real iterator on its
    first ``next()``, inside the first training step.
    """

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        yield from self.loader

    def __len__(self):  # pragma: no cover - infinite loaders have none
        return len(self.loader)


def build_train_loader(cfg):
    """Instantiate ``cfg.dataloader.train`` with a :class:`DeterministicTrainingSampler`.

    Returns:
        (loader, sampler): ``sampler`` is None when the config chose its own sampler (then a
        resumed run restarts that sampler's stream; a warning says so).
    """
    from detectron2.config.instantiate import locate

    lc = cfg.dataloader.train
    if lc.get("sampler", None) is not None or "dataset" not in lc:
        logger.warning(
            "dataloader.train sets its own sampler: on --resume its stream restarts from the "
            "beginning instead of continuing (afa_d2's DeterministicTrainingSampler is not used)."
        )
        return instantiate(lc), None
    dataset = instantiate(lc.dataset)
    seed = cfg.train.get("seed", -1)
    sampler = DeterministicTrainingSampler(len(dataset), seed=None if seed is None or seed < 0 else seed)
    target = lc._target_
    if isinstance(target, str):
        target = locate(target)
    kwargs: Dict[str, Any] = {}
    for key in lc.keys():
        if key in ("_target_", "dataset", "sampler"):
            continue
        kwargs[key] = instantiate(lc[key])
    loader = target(dataset=dataset, sampler=sampler, **kwargs)
    _give_own_generator(loader, sampler.seed)
    return loader, sampler


def _give_own_generator(loader, seed: int) -> None:
    """Let the torch ``DataLoader`` inside ``loader`` draw its base seed from its own generator.

    Creating a ``DataLoader`` iterator draws a number from torch's *global* RNG unless the
    loader has a ``generator``. The iterator is created in the first step of a run, i.e. at
    iteration 0 of a fresh run but at the resume iteration of a resumed one, so that draw
    would shift the random choices the model makes in that step (RPN/ROI sampling).
    """
    candidates = [loader, getattr(loader, "dataset", None)]  # AspectRatioGroupedDataset wraps one
    for dl in candidates:
        if isinstance(dl, torch.utils.data.DataLoader) and dl.generator is None:
            g = torch.Generator()
            g.manual_seed(mix_seed(seed, comm.get_rank(), 0x10AD))
            dl.generator = g


