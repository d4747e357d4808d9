"""The layering, written once: imports only point down, and the lower layers stay free of Dagster.

Layers, bottom up (docs/architecture.md):

    0 core            shared contracts, plain Python (core/)
    1 domain          plain-Python domain modules (pipeline_assets/<group>/*.py but assets/checks; operations/)
    2 resources       Dagster-facing adapters and the run launcher (resources/, launcher/)
    3 assets          assets, checks and the partitions they share (pipeline_assets/<group>/{assets,checks,*_assets}.py)
    4 orchestration   jobs, sensors, automation (pipeline_assets/jobs.py, sensors/)
    5 definitions     the one `defs` (pipeline_assets/definitions.py)
    6 entry points    the CLI and what only it uses (mlgraph_cli/), the serving app (serving/), the dashboard (dashboard/)

The trainer-side hook (trainer_hook/) runs on GPU machines without Dagster: it may import only core.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from core.drive import PROJECT_ROOT

PACKAGES = (
    "core", "operations", "pipeline_assets", "resources", "launcher", "sensors", "trainer_hook", "mlgraph_cli", "serving",
    "dashboard",
)
LAYER_NAMES = ("core", "domain", "resources", "assets", "orchestration", "definitions", "entry points")
ASSET_MODULES = {"assets", "checks"}
ORCHESTRATION_MODULES = {"pipeline_assets.jobs", "pipeline_assets.automation"}
# Modules allowed to run past this many lines only when their docstring says why.
MAX_LINES = 400
LONG_MODULE_MARK = "Why this module is long:"


def layer_of(module: str) -> int:
    top, *rest = module.split(".")
    if top == "core":
        return 0
    if top in ("trainer_hook", "operations"):
        return 1
    if top in ("resources", "launcher"):
        return 2
    if top == "sensors":
        return 4
    if top in ("mlgraph_cli", "serving", "dashboard"):
        return 6
    if top == "pipeline_assets":
        if module == "pipeline_assets.definitions":
            return 5
        if module in ORCHESTRATION_MODULES:
            return 4
        if module == "pipeline_assets.partitions" or (rest and (rest[-1] in ASSET_MODULES or rest[-1].endswith("_assets"))):
            return 3
        return 1
    raise ValueError(f"{module}: not a project module")


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
            if target is not None:
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


def test_every_project_module_has_a_layer():
    assert MODULES, "no project modules found"
    for module in MODULES:
        assert 0 <= layer_of(module) < len(LAYER_NAMES)


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


def test_package_inits_import_nothing_above_their_lowest_module():
    """Importing any module first runs its packages' `__init__`: an `__init__` that imports a higher
    layer (say, the definitions) makes every module below it import upward, and cycles follow."""
    offenders = []
    for package, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        lowest = min(layer_of(m) for m in MODULES if m.startswith(package + ".")) if any(
            m.startswith(package + ".") for m in MODULES) else layer_of(package)
        offenders += [
            f"{path.relative_to(PROJECT_ROOT)}:{line} imports {target} ({LAYER_NAMES[layer_of(target)]})"
            for line, target in imports_of(path, package) if layer_of(target) > lowest
        ]
    assert not offenders, offenders


def test_core_and_domain_modules_do_not_import_dagster():
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for module, path in MODULES.items()
        if layer_of(module) <= 1 and {"dagster", "dagster_mlflow", "dagster_duckdb"} & _external_imports(path)
    ]
    assert not offenders, f"core and domain modules must stay plain Python: {offenders}"


def test_trainer_hook_imports_only_core():
    offenders = [
        f"{module} imports {target}"
        for module, path in MODULES.items() if module.startswith("trainer_hook")
        for _, target in imports_of(path, module)
        if not (target.startswith("core") or target.startswith("trainer_hook"))
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
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_LINES and LONG_MODULE_MARK not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(PROJECT_ROOT)} ({lines} lines)")
    assert not long, f"modules over {MAX_LINES} lines without '{LONG_MODULE_MARK}' in their docstring: {long}"


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("core.drive", "core"),
        ("pipeline_assets.preprocessing.engine", "domain"),
        ("launcher.slurm_launcher", "resources"),
        ("pipeline_assets.training.assets", "assets"),
        ("sensors.signal_sensors", "orchestration"),
        ("pipeline_assets.definitions", "definitions"),
        ("mlgraph_cli.staging", "entry points"),
    ],
)
def test_layer_map_places_known_modules(module, layer):
    assert LAYER_NAMES[layer_of(module)] == layer
