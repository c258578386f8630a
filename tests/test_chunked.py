"""`test` and `predict` chunk by chunk (volume by volume) give what the whole set in memory
gives: metrics, tables, per-image and per-volume files. A numpy scorer (a fixed function of
the pixels, no networks) makes the maps exact, so any difference is the chunking's."""

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from funetgan import pipeline as chunked
from funetgan.config import Config
from funetgan.data import ImageSet, base, load_dataset
from funetgan.evaluation.metrics import evaluate
from funetgan.medical.volumes import volume_metrics, volume_results, voxel_ap_of_set, write_volumes
from funetgan.outputs.report import write_predictions, write_test_outputs
from funetgan.outputs.selection import Outputs
from funetgan.scoring.calibration import Calibration
from funetgan.scoring.scorer import Scorer

nibabel = pytest.importorskip("nibabel")


class PixelScorer(Scorer):
    """Maps and scores that are a fixed function of each tile's pixels."""

    def __init__(self, size: int, image_threshold: float, pixel_threshold: float):
        self.config = Config()
        self.config.model.image_size, self.config.model.channels = size, 1
        self.config.score.blur_sigma = 1.0
        norms = {
            **dict.fromkeys(("pixel_residual", "pixel_features", "image_residual", "image_features"), 1.0),
            # the contrast: from the images
            "pixel_density": 1.0,
            "pixel_contrast": 0.2,
            "pixel_contrast_std": 0.1,
            "latent_density": 1.0,
        }
        self.calibration = Calibration(
            levels=norms,
            image_threshold=image_threshold,
            pixel_threshold=pixel_threshold,
            blur_sigma=1.0,
            normals=100,
            anomalous=0,
            rule="normal quantile 0.99",
            expected_image_rate=0.01,
            unit_scale={"score": {"median": 0.0, "spread": 1.0}, "map": {"median": 0.0, "spread": 1.0}},
        )

    def _score_tiles(self, tiles):
        x = tiles[..., 0].astype(np.float32) / 255
        return {
            "maps": {"pixel_residual": x, "pixel_features": x * x, "pixel_density": 1 - x},
            "values": {
                "image_residual": x.mean((1, 2)),
                "image_features": x.max((1, 2)),
                "latent_density": x.std((1, 2)),
            },
        }


def in_memory(model: Scorer, images: ImageSet, out, outputs: Outputs) -> dict:
    """The whole-set path: every map held, then metrics and files from them."""
    result = model.score(images)
    region = model.scoring_region(images)
    image_t, rule = model.image_threshold, model.mask_rule
    found = evaluate(result.scores, result.maps, images, image_t, rule, region)
    found["scored_pixels"] = "whole image" if region is None else chunked.LUNG_SCORED
    found["promise"] = chunked.kept_promise(model, images, result.scores, image_t)
    volumes = volume_results(images, result.scores, rule(result.maps, result.scores >= image_t), image_t)
    if volumes:
        found["volume"] = volume_metrics(volumes, image_t, voxel_ap=voxel_ap_of_set(images, result.maps))
    write_test_outputs(out, images, result.scores, result.maps, found, image_t, rule, {}, volumes, outputs)
    write_volumes(out, images, result.scores, result.maps, rule, image_t, volumes, region)
    found.pop("timing")  # seconds spent on files
    return found


def assert_same(a, b, path="metrics"):
    """Equal structures; floats equal but for summation order (PRO weights)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), path
    else:
        assert a == b, path


def assert_same_files(a, b, names):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png") if "plots" not in p.parts)


@pytest.fixture
def ct_set(tmp_path, save_nifti):
    """6 noisy 16 x 16 x 5 volumes with lung masks and a lesion in some slices."""
    rng = np.random.default_rng(0)
    for v in range(6):
        scan = rng.integers(-1000, 400, (16, 16, 5)).astype(np.int16)
        lesion = np.zeros((16, 16, 5), np.uint8)
        lesion[3:8, 4:9, 2 + v % 3 :] = 1
        scan[lesion > 0] += 300
        lung = np.zeros((16, 16, 5), np.uint8)
        lung[1:15, 2:14] = 1
        for folder, volume in (("ct_scans", scan), ("infection_mask", lesion), ("lung_mask", lung)):
            save_nifti(tmp_path / "ct" / folder / f"case{v}.nii.gz", volume)
    config = Config()
    config.data.test_fraction = 0.5
    return load_dataset(tmp_path / "ct", 16, 1, config.data).test


def test_ct_volume_by_volume_equals_the_whole_set(ct_set, tmp_path, monkeypatch):
    model = PixelScorer(16, image_threshold=0.3, pixel_threshold=0.55)
    monkeypatch.setattr(base, "CHUNK_PIXELS", 2 * 16 * 16)  # and 2 slices per histogram chunk
    outputs = Outputs.parse(["all"])
    whole = in_memory(model, ct_set, tmp_path / "whole", outputs)
    chunks = [rows.tolist() for rows, _ in chunked.chunks(ct_set)]
    assert len(chunks) == 3 and sorted(sum(chunks, [])) == list(range(len(ct_set)))  # one per test volume
    found = chunked.run_test(model, ct_set, tmp_path / "chunked", outputs, 0.3, model.mask_rule)
    found.pop("timing")
    assert_same(whole, found)
    assert found["pixel"]["dice"] is not None and found["volume"]["n_volumes"] == 3
    # Fewer distinct values than bins: the curves are exact (sklearn on the lung's pixels).
    result = model.score(ct_set)
    inside = ct_set.lung.astype(bool)
    truth, values = ct_set.masks[inside], result.maps[inside]
    assert found["pixel"]["auroc"] == pytest.approx(roc_auc_score(truth, values), abs=1e-12)
    assert found["pixel"]["ap"] == pytest.approx(average_precision_score(truth, values), abs=1e-12)
    assert_same_files(tmp_path / "whole", tmp_path / "chunked", ["scores.csv", "volumes.csv"])
    assert listing(tmp_path / "whole") == listing(tmp_path / "chunked")
    assert_same_files(tmp_path / "whole", tmp_path / "chunked", listing(tmp_path / "whole"))
    for row in csv.DictReader((tmp_path / "whole" / "volumes.csv").open()):
        for suffix in ("map", "mask"):
            name = f"volumes/{row['volume']}_{suffix}.nii.gz"
            np.testing.assert_array_equal(
                nibabel.load(tmp_path / "whole" / name).get_fdata(),
                nibabel.load(tmp_path / "chunked" / name).get_fdata(),
            )


@pytest.fixture
def image_set():
    """60 noisy 12 x 12 images: 30 normal, 15 "crack" and 15 "hole" with square defects."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 120, (60, 12, 12, 1)).astype(np.uint8)
    masks = np.zeros((60, 12, 12), bool)
    labels = np.r_[np.zeros(30, int), np.ones(30, int)]
    kinds = ["good"] * 30 + ["crack"] * 15 + ["hole"] * 15
    for i in range(30, 60):
        y, x = rng.integers(0, 8, 2)
        masks[i, y : y + 4, x : x + 4] = True
        images[i][masks[i]] += rng.integers(20, 120, (16, 1)).astype(np.uint8)
    rng.shuffle(order := np.arange(60))  # normal and anomalous images mixed through the chunks
    return ImageSet(
        images[order],
        labels[order],
        [f"test/{kinds[i]}/{i:03d}.png" for i in order],
        [kinds[i] for i in order],
        np.full((60, 2), 24),
        masks[order],
    )


