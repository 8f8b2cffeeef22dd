"""Bad input fails before any job starts, with one line naming the problem."""

import pytest
import yaml

from idap.core.config import ConfigError, load_config, load_schema, validate_config
from idap.data import DATASETS
from idap.engine.methods import list_methods
from idap.models import list_models


def test_defaults_fill_every_section():
    cfg = validate_config({})
    assert cfg["prune"]["steps"] == 10 and cfg["prune"]["alpha"] == 1.5
    assert cfg["prune"]["stage1_share"] == 0.85 and cfg["truncate"]["max_rejections"] == 2
    assert cfg["finetune"]["kd_temperature"] == 4.0


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"prune": {"stpes": 3}}, "unknown key 'stpes'"),
        ({"finetun": {}}, "unknown key 'finetun'"),
        ({"baseline": {"epochs": "three"}}, "baseline.epochs: 'three' is not of type 'integer'"),
        ({"grid": {"models": ["resnet999"]}}, "'resnet999' is not a valid choice"),
        ({"grid": {"datasets": ["imagenet21k"]}}, "grid.datasets.0"),
        ({"grid": {"methods": ["magic"]}}, "'magic' is not a valid choice (valid: idap, l1,"),
        ({"grid": {"targets": [1.5]}}, "grid.targets.0"),
        ({"grid": {"targets": [0.0]}}, "grid.targets.0"),
        ({"data": {"val_fraction": -0.1}}, "data.val_fraction"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_config_is_one_clear_line(cfg, needle):
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_malformed_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_schema_choices_equal_registries():
    grid = load_schema()["properties"]["grid"]["properties"]
    assert sorted(grid["models"]["items"]["enum"]) == list_models()
    assert sorted(grid["datasets"]["items"]["enum"]) == DATASETS.names()
    assert sorted(grid["methods"]["items"]["enum"]) == list_methods()


def test_default_config_is_valid():
    with open("config/config.yaml") as f:
        cfg = yaml.safe_load(f)
    validate_config(cfg)
    assert min(cfg["grid"]["targets"]) >= 0.6
