"""The layering of README "Architecture": no module imports a layer above its own, no circles.

Every import counts, also those inside functions (they are how the command line stays light,
not a licence to reach upwards). A new module must be placed in a layer below before this
passes; `ppchat` modules outside the listed ones are an error, so the decision is explicit.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top first. A module may import modules of its own layer and of every layer below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("command line", ("ppchat.cli", "ppchat.__main__", "ppchat.commands")),
    ("console", ("ppchat.tui",)),
    ("network", ("ppchat.net",)),
    ("controller", ("ppchat.conversation", "ppchat.respond", "ppchat.served", "ppchat.start_lines")),
    ("sessions", ("ppchat.sessions",)),
    ("asr", ("ppchat.asr",)),
    ("engine", ("ppchat.engine",)),
    ("models", ("ppchat.models",)),
    (
        "base",
        (
            "ppchat", "ppchat.errors", "ppchat.atomic", "ppchat.paths", "ppchat.logfile", "ppchat.constants", "ppchat.sampling",
            "ppchat.validate",
        ),
    ),
]


def package_dirs() -> dict[str, Path]:
    """pyproject's `package-dir`: package name → folder (a regex: tomllib is Python ≥ 3.11)."""
    text = (REPO / "pyproject.toml").read_text()
    table = re.search(r"^package-dir\s*=\s*\{(.*)\}\s*$", text, re.M)
    assert table, "pyproject.toml has no one-line [tool.setuptools] package-dir table"
    return {pkg: REPO / folder for pkg, folder in re.findall(r'"([\w.]+)"\s*=\s*"([\w./-]+)"', table.group(1))}


def modules() -> dict[str, Path]:
    """Every module of the installed `ppchat`, by its import name."""
    found: dict[str, Path] = {}
    roots = package_dirs()
    for pkg, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((pkg, *(p for p in parts if p != "__init__")))
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The `ppchat` modules that module `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, just mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import ppchat.engine.events.x` → the module
                target = target.rpartition(".")[0]
            if target.startswith("ppchat") and target:
                out.add(target)
    out.discard(name)
    return out


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "ppchat"  # the package itself: __version__, not everything under it
            hit = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


KNOWN = modules()
GRAPH = {name: imports(name, path, KNOWN) for name, path in KNOWN.items()}


def test_the_scan_sees_the_whole_package():
    # Guards the scan itself: a broken mapping would make the checks below pass on nothing.
    assert {"ppchat.cli", "ppchat.engine.runtime", "ppchat.models.lm", "ppchat.sessions.recorder", "ppchat.tui.app"} <= set(KNOWN)
    assert "ppchat.engine.events" in GRAPH["ppchat.engine.runtime"]


@pytest.mark.parametrize("module", sorted(KNOWN))
def test_every_module_has_a_layer(module):
    assert layer_of(module) is not None, f"{module} is in no layer: add it to LAYERS here and to the README's architecture section"


def test_no_upward_imports():
    upward = []
    for module, targets in sorted(GRAPH.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs < mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports into a higher layer:\n" + "\n".join(upward)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; the components with more than one module are the circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_circles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    circles = strongly_connected(GRAPH)
    assert not circles, "modules that import each other (directly or through others):\n" + "\n".join(" ↔ ".join(c) for c in circles)


def test_the_checks_catch_an_upward_import(tmp_path):
    # An engine module that names the recorder is exactly what the layering forbids.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ppchat.sessions.recorder import Recorder\n")
    targets = imports("ppchat.engine.probe", probe, KNOWN)
    assert targets == {"ppchat.sessions.recorder"}
    assert layer_of("ppchat.sessions.recorder") < layer_of("ppchat.engine.probe")
