"""The layout cannot rot: each stage in dvc.yaml depends on exactly the segpipe code its script
imports, and the README's layout section names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from segpipe.imports import module_path, script_closure

from .helpers import REPO

PACKAGE = REPO / "src" / "segpipe"


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_script(stage: dict) -> Path:
    match = re.match(r"python (stages/\w+\.py)\b", stage["cmd"])
    assert match, f"not a stage script command: {stage['cmd']}"
    return REPO / match[1]


def code_deps(stage: dict) -> set[Path]:
    """The segpipe source files a stage's deps name, folders expanded to their modules."""
    files: set[Path] = set()
    for dep in stage["deps"]:
        path = REPO / dep
        if path == PACKAGE or PACKAGE in path.parents:
            files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


def relative(paths: set[Path]) -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in paths)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_exactly_the_code_it_imports(name):
    stage = stages()[name]
    script = stage_script(stage)
    assert str(script.relative_to(REPO)) in stage["deps"]
    assert "src/segpipe" not in stage["deps"], "the whole package: every edit reruns the stage"
    listed, imported = code_deps(stage), set(script_closure(script))
    assert not imported - listed, f"{name}: dvc.yaml misses {relative(imported - listed)}"
    assert not listed - imported, f"{name}: dvc.yaml lists unused {relative(listed - imported)}"


def test_every_code_dep_exists():
    for name, stage in stages().items():
        for dep in stage["deps"]:
            if dep.startswith("src/"):
                assert (REPO / dep).exists(), f"{name}: {dep} does not exist"


def test_script_closure_follows_the_script_imports(tmp_path):
    package = tmp_path / "segpipe"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/a.py", "b.py", "unused.py"):
        (package / name).write_text("")
    (package / "sub" / "a.py").write_text("from segpipe.b import x\n")
    (package / "b.py").write_text("x = 1\n")
    script = tmp_path / "stage.py"
    script.write_text("import os\nfrom segpipe.sub import a\n")
    closure = [p.relative_to(package).as_posix() for p in script_closure(script, package)]
    assert closure == ["__init__.py", "b.py", "sub/__init__.py", "sub/a.py"]


def readme_tree() -> set[str]:
    """The module paths the README's layout tree names, e.g. ``model/network.py``."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Layout") :]
    tree = section[section.index("```text") : section.index("```", section.index("```text") + 3)]
    named, folder = set(), ""
    for line in tree.splitlines():
        entry = line.split()[0] if line.strip() else ""
        depth = (len(line) - len(line.lstrip())) // 2
        if entry.endswith("/") and depth == 1:
            folder = entry
        elif entry.endswith(".py"):
            named.add(f"{folder if depth == 2 else ''}{entry}")
    return named


def test_readme_layout_names_every_module():
    modules = {
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
    }
    named = readme_tree()
    assert not modules - named, f"README's layout does not name {sorted(modules - named)}"
    assert not named - modules, f"README's layout names missing {sorted(named - modules)}"


# The package's layers, bottom to top. A module may import its own layer and those below it,
# never one above: the shared base, the data path, the network, then what uses them.
LAYERS = [
    {"errors", "constants", "config", "files", "progress", "resources", "imports", "cli"},
    {"runtime", "distributed", "metrics"},
    {"data"},
    {"model"},
    {"training"},
    {"inference"},
    {"evaluation"},
    {"reporting"},
    {"check", "commands"},
    {"api", "__main__"},
]


def layer(module: str) -> int:
    """The layer of ``segpipe.x...`` from its first name below the package."""
    name = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"segpipe.{name} is in no layer: add it to LAYERS")


def package_imports() -> list[tuple[str, str]]:
    """(importer, imported) for every segpipe import inside the package, read from source."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            edges += [(module, n) for n in names if n.startswith("segpipe.") and module_path(n)]
    return edges


def test_no_import_points_up():
    up = [
        f"{a} imports {b}" for a, b in package_imports() if a != "segpipe" and layer(b) > layer(a)
    ]
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_the_layer_rule_catches_an_upward_import():
    assert layer("segpipe.data.cache") < layer("segpipe.model.network")
    assert layer("segpipe.metrics") < layer("segpipe.training.engine")
    with pytest.raises(AssertionError, match="in no layer"):
        layer("segpipe.newpackage.module")
