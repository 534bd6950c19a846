"""The statistics of a study, from scipy.stats: per arm over seeds, and paired by seed against the baseline.

Per arm and metric: the mean, the sample standard deviation and the 95% Student-t confidence interval
of the mean over its seeds. Per arm against its baseline: the differences of the runs with the same
seed (same data order, same initialisation of the shared parts), their mean with its 95% t interval,
and the two-sided paired t-test's p-value (``scipy.stats.ttest_rel``). An interval needs two seeds;
with one, or with differences that are all equal, the interval and p-value are None rather than a
number that looks like evidence.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["METRICS", "summarize", "paired", "study_statistics"]

#: the metrics a study reports, detectron2's flattened names (``<task>/AP-context``: see :func:`flat_metrics`)
METRICS = (
    "bbox/AP", "segm/AP", "bbox/AP50", "segm/AP50", "bbox/APs", "bbox/APm", "bbox/APl",
    "bbox/AP-context", "segm/AP-context", "bbox/AP-shapes", "segm/AP-shapes",
    "time/train_s_per_iter", "time/inference_s_per_image",
)
CONFIDENCE = 0.95


def _finite(values: Iterable[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation and the Student-t interval of the mean of ``values``."""
    import numpy as np
    from scipy import stats

    x = np.asarray(_finite(values), dtype=float)
    n = int(x.size)
    out: Dict[str, Optional[float]] = {"n": n, "mean": float(x.mean()) if n else None, "sd": None,
                                       "ci_low": None, "ci_high": None}
    if n >= 2:
        sd = float(x.std(ddof=1))
        out["sd"] = sd
        if sd > 0:
            low, high = stats.t.interval(confidence, n - 1, loc=x.mean(), scale=stats.sem(x))
            out["ci_low"], out["ci_high"] = float(low), float(high)
    return out


def paired(values: Dict[int, float], baseline: Dict[int, float],
           confidence: float = CONFIDENCE) -> Dict[str, Optional[float]]:
    """The paired difference ``values - baseline`` over the seeds both have (dicts seed -> value).

    Returns:
        dict: ``n`` (pairs), ``seeds``, ``mean``, ``sd``, ``ci_low`` / ``ci_high`` (Student t) and ``p``
        (two-sided paired t-test).
    """
    import numpy as np
    from scipy import stats

    seeds = sorted(s for s in values if s in baseline and values[s] is not None and baseline[s] is not None
                   and math.isfinite(values[s]) and math.isfinite(baseline[s]))
    a = np.asarray([values[s] for s in seeds], dtype=float)
    b = np.asarray([baseline[s] for s in seeds], dtype=float)
    out = summarize(a - b, confidence)
    out["seeds"] = seeds
    out["p"] = None
    if out["sd"]:  # two pairs or more, not all differences equal
        out["p"] = float(stats.ttest_rel(a, b).pvalue)
    return out


def _by_seed(runs: Sequence[Dict], arm: str, metric: str) -> Dict[int, float]:
    out = {}
    for r in runs:
        if r["arm"] != arm:
            continue
        value = r.get("metrics", {}).get(metric)
        if value is None and metric.startswith("time/"):
            value = (r.get("time") or {}).get(metric[len("time/"):])
        if value is not None:
            out[int(r["seed"])] = float(value)
    return out


def study_statistics(design, runs: Sequence[Dict], metrics: Sequence[str] = METRICS) -> Dict:
    """Per arm: each metric summarized over seeds; against the baseline: the paired differences.

    Args:
        design (StudyDesign): the study's arms (and which arm is whose baseline).
        runs (list[dict]): the finished runs, ``{"arm", "seed", "metrics": {...}, "time": {...}}``.

    Returns:
        dict: ``{"arms": {arm: {metric: summary}}, "paired": {arm: {"baseline": name, metric: paired}}}``.
    """
    arms = {}
    pairs = {}
    for arm in design.arms:
        arms[arm.name] = {m: summarize(list(_by_seed(runs, arm.name, m).values())) for m in metrics}
        arms[arm.name] = {m: s for m, s in arms[arm.name].items() if s["n"]}
        if arm.baseline:
            pairs[arm.name] = {"baseline": arm.baseline}
            for m in metrics:
                d = paired(_by_seed(runs, arm.name, m), _by_seed(runs, arm.baseline, m))
                if d["n"]:
                    pairs[arm.name][m] = d
    return {"confidence": CONFIDENCE, "test": "paired t-test (scipy.stats.ttest_rel), two-sided",
            "interval": "Student t (scipy.stats.t.interval)", "arms": arms, "paired": pairs}
