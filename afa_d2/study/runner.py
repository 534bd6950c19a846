"""Run a study: every (arm, seed) once, resumable, recorded in ``study.json`` as each run finishes.

``study.json`` (in the study's output folder) holds the design, the seeds asked for, every finished
run (arm, seed, fingerprint, metrics, timings), the statistics and where they were computed. It is
written atomically after every finished run, so a study killed anywhere loses at most the runs in
progress, and those resume from their last checkpoint. A study resumes from ``study.json`` alone:
a run recorded there is never trained again, even where its folder is gone. A record or a run
folder made from another config (another fingerprint) is refused in one line, not reused.

``reuse``: other studies' ``study.json`` files whose finished runs this study may take instead of
training them again: a run is taken only where its fingerprint (the whole resolved config and the
recipe) and its seed equal the pending run's, whatever the arm is named there (the detectors study's
``mask_rcnn/sum`` is table1's ``sum``). Its record notes where it came from; its weights stay where
they are, so a run that another arm starts from is never taken.

Runs train in worker processes (``python -m afa_d2.study.worker``), ``jobs`` at a time, each with the
recipe's thread count; seeds in order, so a study stopped early holds whole seeds, which pair.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .design import Arm, StudyDesign, StudyDesignError, check_seeds
from .runs import StudyRunError, check_run_dir, fingerprint, read_json, run_config, run_dir
from .stats import study_statistics

__all__ = ["STUDY_FILE", "FORMAT", "load_study", "plan", "reusable_runs", "run_study", "write_study"]

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
FORMAT = 1


def _study_path(output_dir: str) -> str:
    return os.path.join(output_dir, STUDY_FILE)


def load_study(output_dir: str) -> Optional[Dict]:
    """The ``study.json`` in ``output_dir``, or None; StudyRunError if it is damaged or of another format."""
    path = _study_path(output_dir)
    if not os.path.isfile(path):
        return None
    study = read_json(path, "the study")
    if study.get("format") != FORMAT or "design" not in study or not isinstance(study.get("runs"), list):
        raise StudyRunError("{} is not a study file of format {} (keys: {}); choose another --output-dir".format(
            path, FORMAT, sorted(study)))
    return study


def write_study(output_dir: str, study: Dict) -> None:
    """Statistics recomputed, then ``study.json``, ``study.md`` and ``study.png`` written (each atomically)."""
    from afa_d2.storage import atomic_write_text

    from .report import write_reports

    from .cost import count_arms

    design = StudyDesign.from_dict(study["design"])
    study["cost"] = count_arms(design, output_dir, study.get("cost"))
    study["runs"].sort(key=lambda r: (r["seed"], [a.name for a in design.arms].index(r["arm"])))
    study["statistics"] = study_statistics(design, study["runs"])
    atomic_write_text(json.dumps(study, indent=1, sort_keys=False) + "\n", _study_path(output_dir))
    write_reports(output_dir, study)


def _provenance() -> Dict:
    from afa_d2.model_zoo.publish import provenance

    return provenance()


def _adopt(existing: Optional[Dict], design: StudyDesign, preset: Optional[str], output_dir: str) -> Dict:
    """The study file to continue: the existing one if it is of this study, else a new one."""
    if existing is None:
        return {"format": FORMAT, "preset": preset, "design": design.to_dict(), "seeds": [], "runs": [],
                "host": _provenance()}
    old = existing["design"]
    if old.get("name") != design.name:
        raise StudyRunError("{} holds study {!r}, not {!r}: choose another --output-dir".format(
            _study_path(output_dir), old.get("name"), design.name))
    if old.get("recipe") != design.to_dict()["recipe"]:
        raise StudyRunError("{} holds study {!r} with recipe {}, not {}: a study keeps one recipe; choose another "
                            "--output-dir".format(_study_path(output_dir), design.name, old.get("recipe"),
                                                  design.to_dict()["recipe"]))
    names = {a.name for a in design.arms}
    strange = sorted({r["arm"] for r in existing["runs"]} - names)
    if strange:
        raise StudyRunError("{} records runs of arms {} that study {!r} does not have ({}): choose another "
                            "--output-dir".format(_study_path(output_dir), strange, design.name, sorted(names)))
    existing["design"] = design.to_dict()
    existing["preset"] = preset
    return existing


def reusable_runs(paths: Sequence[str]) -> Dict[Tuple[str, int], Dict]:
    """(fingerprint, seed) -> a finished run record of the studies at ``paths`` (study.json files or folders)."""
    found: Dict[Tuple[str, int], Dict] = {}
    for path in paths:
        file = path if path.endswith(".json") else _study_path(path)
        study = read_json(file, "the study to reuse") if os.path.isfile(file) else None
        if not study or "runs" not in study:
            raise StudyRunError("--reuse {}: no study record there (a study.json or its folder is expected)".format(
                path))
        for r in study["runs"]:
            if r.get("fingerprint"):
                found.setdefault((r["fingerprint"], int(r["seed"])), dict(r, reused_from="{} {}/seed{}".format(
                    file, r["arm"], r["seed"])))
    return found


def plan(design: StudyDesign, seeds: Sequence[int], output_dir: str,
         recorded: Sequence[Dict] = (), reuse: Optional[Dict[Tuple[str, int], Dict]] = None
         ) -> Tuple[List[Dict], List[Tuple[Arm, int, str]]]:
    """What a study has and what it must still train.

    Returns:
        (finished, pending): the run folders' finished records not yet in ``recorded``, and the runs to
        train as ``(arm, seed, fingerprint)``, seeds in order, each seed's arms in dependency order.

    Raises:
        StudyRunError: a recorded run or a run folder of another config.
    """
    done = {(r["arm"], int(r["seed"])): r for r in recorded}
    started_from = {a.init_from for a in design.arms if a.init_from}
    found, pending = [], []
    for seed in seeds:
        for arm in design.order():
            cfg = run_config(design, arm, seed, output_dir)
            fp = fingerprint(cfg, design.recipe.threads)
            record = done.get((arm.name, seed))
            if record is not None:
                if record.get("fingerprint") != fp:
                    raise StudyRunError("study.json records {}/seed{} with config {}, this study's is {}: the config, "
                                        "the overrides or the recipe changed; choose another --output-dir".format(
                                            arm.name, seed, record.get("fingerprint"), fp))
                continue
            record = check_run_dir(run_dir(output_dir, arm, seed), arm, seed, fp)
            if record is None and reuse and arm.name not in started_from and (fp, seed) in reuse:
                record = dict(reuse[(fp, seed)], arm=arm.name)
            if record is not None:
                found.append(record)
            else:
                pending.append((arm, seed, fp))
    return found, pending


class _Worker:
    """A run training in its own process."""

    def __init__(self, output_dir: str, arm: Arm, seed: int, fp: str, init_checkpoint: Optional[str],
                 sharing: int):
        self.arm, self.seed, self.fingerprint = arm, seed, fp
        logs = os.path.join(output_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        self.log = os.path.join(logs, "{}_seed{}.log".format(arm.name.replace("/", "_"), seed))
        cmd = [sys.executable, "-m", "afa_d2.study.worker", "--study-dir", output_dir, "--arm", arm.name,
               "--seed", str(seed), "--sharing", str(sharing)]
        if init_checkpoint:
            cmd += ["--init-checkpoint", init_checkpoint]
        self._out = open(self.log, "a")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)
        self.started = time.time()

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None:
            self._out.close()
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._out.close()


def _init_weights(design: StudyDesign, arm: Arm, seed: int, output_dir: str) -> Optional[str]:
    if not arm.init_from:
        return None
    path = os.path.join(run_dir(output_dir, design.arm(arm.init_from), seed), "model_final.pth")
    if not os.path.isfile(path):
        raise StudyRunError("run {}/seed{} starts from {}/seed{}, whose weights {} are gone (study.json keeps "
                            "metrics, not weights): restore that folder, or delete its record from study.json to "
                            "train it again".format(arm.name, seed, arm.init_from, seed, path))
    return path


def run_study(design: StudyDesign, seeds: Sequence[int], output_dir: str, *, preset: Optional[str] = None,
              jobs: int = 1, reuse: Sequence[str] = (), echo=print) -> Dict:
    """Train what the study is missing, ``jobs`` runs at a time; return the study record. Runs of the studies
    in ``reuse`` with this study's fingerprints and seeds are taken instead of trained (see the module doc).

    Raises:
        StudyDesignError: bad seeds or jobs.
        StudyRunError: a run folder or record of another study or config; a run that failed.
    """
    seeds = check_seeds(seeds)
    if not isinstance(jobs, int) or jobs < 1:
        raise StudyDesignError("jobs must be an int >= 1, got {!r}".format(jobs))
    os.makedirs(output_dir, exist_ok=True)
    study = _adopt(load_study(output_dir), design, preset, output_dir)
    found, pending = plan(design, seeds, output_dir, study["runs"], reusable_runs(reuse) if reuse else None)
    study["seeds"] = sorted(set(study["seeds"]) | set(seeds))
    study["runs"].extend(found)
    write_study(output_dir, study)  # the workers read the design from it
    total = len(study["runs"]) + len(pending)
    for r in found:
        if r.get("reused_from"):
            echo("      {}/seed{}: taken from {} (same fingerprint)".format(r["arm"], r["seed"], r["reused_from"]))
    echo("study {!r}: {} arms x {} seeds; {} runs finished, {} to train, {} at a time ({} thread(s) each) -> {}"
         .format(design.name, len(design.arms), len(seeds), len(study["runs"]), len(pending), jobs,
                 design.recipe.threads, os.path.abspath(output_dir)))
    running: List[_Worker] = []
    failed: List[str] = []
    try:
        while pending or running:
            finished_names = {(r["arm"], int(r["seed"])) for r in study["runs"]}
            while pending and len(running) < jobs and not failed:
                ready = [p for p in pending if not p[0].init_from or (p[0].init_from, p[1]) in finished_names]
                if not ready:
                    break
                arm, seed, fp = ready[0]
                pending.remove(ready[0])
                w = _Worker(output_dir, arm, seed, fp, _init_weights(design, arm, seed, output_dir),
                            sharing=min(jobs, len(running) + len(pending) + 1))
                running.append(w)
                echo("[{}/{}] training {}/seed{} ({} iterations; log {})".format(
                    len(study["runs"]) + len(running), total, arm.name, seed, design.iterations(arm), w.log))
            if not running:
                break
            time.sleep(2)
            for w in list(running):
                rc = w.poll()
                if rc is None:
                    continue
                running.remove(w)
                if rc != 0:
                    failed.append("{}/seed{} (exit {}; log {})".format(w.arm.name, w.seed, rc, w.log))
                    continue
                record = check_run_dir(run_dir(output_dir, w.arm, w.seed), w.arm, w.seed, w.fingerprint)
                if record is None:
                    failed.append("{}/seed{} (exited 0 without its record; log {})".format(w.arm.name, w.seed, w.log))
                    continue
                record["git_commit"] = study["host"].get("git_commit")
                study["runs"].append(record)
                write_study(output_dir, study)
                m = record["metrics"]
                echo("      {}/seed{}: box AP {:.1f}, mask AP {:.1f}, context box AP {:.1f} ({:.1f} min)".format(
                    w.arm.name, w.seed, m.get("bbox/AP", float("nan")), m.get("segm/AP", float("nan")),
                    m.get("bbox/AP-context", float("nan")), (time.time() - w.started) / 60))
    except KeyboardInterrupt:
        for w in running:
            w.stop()
        echo("stopped: {} runs recorded in {}; the same command resumes".format(
            len(study["runs"]), _study_path(output_dir)))
        raise
    if failed:
        raise StudyRunError("runs failed: {}; the finished ones are recorded, the same command retries the "
                            "rest".format("; ".join(failed)))
    if pending:
        raise StudyRunError("runs left untrained: {}".format(", ".join("{}/seed{}".format(a.name, s)
                                                                        for a, s, _ in pending)))
    return study
