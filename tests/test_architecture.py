"""The package's shape, read from its source: the folders match docs/ARCHITECTURE.md, every import obeys the
folder that makes it (its `May import:` line), there are no cycles, the kernel's parts reach nothing else,
training is imported only by the CLI and the workflows, and the competition's column names live in one module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import steel_seg
from steel_seg import bundle
from steel_seg.competition import CLASS_ID, ENCODED_PIXELS, IMAGE_CLASS_ID, IMAGE_ID

PACKAGE = Path(steel_seg.__file__).parent
ROOT = PACKAGE.parents[1]
BASE = ("competition", "fileio", "progress")
# The top-level modules' rules (folders state theirs in their docstrings).
MODULE_RULES = {
    "competition": (),
    "fileio": (),
    "progress": (),
    "workers": (),
    "bundle": (*BASE, "formats", "models", "postprocess", "engine"),
    "kernel": (*BASE, "formats", "models", "postprocess", "engine"),
}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path) -> set[str]:
    """Every `steel_seg...` module or name a file imports, anywhere (function level, TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "steel_seg"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module and node.module.split(".")[0] == "steel_seg":
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def resolve(name: str, known: dict[str, Path]) -> str:
    """The module an import name refers to (`steel_seg.formats.rle.encode` -> `steel_seg.formats.rle`)."""
    while name not in known:
        name = name.rsplit(".", 1)[0]
    return name


def entry(module: str) -> str:
    """The top-level entry (folder or module) a dotted module belongs to; "" for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def allowed(entry_name: str) -> tuple[str, ...]:
    if entry_name in MODULE_RULES:
        return MODULE_RULES[entry_name]
    doc = ast.get_docstring(ast.parse((PACKAGE / entry_name / "__init__.py").read_text())) or ""
    match = re.search(r"^May import: (.+?)\.$", doc, re.M | re.S)
    assert match, f"{entry_name}/__init__.py: its docstring has no 'May import: ....' line"
    return tuple(name.strip() for name in match.group(1).replace("\n", " ").split(","))


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {resolve(i, known) for i in imports(path)} - {m} for m, path in known.items()}


def test_the_folders_are_the_architecture_document():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 16, entries
    tree = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("```")[1]
    listed = sorted(re.findall(r"^  ([a-z_]+(?:\.py|/))", tree, re.M))
    assert [e.rstrip("/") for e in listed] == entries


def test_every_import_goes_down_to_what_its_folder_may_import():
    wrong = []
    for module, targets in graph().items():
        own = entry(module)
        for target in targets:
            other = entry(target)
            if other not in ("", own) and other not in allowed(own):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_every_folder_states_only_entries_that_exist():
    folders = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    names = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()}
    for folder in folders:
        assert set(allowed(folder)) <= names, folder


def test_there_are_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_training_is_imported_by_the_cli_and_the_workflows_only():
    users = {entry(m) for m, targets in graph().items() for t in targets if entry(t) == "train" != entry(m)}
    assert users <= {"cli", "workflow"}


def test_the_kernel_parts_reach_nothing_outside_them():
    edges, shipped = graph(), {p.removesuffix(".py") for p in bundle.KERNEL_PARTS}
    start = [m for m in edges if entry(m) in shipped or m == "steel_seg"]
    seen, todo = set(start), list(start)
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert sorted(m for m in seen if entry(m) not in shipped and m != "steel_seg") == []


def test_the_column_names_are_written_in_competition_only():
    names = {IMAGE_ID, CLASS_ID, ENCODED_PIXELS, IMAGE_CLASS_ID}
    found = []
    for module, path in modules().items():
        if module == "steel_seg.competition":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert found == []
