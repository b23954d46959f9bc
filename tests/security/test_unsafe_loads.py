"""No code of the project deserialises a file in a way that can run code from it.

Checkpoints load as safetensors or with `torch.load(weights_only=True)`; pickles from outside go
through grove.data.safe_pickle's restricted unpickler. The scan covers every Python file of the
packages, scripts and benchmarks. Tests are left out: they unpickle only files they have just
written themselves (round trips) or that the official scripts wrote on this machine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("grove", "annotation", "evaluation", "orchestration", "scripts", "benchmarks")
RESTRICTED_UNPICKLER = REPO / "grove" / "data" / "safe_pickle.py"  # subclasses pickle.Unpickler with an allow-list

# module → functions that execute code from the file they read
UNSAFE = {
    "pickle": {"load", "loads", "Unpickler"},
    "_pickle": {"load", "loads", "Unpickler"},
    "cPickle": {"load", "loads", "Unpickler"},
    "dill": {"load", "loads"},
    "cloudpickle": {"load", "loads"},
    "joblib": {"load"},
    "shelve": {"open"},
    "marshal": {"load", "loads"},
    "pandas": {"read_pickle"},
    "yaml": {"unsafe_load", "full_load", "unsafe_load_all", "full_load_all"},
}


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → dotted origin, from the module's imports (`import torch as t`, `from pickle import load`)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _safe_loader(loader: ast.AST | None, aliases: dict[str, str]) -> bool:
    """yaml.SafeLoader / CSafeLoader, or `getattr(yaml, "CSafeLoader", yaml.SafeLoader)` (the C one when built)."""
    if loader is None:
        return False
    if isinstance(loader, ast.Call) and isinstance(loader.func, ast.Name) and loader.func.id == "getattr" and len(loader.args) == 3:
        name, default = loader.args[1], loader.args[2]
        return isinstance(name, ast.Constant) and str(name.value).endswith("SafeLoader") and _safe_loader(default, aliases)
    return (_dotted(loader, aliases) or "").endswith("SafeLoader")


def unsafe_calls(path: Path, root: Path = REPO) -> list[str]:
    """`file:line: call` (relative to `root`) for each call in the file that can execute code from what it reads."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Call, ast.ClassDef)):
            continue
        targets = [node.func] if isinstance(node, ast.Call) else node.bases
        for target in targets:
            name = _dotted(target, aliases)
            if name is None:
                continue
            module, _, function = name.rpartition(".")
            problem = None
            if isinstance(node, ast.Call) and name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
                problem = "torch.load without weights_only=True"
            elif isinstance(node, ast.Call) and name in ("numpy.load", "np.load") and _is_true(_keyword(node, "allow_pickle")):
                problem = "numpy.load with allow_pickle=True"
            elif isinstance(node, ast.Call) and name == "yaml.load":
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if not _safe_loader(loader, aliases):
                    problem = "yaml.load without a SafeLoader"
            elif function in UNSAFE.get(module, ()) and not (path == RESTRICTED_UNPICKLER and function == "Unpickler"):
                problem = f"{name}: runs code named by the data it reads"
            if problem:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {problem}")
    return found


def scanned_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py") if ".venv" not in p.parts)


def test_the_repository_has_no_unsafe_deserialisation():
    files = scanned_files()
    assert len(files) > 100  # the packages are there to be scanned
    problems = [problem for path in files for problem in unsafe_calls(path)]
    assert problems == []


@pytest.mark.parametrize("source, problem", [
    ("import torch\nstate = torch.load(path)\n", "torch.load without weights_only=True"),
    ("import torch as t\nstate = t.load(path, weights_only=False)\n", "torch.load without weights_only=True"),
    ("from torch import load\nstate = load(path, map_location='cpu')\n", "torch.load without weights_only=True"),
    ("import pickle\nrecords = pickle.load(handle)\n", "pickle.load: runs code"),
    ("from pickle import loads as l\nrecords = l(data)\n", "pickle.loads: runs code"),
    ("import pickle\nclass Mine(pickle.Unpickler):\n    pass\n", "pickle.Unpickler: runs code"),
    ("import numpy as np\narray = np.load(path, allow_pickle=True)\n", "numpy.load with allow_pickle=True"),
    ("import yaml\nparams = yaml.load(text)\n", "yaml.load without a SafeLoader"),
    ("import yaml\nparams = yaml.load(text, Loader=yaml.FullLoader)\n", "yaml.load without a SafeLoader"),
    ("import yaml\nparams = yaml.load(text, Loader=getattr(yaml, 'CLoader', yaml.Loader))\n", "yaml.load without a SafeLoader"),
    ("import pandas as pd\nframe = pd.read_pickle(path)\n", "pandas.read_pickle: runs code"),
])
def test_the_scan_finds_each_unsafe_load(tmp_path, source, problem):
    path = tmp_path / "module.py"
    path.write_text(source)
    found = unsafe_calls(path, tmp_path)
    assert len(found) == 1 and problem in found[0], found


@pytest.mark.parametrize("source", [
    "import torch\nstate = torch.load(path, map_location='cpu', weights_only=True, mmap=True)\n",
    "import numpy as np\narray = np.load(path)\n",
    "import yaml\nparams = yaml.load(text, Loader=yaml.SafeLoader)\nother = yaml.safe_load(text)\n",
    "import yaml\nparams = yaml.load(text, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))\n",
    "from safetensors.torch import load_file\nstate = load_file(path)\n",
])
def test_the_scan_accepts_safe_loads(tmp_path, source):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert unsafe_calls(path, tmp_path) == []
