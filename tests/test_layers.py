"""The package's layers point one way (docs/architecture.md): no module imports from a layer above its own, at the top
of the file or inside a function."""

import ast
from pathlib import Path

import cxrlab

# Bottom first; a module may import from its own layer and the layers below.
LAYERS = [
    ("errors", "files", "layout", "limits", "console"),
    ("data", "models"),
    ("config",),
    ("core",),
    ("evaluation",),
    ("training",),
    ("export",),
    ("report",),
    ("api",),
    ("cli", "serve", "__main__"),
]
PACKAGE = Path(cxrlab.__file__).parent


def imports_of(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxrlab") and node.level == 0:
            found += [(node.module, node.lineno)] if node.module != "cxrlab" else [(f"cxrlab.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("cxrlab.")]
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_every_module_is_in_a_layer_and_imports_only_from_its_own_or_lower_layers():
    upward, unplaced = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("cxrlab", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        if module == "cxrlab":
            continue  # the package's lazy attributes (cxrlab.train, cxrlab.Config...) are its public face
        mine = layer(module)
        if mine is None:
            unplaced.append(module)
            continue
        for target, line in imports_of(path):
            theirs = layer(target)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} (line {line}) imports {target}: {LAYERS[theirs]} is above {LAYERS[mine]}")
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_the_layering_test_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cxrlab.training.loop import train\n")
    assert imports_of(module) == [("cxrlab.training.loop", 2)] and layer("cxrlab.training.loop") > layer("cxrlab.evaluation.ood")


def test_the_command_line_and_the_service_reach_the_package_only_through_the_api():
    """cli/ and serve/ parse, call the API and answer: besides the API they may read the options schema (config), the
    error types and the input limits (their flags and bounds are built from them); the CLI starts the server."""
    allowed = ("cxrlab.__version__", "cxrlab.api", "cxrlab.config", "cxrlab.errors", "cxrlab.limits")
    front = {"cli": (*allowed, "cxrlab.cli", "cxrlab.serve"), "serve": (*allowed, "cxrlab.serve")}
    modules = {name: sorted((PACKAGE / name).glob("*.py")) for name in front}
    found = [
        (path.name, target, line)
        for name, paths in modules.items()
        for path in paths
        for target, line in imports_of(path)
        if not target.startswith(front[name])
    ]
    assert len(modules["cli"]) == 4 and len(modules["serve"]) == 4 and found == [], f"past the API: {found}"
