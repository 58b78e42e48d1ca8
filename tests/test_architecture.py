"""The package dependency rules of docs/ARCHITECTURE.md, checked on the source.

Every ``.py`` file under ``vfl/``, ``horizontal/``, ``unlearning/`` and ``scenarios/`` is
parsed with :mod:`ast`; every import statement counts, at module level or inside a function
(or under ``if TYPE_CHECKING:``), ``import X`` and ``from X import Y`` alike, relative imports
resolved against the file's package. Each module belongs to one layer (``LAYERS``) and may
import only the layers ``ALLOWED`` lists for it. Dynamic imports by name (``importlib``, as
``unlearning.contract`` loads the adapter a run manifest names) are not imports here: that is
the point of naming adapters in the manifest.

The README's library example is also run here, as a script, exactly as it is printed.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("vfl", "horizontal", "unlearning", "scenarios")
# Top-level names that are this project's (anything else is a third-party or stdlib module).
PROJECT_TOP = (*SOURCE_PACKAGES, "tests", "benchmarks")

# Layer of a module: the longest prefix listed here. "vfl" is the top-level package itself
# (vfl/__init__.py, the public API); a new module under vfl/ that fits no layer fails
# test_every_module_has_a_layer until it is given one here and in docs/ARCHITECTURE.md.
LAYERS = {
    "vfl": "vfl (public API)",
    "vfl.core": "vfl.core",
    "vfl.crypto": "vfl.crypto",
    "vfl.psi": "vfl.psi",
    "vfl.datasets": "vfl.datasets",
    "vfl.vertical": "vfl.vertical",
    "vfl.attacks": "vfl.attacks",
    "vfl.deploy": "vfl.deploy",
    "vfl.survival": "vfl.survival",
    "horizontal": "horizontal",
    "unlearning": "unlearning",
    "scenarios": "scenarios",
    "tests": "tests",
    "benchmarks": "benchmarks",
}

_ENGINES = {"vfl.core", "vfl.crypto", "vfl.psi", "vfl.datasets"}
# What each layer may import (its own layer is always allowed).
ALLOWED = {
    "vfl.core": set(),
    "vfl.crypto": {"vfl.core"},
    "vfl.psi": {"vfl.core"},
    "vfl.datasets": {"vfl.core"},
    "vfl.vertical": set(_ENGINES),
    "horizontal": set(_ENGINES),
    # The leakage audit recognises what a vertical party received: ciphertexts
    # (vfl.crypto.EncryptedArray) and dual coefficients (vfl.vertical.source_layer).
    "vfl.attacks": {"vfl.core", "vfl.crypto", "vfl.vertical"},
    "unlearning": {"vfl.core"},
    # The Flower deployment is engine glue: it reaches the vertical and horizontal code only
    # through the jobs and party factories it names (vfl.deploy.serverapp.JOBS, node.FACTORIES).
    "vfl.deploy": {"vfl.core"},
    # The vertical Cox model runs on the vertical protocol's building blocks (the primal
    # source layer, the hospital's key ring, the parties' alignment and sender checks).
    "vfl.survival": {*_ENGINES, "vfl.vertical"},
    # The public API re-exports the vfl subpackages; never horizontal, unlearning, scenarios.
    "vfl (public API)": {*_ENGINES, "vfl.vertical", "vfl.attacks", "vfl.survival"},
    "scenarios": {
        "vfl (public API)", *_ENGINES, "vfl.vertical", "vfl.attacks", "vfl.deploy", "horizontal",
        "unlearning", "vfl.survival",
    },
}


@dataclass(frozen=True)
class Import:
    file: str  # path relative to the repository root
    line: int
    module: str  # the imported module, resolved and absolute
    names: tuple[str, ...]  # for "from X import a, b": ("a", "b"); else ()


def layer_of(module: str) -> str | None:
    """The layer of ``module`` (or of a name in it): its longest prefix in ``LAYERS``; the
    top-level ``vfl`` matches only itself, so ``vfl.newthing`` has no layer."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        name = LAYERS.get(prefix)
        if name is not None:
            return None if prefix == "vfl" and n < len(parts) else name
    return None


