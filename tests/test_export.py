"""ONNX export: the checks it makes, parity with PyTorch (whole images and tiles, any batch
size), scoring with onnxruntime alone, and the command line."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from funetgan.cli import main
from funetgan.config import apply_overrides
from funetgan.deploy import export
from funetgan.errors import RunFolderError
from funetgan.model import FUNetGAN

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from funetgan.deploy.onnx_scorer import OnnxScorer  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def trained(random_images, tiny_config):
    torch.set_num_threads(1)
    images = random_images(12, seed=1)
    config = apply_overrides(tiny_config(), ["score.latent_density_weight=1.0"])
    # 40 training images: enough to fit the latent density (16 latent values need 32).
    return FUNetGAN(config).fit(random_images(40, seed=2), images), images


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, images = trained
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    parity = model.export(path, check_images=images)
    return path, parity


def test_export_passes_the_checker_and_agrees_with_pytorch(trained, exported):
    model, images = trained
    path, parity = exported
    assert parity.passed and parity.images == len(images)
    assert parity.maps_max_rel < 1e-4 and parity.scores_max_rel < 1e-4  # float32 on both sides: ~1e-6
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ours, theirs = OnnxScorer.load(path).score(images), model.score(images)
    np.testing.assert_allclose(ours.maps, theirs.maps, rtol=1e-4, atol=1e-4 * np.abs(theirs.maps).max())
    np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-4)


def test_metadata_holds_settings_calibration_and_parity(trained, exported):
    model, _ = trained
    path, _ = exported
    scorer = OnnxScorer.load(path)
    assert scorer.config.to_dict() == model.config.to_dict()
    assert scorer.image_threshold == model.image_threshold and scorer.pixel_threshold == model.pixel_threshold
    assert scorer.calibration == model.calibration
    assert scorer.parity["passed"] and scorer.parity["maps_max_rel"] <= scorer.parity["tolerance"]
    flat = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert float(flat["image_threshold"]) == pytest.approx(model.image_threshold)
    assert flat["image_size"] == "32" and flat["channels"] == "1" and "kappa" in flat
    assert float(flat["smoothness_weight"]) == model.config.score.smoothness_weight
    assert float(flat["latent_density_weight"]) == model.config.score.latent_density_weight == 1.0
    assert "8 * latent_density" not in proto_doc(path) and "1 * latent_density / m_latent_density" in proto_doc(path)


def proto_doc(path) -> str:
    onnx = pytest.importorskip("onnx")
    return onnx.load(str(path)).doc_string


def test_any_batch_size_gives_the_same_terms(trained, exported):
    _, images = trained
    scorer = OnnxScorer.load(exported[0])
    one, five = scorer.residual_terms(images.images, batch_size=1), scorer.residual_terms(images.images, 5)
    np.testing.assert_allclose(one["pixel_residual"], five["pixel_residual"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["image_features"], five["image_features"], rtol=1e-5, atol=1e-9)


def test_both_densities_are_in_the_graph(trained, exported):
    model, images = trained
    ours, theirs = OnnxScorer.load(exported[0]).residual_terms(images.images), model.residual_terms(images.images)
    assert theirs["pixel_density"].max() > 0 and theirs["latent_density"].min() > 0
    np.testing.assert_allclose(
        ours["pixel_density"], theirs["pixel_density"], rtol=1e-4, atol=1e-4 * theirs["pixel_density"].max()
    )
    np.testing.assert_allclose(ours["latent_density"], theirs["latent_density"], rtol=1e-4)


def test_the_onnx_scorer_computes_the_local_contrast_as_pytorch_does(trained, exported):
    model, images = trained  # numpy on the images on both sides (scoring.local_contrast)
    ours, theirs = OnnxScorer.load(exported[0]).residual_terms(images.images), model.residual_terms(images.images)
    assert theirs["pixel_contrast"].max() > 0 and np.array_equal(ours["pixel_contrast"], theirs["pixel_contrast"])


def test_a_file_of_another_format_is_refused_in_one_line(trained, exported, tmp_path):
    import onnx

    from funetgan.deploy.onnx_scorer import META_KEY

    proto = onnx.load(str(exported[0]))
    entry = next(e for e in proto.metadata_props if e.key == META_KEY)
    meta = json.loads(entry.value)
    meta["calibration"] = {"norms": meta["calibration"]["levels"]}  # an earlier funetgan's layout
    entry.value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with pytest.raises(RunFolderError, match="calibrated by an earlier funetgan") as err:
        OnnxScorer.load(tmp_path / "old.onnx")
    assert str(tmp_path / "old.onnx") in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_model_still_scores_after_export(trained, exported):
    model, images = trained  # export folds spectral norm into copies, never into the model
    assert np.isfinite(model.score(images).scores).all()
    assert torch.nn.utils.parametrize.is_parametrized(model.G.fc)


def test_a_broken_export_is_refused_and_nothing_is_written(trained, tmp_path, monkeypatch):
    model, images = trained
    graph = export.export_graph

    def skewed(m):
        g = graph(m)
        with torch.no_grad():
            g.network.G.to_image[2].weight.mul_(1.05)  # what a mistranslated layer looks like
        return g

    monkeypatch.setattr(export, "export_graph", skewed)
    with pytest.raises(export.ParityError, match="does not score like PyTorch"):
        model.export(tmp_path / "bad.onnx", check_images=images)
    assert not (tmp_path / "bad.onnx").exists()


def test_tiled_runs_export_and_stitch_in_the_same_code(tmp_path, random_images, tiny_config):
    model = FUNetGAN(tiny_config(data__resolution="48", score__tile_stride=16))
    model.fit(random_images(8, size=48))
    parity = model.export(tmp_path / "tiled.onnx")  # generated 48 px images: 4 tiles each
    assert parity.passed and "generated" in parity.source
    images = random_images(3, size=48, seed=2).images
    ours, theirs = OnnxScorer.load(tmp_path / "tiled.onnx").score(images), model.score(images)
    assert ours.maps.shape == (3, 48, 48)
    np.testing.assert_allclose(ours.maps, theirs.maps, rtol=1e-4, atol=1e-4 * np.abs(theirs.maps).max())


def test_a_model_trained_in_bf16_is_its_own_float32_reference(trained, tmp_path, monkeypatch):
    model, images = trained
    monkeypatch.setattr(model.runtime, "amp", True)  # autocast is for training: scoring stays float32
    assert export.reference(model) is model
    assert model.export(tmp_path / "m.onnx", check_images=images).passed


def test_a_model_on_a_gpu_is_checked_against_its_float32_cpu_copy(trained, tmp_path, monkeypatch):
    model, images = trained
    monkeypatch.setattr(model.runtime, "device", torch.device("cuda"))  # only the label: the nets stay here
    assert isinstance(export.reference(model), export._TorchGraph)
    assert model.export(tmp_path / "m.onnx", check_images=images).passed


@pytest.mark.slow
def test_the_dynamo_exporter_agrees_too(trained, tmp_path):
    pytest.importorskip("onnxscript")
    model, images = trained
    assert model.export(tmp_path / "dynamo.onnx", check_images=images, exporter="dynamo").passed


def test_other_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(RunFolderError, match="missing.onnx: no such model file"):
        OnnxScorer.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(RunFolderError, match="not a readable ONNX model"):
        OnnxScorer.load(tmp_path / "junk.onnx")


def test_scoring_an_exported_model_never_imports_torch(trained, exported, tmp_path):
    """The deployment path: onnxruntime, numpy and the data and report code only. torch is
    made unimportable in a fresh interpreter; the command line and the Python API must work."""
    _, images = trained
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(images.images[:3]):
        Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
    script = f"""
