"""experiment_config_sensor keeps the experiment partitions in step with the YAML files."""

import dagster as dg

from resources.experiments import ExperimentCatalog
from sensors.experiments import experiment_config_sensor
from tests.support import dagster_instance


def evaluate(instance, config_dir):
    context = dg.build_sensor_context(
        instance=instance, resources={"catalog": ExperimentCatalog(config_dir=str(config_dir))}
    )
    return experiment_config_sensor(context)


def apply(instance, result):
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def test_adds_removes_and_skips(config_dir):
    with dagster_instance() as instance:
        result = evaluate(instance, config_dir)
        assert isinstance(result, dg.SensorResult)
        [add] = result.dynamic_partitions_requests
        assert isinstance(add, dg.AddDynamicPartitionsRequest)
        assert add.partition_keys == ["demand_forecast", "salary", "student_engagement"]
        apply(instance, result)

        again = evaluate(instance, config_dir)
        assert isinstance(again, dg.SkipReason)
        assert "3 experiment partition(s) match" in again.skip_message

        salary = (config_dir / "experiments" / "salary.yaml").read_text()
        (config_dir / "experiments" / "wages.yaml").write_text(salary.replace("name: salary", "name: wages"))
        (config_dir / "experiments" / "demand_forecast.yaml").unlink()
        result = evaluate(instance, config_dir)
        kinds = {type(r).__name__: r.partition_keys for r in result.dynamic_partitions_requests}
        assert kinds == {
            "AddDynamicPartitionsRequest": ["wages"],
            "DeleteDynamicPartitionsRequest": ["demand_forecast"],
        }
        apply(instance, result)
        assert sorted(instance.get_dynamic_partitions("experiment")) == ["salary", "student_engagement", "wages"]


def test_invalid_yaml_is_reported_not_added(config_dir):
    (config_dir / "experiments" / "broken.yaml").write_text("name: broken\ntask: regression\n")
    with dagster_instance() as instance:
        instance.add_dynamic_partitions("experiment", ["salary", "student_engagement", "demand_forecast"])
        result = evaluate(instance, config_dir)
        assert isinstance(result, dg.SkipReason)
        assert "invalid: broken" in result.skip_message
        # A partition whose file turns invalid keeps its history: it is not deleted.
        (config_dir / "experiments" / "salary.yaml").write_text("name: salary\n")
        assert isinstance(evaluate(instance, config_dir), dg.SkipReason)
