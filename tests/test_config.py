import re

import pytest

from funetgan.config import RECIPES, Config, apply_overrides
from funetgan.errors import SettingsError


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["model.image_size=128", "data.hu_window=[-900, 300]", "gan.max_minutes=2.5"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    loaded = Config.load(path)
    assert loaded == cfg
    assert loaded.data.hu_window == (-900.0, 300.0) and loaded.gan.max_minutes == 2.5


def test_values_take_the_declared_type_not_the_current_one():
    cfg = apply_overrides(Config(), ["gan.max_minutes=6", "encoder.max_minutes=1.5", "score.blur_sigma=2"])
    assert cfg.gan.max_minutes == 6.0 and isinstance(cfg.gan.max_minutes, float)
    assert isinstance(cfg.score.blur_sigma, float)
    cfg = apply_overrides(cfg, ["gan.max_minutes=0.5", "gan.max_minutes=null", "data.category=bottle"])
    assert cfg.gan.max_minutes is None and cfg.data.category == "bottle"


def test_documented_defaults():
    cfg = Config()
    assert (cfg.gan.lr_g, cfg.gan.lr_d) == (1e-4, 1e-4)
    assert (cfg.gan.n_critic, cfg.gan.lambda_gp, cfg.gan.lambda_cons) == (5, 10.0, 1.0)
    assert (cfg.batch_size, cfg.model.z_dim, cfg.model.variant, cfg.encoder.kappa) == (64, 128, "res_attn", 1.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.image_size=48", "power of two"),
        ("model.image_size=512", "power of two"),
        ("model.channels=2", "1 or 3"),
        ("model.variant=unet", "must be one of"),
        ("gan.nope=1", "unknown setting 'gan.nope'"),
        ("data.val_fractoin=0.2", r"unknown setting 'data.val_fractoin' \(did you mean data.val_fraction "),
        ("model=3", "unknown setting 'model'"),  # a section, not a setting
        ("gan.lr_d=1e-4x", "gan.lr_d must be a number, got '1e-4x'"),
        ("gan.lr_d=nan", "must be a number"),
        ("batch_size=abc", "must be a number"),
        ("batch_size=2.5", "must be an integer"),
        ("amp=maybe", "true or false"),
        ("batch_size=null", "must be set"),
        ("data.hu_window=[0.5]", "list of 2 numbers"),
        ("seed", "key=value"),
        ("gan.lr_d=[1e-4", r"gan.lr_d: cannot read '\[1e-4'"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(SettingsError, match=message):
        apply_overrides(Config(), [override])


def test_bad_settings_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {image_size: 33}\n")
    with pytest.raises(SettingsError, match="bad.yaml"):
        Config.load(path)


@pytest.mark.parametrize(
    "text, value",
    [("1e-4", 1e-4), ("1E-4", 1e-4), ("5e3", 5000.0), (".5", 0.5), ("1_000", 1000.0), ("-2.5e-1", -0.25), ("3", 3.0)],
)
def test_numbers_as_people_type_them(text, value, tmp_path):
    """YAML 1.1 reads 1e-4, .5 (without a sign or digit) and the like as strings. (Settings
    with no bound on their values: a float, an optional float and a pair.)"""
    assert apply_overrides(Config(), [f"data.lung_threshold={text}"]).data.lung_threshold == value
    path = tmp_path / "s.yaml"
    path.write_text(f"data:\n  lung_threshold: {text}\n  hu_window: [-9000, {text}]\n")
    loaded = Config.load(path)
    assert loaded.data.lung_threshold == value and loaded.data.hu_window == (-9000.0, value)


def test_integer_settings_take_exponents_and_underscores():
    cfg = apply_overrides(Config(), ["gan.iterations=1e4", "encoder.iterations=2_000"])
    assert cfg.gan.iterations == 10_000 and cfg.encoder.iterations == 2000
    assert isinstance(cfg.gan.iterations, int)


def test_unknown_key_in_a_settings_file_names_the_file_and_the_closest_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("gan:\n  lr_dd: 0.001\n")
    with pytest.raises(SettingsError, match=r"s.yaml: unknown setting 'gan.lr_dd' \(did you mean gan.lr_d"):
        Config.load(path)


# Numeric settings checked by something other than bounds.settings_values.BOUNDS (validate's own checks).
OTHER_CHECKS = {"model.image_size", "model.channels", "score.tile_stride", "data.lung_threshold", "data.hu_window"}


def test_every_numeric_setting_has_a_range():
    from funetgan.bounds.settings_values import BOUNDS
    from funetgan.config import all_keys, get_key

    config = Config()
    numeric = {
        key
        for key in all_keys()
        if isinstance(get_key(config, key), (int, float, tuple)) and not isinstance(get_key(config, key), bool)
    }
    numeric |= {
        key
        for key in all_keys()
        if get_key(config, key) is None
        and key not in ("data.resolution", "data.category", "data.normal_class", "data.cache_dir")
    }
    assert numeric - set(BOUNDS) - OTHER_CHECKS == set()


@pytest.mark.parametrize(
    "item, message",
    [
        ("score.normal_quantile=1", "score.normal_quantile must be inside (0, 1), got 1"),
        ("score.normal_quantile=0", "inside (0, 1)"),
        ("data.val_fraction=1.5", "data.val_fraction must be inside (0, 1)"),
        ("data.test_fraction=0", "data.test_fraction must be inside (0, 1)"),
        ("score.latent_density_weight=-1", "score.latent_density_weight must be at least 0, got -1"),
        ("gan.lambda_gp=-0.1", "gan.lambda_gp must be at least 0"),
        ("gan.lr_g=0", "gan.lr_g must be above 0, got 0"),
        ("model.width=0", "model.width must be at least 1"),
        ("seed=-1", "seed must be in 0 .. 2^32 - 1"),
        ("data.split_seed=4294967296", "data.split_seed must be in 0"),
        ("data.hu_window=[400, -1000]", "data.hu_window's low end must lie below its high end, got [400, -1000]"),
    ],
)
def test_a_value_out_of_its_range_is_refused_with_the_key(item, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        apply_overrides(Config(), [item])


def test_a_recipe_from_python_is_the_command_lines_and_can_take_a_budget_in_minutes():
    assert Config.recipe("cpu") == apply_overrides(Config(), RECIPES["cpu"])
    five = Config.recipe("cpu", minutes=5)  # the recipe's 15 + 5 minutes, shared alike
    assert (five.gan.max_minutes, five.encoder.max_minutes) == (3.75, 1.25)
    assert five.gan.lr_d == Config.recipe("cpu").gan.lr_d == 0.0004
    with pytest.raises(ValueError, match="no recipe 'gpu'; the recipes are cpu"):
        Config.recipe("gpu")
    with pytest.raises(ValueError, match="minutes must be above 0, got 0"):
        Config.recipe("cpu", minutes=0)
