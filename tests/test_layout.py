"""The house's layout (README, "Layout"): every module of worker/ sits in an agreed place, and
imports run downward, from the programs to the ground, but for the exceptions named below.

Read from the source with ast (both `import` and `from` forms, relative ones too, and the
imports inside functions, which are most of the programs' imports): nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import PROJECT_ROOT

# The wings, bottom up: a module may import its own wing, the ground ("") and the wings
# before its own, never one after. Each wing's __init__.py says the same in words.
WINGS = ("", "folder", "rasa", "remote", "surface", "programs")
# The ground's modules: worker/ itself holds only these (a new module belongs in a wing).
GROUND = {"__init__", "__main__", "settings", "logs", "text", "runfiles"}
# The door: `python -m worker` starts every program, so it may import every wing.
DOOR = "worker.__main__"
# Arrows that run upward, each with its reason. An exception that is no longer needed must
# leave this table (test_every_named_exception_is_still_taken).
EXCEPTIONS = {
    ("worker.settings", "worker.folder.loadable"):
        "RASA_MIN_MODEL_VERSION is checked with the version gate's own parser",
}


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def wing_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else ""


def imported_modules(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of worker's own modules in one file, at any depth.
    `from worker.x import y` names y's module when y is one (a package's submodule)."""
    here = module_name(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, level - 1 packages up
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (root / Path(*candidate.split("."))).with_suffix(".py").is_file() \
                    or (root / Path(*candidate.split(".")) / "__init__.py").is_file()
                found.append((node.lineno, candidate if is_module else base))
    return [(line, name) for line, name in found if name.split(".")[0] == "worker"]


def misplaced(root: Path) -> list[str]:
    """Modules outside the agreed places: worker/<ground module>.py or worker/<wing>/x.py."""
    problems = []
    for path in sorted((root / "worker").rglob("*.py")):
        parts = path.relative_to(root / "worker").parts
        if len(parts) == 1 and path.stem not in GROUND:
            problems.append(f"worker/{parts[0]}: the ground holds only {sorted(GROUND)}; put "
                            f"it in a wing ({', '.join(WINGS[1:])})")
        elif len(parts) == 2 and parts[0] not in WINGS:
            problems.append(f"worker/{'/'.join(parts)}: {parts[0]}/ is not a wing "
                            f"({', '.join(WINGS[1:])}); add it to WINGS and the README")
        elif len(parts) > 2:
            problems.append(f"worker/{'/'.join(parts)}: wings are one level deep")
    return problems


def upward_imports(root: Path) -> list[tuple[str, str, str]]:
    """(where, importer, imported) for each import that runs upward, exceptions included."""
    found = []
    for path in sorted((root / "worker").rglob("*.py")):
        importer = module_name(root, path)
        if importer == DOOR:
            continue
        rank = WINGS.index(wing_of(importer))
        for line, imported in imported_modules(root, path):
            if WINGS.index(wing_of(imported)) > rank:
                where = f"{path.relative_to(root)}:{line}"
                found.append((where, importer, imported))
    return found


def forbidden(root: Path) -> list[str]:
    return [f"{where}: {importer} imports {imported}: the {wing_of(importer) or 'ground'} "
            f"must not import {wing_of(imported)} (only the wings before it)"
            for where, importer, imported in upward_imports(root)
            if (importer, imported) not in EXCEPTIONS]


def test_every_module_sits_in_an_agreed_place():
    assert misplaced(PROJECT_ROOT) == []


def test_imports_run_downward_but_for_the_named_exceptions():
    assert forbidden(PROJECT_ROOT) == []


def test_every_named_exception_is_still_taken():
    taken = {(importer, imported) for _, importer, imported in upward_imports(PROJECT_ROOT)}
    assert set(EXCEPTIONS) - taken == set(), "gone: remove them from EXCEPTIONS and the README"


def test_each_package_says_what_it_owns_and_imports_nothing():
    """The docstring names the wings it must never import (the table above, in words), and
    holds no code: importing a program must not pull a wing's modules through an
    __init__.py (memory, issue 20)."""
    for rank, wing in enumerate(WINGS):
        init = PROJECT_ROOT / "worker" / wing / "__init__.py"
        tree = ast.parse(init.read_text())
        docstring = ast.get_docstring(tree) or ""
        if wing == "":
            assert "imports no wing" in docstring, init
        elif rank < len(WINGS) - 1:
            never = docstring[docstring.find("never"):] if "never" in docstring else ""
            assert all(f"worker.{later}" in never for later in WINGS[rank + 1:]), \
                f"{init}: say that it never imports {', '.join(WINGS[rank + 1:])}"
        assert len(tree.body) == 1, f"{init}: a docstring only, no code and no import"


def test_the_check_finds_a_forbidden_import_in_any_form(tmp_path):
    """The checker on a small tree of its own: the folder's rules reaching up to the programs
    (inside a function, relative, `import`, `from`), a misplaced module, and one allowed."""
    for package in ("worker", "worker/folder", "worker/programs", "worker/odd"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text('"""x"""\n')
    (tmp_path / "worker" / "settings.py").write_text("")
    (tmp_path / "worker" / "stray.py").write_text("")
    (tmp_path / "worker" / "odd" / "thing.py").write_text("")
    (tmp_path / "worker" / "programs" / "rotator.py").write_text(
        "from worker.folder import files\n")  # downward: allowed
    (tmp_path / "worker" / "folder" / "files.py").write_text(
        "import os\n"
        "from worker import settings\n"  # the ground: allowed
        "def later():\n"
        "    from worker.programs import rotator\n"
        "    import worker.programs.rotator\n"
        "    from ..programs.rotator import run\n")
    assert forbidden(tmp_path) == [
        f"worker/folder/files.py:{line}: worker.folder.files imports worker.programs.rotator: "
        "the folder must not import programs (only the wings before it)" for line in (4, 5, 6)]
    assert [problem.split(":")[0] for problem in misplaced(tmp_path)] == [
        "worker/odd/__init__.py", "worker/odd/thing.py", "worker/stray.py"]
