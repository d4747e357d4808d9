"""Code-location import time, against bare `import dagster` and the heavy imports it avoids.

Each figure is the median wall time of fresh interpreter processes. Prints JSON.
Target (Foundation issue): loading the code location takes under 3 s.
"""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "python_startup": "pass",
    "import_dagster (baseline)": "import dagster",
    "import_trainer_hook (GPU machine)": "import mlgraph.trainer, sys; assert 'dagster' not in sys.modules",
    "load_code_location (defs)": "from pipeline_assets.definitions import defs; defs.resolve_asset_graph()",
    "import_torch (avoided)": "import torch",
    "import_mlflow (avoided)": "import mlflow",
    "import_sklearn_ensemble (avoided)": "import sklearn.ensemble",
}


def measure(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results = {name: round(measure(code, repeats), 3) for name, code in CASES.items()}
    load = results["load_code_location (defs)"]
    print(
        json.dumps(
            {
                "benchmark": "import_time",
                "repeats": repeats,
                "median_seconds": results,
                "code_location_over_dagster_s": round(load - results["import_dagster (baseline)"], 3),
                "target_s": 3.0,
                "meets_target": load < 3.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