@pytest.mark.parametrize(
    "items",
    [["all"], ["metrics", "scores", "report", "overlays=examples"], ["masks=worst:3+best:2", "overlays=flagged"]],
)
def test_images_in_chunks_equal_the_whole_set(image_set, tmp_path, monkeypatch, items):
    model = PixelScorer(12, image_threshold=0.55, pixel_threshold=0.6)
    monkeypatch.setattr(base, "CHUNK_PIXELS", 7 * 12 * 12)  # 9 chunks of 7 images (and one of 4)
    outputs = Outputs.parse(items)
    whole = in_memory(model, image_set, tmp_path / "whole", outputs)
    found = chunked.run_test(model, image_set, tmp_path / "chunked", outputs, 0.55, model.mask_rule)
    found.pop("timing")
    assert_same(whole, found)
    assert set(found["per_kind"]) == {"crack", "hole"} and found["per_kind"]["hole"]["pixel"]["aupro"] > 0
    result = model.score(image_set)  # 8,640 pixels: exact curves
    assert found["pixel"]["auroc"] == pytest.approx(
        roc_auc_score(image_set.masks.ravel(), result.maps.ravel()), abs=1e-12
    )
    assert listing(tmp_path / "whole") == listing(tmp_path / "chunked")
    assert_same_files(tmp_path / "whole", tmp_path / "chunked", listing(tmp_path / "whole"))
    if outputs.scores:
        assert_same_files(tmp_path / "whole", tmp_path / "chunked", ["scores.csv"])
    if outputs.metrics:
        written = json.loads((tmp_path / "chunked" / "metrics.json").read_text())
        assert written["timing"]["images"] == 60


def test_only_the_maps_the_files_need_are_kept(image_set, tmp_path, monkeypatch):
    """Default outputs: the report's examples (4 sections of at most 12) are all that wait
    for the whole set; with chunks of 7 images not every map is kept."""
    model = PixelScorer(12, image_threshold=0.55, pixel_threshold=0.6)
    monkeypatch.setattr(base, "CHUNK_PIXELS", 7 * 12 * 12)
    kept = []
    real = chunked.MapStore.put

    def put(store, rows, maps):
        kept.extend(int(r) for r in rows)
        real(store, rows, maps)

    monkeypatch.setattr(chunked.MapStore, "put", put)
    outputs = Outputs.parse(["metrics", "report", "overlays=examples"])
    chunked.run_test(model, image_set, tmp_path, outputs, 0.55, model.mask_rule)
    assert len(set(kept)) < len(image_set)
    assert len(list((tmp_path / "overlays").iterdir())) <= 4 * 12


def test_predict_in_chunks_equals_the_whole_set(image_set, tmp_path, monkeypatch):
    model = PixelScorer(12, image_threshold=0.55, pixel_threshold=0.6)
    monkeypatch.setattr(base, "CHUNK_PIXELS", 5 * 12 * 12)
    outputs = Outputs.parse(["scores", "masks=flagged", "overlays=worst:4"], test=False)
    result = model.score(image_set)
    write_predictions(tmp_path / "whole", image_set, result.scores, result.maps, 0.55, model.mask_rule, outputs)
    scores = chunked.run_predict(model, image_set, tmp_path / "chunked", outputs, 0.55, model.mask_rule)
    np.testing.assert_array_equal(scores, result.scores)
    assert listing(tmp_path / "whole") == listing(tmp_path / "chunked")
    assert_same_files(tmp_path / "whole", tmp_path / "chunked", ["predictions.csv", *listing(tmp_path / "whole")])
    assert not (tmp_path / "chunked" / "volumes.csv").exists()  # predict writes it only for volumes
