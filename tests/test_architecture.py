"""The layout README.md "Layout" draws is the code's: every module listed once, in an
order where each imports only modules above it (lazy imports too), and short functions."""

import ast
import os
import re

import pytest

import readme_blocks as rb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "tfue_onnx")
README = os.path.join(ROOT, "README.md")
MAX_FUNCTION_LINES = 60  # def to last line, docstring included


def module_map() -> list:
    """The modules of the README's map, in order, as paths relative to tfue_onnx/."""
    text = rb.block(README, "tfue_onnx/", "text")
    return re.findall(r"^ {4}(\S+\.py)\s", text, re.M)


def package_modules() -> list:
    found = []
    for folder, _, files in os.walk(PKG):
        found += [os.path.relpath(os.path.join(folder, f), PKG).replace(os.sep, "/")
                  for f in files if f.endswith(".py")]
    return sorted(found)


def _module_of(path: str) -> str:
    """tfue_onnx-relative dotted name: graph/pad.py -> graph.pad, graph/__init__.py ->
    graph, __init__.py -> '' (the package)."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: str) -> set:
    """The package modules the file at ``path`` imports, anywhere in it (dotted names)."""
    name = _module_of(path)
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    package = [p for p in package if p]
    modules = {_module_of(p) for p in package_modules()}
    found = set()
    with open(os.path.join(PKG, path)) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            names = [".".join(target + [a.name]) for a in node.names]
            # `from . import graph` names a module; `from .model import X` the module itself.
            hits = [n for n in names if n in modules] or [".".join(target)]
            found.update(hits)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [node.module] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names]
            for m in mods:
                if m and (m == "tfue_onnx" or m.startswith("tfue_onnx.")):
                    found.add(m[len("tfue_onnx."):] if m != "tfue_onnx" else "")
    found.discard(name)
    return found


def test_the_map_lists_every_module_once():
    listed = module_map()
    assert len(listed) == len(set(listed)), [m for m in listed if listed.count(m) > 1]
    assert sorted(listed) == package_modules()


def test_no_module_imports_a_later_one():
    order = [_module_of(p) for p in module_map()]
    rank = {m: k for k, m in enumerate(order)}
    back = []
    for path in module_map():
        me = _module_of(path)
        for dep in imports_of(path):
            assert dep in rank, f"{path} imports {dep!r}, which the README map does not list"
            if rank[dep] >= rank[me]:
                back.append(f"{path} imports {dep or 'tfue_onnx'} (listed below it)")
    assert not back, "\n".join(back)


def test_the_import_check_sees_lazy_and_relative_imports(tmp_path):
    # The check must be able to fail: the parser finds an import inside a function, a
    # `from . import x` of a module and a `from ..x import y` in a subpackage.
    deps = imports_of("graph/blackbox.py")
    assert {"layout", "model", "graph.builder", "transforms"} <= deps
    assert "graph" in imports_of("verify.py")
    assert {"graph", "selection", "cache"} <= imports_of("runner.py")
    assert "session" in imports_of("axes.py")


@pytest.mark.parametrize("path", package_modules())
def test_functions_are_short(path):
    with open(os.path.join(PKG, path)) as f:
        tree = ast.parse(f.read())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 >= MAX_FUNCTION_LINES]
    assert not long, f"{path}: functions of {MAX_FUNCTION_LINES}+ lines: {long}"
