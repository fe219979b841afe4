"""The layers of the package: every import points down (or sideways), never up; the UI never imports the API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "emoserve"

# Lowest first: a module may import its own layer and those below. Names are the first part under emoserve.
LAYERS = [
    # "": the package's __init__; wire: the bodies on the wire; egress: the address policy of requests to URLs
    # that callers choose (job callbacks, chat audio)
    {"", "errors", "labels", "files", "auth", "wire", "egress"},
    {"model", "config", "testing", "logs", "throttle"},  # config reads model constants; logs, throttle read config
    {"backends"},  # who runs the forward pass: torch, or the exported graph in onnxruntime / openvino
    {"audio"},
    {"inference"},
    {"timeline"},
    {"jobs", "webhooks"},
    {"runtime", "metrics"},  # the composition root, and the metrics it feeds
    {"api", "ui", "client"},  # siblings: the API mounts the UI, the UI never imports the API; the client: below
    {"cli", "__main__", "integrations", "scale"},  # scale: the CLI's corpus command on Ray (and later Serve)
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}

# The client and the integrations stand beside the server's stack (their layer says who may import them);
# what they may import, by dotted prefix:
FOUNDATION = ("errors", "labels", "files", "config", "egress", "")
CLIENT = (*FOUNDATION, "wire", "model.config", "inference.results", "client")
CLIENT_LAZY = ("audio", "inference")  # inside functions: `LocalClient` runs a local model; preconvert decodes
INTEGRATIONS = (*FOUNDATION, "client", "integrations")

# Upward imports inside a function that are the library's facade, each with its reason.
FACADES = {
    ("inference.emotion_model", "timeline.longform"): "EmotionModel.analyze_long: the library's call for long audio",
    ("model.export", "inference.emotion_model"): "a type annotation only (TYPE_CHECKING): export takes a loaded model",
    ("backends.cache", "inference.emotion_model"): "a type annotation only (TYPE_CHECKING): the cache exports a "
                                                   "loaded model",
}


def module_name(path: Path) -> str:
    """`emoserve.x.y` → `x.y` ("" for the package itself)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(the emoserve module imported, relative to the package; whether lazy; line) of each import.

    Lazy: inside a function, or under `if TYPE_CHECKING:` (not run when the module is imported)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside_function = set()
    for node in ast.walk(tree):
        type_checking = isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or type_checking:
            inside_function.update(id(child) for child in ast.walk(node) if child is not node)
    found = {}
    for node in ast.walk(tree):
        lazy = id(node) in inside_function
        if isinstance(node, ast.Import):
            found.update(dict.fromkeys((alias.name.removeprefix("emoserve").lstrip("."), lazy, node.lineno)
                                       for alias in node.names if alias.name.split(".")[0] == "emoserve"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module.split(".")[0] == "emoserve":
                target = node.module.removeprefix("emoserve").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import webhooks` imports the module emoserve.webhooks
                submodule = f"{target}.{alias.name}".lstrip(".")
                is_module = (PACKAGE / submodule.replace(".", "/")).with_suffix(".py").exists() or \
                    (PACKAGE / submodule.replace(".", "/")).is_dir()
                found[(submodule if is_module else target, lazy, node.lineno)] = None
    return list(found)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}.") or p == "" and name == "" for p in prefixes)


def violations() -> list[str]:
    found = []
    for path in sources():
        importer = module_name(path)
        for target, lazy, line in imports(path):
            where = f"{path.relative_to(SRC)}:{line} imports emoserve.{target}"
            if top(importer) == "client":
                if not (within(target, CLIENT) or lazy and within(target, CLIENT_LAZY)):
                    found.append(f"{where}: the client imports only {', '.join(p for p in CLIENT if p)}")
            elif top(importer) == "integrations":
                if not within(target, INTEGRATIONS):
                    found.append(f"{where}: integrations speak to the server through the client")
            elif top(importer) == "ui" and top(target) == "api":
                found.append(f"{where}: the UI runs on the runtime, never on the API")
            elif LAYER[top(target)] > LAYER[top(importer)] and not (lazy and (importer, target) in FACADES):
                found.append(f"{where}: {top(target)} is above {top(importer) or 'the package'}")
    return found


def test_every_module_has_a_layer():
    names = {top(module_name(path)) for path in sources()}
    assert names - set(LAYER) == set()


def test_no_module_imports_a_layer_above_its_own():
    assert violations() == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "ui").glob("*.py")), ids=lambda p: p.name)
def test_the_ui_never_imports_the_api(path):
    assert [target for target, _, _ in imports(path) if top(target) == "api"] == []


def test_the_rules_catch_an_upward_import(tmp_path, monkeypatch):
    """The walk sees relative, absolute and function-level imports (a check that cannot fail checks nothing)."""
    fake = tmp_path / "emoserve"
    (fake / "ui").mkdir(parents=True)
    (fake / "api").mkdir()
    (fake / "api" / "errors.py").write_text("")
    (fake / "ui" / "blocks.py").write_text("from ..api.errors import x\n\ndef f():\n    import emoserve.api\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert imports(fake / "ui" / "blocks.py") == [("api.errors", False, 1), ("api", True, 4)]
