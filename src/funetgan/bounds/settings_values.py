"""Setting values as people write them: YAML (settings files, run folders' config.yaml, --set
values) parsed with bounded cost, then converted to each setting's declared type, finite.

PyYAML's safe loader is safe from code, not from size: nested aliases ("billion laughs") make
a few hundred bytes stand for gigabytes once anything walks or prints the value, a
self-referencing alias makes a value that contains itself, and deep nesting exhausts Python's
recursion. Settings are a few levels of mappings of scalars, so the loader refuses what they
never need: aliases of lists and mappings (aliases of scalars stay, they cost nothing), nesting
deeper than MAX_DEPTH, and files over MAX_BYTES.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import SettingsError

MAX_DEPTH = 16  # settings nest 2 levels deep (section, key), a list value 3
MAX_BYTES = 1 << 20  # the full settings file is about 2 kB


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses aliases of collections and nesting beyond MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if not isinstance(self.anchors.get(event.anchor), (yaml.ScalarNode, type(None))):
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"alias *{event.anchor} of a list or mapping (only aliases of single values are allowed)",
                    event.start_mark,
                )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse(text: str) -> Any:
    """The value of one YAML document of settings; yaml.YAMLError when it is malformed or
    beyond the bounds above."""
    if len(text) > MAX_BYTES:
        raise yaml.YAMLError(f"{len(text)} characters, more than settings ever take ({MAX_BYTES})")
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_file(path: Path) -> Any:
    """`parse` of a settings file, reading no more of it than MAX_BYTES (and one more)."""
    with open(path, encoding="utf-8") as file:
        return parse(file.read(MAX_BYTES + 1))


def coerce(key: str, kind: Any, value: Any) -> Any:
    """`value` as `kind`: bool, int, float, str, tuple[float, ...], or one of them | None.
    Strings are YAML (`parse`); numbers must be finite."""
    if isinstance(value, str) and kind is not str:
        try:
            value = parse(value)
        except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer of over 4,300 digits
            raise SettingsError(f"{key}: cannot read {value[:80]!r}: {' '.join(str(err).split())}") from None
    optional = type(None) in typing.get_args(kind)
    if value is None:
        if optional:
            return None
        raise SettingsError(f"{key} must be set, got null")
    if optional:
        (kind,) = [t for t in typing.get_args(kind) if t is not type(None)]
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{key} must be true or false, got {value!r:.80}")
        return value
    if typing.get_origin(kind) is tuple:
        length = len(typing.get_args(kind))
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise SettingsError(f"{key} must be a list of {length} numbers, got {value!r:.80}")
        return tuple(coerce(key, float, v) for v in value)
    if kind in (int, float):
        return _number(key, kind, value)
    return str(value)


def check_finite(key: str, value: Any) -> None:
    """Infinity or NaN is no setting (`score.blur_sigma=inf` would train, then fail to blur)."""
    numbers = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise SettingsError(f"{key} must be a finite number, got {value}")


def _number(key: str, kind: type, value: Any) -> int | float:
    if isinstance(value, str):
        value = _typed_number(key, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"{key} must be a number, got {value!r:.80}")
    check_finite(key, value)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SettingsError(f"{key} must be an integer, got {value!r}")
        return int(value)
    try:
        return float(value)
    except OverflowError:  # an integer beyond float's range
        raise SettingsError(f"{key} must be a finite number, got one of {int(value).bit_length()} bits") from None


def _typed_number(key: str, text: str) -> int | float:
    """Numbers as people type them, which YAML 1.1 reads as strings: 1e-4, 1E-4, 5e3, .5, 1_000."""
    for parse_as in (int, float):
        try:
            value = parse_as(text.strip())
        except ValueError:
            continue
        if math.isnan(value):
            break
        return value
    raise SettingsError(f"{key} must be a number, got {text!r:.80}")


# The range of each numeric setting, checked before any work starts (None is allowed where
# the setting's default is None): "count" >= 1, "count0" >= 0, "positive" > 0, "non-negative"
# >= 0, "fraction" in (0, 1), "seed" what every random generator takes (numpy's: below 2^32).
BOUNDS = {
    **dict.fromkeys(
        (
            "model.width",
            "model.z_dim",
            "gan.iterations",
            "gan.n_critic",
            "gan.gp_every",
            "encoder.iterations",
            "score.batch_size",
            "batch_size",
            "log_every",
            "checkpoint_every",
        ),
        "count",
    ),
    "gan.warmup_iterations": "count0",
    **dict.fromkeys(("seed", "data.split_seed"), "seed"),
    **dict.fromkeys(("gan.lr_g", "gan.lr_d", "encoder.lr"), "positive"),
    **dict.fromkeys(
        (
            "gan.max_minutes",
            "encoder.max_minutes",
            "gan.lambda_gp",
            "gan.lambda_cons",
            "encoder.kappa",
            "score.kappa",
            "score.density_weight",
            "score.smoothness_weight",
            "score.latent_density_weight",
            "score.image_smoothness_weight",
            "score.blur_sigma",
        ),
        "non-negative",
    ),
    **dict.fromkeys(("score.normal_quantile", "data.val_fraction", "data.test_fraction"), "fraction"),
}
_BOUND_TESTS = {
    "count": (lambda v: v >= 1, "at least 1"),
    "count0": (lambda v: v >= 0, "at least 0"),
    "seed": (lambda v: 0 <= v < 2**32, "in 0 .. 2^32 - 1"),
    "positive": (lambda v: v > 0, "above 0"),
    "non-negative": (lambda v: v >= 0, "at least 0"),
    "fraction": (lambda v: 0 < v < 1, "inside (0, 1)"),
}


def check_bound(key: str, value: Any, bound: str) -> None:
    if value is None:
        return
    test, words = _BOUND_TESTS[bound]
    if not test(value):
        raise SettingsError(f"{key} must be {words}, got {value}")
