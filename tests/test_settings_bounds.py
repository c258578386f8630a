"""Settings refused before any work when they cannot run (issue 35, items 2 and 4): YAML whose
parsing or walking costs without bound, non-finite numbers, sizes beyond this machine's memory."""

import re
import resource
import time

import pytest

from funetgan.bounds.memory import Sizes, human_bytes, parts, unaffordable
from funetgan.config import Config, apply_overrides
from funetgan.errors import SettingsError

LAUGHS = (
    "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    + "model: {variant: *i}\n"
)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    "text, reason",
    [
        (LAUGHS, "alias *a of a list or mapping"),  # 9^9 "lol"s once printed: the 2 GiB
        ("model: &m {width: *m}\n", "alias *m of a list or mapping"),  # a value that holds itself
        ("model: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 16 levels deep"),  # RecursionError before
    ],
)
def test_settings_files_that_cost_without_bound_are_refused_in_one_line(tmp_path, text, reason):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    before, started = _peak_mb(), time.monotonic()
    with pytest.raises(ValueError, match=f"settings.yaml: cannot read settings: .*{re.escape(reason)}") as caught:
        Config.load(path)
    assert "\n" not in str(caught.value) and time.monotonic() - started < 5
    assert _peak_mb() - before < 100


def test_aliases_of_single_values_still_work_and_huge_files_are_not_read_whole(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("gan: {lr_g: &lr 0.0002, lr_d: *lr}\n")
    assert Config.load(path).gan.lr_d == 0.0002
    path.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ValueError, match="more than settings ever take"):
        Config.load(path)


def test_a_set_value_is_parsed_by_the_same_bounded_loader():
    with pytest.raises(SettingsError, match="data.hu_window: cannot read .*alias"):
        apply_overrides(Config(), ["data.hu_window=[&x [1], *x]"])


@pytest.mark.parametrize(
    "item",
    [
        "score.blur_sigma=inf",
        "gan.lr_g=.inf",
        "gan.lr_d=1e400",
        "encoder.kappa=-.inf",
        "data.hu_window=[-.inf, 400]",
        "data.lung_threshold=.nan",
        "model.z_dim=1e400",
        "gan.max_minutes=" + "9" * 400,
    ],
)
def test_non_finite_numbers_are_refused_for_every_setting(item):
    """`score.blur_sigma=inf` trained fully, then crashed; `gan.lr_g=inf` trained until "diverged";
    an integer setting of inf was an OverflowError."""
    key = item.partition("=")[0]
    with pytest.raises(SettingsError, match=f"^{key} must be a finite number"):
        apply_overrides(Config(), [item])


def test_non_finite_values_set_from_python_are_refused_by_validate():
    config = Config()
    config.score.blur_sigma = float("inf")
    with pytest.raises(SettingsError, match="score.blur_sigma must be a finite number, got inf"):
        config.validate()


@pytest.mark.parametrize(
    "item, setting, need",
    [
        ("model.z_dim=1000000000", "model.z_dim", "EiB"),  # asked the allocator for 4 TB
        ("data.resolution=1000000", "data.resolution", "TiB"),  # passed 2 GiB in 8 s
        ("batch_size=100000000", "batch_size", "TiB"),
        ("model.width=100000", "model.width", "TiB"),
    ],
)
def test_sizes_beyond_this_machines_memory_are_refused_before_allocation(item, setting, need):
    before, started = _peak_mb(), time.monotonic()
    with pytest.raises(
        SettingsError,
        match=rf"need at least [\d.]+ {need} of memory, more than this machine's .*"
        rf"lower .*{setting}",
    ):
        apply_overrides(Config(), [item])
    assert time.monotonic() - started < 1 and _peak_mb() - before < 50


def test_the_memory_bound_by_hand():
    """64 px, width 8, z_dim 128, batch 64, working size 64, 1 channel: w4 = 8 * 16 = 128 and
    w8 = 8 * 8 = 64 channels."""
    sizes = Sizes(image_size=64, channels=1, width=8, z_dim=128, batch=64, resolution=64)
    found = {what: size for size, what, _ in parts(sizes)}
    assert found["the networks' weights, gradients and Adam state"] == 16 * (2 * 16 * 128 * 128 + 3 * 9 * 128 * 64)
    assert found["the density terms' precision matrices"] == 4 * (128**2 + 128**2)
    assert found["one feature map per network for a full batch"] == 4 * 64 * 3 * 8 * 64 * 64
    assert found["one image and its map"] == 64 * 64 * 5
    total = sum(found.values())
    assert unaffordable(sizes, available=total) is None
    assert unaffordable(sizes, available=total - 1).startswith(f"these settings need at least {human_bytes(total)}")


def test_sizes_in_words():
    assert human_bytes(1000) == "1000 bytes" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(4 * 1024**4) == "4.0 TiB" and human_bytes(10**400) == "more than 1024 YiB"
