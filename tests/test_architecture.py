"""The layering, written once: a module's layer comes from its package, imports only point down, no cycles.

`LAYERS` below is the one copy of the layer map; docs/architecture.md shows it by pointing here.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from mlgraph.core.drive import PROJECT_ROOT

# The four top-level import packages the wheel installs (tests/test_packaging.py checks the wheel).
PACKAGES = ("mlgraph", "pipeline_assets", "resources", "sensors")
LAYER_NAMES = ("core", "domain", "resources and plugins", "assets", "orchestration", "definitions", "entry points")

# package (or module) → layer; a module takes the layer of its longest listed prefix.
LAYERS = {
    "mlgraph": 0,  # the root package's __init__ imports nothing
    "mlgraph.core": 0,
    **dict.fromkeys(
        (
            "mlgraph.data",
            "mlgraph.preprocessing",
            "mlgraph.training",
            "mlgraph.deployment",
            "mlgraph.monitoring",
            "mlgraph.analysis",
            "mlgraph.external",
            "mlgraph.slurm",
            "mlgraph.ops",
            "mlgraph.trainer",
        ),
        1,
    ),
    "mlgraph.launcher": 2,
    "resources": 2,
    "pipeline_assets": 3,
    "pipeline_assets.jobs": 4,
    "pipeline_assets.automation": 4,
    "sensors": 4,
    "pipeline_assets.definitions": 5,
    "mlgraph.cli": 6,
    "mlgraph.serving": 6,
    "mlgraph.dashboard": 6,
}
# Inside the library, only Dagster plugins and the entry points that drive an instance may import Dagster.
DAGSTER_ALLOWED = ("mlgraph.launcher", "mlgraph.cli", "mlgraph.dashboard")
DAGSTER_PACKAGES = {"dagster", "dagster_mlflow", "dagster_duckdb", "dagster_postgres", "dagster_webserver"}
# The trainer-side kit runs on a GPU machine with only the drive mounted: it may import the core only.
TRAINER_MAY_IMPORT = ("mlgraph.core", "mlgraph.trainer")
# Modules allowed to run past this many lines only when their docstring says why.
MAX_LINES = 500  # ruff format spreads long calls one argument a line: 400 hand-wrapped lines became ~480
LONG_MODULE_MARK = "Why this module is long:"


def _owner(module: str) -> str | None:
    parts = module.split(".")
    while parts:
        if ".".join(parts) in LAYERS:
            return ".".join(parts)
        parts.pop()
    return None


def layer_of(module: str) -> int:
    owner = _owner(module)
    if owner is None:
        raise ValueError(f"{module}: no package of it is in the layer map (tests/test_architecture.py LAYERS)")
    if owner == "mlgraph" and module != "mlgraph":
        raise ValueError(f"{module}: a new subpackage of mlgraph needs a layer in LAYERS")
    return LAYERS[owner]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def _resolve(name: str) -> str | None:
    """The project module an import statement loads (longest known prefix), or None if external."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """Every project import in the file, lazy ones inside functions included: (line, module)."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            # `from pkg import submodule` loads the submodule; `from module import name` the module.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.append((node.lineno, target))
    return found


