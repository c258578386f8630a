import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from funetgan.data import ImageSet
from funetgan.evaluation.metrics import evaluate
from funetgan.outputs.image_files import output_names
from funetgan.outputs.report import write_predictions, write_test_outputs
from funetgan.scoring.masks import MaskRule

S = 8


@pytest.fixture
def imageset():
    masks = np.zeros((4, S, S), bool)
    masks[2, 2:6, 2:6] = True
    masks[3, :4, :4] = True
    return ImageSet(
        images=np.random.default_rng(0).integers(0, 255, (4, S, S, 1), dtype=np.uint8),
        labels=np.array([0, 0, 1, 1]),
        paths=["d/test/good/000.png", "d/test/good/001.png", "d/test/crack/000.png", "ct/vol.nii.gz#z=12"],
        kinds=["good", "good", "crack", "lesion"],
        sizes=np.array([[8, 8], [16, 12], [30, 20], [5, 7]]),
        masks=masks,
    )


@pytest.fixture
def maps(imageset):
    maps = np.zeros((4, S, S), np.float32)
    maps[1] = 1.0  # a normal image flagged everywhere: a false positive
    maps[2, 2:6, 2:6] = 1.0
    return maps  # image 3 (lesion) is missed: a false negative


SCORES = np.array([0.1, 0.9, 0.8, 0.2])
PLAIN = MaskRule(0.5, 0.5)  # every pixel at or above 0.5


def test_output_names_are_unique_and_safe():
    paths = ["a/x/Img 1.png", "a/y/img 1.png", "a/y/img_1.png", "a/vol.nii.gz#z=12"]
    assert output_names(paths) == ["x_Img_1", "y_img_1", "y_img_1-2", "vol.nii_z_12"]
    names = output_names(["scan.dcm#3", "scan.dcm#3"])
    assert len(set(names)) == 2 and all(re.fullmatch(r"[\w.-]+", n) for n in names)


def test_write_test_outputs(tmp_path, imageset, maps):
    metrics = evaluate(SCORES, maps, imageset, 0.5, PLAIN)
    write_test_outputs(tmp_path, imageset, SCORES, maps, metrics, 0.5, PLAIN, {"seed": 1})

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "kind", "score", "predicted", "anomalous_fraction", "name"]
    assert [r["predicted"] for r in rows] == ["0", "1", "1", "0"]
    assert [r["kind"] for r in rows] == imageset.kinds
    assert [float(r["anomalous_fraction"]) for r in rows[:2]] == [0.0, 1.0]

    for row, (height, width) in zip(rows, imageset.sizes):
        mask = Image.open(tmp_path / "masks" / f"{row['name']}.png")
        assert mask.size == (width, height)  # the original size, not the model's
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        overlay = Image.open(tmp_path / "overlays" / f"{row['name']}.png")
        assert overlay.height == 256 and overlay.width > 3 * 256  # 4 panels: truth known
    # Image 2's 4x4 square of an 8x8 map, bilinearly upsampled to 30 x 20, covers about a
    # quarter of the image.
    assert 0.2 < float(rows[2]["anomalous_fraction"]) < 0.3

    page = (tmp_path / "report.html").read_text()
    assert "<table>" in page and "AUROC" in page and "Dice (micro)" in page
    assert "crack" in page and "lesion" in page and "seed: 1" in page
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and all(not link.startswith(("/", "file:", "http")) for link in links)
    assert all((tmp_path / link).is_file() for link in links)
    for plot in ("roc", "pr", "pro", "score_histogram"):
        assert f"plots/{plot}.png" in links
    # The false positive and the false negative are shown, with their overlays.
    assert "False positives" in page and "False negatives" in page
    assert f"overlays/{rows[1]['name']}.png" in page and f"overlays/{rows[3]['name']}.png" in page


def test_report_escapes_text(tmp_path, imageset, maps):
    imageset.kinds[2] = "<b>crack</b>"
    metrics = evaluate(SCORES, maps, imageset, 0.5, PLAIN)
    write_test_outputs(tmp_path, imageset, SCORES, maps, metrics, 0.5, PLAIN, {"note": "a<b"})
    page = (tmp_path / "report.html").read_text()
    assert "<b>crack</b>" not in page and "&lt;b&gt;crack&lt;/b&gt;" in page
    assert "a&lt;b" in page


def test_write_predictions(tmp_path, imageset, maps):
    write_predictions(tmp_path, imageset, SCORES, maps, 0.5, PLAIN)
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "score", "predicted", "anomalous_fraction", "name"]
    assert [r["path"] for r in rows] == imageset.paths
    assert len(list((tmp_path / "masks").glob("*.png"))) == 4
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 4
