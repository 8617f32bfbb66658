"""The package layering: every module imports only its own layer and the layers below it.

Imports are read from the source (ast), those inside functions included, so a lazy import
cannot hide a cycle. The one exception is the speed plug-in: `unimm.fast` may be imported
from `model` (and anything above it) inside a function, the documented seam through which
the plain model finds its compiled steps and kernels when the package is there.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unimm"

# lowest first; a module may import from its own rank and below
LAYERS: list[tuple[str, ...]] = [
    ("utils",),
    ("data", "model", "tokenizers"),     # worlds; the plain network; tokenizers (no training)
    ("fast",),                           # speed plug-ins (compiled steps, kernels, caches)
    ("paradigms",),
    ("runs",),                           # run folders: config, weights, tokenizers
    ("pipeline",),                       # the one Python API
    ("eval",),                           # evaluate a Pipeline
    ("train",),                          # the trainer, tokenizer training, the encoder
    ("interop", "demo", "serve", "bench", "cli", "__init__", "__main__"),   # adapters
]
RANK = {name: r for r, names in enumerate(LAYERS) for name in names}
# (importer's top-level name, imported top-level name): allowed inside functions only
PLUG_INS = {("model", "fast")}


def _part(module: str) -> str:
    """unimm.data.splits -> data; unimm -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(absolute module imported, line, inside a function) for every unimm import of a file."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            lazy = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1])
                    names = ([f"{base}.{child.module}"] if child.module
                             else [f"{base}.{a.name}" for a in child.names])   # from . import x
                else:
                    names = [child.module or ""]
            out.extend((n, child.lineno, in_function) for n in names
                       if n == "unimm" or n.startswith("unimm."))
            visit(child, lazy)

    visit(tree, False)
    return out


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def violations(root: Path = SRC) -> list[str]:
    bad = []
    for path, module in _modules(root):
        me = "__main__" if module == "unimm.__main__" else _part(module)
        if me not in RANK:
            bad.append(f"{module}: package {me!r} has no layer in tests/test_layers.py")
            continue
        for target, line, lazy in imports(path, module):
            other = _part(target)
            if other == me:
                continue
            if other not in RANK:
                bad.append(f"{module}:{line} imports {target}, which has no layer")
            elif RANK[other] > RANK[me] and not (lazy and any(
                    RANK[me] >= RANK[a] and other == b for a, b in PLUG_INS)):
                bad.append(f"{module}:{line} imports {target} ({other} is above {me})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = violations()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import digits\nfrom ..pipeline import Pipeline\n"
                   "def f():\n    from ...unimm import x\n    import unimm.train.trainer\n")
    got = imports(src, "unimm.data.m")
    assert ("unimm.data.digits", 1, False) in got
    assert ("unimm.pipeline", 2, False) in got
    assert ("unimm.train.trainer", 5, True) in got


@pytest.mark.parametrize("lazy", [False, True])
def test_the_fast_plug_in_is_the_one_exception(tmp_path, lazy):
    """model may import unimm.fast inside a function only; paradigms never import train."""
    body = ("def seam():\n    from unimm.fast import decode\n" if lazy
            else "from unimm.fast import decode\n")
    fake = tmp_path / "unimm"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "x.py").write_text(body)
    (fake / "paradigms").mkdir()
    (fake / "paradigms" / "y.py").write_text("def f():\n    from ..train import trainer\n")
    bad = violations(fake)
    assert any("unimm.paradigms.y" in b and "train" in b for b in bad)
    assert any("unimm.model.x" in b for b in bad) is not lazy
