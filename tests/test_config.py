"""Bad input fails before any job starts, with one line naming the problem."""

from pathlib import Path

import pytest
import yaml
from helpers import over_default

from idap.core.config import ConfigError, load_config, validate_config
from idap.core.settings import Settings
from idap.data import DATASETS
from idap.engine.methods import list_methods
from idap.models import list_models
from idap.stages.grid import check_grid


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
        ({"grid": {"targets": [1.5]}}, "grid.targets.0"),
        ({"grid": {"targets": [0.0]}}, "grid.targets.0"),
        ({"data": {"val_fraction": -0.1}}, "data.val_fraction"),
        ({"seed": 1.5}, "seed"),
        ({"baseline": {"keep_head": True}}, "keep_head needs baseline.pretrained"),
        ({"baseline": {"epochs": 0}}, "baseline.epochs: 0 trains nothing"),
        (
            {"truncate": {"acceptance": "equal_macs", "recovery_iters": 1}},
            "truncate.recovery_iters: 1 cannot be split",
        ),
        ({"plugins": ["no_such_module_xyz"]}, "plugins: plugin 'no_such_module_xyz' failed"),
        ({"plugins": ["missing/plugin.py"]}, "plugin file missing/plugin.py not found"),
        (
            {"dataset_overrides": {"cifar10": {"baseline": {"epochs": -1}}}},
            "dataset_overrides.cifar10: baseline.epochs",
        ),
        (
            {"dataset_overrides": {"imagenet": {"baseline": {"keep_head": True}}}},
            "dataset_overrides.imagenet: baseline.keep_head needs",
        ),
        ({"overrides": {"vit_tiny": {"latency": {}}}}, "overrides.vit_tiny: unknown key 'latency'"),
        (
            {"overrides": {"vit_tiny": {"prune": {"mode": "budget"}}}},
            "overrides.vit_tiny: prune.mode is one per config",
        ),
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


@pytest.mark.parametrize(
    "grid, needle",
    [
        ({"models": ["resnet999"]}, "grid.models: unknown model 'resnet999'; valid: "),
        ({"datasets": ["imagenet21k"]}, "grid.datasets: unknown dataset 'imagenet21k'"),
        ({"methods": ["magic"]}, "grid.methods: unknown method 'magic'; valid: "),
        ({"models": ["timm:no_such_net"]}, "timm has no model 'no_such_net'"),
    ],
)
def test_unknown_grid_names_fail_listing_the_registry(grid, needle):
    cfg = validate_config({"grid": grid})
    with pytest.raises(ConfigError) as e:
        check_grid(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_grid_names_are_the_registries_names():
    """Every registered name passes the check: the valid names are the registries', not a
    list kept beside them."""
    cfg = validate_config(
        {"grid": {"models": list_models(), "datasets": DATASETS.names(), "methods": list_methods()}}
    )
    check_grid(cfg)
    with pytest.raises(ConfigError, match="overrides: unknown model 'resnet_tiyn'"):
        check_grid(validate_config({"overrides": {"resnet_tiyn": {"prune": {"steps": 2}}}}))


def test_overrides_merge_dataset_then_model():
    cfg = validate_config(
        {
            "baseline": {"epochs": 5, "lr": 0.1},
            "data": {"batch_size": 64},
            "dataset_overrides": {
                "cifar10": {"baseline": {"epochs": 30, "lr": 0.05}, "data": {"augment": True}}
            },
            "overrides": {"vit_tiny": {"baseline": {"lr": 0.002}}},
        }
    )
    both = Settings.from_config(cfg, model="vit_tiny", dataset="cifar10")
    assert (both.baseline.epochs, both.baseline.lr) == (30, 0.002)  # model wins on lr
    assert both.data.augment and both.data.batch_size == 64
    ds_only = Settings.from_config(cfg, model="resnet_tiny", dataset="cifar10")
    assert (ds_only.baseline.epochs, ds_only.baseline.lr) == (30, 0.05)
    neither = Settings.from_config(cfg, model="resnet_tiny", dataset="fashion_mnist")
    assert (neither.baseline.epochs, neither.baseline.lr, neither.data.augment) == (5, 0.1, False)


def test_default_config_is_valid():
    with open("config/config.yaml") as f:
        cfg = yaml.safe_load(f)
    validate_config(cfg)
    assert min(cfg["grid"]["targets"]) >= 0.6


@pytest.mark.parametrize(
    "path",
    sorted(p.name for p in Path("config").glob("*.yaml") if p.name not in ("schema.yaml",)),
)
def test_every_shipped_config_validates_over_the_default(path):
    """Each config in config/ is passed over config/config.yaml (the workflow's base):
    the merge validates, so a shipped config's variants, methods and keys exist."""
    validate_config(over_default(yaml.safe_load(Path("config", path).read_text())))


def test_a_job_gets_exactly_its_stages_reads():
    """A key of a section a job was given in part raises like a section it was not given;
    the budget key every compression job reads is there, the fine-tune's lr is not."""
    from idap.core.settings import SettingNotPassed
    from idap.stages.registry import STAGES, job_settings

    cfg = validate_config({"finetune": {"epochs": 3, "lr": 0.02}})
    s = Settings.for_job(job_settings("truncate_layers", cfg), "truncate_layers")
    assert (s.finetune.epochs, s.truncate.recovery_iters, s.seed) == (3, 20, 0)
    with pytest.raises(SettingNotPassed, match=r"^truncate_layers read settings.finetune.lr,"):
        _ = s.finetune.lr
    with pytest.raises(SettingNotPassed, match=r"read settings.baseline,"):
        _ = s.baseline
    assert "lr" not in s.to_dict()["finetune"] and "baseline" not in s.to_dict()
    assert Settings.for_job(job_settings("finetune", cfg), "finetune").finetune.lr == 0.02
    # budget mode's search runs every stage: it gets the union, whole sections winning
    assert "finetune" in STAGES["budget_search"].reads
    assert "finetune.epochs" not in STAGES["budget_search"].reads
