"""Imports run downward only, and form no circle (docs/DESIGN.md, "Layers").

Every import of an ``afa_d2`` module is read from the source, those inside functions included (they hide
a dependency from the reader, not from this test), and each module is placed in its layer:

    storage   <- hub, compat, config   <- modeling, data, evaluation, solver   <- execution   <- engine
        <- model_zoo   <- the applications (inspection, benchmark, export, predictor, demo, study, env, cli,
           the commands train_net and slurm_train)

A module may import its own package and any lower layer; the root package ``afa_d2`` (which applies
compat and registers everything) may be imported by anyone, for its side effects.
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "afa_d2")

LAYERS = [
    ("storage",),
    ("hub", "compat", "config"),
    ("modeling", "data", "evaluation", "solver"),
    ("execution",),
    ("engine",),
    ("model_zoo",),
    ("inspection", "benchmark", "export", "predictor", "demo", "study", "env", "cli", "train_net", "slurm_train"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def _imports(module, path):
    """The afa_d2 modules ``module`` imports (``from x import y`` counts x, and x.y where that is a module)."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update("{}.{}".format(target, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {t for t in out if t == "afa_d2" or t.startswith("afa_d2.")}


MODULES = dict(_modules())


def _resolve(target):
    """The module a dotted import target names (a name inside a module maps to that module)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _top(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph():
    return {m: {_resolve(t) for t in _imports(m, p)} - {m} for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES if _top(m) is not None and _top(m) not in LAYER_OF})
    assert not missing, "afa_d2 modules without a layer in this test (and docs/DESIGN.md): {}".format(missing)


def test_imports_only_run_downward():
    upward = []
    for module, targets in _graph().items():
        if _top(module) is None:
            continue
        for target in targets:
            if _top(target) is None or _top(target) == _top(module):
                continue
            if LAYER_OF[_top(target)] >= LAYER_OF[_top(module)] and not (
                    LAYER_OF[_top(target)] == LAYER_OF[_top(module)] == len(LAYERS) - 1):
                upward.append("{} -> {}".format(module, target))
    assert not upward, "imports that run up or sideways: {}".format(sorted(upward))


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ re-exports its modules: the edge from a module to its own package is the one
    # that closes the loop, and it is what this test forbids (import the module, not the package)
    assert not _cycles({m: {t for t in ts if t != "afa_d2"} for m, ts in graph.items()}), _cycles(graph)


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The two checks fail on a graph that breaks them (so a pass above means something)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from afa_d2.model_zoo import get\n    from . import x\n")
    assert "afa_d2.model_zoo" in _imports("afa_d2.modeling.m", str(src))
    assert "afa_d2.modeling.x" in _imports("afa_d2.modeling.m", str(src))
    assert LAYER_OF["model_zoo"] > LAYER_OF["modeling"]


@pytest.mark.parametrize("module", ["afa_d2.storage", "afa_d2.hub"])
def test_the_bottom_imports_nothing_of_afa_d2_but_itself(module):
    assert _graph()[module] <= {"afa_d2.storage"}