import sys

class NoTorch:  # as if torch were not installed: any `import torch...` fails
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")

sys.meta_path.insert(0, NoTorch())
from funetgan.cli import main
code = main(["predict", "--model", {str(exported[0])!r}, "--out", {str(tmp_path / "out")!r}, {str(folder)!r}])
import numpy as np
from funetgan import OnnxScorer
result = OnnxScorer.load({str(exported[0])!r}).score(np.zeros((2, 32, 32, 1), np.uint8))
assert result.maps.shape == (2, 32, 32) and "torch" not in sys.modules
try:
    import torch  # the block works: the PyTorch path would have failed
except ModuleNotFoundError:
    print("exit", code, "torch-free")
"""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exit 0 torch-free" in done.stdout
    assert len(list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))) == 3


# ---- command line (on test_cli's tiny brick set and run) --------------------------------------
def test_export_command_checks_on_the_runs_validation_images(tiny_run, texture_dataset, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    assert main(["export", "--run", str(tiny_run), "--out", str(model), "--data", str(texture_dataset)]) == 0
    out = capsys.readouterr().out
    assert "validation images" in out and "max relative error" in out and "passed" in out
    held_out = OnnxScorer.load(model).parity["images"]
    assert held_out == 1  # 10 % of the 12 training crops: the run's own validation split
    assert main(["export", "--run", str(tiny_run), "--out", str(model)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_predict_and_test_with_the_exported_model_match_pytorch(tiny_run, texture_dataset, tmp_path):
    model = tmp_path / "m.onnx"
    assert main(["export", "--run", str(tiny_run), "--out", str(model)]) == 0
    files = [str(texture_dataset / "test" / "hole" / "000.png"), str(texture_dataset / "test" / "good")]
    for option, value, out in (("--run", tiny_run, "torch"), ("--model", model, "onnx")):
        assert main(["predict", option, str(value), "--out", str(tmp_path / out), *files]) == 0
        assert (
            main(["test", option, str(value), "--data", str(texture_dataset), "--out", str(tmp_path / f"t-{out}")]) == 0
        )
    rows = {out: list(csv.DictReader((tmp_path / out / "predictions.csv").open())) for out in ("torch", "onnx")}
    assert [r["name"] for r in rows["torch"]] == [r["name"] for r in rows["onnx"]]
    np.testing.assert_allclose(
        [float(r["score"]) for r in rows["onnx"]], [float(r["score"]) for r in rows["torch"]], rtol=1e-4
    )
    metrics = {out: json.loads((tmp_path / f"t-{out}" / "metrics.json").read_text()) for out in ("torch", "onnx")}
    assert metrics["onnx"]["image"]["auroc"] == pytest.approx(metrics["torch"]["image"]["auroc"], abs=1e-6)
    assert metrics["onnx"]["pixel"]["auroc"] == pytest.approx(metrics["torch"]["pixel"]["auroc"], abs=1e-3)


def test_run_and_model_are_one_or_the_other(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--run", str(tiny_run), "--model", "m.onnx", "--out", str(tmp_path), "x.png"])
    assert "not allowed with" in capsys.readouterr().err