def _external_imports(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_project_module_has_a_layer():
    assert MODULES, "no project modules found"
    for module in MODULES:
        assert 0 <= layer_of(module) < len(LAYER_NAMES)


def test_a_module_outside_the_map_is_refused():
    with pytest.raises(ValueError, match="needs a layer"):
        layer_of("mlgraph.newthing.module")
    with pytest.raises(ValueError, match="no package of it"):
        layer_of("somewhere_else.module")


def test_imports_only_point_down():
    upward = []
    for module, path in MODULES.items():
        own = layer_of(module)
        for line, target in imports_of(path, module):
            if layer_of(target) > own:
                upward.append(
                    f"{path.relative_to(PROJECT_ROOT)}:{line}: {module} ({LAYER_NAMES[own]}) imports "
                    f"{target} ({LAYER_NAMES[layer_of(target)]})"
                )
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    graph = {module: {target for _, target in imports_of(path, module)} for module, path in MODULES.items()}
    cycles = import_cycles(graph)
    assert not cycles, "modules importing each other (lazy imports count):\n" + "\n".join(map(str, cycles))


def layer_table() -> str:
    """The layer map as the markdown table docs/architecture.md shows (rendered from LAYERS, not copied)."""
    rows = ["| layer | packages |", "|---|---|"]
    for layer in reversed(range(len(LAYER_NAMES))):
        packages = ", ".join(f"`{name}`" for name, at in LAYERS.items() if at == layer)
        rows.append(f"| {layer} {LAYER_NAMES[layer]} | {packages} |")
    return "\n".join(rows) + "\n"


def test_docs_show_the_layer_map_as_it_is():
    doc = (PROJECT_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert layer_table() in doc, "docs/architecture.md must show the layer map; paste:\n" + layer_table()


def test_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_package_inits_import_nothing_above_their_lowest_module():
    """Importing any module first runs its packages' `__init__`: an `__init__` that imports a higher
    layer (say, the definitions) makes every module below it import upward, and cycles follow."""
    offenders = []
    for package, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        members = [layer_of(m) for m in MODULES if m.startswith(package + ".")]
        lowest = min(members) if members else layer_of(package)
        offenders += [
            f"{path.relative_to(PROJECT_ROOT)}:{line} imports {target} ({LAYER_NAMES[layer_of(target)]})"
            for line, target in imports_of(path, package)
            if layer_of(target) > lowest
        ]
    assert not offenders, offenders


def test_library_imports_dagster_only_in_plugins_and_entry_points():
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for module, path in MODULES.items()
        if (layer_of(module) <= 1 or (module.startswith("mlgraph") and not module.startswith(DAGSTER_ALLOWED)))
        and DAGSTER_PACKAGES & _external_imports(path)
    ]
    assert not offenders, f"these modules must stay plain Python: {offenders}"


def test_dagster_packages_hold_only_dagster_wrappers():
    """pipeline_assets/, resources/ and sensors/ hold definitions: every module there imports Dagster."""
    plain = [
        str(path.relative_to(PROJECT_ROOT))
        for module, path in MODULES.items()
        if module.split(".")[0] in PACKAGES[1:]
        and path.name != "__init__.py"
        and not DAGSTER_PACKAGES & _external_imports(path)
    ]
    assert not plain, f"plain-Python modules belong in the mlgraph library, not the Dagster packages: {plain}"


def test_trainer_kit_imports_only_core():
    offenders = [
        f"{module} imports {target}"
        for module, path in MODULES.items()
        if module.startswith("mlgraph.trainer")
        for _, target in imports_of(path, module)
        if not target.startswith(TRAINER_MAY_IMPORT)
    ]
    assert not offenders, offenders


def test_nothing_imports_another_modules_private_names():
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and _resolve(node.module) not in (None, module):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{module}:{node.lineno} imports {private} from {node.module}")
    assert not offenders, offenders


def test_long_modules_say_why():
    long = []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_LINES and LONG_MODULE_MARK not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(PROJECT_ROOT)} ({lines} lines)")
    assert not long, f"modules over {MAX_LINES} lines without '{LONG_MODULE_MARK}' in their docstring: {long}"


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("mlgraph.core.drive", "core"),
        ("mlgraph.preprocessing.engine", "domain"),
        ("mlgraph.trainer.hook", "domain"),
        ("mlgraph.launcher.slurm_launcher", "resources and plugins"),
        ("resources.storage", "resources and plugins"),
        ("pipeline_assets.training.assets", "assets"),
        ("pipeline_assets.partitions", "assets"),
        ("sensors.signal_sensors", "orchestration"),
        ("pipeline_assets.definitions", "definitions"),
        ("mlgraph.cli.staging", "entry points"),
        ("mlgraph.serving.app", "entry points"),
    ],
)
def test_layer_map_places_known_modules(module, layer):
    assert LAYER_NAMES[layer_of(module)] == layer
