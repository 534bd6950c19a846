"""``tools/study.py``: train every arm of a study with every seed, then report (docs/DESIGN.md, "The operator study").

    python tools/study.py --preset table1 --seeds 5 --output-dir out/study_table1
    python tools/study.py --config shapes/mask_rcnn_R_18_mssa.py --arm bilinear \\
        --arm nearest model.backbone.upsample_mode=nearest --seeds 3 --output-dir out/up
    python tools/study.py --output-dir out/study_table1 --publish     # into docs/studies/ and the READMEs
    python tools/study.py --preset detectors --seeds 3 --output-dir out/det --reuse out/study_table1  # same runs taken
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

from .design import PRESETS, Recipe, StudyDesignError, custom_study, preset
from .runs import StudyRunError

__all__ = ["parse_args", "main"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/study.py", description=(
        "Train every arm of a study with every seed under one recipe, resumably, and report per arm the mean "
        "and 95%% CI over seeds and, against the baseline, the paired difference with its CI and p-value."),
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--preset", help="one of: {}".format(", ".join(PRESETS)))
    what.add_argument("--config", help="a config (zoo name or file) for a study of your own, with --arm")
    p.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), default=[],
                   help="with --config: an arm, its name then overrides; the first --arm is the baseline")
    p.add_argument("--name", default="custom", help="with --config: the study's name")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5)")
    seeds.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds")
    p.add_argument("--output-dir", required=True, help="the study's folder (study.json, runs/, logs/)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: CPU cores / the recipe's threads, at least 1)")
    p.add_argument("--max-iter", type=int, default=None, help="the recipe's training iterations (default 1300)")
    p.add_argument("--num-train", type=int, default=None, help="shapes_train images (default 2000)")
    p.add_argument("--num-val", type=int, default=None, help="shapes_val images (default 200)")
    p.add_argument("--threads", type=int, default=None, help="torch threads a run (default 1; part of the recipe)")
    p.add_argument("--reuse", nargs="+", default=[], metavar="STUDY",
                   help="other studies (study.json or its folder) whose finished runs of the same config, recipe and "
                        "seed are taken instead of trained again")
    p.add_argument("--report", action="store_true", help="only rewrite study.md / study.png from study.json")
    p.add_argument("--time", action="store_true",
                   help="time every arm side by side in this process (inference per image, training step), on a "
                        "quiet host; recorded in study.json (trains nothing)")
    p.add_argument("--publish", action="store_true",
                   help="copy study.json / .md / .png to docs/studies/<name>/ and write the tables into the "
                        "READMEs between their study markers (trains nothing)")
    p.add_argument("--repo", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _recipe(args) -> Recipe:
    given = {k: getattr(args, k) for k in ("max_iter", "num_train", "num_val", "threads")
             if getattr(args, k) is not None}
    return Recipe(**given)


def _design(args):
    if args.preset:
        if args.arm:
            raise StudyDesignError("--arm goes with --config, not with --preset {}".format(args.preset))
        return preset(args.preset, _recipe(args))
    if args.config:
        return custom_study(args.config, args.arm, name=args.name, recipe=_recipe(args))
    raise StudyDesignError("say what to study: --preset NAME (one of {}) or --config CFG --arm NAME ...".format(
        ", ".join(PRESETS)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; a known error (afa_d2.cli's, or the study's own) is one line and exit status 2."""
    import afa_d2  # noqa: F401  (detectron2 compat patches first)
    from afa_d2.cli import run_command

    def run(argv):
        try:
            return _run(parse_args(argv))
        except KeyboardInterrupt:
            return 130

    return run_command("tools/study.py", run, argv, extra=(StudyRunError,))


def _run(args) -> int:
    from .publish import publish
    from .runner import load_study, run_study, write_study

    if args.publish or args.report or args.time:
        study = load_study(args.output_dir)
        if study is None:
            raise StudyRunError("{} holds no study.json".format(os.path.abspath(args.output_dir)))
        if args.time:
            from afa_d2.model_zoo.publish import provenance

            from .cost import measure_timings
            from .design import StudyDesign

            study["quiet_timing"] = measure_timings(StudyDesign.from_dict(study["design"]), args.output_dir)
            study["quiet_timing"]["host"] = provenance()
        write_study(args.output_dir, study)
        if args.publish:
            for path in publish(args.output_dir, args.repo):
                print("wrote", path)
        print(open(os.path.join(args.output_dir, "study.md")).read())
        return 0
    design = _design(args)
    seeds: List[int] = args.seed_list if args.seed_list is not None else list(range(5 if args.seeds is None
                                                                                     else args.seeds))
    if args.seeds is not None and args.seeds < 1:
        raise StudyDesignError("--seeds must be >= 1, got {}".format(args.seeds))
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // design.recipe.threads)
    run_study(design, seeds, args.output_dir, preset=args.preset, jobs=jobs, reuse=args.reuse)
    print(open(os.path.join(args.output_dir, "study.md")).read())
    return 0
