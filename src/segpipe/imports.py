"""Which segpipe source files a module runs: its import closure inside the package.

Read from the source with :mod:`ast` (nothing is imported), so imports inside functions count
too. The resume fingerprint hashes the train stage's closure, so a code change never mixes
epochs of old and new code.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "segpipe"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of ``segpipe.x.y`` below ``package_dir`` (a module or a package), or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """The segpipe modules ``path`` names in any import statement."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_closure(module: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The source files of ``module`` and of every segpipe module it imports, directly or
    through others, sorted. Parent packages' ``__init__.py`` files count (they run first)."""
    return _closure([module], package_dir)


def script_closure(script: Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The segpipe source files a script outside the package (a stage script) runs, sorted."""
    return _closure(sorted(_imported_modules(script, "__main__")), package_dir)


def _closure(modules: list[str], package_dir: Path) -> list[Path]:
    seen: dict[str, Path] = {}
    pending = list(modules)
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and every package above it
            prefix = ".".join(parts[:i])
            path = module_path(prefix, package_dir)
            if path is None or prefix in seen:
                continue
            seen[prefix] = path
            pending.extend(_imported_modules(path, prefix))
    return sorted(set(seen.values()))