def source_files(root: Path = ROOT) -> list[Path]:
    out = []
    for pkg in SOURCE_PACKAGES:
        out += [p for p in sorted((root / pkg).rglob("*.py")) if "__pycache__" not in p.parts]
    return out


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str, root: Path = ROOT) -> bool:
    """Whether ``dotted`` is a module or package of this repository."""
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import in ``path`` that names a module of this project, resolved."""
    rel = str(path.relative_to(root))
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=rel)
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(rel, node.lineno, alias.name, ()))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                up = node.level - 1
                if up >= len(parts):
                    raise AssertionError(f"{rel}:{node.lineno}: relative import beyond the top")
                base = ".".join(parts[: len(parts) - up] if up else parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            # "from pkg import sub" imports the module pkg.sub when there is one.
            subs = [n for n in names if n != "*" and _is_module(f"{target}.{n}", root)]
            for n in subs:
                out.append(Import(rel, node.lineno, f"{target}.{n}", (n,)))
            rest = tuple(n for n in names if n not in subs)
            if rest or not names:
                out.append(Import(rel, node.lineno, target, rest))
    return [i for i in out if i.module.split(".")[0] in PROJECT_TOP]


@pytest.fixture(scope="module")
def all_imports() -> dict[str, list[Import]]:
    return {module_name(p): imports_of(p) for p in source_files()}


def test_import_parser_sees_every_kind_of_import(tmp_path):
    """The parser itself: function-level, relative, ``from pkg import module`` and
    ``import a.b`` imports are all found and resolved."""
    files = {
        "vfl/__init__.py": "",
        "vfl/core/__init__.py": "",
        "vfl/core/b.py": "",
        "vfl/vertical/__init__.py": "",
        "vfl/vertical/trainer.py": "",
        "vfl/core/a.py": (
            "import numpy\n"
            "from . import b\n"
            "from .b import thing\n"
            "import vfl.vertical.trainer as t\n"
            "def f():\n"
            "    from ..vertical import trainer\n"
            "    from vfl import vertical\n"
            "    if True:\n"
            "        import horizontal.server\n"
        ),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = [(i.line, i.module) for i in imports_of(tmp_path / "vfl/core/a.py", tmp_path)]
    assert found == [
        (2, "vfl.core.b"), (3, "vfl.core.b"), (4, "vfl.vertical.trainer"),
        (6, "vfl.vertical.trainer"), (7, "vfl.vertical"), (9, "horizontal.server"),
    ]
    assert [layer_of(m) for _, m in found] == [
        "vfl.core", "vfl.core", "vfl.vertical", "vfl.vertical", "vfl.vertical", "horizontal",
    ]
    assert layer_of("vfl") == "vfl (public API)" and layer_of("vfl.newthing") is None


def test_every_module_has_a_layer():
    missing = [str(p.relative_to(ROOT)) for p in source_files() if layer_of(module_name(p)) is None]
    assert not missing, (
        "modules in no layer (add them to LAYERS here and to docs/ARCHITECTURE.md): "
        + ", ".join(missing)
    )


def _violations(all_imports, layers: set[str]) -> list[str]:
    bad = []
    for mod, imps in all_imports.items():
        src = layer_of(mod)
        if src not in layers:
            continue
        allowed = ALLOWED[src] | {src}
        for imp in imps:
            dst = layer_of(imp.module)
            if dst not in allowed:
                bad.append(f"{imp.file}:{imp.line} -> {imp.module} ({src} may not import {dst})")
    return bad


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(all_imports, layer):
    bad = _violations(all_imports, {layer})
    assert not bad, f"{layer} imports outside {sorted(ALLOWED[layer])}:\n" + "\n".join(bad)


def test_nothing_imports_scenarios(all_imports):
    bad = [
        f"{imp.file}:{imp.line} -> {imp.module}"
        for mod, imps in all_imports.items()
        if layer_of(mod) != "scenarios"
        for imp in imps
        if layer_of(imp.module) == "scenarios"
    ]
    assert not bad, "only scenarios (and tests, benchmarks) import scenarios:\n" + "\n".join(bad)


def test_no_private_names_across_layers(all_imports):
    """``from X import _name`` only within one layer: no package reaches another's privates."""
    bad = [
        f"{imp.file}:{imp.line} -> {imp.module}.{n}"
        for mod, imps in all_imports.items()
        for imp in imps
        if layer_of(imp.module) != layer_of(mod)
        for n in imp.names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not bad, "private names imported from another layer:\n" + "\n".join(bad)


def _class_bases(path: Path, root: Path = ROOT):
    """(class name, line, base expression as dotted text, resolved module or None)."""
    tree = ast.parse(path.read_text())
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    bound: dict[str, str] = {}  # local name -> "module" or "module.attr"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    bound[a.asname] = a.name
                else:
                    bound[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                up = node.level - 1
                base = ".".join(parts[: len(parts) - up] if up else parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for a in node.names:
                bound[a.asname or a.name] = f"{target}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for b in node.bases:
            text = ast.unparse(b)
            head, _, tail = text.partition(".")
            resolved = bound.get(head)
            if resolved and tail:
                resolved = f"{resolved}.{tail}"
            yield node.name, node.lineno, text, resolved


TRAINER_LAYERS = {"vfl.vertical", "horizontal", "vfl (public API)"}


def trainer_subclasses(root: Path = ROOT) -> list[str]:
    """Classes in ``unlearning`` whose base is a class of a trainer layer."""
    bad = []
    for path in source_files(root):
        if layer_of(module_name(path, root)) != "unlearning":
            continue
        for cls, line, text, resolved in _class_bases(path, root):
            if not resolved:
                continue
            # "vfl.Name" that is no module is a name of the public API (vfl/__init__.py)
            layer = layer_of(resolved) or (
                LAYERS["vfl"] if resolved.split(".")[0] == "vfl" else None
            )
            if layer in TRAINER_LAYERS:
                bad.append(f"{path.relative_to(root)}:{line} -> class {cls}({text}) = {resolved}")
    return bad


def test_subclass_check_sees_every_spelling(tmp_path):
    (tmp_path / "unlearning").mkdir()
    (tmp_path / "unlearning" / "x.py").write_text(
        "import vfl.vertical.trainer\n"
        "from vfl.vertical import trainer as tr\n"
        "from horizontal.trainer import FederatedTrainer as FT\n"
        "from unlearning.store import CheckpointStore\n"
        "from vfl import SplitTrainer as ST\n"
        "class A(vfl.vertical.trainer.SplitTrainer): pass\n"
        "class B(tr.SplitTrainer): pass\n"
        "class C(FT): pass\n"
        "class D(CheckpointStore): pass\n"
        "class E(ST): pass\n"
    )
    found = trainer_subclasses(tmp_path)
    assert [f.split(" -> class ")[1].split("(")[0] for f in found] == ["A", "B", "C", "E"]


def test_unlearning_subclasses_no_trainer_class():
    bad = trainer_subclasses()
    assert not bad, (
        "unlearning reaches trainers through vfl.core.rounds.TrainerAdapter, never by "
        "subclassing:\n" + "\n".join(bad)
    )


def test_import_unlearning_loads_no_jax():
    code = (
        "import sys, unlearning\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"`import unlearning` loaded: {out.stdout.strip()}"


# Built from parts so that this file does not match itself.
_FORBIDDEN = ("..", "/shared"), ("DESIGN", " section"), ("DESIGN", ".md")
_SKIP_DIRS = {
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "runs", "out", "build", "dist",
}


def _repo_text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [
            d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
        ]
        for f in filenames:
            p = Path(dirpath) / f
            try:
                yield p, p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary


def test_repository_explains_itself():
    """No file points outside the repository or to a design document it does not ship."""
    needles = ["".join(parts) for parts in _FORBIDDEN]
    bad = []
    for path, text in _repo_text_files():
        for n, line in enumerate(text.splitlines(), 1):
            for needle in needles:
                if needle in line:
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {needle!r}")
    assert not bad, "references to files outside the repository:\n" + "\n".join(bad)


def test_docs_link_only_to_files_in_the_repository():
    """Every relative markdown link in README.md and docs/ resolves to a file here."""
    bad = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(md.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", line):
                if re.match(r"[a-z]+://|mailto:", target):
                    continue
                resolved = (md.parent / target).resolve()
                if not resolved.is_relative_to(ROOT) or not resolved.exists():
                    bad.append(f"{md.relative_to(ROOT)}:{n} -> {target}")
    assert not bad, "broken or outside links:\n" + "\n".join(bad)


def documented_tree() -> list[str]:
    """The paths of the tree under '## Layout' in docs/ARCHITECTURE.md (two spaces a level,
    directories end with '/')."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```\n(.*?)```", section, flags=re.S)[0]
    stack: list[str] = []
    paths = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"odd indentation in the layout tree: {line!r}"
        name = line.split()[0]
        stack = stack[: indent // 2]
        paths.append("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return paths


def test_architecture_doc_lists_every_module():
    documented = documented_tree()
    missing_files = [p for p in documented if not (ROOT / p.rstrip("/")).exists()]
    listed = {p for p in documented if p.endswith(".py")}
    undocumented = [
        str(f.relative_to(ROOT)) for f in source_files()
        if f.name != "__init__.py" and str(f.relative_to(ROOT)) not in listed
    ]
    assert not missing_files and not undocumented, (
        "docs/ARCHITECTURE.md '## Layout' is out of date:\n"
        + "".join(f"  listed but missing: {p}\n" for p in missing_files)
        + "".join(f"  not listed: {p}\n" for p in undocumented)
    )


INSTALL = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'


def test_readme_commands_match_ci():
    """The README's first command installs on a bare machine; its test command is what
    .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert blocks and blocks[0].startswith(INSTALL), (
        f"the README's first command block must start with: {INSTALL}"
    )
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in ln]
    assert len(ci) == 1, ".ci/run runs pytest on one line"
    checks = ci[0].split('".[dev]"', 1)[1]  # what runs after the install
    assert any(ln.strip() == INSTALL + checks for b in blocks for ln in b.splitlines()), (
        f"the README's test command must be: {INSTALL + checks}"
    )


def readme_example() -> str:
    """The README's library example: the python block under '## Library use'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Library use", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the '## Library use' section holds exactly one python block"
    return blocks[0]


def test_readme_example_uses_only_the_public_api():
    tree = ast.parse(readme_example())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PROJECT_TOP and "." in node.module:
                bad.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in PROJECT_TOP and "." in a.name]
    assert not bad, "the README imports from vfl, horizontal, unlearning only:\n" + "\n".join(bad)


@pytest.mark.slow
def test_readme_example_runs(tmp_path):
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example())
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
