"""A cheap check of a candidate train.py before it is submitted, so obvious failures never take a GPU.

Only what the harness would fail anyway, found statically:
- the file must compile;
- it must call ``evaluate_bpb`` from ``prepare`` (without it the runner has no
  val_bpb and marks the run ``invalid``), and must not define, assign or wrap
  that name (the runner accepts only the harness's own measurement);
- it must not assign attributes of the ``prepare`` module (``prepare.X = ...``,
  ``setattr(prepare, ...)``): the harness is read-only, touching it is cheating;
- it must not rebind a name it imported from ``prepare`` (``TIME_BUDGET = 600``
  changes nothing the harness counts; it only fools train.py itself);
- no new packages: an import outside a ``try`` must be the standard library,
  torch, ``prepare``, or a module the parent train.py already imports.
Anything subtler (fake printed metrics, budget games at run time, reading
the targets) is the runner's job, at run time.
"""

from __future__ import annotations

import ast
import sys

ALWAYS_IMPORTABLE = frozenset({"torch", "prepare", "numpy", "__future__"})
HARNESS_METRIC = "evaluate_bpb"


def check_train_py(source: str, parent_source: str = "") -> list[str]:
    """Why ``source`` would fail or cheat (one reason per entry); [] when it may be submitted."""
    try:
        tree = ast.parse(source, "train.py")
        compile(tree, "train.py", "exec")
    except SyntaxError as exc:
        return [f"train.py does not compile: {exc.msg} (line {exc.lineno})"]
    problems: list[str] = []
    from_prepare = _names_from_prepare(tree)
    prepare_aliases = _module_aliases(tree, "prepare")
    calls_metric = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == HARNESS_METRIC and HARNESS_METRIC in from_prepare:
                calls_metric = True
            if isinstance(func, ast.Attribute) and func.attr == HARNESS_METRIC and _is_name(func.value,
                                                                                         prepare_aliases):
                calls_metric = True
            if isinstance(func, ast.Name) and func.id == "setattr" and node.args and _is_name(node.args[0],
                                                                                            prepare_aliases):
                problems.append(f"line {node.lineno}: setattr on the prepare module: the harness is read-only")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == HARNESS_METRIC:
            problems.append(f"line {node.lineno}: defines its own {HARNESS_METRIC}: only the harness's counts")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in (t for tgt in targets for t in ast.walk(tgt)):
                if isinstance(target, ast.Attribute) and _is_name(target.value, prepare_aliases):
                    problems.append(f"line {node.lineno}: assigns prepare.{target.attr}: the harness is read-only")
                elif isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store) and target.id in from_prepare:
                    problems.append(f"line {node.lineno}: rebinds {target.id}, which the harness fixes "
                                    "(changing it here changes nothing the harness counts)")
    if not calls_metric:
        problems.append(f"never calls {HARNESS_METRIC} from prepare: without it the run has no val_bpb (invalid)")
    allowed = ALWAYS_IMPORTABLE | _top_modules(parent_source)
    for name, line in _unguarded_imports(tree):
        if name not in allowed and name not in sys.stdlib_module_names:
            problems.append(f"line {line}: imports {name}, a package the trainer may not have (no new packages; "
                            "guard optional imports with try/except ImportError)")
    return problems


def _names_from_prepare(tree: ast.Module) -> set[str]:
    return {(a.asname or a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "prepare"
            for a in n.names}  # fmt: skip


def _module_aliases(tree: ast.Module, module: str) -> set[str]:
    return {(a.asname or a.name) for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
            if a.name == module}  # fmt: skip


def _is_name(node: ast.expr, names: set[str]) -> bool:
    return isinstance(node, ast.Name) and node.id in names


def _unguarded_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Top-level package names imported outside any ``try`` block, with their lines."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try | ast.TryStar):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _top_modules(source: str) -> set[str]:
    """Every top-level package ``source`` imports (guarded or not): what the parent already runs with."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names
