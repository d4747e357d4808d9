"""Experiment configs (mlgraph.core.experiment): the demo files validate; every kind of bad config fails with file,
field and fix; the constraint grid and its keys."""

from pathlib import Path

import pytest
import yaml

from mlgraph.core.constraints import Constraint, load_constraint_grid
from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.experiment import ConfigError, load_experiment_file

DEMO_DIR = PROJECT_ROOT / "config" / "experiments"
BASE = yaml.safe_load((DEMO_DIR / "salary.yaml").read_text())


def write(tmp_path: Path, name: str, data) -> Path:
    directory = tmp_path / "experiments"
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def variant(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return data


@pytest.mark.parametrize("name", ["salary", "student_engagement", "demand_forecast"])
def test_demo_configs_validate(name):
    loaded = load_experiment_file(DEMO_DIR / f"{name}.yaml")
    assert loaded.config.name == name
    assert len(loaded.config.config_hash) == 64


@pytest.mark.parametrize(
    ("changes", "field", "hint"),
    [
        ({"colour": "blue"}, "colour", "remove this key"),
        ({"sampling__strategy_typo": "head"}, "sampling.strategy_typo", "remove this key"),
        ({"cv_folds": "five"}, "cv_folds", "correct the value"),
        ({"split__test_size": "0.2"}, "split.test_size", "correct the value"),
        ({"target": KeyError}, "target", "add this required field"),
        ({"task": "clustering"}, "task", "allowed values"),
        ({"sampling__strategy": "stratified"}, "(top level)", "needs task 'classification'"),
        ({"models": [{"family": "svm"}]}, "(top level)", "not available for regression"),
        ({"exclude_columns": ["age", "salary"]}, "exclude_columns", "['salary'] name the target or time column"),
        ({"exclude_columns": "age"}, "exclude_columns", "correct the value"),
        ({"dataset": {"path": "d.csv", "na_values": ["NA", None]}}, "dataset.na_values.1", "quote it"),
        ({"dataset__na_values": ["NA"]}, "dataset", "'na_values' applies to file sources only"),
    ],
)
def test_bad_config_names_file_field_and_fix(tmp_path, changes, field, hint):
    path = write(tmp_path, "salary", variant(**changes))
    with pytest.raises(ConfigError) as err:
        load_experiment_file(path)
    message = str(err.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert hint in message


def test_file_stem_must_match_name(tmp_path):
    path = write(tmp_path, "wages", BASE)
    with pytest.raises(ConfigError, match=r"wages\.yaml: field 'name': 'salary' does not match the file name 'wages'"):
        load_experiment_file(path)


@pytest.mark.parametrize("bad", ["Salary", "-x", "a" * 65, "with space", "dots.in"])
def test_invalid_experiment_names_rejected(tmp_path, bad):
    path = write(tmp_path, "ok", variant(name=bad))
    with pytest.raises(ConfigError, match="not a valid experiment name"):
        load_experiment_file(path)


def test_invalid_file_stem_rejected(tmp_path):
    path = write(tmp_path, "Bad Name", BASE)
    with pytest.raises(ConfigError, match="file name 'Bad Name' is not a valid experiment name"):
        load_experiment_file(path)


@pytest.mark.parametrize("raw", ["../secret.csv", "data/../../secret.csv", "../experiments/x.csv"])
def test_dataset_path_may_not_escape_config_dir(tmp_path, raw):
    data = variant(dataset={"path": raw})
    path = write(tmp_path, "salary", data)
    with pytest.raises(ConfigError, match=r"field 'dataset.path'.*leaves the config directory.*Fix:"):
        load_experiment_file(path)


def test_dataset_path_relative_and_absolute(tmp_path):
    path = write(tmp_path, "salary", variant(dataset={"path": "data/my.csv"}))
    assert load_experiment_file(path).source_path == (tmp_path / "experiments" / "data" / "my.csv").resolve()
    absolute = tmp_path / "elsewhere.parquet"
    path = write(tmp_path, "salary", variant(dataset={"path": str(absolute)}))
    assert load_experiment_file(path).source_path == absolute


def test_dataset_needs_exactly_one_source(tmp_path):
    path = write(tmp_path, "salary", variant(dataset={"generator": "salary", "path": "x.csv"}))
    with pytest.raises(ConfigError, match="exactly one of 'generator' or 'path'"):
        load_experiment_file(path)


def test_forecasting_needs_time_column(tmp_path):
    data = yaml.safe_load((DEMO_DIR / "demand_forecast.yaml").read_text())
    del data["time_column"]
    path = write(tmp_path, "demand_forecast", data)
    with pytest.raises(ConfigError, match="time_column"):
        load_experiment_file(path)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_experiment_file(write(tmp_path, "salary", "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment_file(write(tmp_path, "salary", "name: [unclosed\n"))


def test_config_hash_is_canonical_and_covers_sampling(tmp_path):
    original = load_experiment_file(write(tmp_path, "salary", BASE)).config.config_hash
    reordered = dict(reversed(list(BASE.items())))
    assert load_experiment_file(write(tmp_path, "salary", reordered)).config.config_hash == original
    described = variant(description="new prose")
    assert load_experiment_file(write(tmp_path, "salary", described)).config.config_hash == original
    sampled = variant(sampling__train_rows=50)
    assert load_experiment_file(write(tmp_path, "salary", sampled)).config.config_hash != original
    # A default written out explicitly is the same config.
    explicit = variant(cv_folds=5)
    assert load_experiment_file(write(tmp_path, "salary", explicit)).config.config_hash == original


# Recorded before issue 10 added exclude_columns and dataset.na_values: a config that does not use a
# new field keeps its hash, so existing models, promotions and evaluation rows stay current.
DEMO_CONFIG_HASHES = {
    "salary": "98ebc4c746917fd682e0f9e1839b25eb9505e444ad1a5ca5d9f5174409f65de9",
    "student_engagement": "d0ab6bf04452daf1f89915aca965008594921c4380509944bf757956e2af8b07",
    "demand_forecast": "f7a64abf6096eb19b99e41f0e94936d6630a25da4b4790627c3e00e6b68bb003",
}


@pytest.mark.parametrize("name", sorted(DEMO_CONFIG_HASHES))
def test_demo_config_hashes_do_not_move(name):
    assert load_experiment_file(DEMO_DIR / f"{name}.yaml").config.config_hash == DEMO_CONFIG_HASHES[name]


def test_new_fields_enter_the_hash_once_set(tmp_path):
    from mlgraph.core.experiment import HASH_OMITTED_AT_DEFAULT, ExperimentConfig

    for (*parents, field), default in HASH_OMITTED_AT_DEFAULT.items():  # the table matches the schema
        model = ExperimentConfig
        for key in parents:
            model = model.model_fields[key].annotation
        value = model.model_fields[field].get_default(call_default_factory=True)
        # deployment.slo judges the service, never the model: the hash leaves it out altogether.
        dumped = value.model_dump(exclude={"slo"}) if field == "deployment" else None
        assert (dumped or (value.model_dump() if hasattr(value, "model_dump") else value)) == default
    original = load_experiment_file(write(tmp_path, "salary", BASE)).config.config_hash
    assert load_experiment_file(write(tmp_path, "salary", variant(exclude_columns=[]))).config.config_hash == original
    excluded = variant(exclude_columns=["age"])
    assert load_experiment_file(write(tmp_path, "salary", excluded)).config.config_hash != original
    from_file = variant(dataset={"path": "d.csv"})
    base = load_experiment_file(write(tmp_path, "salary", from_file)).config.config_hash
    spelled = variant(dataset={"path": "d.csv", "na_values": ["-999"]})
    assert load_experiment_file(write(tmp_path, "salary", spelled)).config.config_hash != base
    budget = variant(deployment={"int8_max_roc_auc_loss": 0.02})
    assert load_experiment_file(write(tmp_path, "salary", budget)).config.config_hash != original


def test_constraint_keys_round_trip():
    keys = [c.key for c in load_constraint_grid().constraints()]
    assert len(keys) == len(set(keys)) >= 2
    for key in keys:
        assert Constraint.parse(key).key == key
    assert Constraint.parse("c10000-m256-p50") == Constraint(chunk_size=10000, memory_limit_mb=256, compute_limit=0.5)
    with pytest.raises(ValueError, match="c<chunk>-m<MB>-p<percent>"):
        Constraint.parse("10000-256")


def test_constraint_grid_errors(tmp_path):
    path = tmp_path / "constraints.yaml"
    path.write_text("chunk_sizes: []\nmemory_limits_mb: [1]\ncompute_limits: [0.5]\n")
    with pytest.raises(ConfigError, match=r"(?s)constraints.yaml.*field 'chunk_sizes'"):
        load_constraint_grid(path)


@pytest.mark.parametrize("hours", [0, 0.1])
def test_a_retraining_cooldown_under_a_quarter_hour_needs_an_explicit_opt_in(tmp_path, hours):
    path = write(tmp_path, "salary", variant(drift={"retrain_cooldown_hours": hours}))
    with pytest.raises(ConfigError) as err:
        load_experiment_file(path)
    message = str(err.value)
    assert str(path) in message and "field 'drift.retrain_cooldown_hours'" in message
    assert "0.25 h minimum" in message and "drift.allow_fast_retraining: true" in message
    opted_in = variant(drift={"retrain_cooldown_hours": hours, "allow_fast_retraining": True})
    loaded = load_experiment_file(write(tmp_path, "salary", opted_in)).config
    assert loaded.drift.retrain_cooldown_hours == hours
    # drift is monitoring, outside the config hash: neither field makes the models stale.
    assert loaded.config_hash == load_experiment_file(write(tmp_path, "salary", BASE)).config.config_hash
    quarter = variant(drift={"retrain_cooldown_hours": 0.25})
    assert load_experiment_file(write(tmp_path, "salary", quarter)).config.drift.retrain_cooldown_hours == 0.25
