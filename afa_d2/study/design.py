"""What a study is: arms, a recipe shared by every arm, seeds; and the presets for the paper's tables.

An *arm* is a config (a zoo name such as ``shapes/mask_rcnn_R_18_msca.py``, or a file) plus
``key=value`` overrides. A study trains every arm with every seed under one recipe (iterations,
data, threads) chosen before it runs; arms never get a recipe of their own, except that an arm may
start from another arm's final weights of the same seed (``init_from``, the fine-tuning preset) and
train for its own number of iterations (``max_iter``, the same for all fine-tuned arms). Each arm
is compared with its ``baseline`` arm, seed by seed (docs/DESIGN.md, "The operator study").

The presets are built from the operator registry (:data:`~afa_d2.modeling.aggregation.AGGREGATION_OPS`)
and the shapes configs that exist, so an operator or a detector family added with its configs joins
them without an edit here.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from afa_d2.modeling.aggregation import AGGREGATION_OPS, attention_operators, baseline_operator, operator_label

__all__ = ["Arm", "Recipe", "StudyDesign", "StudyDesignError", "PRESETS", "preset", "custom_study",
           "check_seeds"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*(/[A-Za-z0-9][A-Za-z0-9_.+-]*)?$")


class StudyDesignError(ValueError):
    """A study that cannot be run as asked: the message names the value and what was expected."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One variant of a study.

    Attributes:
        name (str): a short name, also the run folder (``runs/<name>/seed<k>``); letters, digits,
            ``_.+-`` and at most one ``/``.
        config (str): a zoo config name (``shapes/...py``) or a config file path.
        overrides (tuple[str]): ``key=value`` overrides on top of the config.
        baseline (str or None): the arm this one is compared with, seed by seed; None for a baseline.
        init_from (str or None): start from this arm's final weights of the same seed.
        max_iter (int or None): training iterations, when not the recipe's (fine-tuned arms).
        label (str): how tables name it.
    """

    name: str
    config: str
    overrides: Tuple[str, ...] = ()
    baseline: Optional[str] = None
    init_from: Optional[str] = None
    max_iter: Optional[int] = None
    label: str = ""

    def to_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d["overrides"] = list(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "Arm":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise StudyDesignError("arm record has unknown keys {}; expected {}".format(unknown, sorted(fields)))
        return cls(**{**d, "overrides": tuple(d.get("overrides", ()))})


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What every run of a study shares.

    ``threads`` is part of the recipe: a CPU run's floating-point sums depend on how many threads
    split them, so the same seed gives the same model only at the same thread count.
    """

    max_iter: int = 1300  # the shapes model zoo's length
    num_train: int = 2000
    num_val: int = 200
    threads: int = 1

    def __post_init__(self):
        for name in ("max_iter", "num_train", "num_val", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StudyDesignError("recipe {} must be an int >= 1, got {!r}".format(name, value))


@dataclasses.dataclass(frozen=True)
class StudyDesign:
    """A study: its name, its arms and its recipe (the seeds are chosen per command)."""

    name: str
    arms: Tuple[Arm, ...]
    recipe: Recipe = Recipe()
    description: str = ""

    def __post_init__(self):
        names = [a.name for a in self.arms]
        if len(self.arms) < 2:
            raise StudyDesignError("study {!r} has {} arm(s); a comparison needs at least 2".format(
                self.name, len(self.arms)))
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise StudyDesignError("study {!r}: arm names {} appear more than once".format(self.name, dup))
        for a in self.arms:
            if not _NAME.match(a.name):
                raise StudyDesignError("arm name {!r}: expected letters, digits, '_.+-' and at most one '/'".format(
                    a.name))
            for ref, what in ((a.baseline, "baseline"), (a.init_from, "init_from")):
                if ref is not None and ref not in names:
                    raise StudyDesignError("arm {!r}: {} {!r} is not an arm of the study; arms: {}".format(
                        a.name, what, ref, names))
            if a.baseline == a.name or a.init_from == a.name:
                raise StudyDesignError("arm {!r} refers to itself".format(a.name))
            if a.max_iter is not None and (not isinstance(a.max_iter, int) or a.max_iter < 1):
                raise StudyDesignError("arm {!r}: max_iter must be an int >= 1, got {!r}".format(a.name, a.max_iter))
            for o in a.overrides:
                if "=" not in o:
                    raise StudyDesignError("arm {!r}: override {!r} is not of the form key=value".format(a.name, o))
        if not any(a.baseline for a in self.arms):
            raise StudyDesignError("study {!r}: no arm names a baseline, so nothing is compared".format(self.name))
        self.order()  # init_from has no cycle

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise StudyDesignError("no arm {!r} in study {!r}; arms: {}".format(name, self.name,
                                                                            [a.name for a in self.arms]))

    def order(self) -> List[Arm]:
        """The arms in an order where every arm comes after the arm it starts from."""
        done: List[Arm] = []
        pending = list(self.arms)
        while pending:
            ready = [a for a in pending if a.init_from is None or a.init_from in {d.name for d in done}]
            if not ready:
                raise StudyDesignError("study {!r}: init_from forms a cycle among {}".format(
                    self.name, [a.name for a in pending]))
            done.extend(ready)
            pending = [a for a in pending if a not in ready]
        return done

    def iterations(self, arm: Arm) -> int:
        return arm.max_iter or self.recipe.max_iter

    def to_dict(self) -> Dict:
        return {"name": self.name, "description": self.description,
                "recipe": dataclasses.asdict(self.recipe), "arms": [a.to_dict() for a in self.arms]}

    @classmethod
    def from_dict(cls, d: Dict) -> "StudyDesign":
        return cls(name=d["name"], description=d.get("description", ""), recipe=Recipe(**d["recipe"]),
                   arms=tuple(Arm.from_dict(a) for a in d["arms"]))


def check_seeds(seeds: Sequence[int]) -> List[int]:
    """The seeds as a list of ints >= 0, each once (StudyDesignError naming the bad ones otherwise)."""
    seeds = list(seeds)
    if not seeds:
        raise StudyDesignError("no seeds given; expected at least one int >= 0")
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad:
        raise StudyDesignError("seeds {} are not ints >= 0".format(bad))
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise StudyDesignError("seed list {} repeats {}: each seed is one run per arm, give each once".format(
            seeds, dup))
    return seeds


# ---- presets -------------------------------------------------------------------------------------------

def _zoo_has(name: str) -> bool:
    from afa_d2.model_zoo.catalog import configs_root

    return os.path.isfile(os.path.join(configs_root(), name))


#: How a study names each detector family of the shapes configs (the label of a multi-family study's arms).
FAMILY_LABELS = {"mask_rcnn": "Mask R-CNN", "cascade_mask_rcnn": "Cascade Mask R-CNN", "retinanet": "RetinaNet",
                 "fcos": "FCOS"}


def _operator_arms(arch: str, ops: Optional[Sequence[str]] = None, prefix: str = "") -> List[Arm]:
    """One arm per operator of the shapes ``arch`` configs present; with a ``prefix`` (several families in one
    study), names and labels carry the family."""
    base = baseline_operator()
    ops = [op for op in (ops or AGGREGATION_OPS) if _zoo_has("shapes/{}_R_18_{}.py".format(arch, op))]
    family = "{}, ".format(FAMILY_LABELS.get(arch, arch)) if prefix else ""
    return [Arm(name=prefix + op, config="shapes/{}_R_18_{}.py".format(arch, op),
                baseline=None if op == base else prefix + base, label=family + operator_label(op)) for op in ops]


def _table1(recipe: Recipe) -> StudyDesign:
    return StudyDesign("table1", tuple(_operator_arms("mask_rcnn")), recipe=recipe,
                       description="Table 1 at shapes scale: Mask R-CNN R-18 with each operator")


def _table1_cascade(recipe: Recipe) -> StudyDesign:
    ops = [op for op in AGGREGATION_OPS if op == baseline_operator() or op in attention_operators()]
    return StudyDesign("table1-cascade", tuple(_operator_arms("cascade_mask_rcnn", ops)), recipe=recipe,
                       description="Table 1 at shapes scale: Cascade Mask R-CNN R-18, sum-up against MSSA and MSCA")


def _attention_config() -> Tuple[str, str]:
    """The shapes Mask R-CNN of the first attention operator that can start as the sum (MSSA)."""
    op = next(op for op, cls in AGGREGATION_OPS.items() if cls.uses_attention and cls.can_start_as_sum)
    return op, "shapes/mask_rcnn_R_18_{}.py".format(op)


def _table4(recipe: Recipe) -> StudyDesign:
    op, config = _attention_config()
    rows = [("p5", ["p5"]), ("p4-p5", ["p4", "p5"]), ("p3-p5", ["p3", "p4", "p5"]), ("all", ["p2", "p3", "p4", "p5"])]
    arms = [Arm(name=name, config=config, overrides=("model.backbone.attention_levels={}".format(levels),),
                baseline=None if name == "all" else "all",
                label="{} on {}".format(operator_label(op), ", ".join(levels)))
            for name, levels in rows]
    return StudyDesign("table4", tuple(arms), recipe=recipe, description=(
        "Table 4 at shapes scale: which levels get attention ({}, Mask R-CNN R-18); each row against attention "
        "on all levels".format(operator_label(op))))


def _table5(recipe: Recipe) -> StudyDesign:
    op, config = _attention_config()
    rows = [("multi_scale", "multi-scale pools (r, 2r)"), ("single_scale", "single-scale pool (r)"),
            ("adaptive", "adaptive pool (7x7)")]
    arms = [Arm(name=name, config=config, overrides=("model.backbone.pooling={}".format(name),),
                baseline=None if name == "multi_scale" else "multi_scale",
                label="{}, {}".format(operator_label(op), text)) for name, text in rows]
    return StudyDesign("table5", tuple(arms), recipe=recipe, description=(
        "Table 5 at shapes scale: the key/value pooling of {} (Mask R-CNN R-18); each against the multi-scale "
        "default".format(operator_label(op))))


def _finetune(recipe: Recipe) -> StudyDesign:
    base_op = baseline_operator()
    arms = [Arm(name="base", config="shapes/mask_rcnn_R_18_{}.py".format(base_op),
                label="{}, the trained start ({} it)".format(operator_label(base_op), recipe.max_iter))]
    more = recipe.max_iter // 2
    for op in AGGREGATION_OPS:
        config = "shapes/finetune/mask_rcnn_R_18_{}_from_{}.py".format(op, base_op)
        if _zoo_has(config):
            arms.append(Arm(name=op, config=config, init_from="base", max_iter=more,
                            baseline=None if op == base_op else base_op,
                            label="{} {}, +{} it".format(operator_label(op),
                                                          "continued" if op == base_op else "converted", more)))
    return StudyDesign("finetune", tuple(arms), recipe=recipe, description=(
        "Converting a trained sum-up (FPN) model: from each seed's trained sum-up model, every operator "
        "fine-tuned for the same iterations (new blocks at the full lr, loaded weights at a tenth); each "
        "against continuing sum-up for as long"))


def _detectors(recipe: Recipe) -> StudyDesign:
    """Sum-up against MSCA on every detector family with shapes configs for both."""
    from afa_d2.model_zoo.catalog import list_configs

    base = baseline_operator()
    target = attention_operators()[-1]  # MSCA
    families = sorted({m.group(1) for m in (re.match(r"^shapes/(\w+?)_R_18_{}\.py$".format(base), c)
                                             for c in list_configs()) if m})
    arms = []
    for family in families:
        if _zoo_has("shapes/{}_R_18_{}.py".format(family, target)):
            arms += _operator_arms(family, [base, target], prefix=family + "/")
    return StudyDesign("detectors", tuple(arms), recipe=recipe, description=(
        "{} against {} on every detector family with shapes configs".format(operator_label(target),
                                                                            operator_label(base))))


PRESETS: Dict[str, Callable[[Recipe], StudyDesign]] = {
    "table1": _table1,
    "table1-cascade": _table1_cascade,
    "table4": _table4,
    "table5": _table5,
    "finetune": _finetune,
    "detectors": _detectors,
}


def preset(name: str, recipe: Recipe = Recipe()) -> StudyDesign:
    """The study of preset ``name`` (one of :data:`PRESETS`) under ``recipe`` (fine-tuned arms: half its
    iterations)."""
    if name not in PRESETS:
        raise StudyDesignError("unknown preset {!r}; valid: {}".format(name, list(PRESETS)))
    return PRESETS[name](recipe)


def custom_study(config: str, arms: Sequence[Sequence[str]], *, name: str = "custom",
                 recipe: Recipe = Recipe()) -> StudyDesign:
    """A user's study: one config, each arm ``[NAME, key=value, ...]``; the first arm is the baseline."""
    if not arms:
        raise StudyDesignError("--config needs at least two --arm NAME [key=value ...]")
    built = []
    for i, spec in enumerate(arms):
        if not spec:
            raise StudyDesignError("--arm needs a NAME, then key=value overrides")
        arm_name, overrides = spec[0], tuple(spec[1:])
        if "=" in arm_name:
            raise StudyDesignError("--arm {!r}: the first word is the arm's NAME, then key=value overrides".format(
                " ".join(spec)))
        built.append(Arm(name=arm_name, config=config, overrides=overrides, label=arm_name,
                         baseline=None if i == 0 else arms[0][0]))
    return StudyDesign(name, tuple(built), recipe=recipe, description="{} with {}".format(
        config, ", ".join(a.name for a in built)))
