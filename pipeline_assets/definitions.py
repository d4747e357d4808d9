"""The single code location: every asset group, check, job, sensor and resource."""

from __future__ import annotations

import dagster as dg

from pipeline_assets import analysis, data, deployment, external, monitoring, preprocessing, training
from pipeline_assets.automation import automation_sensors, with_automation
from pipeline_assets.jobs import JOBS
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from resources.tracking import MlflowTracking
from resources.warehouse import Warehouse
from sensors.alerts import ALERT_SENSORS
from sensors.drift import drift_sensor
from sensors.experiments import experiment_config_sensor
from sensors.labels import labels_sensor
from sensors.mlflow_status import mlflow_run_canceled_sensor, mlflow_run_failure_sensor
from sensors.signal_sensors import eval_complete_sensor, training_complete_sensor
from sensors.sources import experiment_source_sensor

# group name → subpackage; every module in a subpackage is scanned for assets and checks.
ASSET_GROUPS = {
    "data": data,
    "preprocessing": preprocessing,
    "analysis": analysis,
    "training": training,
    "deployment": deployment,
    "external": external,
    "monitoring": monitoring,
}


ASSETS = with_automation(
    [
        asset
        for group_name, package in ASSET_GROUPS.items()
        for asset in dg.load_assets_from_package_module(package, group_name=group_name, include_specs=True)
    ]
)

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=[
        check for package in ASSET_GROUPS.values() for check in dg.load_asset_checks_from_package_module(package)
    ],
    jobs=JOBS,
    sensors=[
        experiment_config_sensor,
        experiment_source_sensor,
        training_complete_sensor,
        eval_complete_sensor,
        mlflow_run_failure_sensor,
        mlflow_run_canceled_sensor,
        drift_sensor,
        labels_sensor,
        *automation_sensors(),
        *ALERT_SENSORS,
    ],
    resources={
        "storage": SharedDrive(),
        "catalog": ExperimentCatalog(),
        "warehouse": Warehouse(),
        "mlflow": MlflowTracking(),
    },
    # One process per step costs ~1.9 s against ~20 ms in-process (measured, 2 cores).
    executor=dg.in_process_executor,
)
