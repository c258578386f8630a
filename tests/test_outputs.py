"""`--outputs`: what a test or prediction run writes, and for which images."""

import csv
import json
import re

import numpy as np
import pytest

from funetgan.data import ImageSet
from funetgan.errors import UsageError
from funetgan.evaluation.metrics import evaluate
from funetgan.outputs.examples import N_EXAMPLES, example_groups
from funetgan.outputs.report import write_predictions, write_test_outputs
from funetgan.outputs.selection import TEST_DEFAULT, Outputs
from funetgan.scoring.masks import MaskRule

SCORES = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])


def test_items_parse_into_a_plan():
    plan = Outputs.parse(["scores", "masks", "overlays=worst:2+best:1"])
    assert (plan.metrics, plan.scores, plan.report) == (False, True, False)
    assert plan.masks == ("all",) and plan.overlays == ("worst:2", "best:1")
    everything = Outputs.parse(["all"])
    assert everything == Outputs() and everything.overlays == ("all",)
    default = Outputs.parse(list(TEST_DEFAULT))
    assert default.report and default.masks == ("none",) and default.overlays == ("examples",)


@pytest.mark.parametrize(
    "items, message",
    [
        (["pictures"], "unknown item 'pictures'"),
        (["overlays=worst"], "worst:N"),
        (["masks=some:3"], "expected all, none"),
    ],
)
def test_bad_items_are_named(items, message):
    with pytest.raises(UsageError, match=message):
        Outputs.parse(items)


def test_predict_has_no_metrics_report_or_examples():
    with pytest.raises(UsageError, match="test only"):
        Outputs.parse(["report"], test=False)
    with pytest.raises(UsageError, match="examples is for test"):
        Outputs.parse(["overlays=examples"], test=False)


@pytest.mark.parametrize(
    "which, expected",
    [
        ("all", [0, 1, 2, 3, 4, 5]),
        ("none", []),
        ("flagged", [1, 3, 5]),  # score >= 0.6
        ("worst:2", [1, 5]),
        ("best:2", [0, 4]),
        ("worst:1+best:1", [0, 1]),
        ("flagged+best:1", [0, 1, 3, 5]),
        ("worst:100", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_selections_pick_images(which, expected):
    plan = Outputs.parse([f"overlays={which}"])
    assert plan.images("overlays", SCORES, threshold=0.6).tolist() == expected


def test_examples_are_what_the_report_shows():
    labels = np.array([0, 0, 1, 1, 0, 1])
    groups = example_groups(labels, SCORES, 0.6)
    shown = {title.split(":")[0]: index.tolist() for title, index, _ in groups}
    assert shown == {
        "False positives": [1],
        "False negatives": [2],
        "Clearest detections": [5, 3],
        "Clearest normals": [0, 4],
    }
    examples = np.concatenate([index for _, index, _ in groups])
    assert Outputs.parse(["overlays=examples"]).images("overlays", SCORES, 0.6, examples).tolist() == [0, 1, 2, 3, 4, 5]
    many = example_groups(np.zeros(100, int), np.linspace(0, 1, 100), 2.0)
    assert len(many[3][1]) == N_EXAMPLES and many[3][2] == 100  # at most N_EXAMPLES of 100 shown


@pytest.fixture
def imageset():
    n, s = 30, 8
    rng = np.random.default_rng(0)
    labels = np.array([0] * 15 + [1] * 15)
    return ImageSet(
        rng.integers(0, 255, (n, s, s, 1), dtype=np.uint8),
        labels,
        [f"d/test/{'good' if k == 0 else 'crack'}/{i:03d}.png" for i, k in enumerate(labels)],
        ["good" if k == 0 else "crack" for k in labels],
        np.full((n, 2), s),
    )


def test_the_default_writes_overlays_for_the_reports_examples_only(tmp_path, imageset):
    scores = np.linspace(0, 1, len(imageset))
    maps = np.repeat(scores[:, None, None], 8, 1).repeat(8, 2).astype(np.float32)
    metrics = evaluate(scores, maps, imageset, 0.5, 0.5)
    write_test_outputs(
        tmp_path,
        imageset,
        scores,
        maps,
        metrics,
        0.5,
        MaskRule(0.5, 0.5),
        {},
        outputs=Outputs.parse(list(TEST_DEFAULT)),
    )
    assert not (tmp_path / "masks").exists()
    overlays = {p.stem for p in (tmp_path / "overlays").glob("*.png")}
    assert 0 < len(overlays) < 30
    page = (tmp_path / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert all((tmp_path / link).is_file() for link in links)  # every example shown exists
    assert {link[9:-4] for link in links if link.startswith("overlays/")} == overlays
    timing = json.loads((tmp_path / "metrics.json").read_text())["timing"]
    assert timing["files_seconds"] >= 0 and timing["report_seconds"] >= 0


def test_only_what_is_asked_for_is_written(tmp_path, imageset):
    scores = np.linspace(0, 1, len(imageset))
    maps = np.zeros((30, 8, 8), np.float32)
    metrics = evaluate(scores, maps, imageset, 0.5, 0.5)
    write_test_outputs(
        tmp_path,
        imageset,
        scores,
        maps,
        metrics,
        0.5,
        MaskRule(0.5, 0.5),
        {},
        outputs=Outputs.parse(["scores", "overlays=worst:3"]),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlays", "scores.csv"]
    names = [row["name"] for row in csv.DictReader((tmp_path / "scores.csv").open())]
    assert sorted(p.stem for p in (tmp_path / "overlays").iterdir()) == sorted(names[-3:])
    assert len(names) == 30  # every image has its row, written or not


def test_predictions_follow_the_plan(tmp_path, imageset):
    scores = np.linspace(0, 1, len(imageset))
    write_predictions(
        tmp_path,
        imageset,
        scores,
        np.zeros((30, 8, 8), np.float32),
        0.9,
        MaskRule(0.5, 0.5),
        Outputs.parse(["scores", "masks=flagged"], test=False),
    )
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3  # scores 0.93, 0.97, 1.0
    assert not (tmp_path / "overlays").exists()
