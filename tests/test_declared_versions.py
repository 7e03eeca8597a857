"""The versions setup.py declares are the ones the code needs.

Each floor is derived here from the code itself (an API or syntax it uses), so a
later change that raises a floor without declaring it fails this test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "face_segmentation_pytorch"


def _setup_kwargs() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {
        kw.arg: ast.literal_eval(kw.value)
        for kw in call.keywords
        if kw.arg in ("python_requires", "install_requires", "extras_require")
    }


def _floor(spec: str) -> tuple[int, ...]:
    m = re.search(r">=\s*([0-9.]+)", spec)
    assert m, f"no >= floor in {spec!r}"
    return tuple(int(x) for x in m.group(1).split("."))


def _torch_floor(requirements: list[str]) -> tuple[int, ...]:
    return _floor(next(r for r in requirements if re.match(r"torch\b", r)))


_TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "tuple", "list", "dict", "Path"}


def _is_type_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in _TYPE_NAMES
    if isinstance(node, ast.Subscript):
        return _is_type_expr(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_expr(node.left) and _is_type_expr(node.right)
    return False


def _runtime_type_unions() -> list[str]:
    """``A | B`` between type expressions evaluated at run time: assigned or passed,
    not in annotations (which ``from __future__ import annotations`` leaves as text)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            values = [node.value] if isinstance(node, ast.Assign) else node.args if isinstance(node, ast.Call) else []
            found += [
                f"{path.relative_to(ROOT)}:{v.lineno}"
                for v in values
                if isinstance(v, ast.BinOp) and isinstance(v.op, ast.BitOr) and _is_type_expr(v)
            ]
    return found


def test_python_floor_covers_the_syntax_used():
    unions = _runtime_type_unions()
    assert unions, "the detector finds preprocess.py's Size = int | tuple[int, int]"
    floor = _floor(_setup_kwargs()["python_requires"])
    if unions:  # PEP 604 unions evaluated at import need Python 3.10
        assert floor >= (3, 10), f"{unions[0]} needs Python 3.10, setup.py says {floor}"


def test_torch_floor_covers_the_apis_used():
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    kwargs = _setup_kwargs()
    floor = _torch_floor(kwargs["install_requires"])
    if re.search(r"is_autocast_enabled\(\s*[a-z_.]+\s*\)", source):  # the device_type argument: torch 2.4
        assert floor >= (2, 4), f"torch.is_autocast_enabled(device_type) needs torch 2.4, setup.py says {floor}"
    if "assign=True" in source:
        assert floor >= (2, 1)
    if "dynamo=True" in source:  # the torch.export-based ONNX exporter: torch 2.6
        assert _torch_floor(kwargs["extras_require"]["onnx"]) >= (2, 6)


def test_readme_states_the_same_floors_and_the_tested_versions():
    import sys

    import torch

    readme = (ROOT / "README.md").read_text()
    kwargs = _setup_kwargs()
    py = ".".join(map(str, _floor(kwargs["python_requires"])))
    tv = ".".join(map(str, _torch_floor(kwargs["install_requires"])))
    assert f"Python {py}+" in readme and f"torch {tv}+" in readme
    assert "torch 2.6+" in readme
    # The versions the suite runs on are named (CI installs requirements-cpu.txt's pin).
    pinned = re.search(r"^torch==([0-9.]+)", (ROOT / "requirements-cpu.txt").read_text(), re.M).group(1)
    assert f"torch {pinned}" in readme
    if torch.__version__.split("+")[0] == pinned:
        assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in readme
