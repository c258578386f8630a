"""Each benchmark script end to end with --smoke: it prints its table and writes a complete
JSON results file of finite numbers."""

import importlib
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def script(monkeypatch):
    """Import a benchmark script as a module (they import their shared `common` module)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def run(module, tmp_path, *options) -> dict:
    out = tmp_path / "results.json"
    assert module.main(["--smoke", "--device", "cpu", "--out", str(out), *options]) == 0
    return read_results(out)


def read_results(path: Path) -> dict:
    def reject(constant):
        raise AssertionError(f"non-finite number {constant} in {path}")

    document = json.loads(path.read_text(), parse_constant=reject)
    assert {"script", "date", "command", "machine", "options", "results"} <= document.keys()
    assert {"cpu", "cores", "torch", "device"} <= document["machine"].keys()
    assert "--smoke" in document["command"] and document["options"]["smoke"] is True
    return document


def assert_unit(*values) -> None:
    for value in values:
        assert isinstance(value, float) and 0.0 <= value <= 1.0, value


def test_speed(script, tmp_path, capsys):
    speed = script("speed")
    results = run(speed, tmp_path)["results"]
    assert [row["option"] for row in results["training"]] == ["defaults", *speed.OPTIONS]
    for row in [*results["training"], *results["reference"].values()]:
        assert row["critic_step_s"] > 0 and row["critic_steps_per_s"] > 0 and "settings" in row
        assert {"generator_update_s", "generator_step_s"} <= row.keys()  # intercepts: noisy at smoke size
    off = results["reference"]["all_options_off"]["settings"]
    assert off["gan"]["gp_every"] == 1
    assert [row["batch"] for row in results["scoring"]] == [1, 64]
    assert all(row["images_per_second"] > 0 and row["peak_memory_mib"] > 0 for row in results["scoring"])
    assert [(r["working_resolution"], r["stride"], r["tiles_per_image"]) for r in results["tiled"]] == [
        (64, 16, 9),
        (64, 32, 4),
    ]
    out = capsys.readouterr().out
    assert "critic steps/s" in out and "images/s" in out and "reference critic step" in out


def test_train_speed(script, tmp_path, capsys):
    results = run(script("train_speed"), tmp_path)["results"]
    assert [(r["stage"], r["size"], r["threads"]) for r in results["stages"]] == [
        ("warm-up", 32, 1),
        ("adversarial", 32, 1),
        ("encoder", 32, 1),
    ]
    assert all(r["steps_per_s"] > 0 and r["gflop_per_step"] > 0 and r["gflop_per_s"] > 0 for r in results["stages"])
    (breakdown,) = results["breakdown"]
    parts = {part["part"]: part for part in breakdown["parts"]}
    assert parts["critic: + gradient penalty"]["per_step_share"] == 1 / breakdown["gp_every"] == 0.25  # CPU recipe
    assert all(part["gflop"] > 0 for name, part in parts.items() if not name.startswith("optimisers"))
    # The parts, the penalty at its share, are the adversarial step the stage table counted.
    adversarial = results["stages"][1]["gflop_per_step"]
    assert breakdown["step_gflop"] == pytest.approx(adversarial, rel=1e-9)
    assert sum(part["share_of_step_flops"] for part in parts.values()) == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "one adversarial step at 32 px" in out


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_fashion_mnist(script, tmp_path, capsys):
    fashion = script("fashion_mnist")
    results = run(fashion, tmp_path, "--classes", "3", "--minutes", "0.5")["results"]
    (run_,) = results["groups"]["3"]["runs"]
    assert_unit(run_["image_auroc"], results["mean_image_auroc"]["mean"])
    assert run_["pixel_auroc"] is None  # image-level data
    assert run_["settings"]["data"]["normal_class"] == 3 and run_["settings"]["gan"]["max_minutes"] == 0.375
    assert results["published_mean_auroc_percent"]["GEOM"] == 93.5
    out = capsys.readouterr().out
    assert "dress" in out and "GEOM" in out and "F-UNetGAN" in out


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_recipes(script, tmp_path, capsys):
    recipes = script("recipes")
    results = run(
        recipes, tmp_path, "--classes", "3", "--budgets", "0.5", "1", "--recipes", "straightforward", "CPU recipe"
    )["results"]
    assert list(results["groups"]) == [
        f"{r} | {m} min | class 3" for m in ("0.5", "1") for r in ("straightforward", "CPU recipe")
    ]
    straightforward = results["groups"]["straightforward | 1 min | class 3"]["runs"][0]["settings"]
    assert straightforward["gan"]["gp_every"] == 1 and straightforward["gan"]["lr_d"] == 0.0001
    assert straightforward["gan"]["max_minutes"] == 0.75  # the budget reaches the run
    recipe = results["groups"]["CPU recipe | 0.5 min | class 3"]["runs"][0]
    assert_unit(recipe["image_auroc"])
    assert recipe["settings"]["gan"]["warmup_iterations"] > 0  # so the reconstruction term too
    out = capsys.readouterr().out
    assert "0.5 min" in out and "straightforward" in out


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_budgets(script, tmp_path, capsys):
    budgets = script("budgets")
    keep = tmp_path / "runs"
    results = run(
        budgets,
        tmp_path,
        "--classes",
        "3",
        "--budgets",
        "0.5",
        "1",
        "--seeds",
        "0",
        "1",
        "--variants",
        "CPU recipe",
        "--keep",
        str(keep),
    )["results"]
    runs = results["runs"]
    assert [(r["variant"], r["minutes"], r["seed"]) for r in runs] == [
        ("CPU recipe", m, s) for s in (0, 1) for m in (0.5, 1.0)
    ]
    for r in runs:
        assert_unit(r["image_auroc"])
        assert r["steps"].keys() == {"warmup", "gan", "encoder"} and r["val_normal"]["image_residual"] > 0
    assert runs[1]["settings"]["gan"]["max_minutes"] == 0.75  # the budget reaches the run
    assert (keep / "CPU_recipe-1min-class3-seed1" / "test_reconstructions.png").is_file()
    out = capsys.readouterr().out
    assert "CPU recipe, class 3" in out and "1 min" in out


def test_budgets_test_subset_keeps_every_normal(script):
    import numpy as np

    from funetgan.data.base import ImageSet

    labels = np.r_[np.zeros(5, np.int64), np.ones(20, np.int64)]
    test = ImageSet(
        np.zeros((25, 2, 2, 1), np.uint8), labels, [f"{i}" for i in range(25)], ["x"] * 25, np.full((25, 2), 2)
    )
    subset = script("budgets").test_subset(test, 12)
    assert len(subset) == 12 and (subset.labels == 0).sum() == 5
    assert subset.paths == script("budgets").test_subset(test, 12).paths  # the same draw every time
    assert script("budgets").test_subset(test, None) is test


def test_fashion_class_ranges(script):
    assert script("fashion_mnist").class_list("0-2,7") == [0, 1, 2, 7]


def test_textures(script, tmp_path, capsys):
    data = tmp_path / "data"
    results = run(script("textures"), tmp_path, "--textures", "brick", "--data-dir", str(data))["results"]
    group = results["groups"]["brick"]
    assert_unit(group["runs"][0]["image_auroc"], group["runs"][0]["pixel_auroc"], group["runs"][0]["aupro"])
    assert group["meets_targets"] in (True, False)
    assert (data / "brick-smoke" / "ground_truth").is_dir()
    alternatives = group["runs"][0]["scoring_alternatives"]
    default = alternatives["kappa 1, izif"]
    assert default["image_auroc"] == group["runs"][0]["image_auroc"]  # the default is among them
    assert default["pixel_auroc"] == group["runs"][0]["pixel_auroc"]
    assert alternatives["kappa 0, max of map"]["pixel_auroc"] == alternatives["kappa 0, izif"]["pixel_auroc"]
    out = capsys.readouterr().out
    assert "pixel AUROC" in out and "target" in out and "kappa 0, top 1% of map" in out


def test_ablation(script, tmp_path, capsys):
    ablation = script("ablation")
    document = run(ablation, tmp_path, "--seeds", "0", "1", "--set", "gan.lambda_gp=5")
    groups = document["results"]["groups"]
    assert list(groups) == list(ablation.VARIANTS)
    for group in groups.values():
        assert [r["seed"] for r in group["runs"]] == [0, 1]
        assert group["summary"]["image_auroc"]["n"] == 2 and group["summary"]["image_auroc"]["std"] is not None
        assert_unit(group["summary"]["image_auroc"]["mean"], group["summary"]["aupro"]["mean"])
        assert group["runs"][0]["settings"]["gan"]["lambda_gp"] == 5  # --set reaches every run
    baseline = groups["f-AnoGAN"]["runs"][0]["settings"]
    assert baseline["model"]["critic_head"] == "global" and baseline["gan"]["consistency"] == "none"
    assert "± " in capsys.readouterr().out


def test_resolution(script, tmp_path, capsys):
    data = tmp_path / "data"
    results = run(script("resolution"), tmp_path, "--textures", "brick", "--data-dir", str(data))["results"]
    assert list(results["groups"]) == ["brick whole", "brick 64"]
    whole, patches = (results["groups"][name]["runs"][0] for name in ("brick whole", "brick 64"))
    assert whole["settings"]["data"]["resolution"] is None and patches["settings"]["data"]["resolution"] == "64"
    for run_ in (whole, patches):
        assert_unit(run_["image_auroc"], run_["pixel_auroc"], run_["aupro"])
        assert_unit(*(v for alt in run_["scoring_alternatives"].values() for v in alt.values()))
    out = capsys.readouterr().out
    assert "report split" in out and "brick 64" in out and "64-px resolution" in out and "kappa 0, blur 4 px" in out


def test_localisation(script, tmp_path, capsys):
    localisation = script("localisation")
    results = run(
        localisation,
        tmp_path,
        "--textures",
        "gravel",
        "--seeds",
        "0",
        "1",
        "--split",
        "selection",
        "--previews",
        str(tmp_path / "looks"),
    )["results"]
    assert len(list((tmp_path / "looks").glob("gravel-F-UNetGAN-seed*.png"))) == 2
    assert list(results["groups"]) == ["gravel F-UNetGAN", "gravel f-AnoGAN"]
    ours, baseline = (results["groups"][name]["runs"] for name in results["groups"])
    assert baseline[0]["settings"]["model"]["critic_head"] == "global" and ours[0]["settings"]["score"]["kappa"] == 1
    assert ours[0]["settings"]["data"]["resolution"] == "64" and results["split"] == "selection"
    for run_ in (*ours, *baseline):
        assert_unit(
            run_["pixel_auroc"], run_["aupro"], *(v for a in run_["scoring_alternatives"].values() for v in a.values())
        )
    # the baseline scores as published: its residual maps only
    score = baseline[0]["settings"]["score"]
    assert score["density_weight"] == score["smoothness_weight"] == 0
    assert baseline[0]["scoring_alternatives"]["density 0, smoothness 0 (residual maps only)"] == {
        k: baseline[0][k] for k in ("image_auroc", "pixel_auroc", "aupro")
    }
    out = capsys.readouterr().out
    assert "F-UNetGAN minus f-AnoGAN" in out and "gravel" in out and "density 1, smoothness 2, kappa 0" in out
    # the same tables from two results files, one per model (as when they run side by side)
    ours_file, theirs_file = tmp_path / "ours.json", tmp_path / "theirs.json"
    for name, target in (("F-UNetGAN", ours_file), ("f-AnoGAN", theirs_file)):
        document = json.loads((tmp_path / "results.json").read_text())
        document["results"]["models"] = {name: localisation.MODELS[name]}
        document["results"]["groups"] = {f"gravel {name}": document["results"]["groups"][f"gravel {name}"]}
        target.write_text(json.dumps(document))
    assert localisation.main(["--show", str(ours_file), str(theirs_file)]) == 0
    out = capsys.readouterr().out  # the margin, then the margin against the baseline given the default's map terms
    assert out.count("F-UNetGAN minus f-AnoGAN") == 2 and "minus f-AnoGAN scored with 'density 1, smoothness 2'" in out


def test_calibration(script, tmp_path, capsys, monkeypatch):
    """The calibration benchmark end to end on the demo's data (selection split: the mask rules
    too), then again from the saved run, then its tables: each kind of normals on its own."""
    monkeypatch.setattr("funetgan.model.FIT_SAMPLES", 256)  # enough for the smoke networks' Gaussians, 16x faster
    calibration, runs = script("calibration"), tmp_path / "runs"
    results = run(
        calibration, tmp_path, "--datasets", "demo", "--seeds", "0", "--split", "selection", "--runs", str(runs)
    )["results"]
    (first,) = results["groups"]["demo"]["runs"]
    assert first["normals_calibrated"] == 8  # the data's val/good/, not training crops held out
    for normals in calibration.NORMALS:
        assert_unit(first[f"image_rate_{normals}"], first[f"pixel_rate_{normals}"], first[f"masked_images_{normals}"])
    assert first["image_rate_test_normals"] == 1 - first["specificity"]
    assert_unit(first["in_sample_image_rate_fresh"], first["dice"], first["oracle_dice"])
    assert not any(key.endswith("_same") for key in first)  # nothing pooled
    assert first["mask_rules"] and first["train_minutes"] > 0
    again = run(
        calibration, tmp_path, "--datasets", "demo", "--seeds", "0", "--split", "selection", "--runs", str(runs)
    )["results"]["groups"]["demo"]["runs"][0]
    assert again["train_minutes"] == 0 and again["image_rate_fresh"] == first["image_rate_fresh"]
    assert calibration.main(["--show", str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "images: test normals" in out and "oracle Dice" in out and "older file" not in out
    page = script("make_docs").calibration_tables(json.loads((tmp_path / "results.json").read_text()))
    assert "| images: test normals | images: fresh |" in page and "pooled)" not in page


def test_make_docs_keeps_pooled_figures_of_older_files_apart(script):
    """A file from before the fresh normals had their own key: its pooled figure is marked,
    never shown as the fresh normals' or the test normals'."""
    runs = [
        {
            "seed": s,
            "image_rate_same": 0.02,
            "image_rate_test_normals": 0.1,
            "image_rate_shifted": 0.3,
            "pixel_rate_same": 0.01,
        }
        for s in range(2)
    ]
    document = {
        "script": "benchmarks/calibration.py",
        "results": {"split": "report", "normal_quantile": 0.99, "groups": {"grass": {"runs": runs}}},
    }
    page = script("make_docs").calibration_tables(document)
    assert "| grass | 2 | 10.0 ± 0.0 | 2.0 ± 0.0 (pooled) | - | 30.0 ± 0.0 | - | 1.00 ± 0.00 (pooled) |" in page


@pytest.mark.slow
def test_deploy_speed(script, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    results = run(script("deploy_speed"), tmp_path)["results"]
    rows = {(r["runtime"], r["batch"]): r for r in results["scoring"]}
    assert set(rows) == {(runtime, batch) for runtime in ("pytorch", "onnx") for batch in (1, 64)}
    assert all(r["images_per_second"] > 0 and r["parity_max_rel"] < 1e-3 for r in rows.values())
    assert not rows["onnx", 1]["torch_imported"] and rows["pytorch", 1]["torch_imported"]
    tests = {r["runtime"]: r for r in results["test"]}
    assert set(tests) == {"pytorch", "onnx"} and tests["onnx"]["images"] == tests["pytorch"]["images"] > 0
    assert all(r["wall_seconds"] >= r["seconds"] >= 0 for r in tests.values())
    assert "funetgan test" in capsys.readouterr().out


def test_an_alternative_is_measured_only_where_its_term_was_calibrated(script):
    """The latent density's level is missing when calibration had too few samples to fit it."""
    common = script("common")
    model = type("Calibrated", (), {"calibration": type("Calibration", (), {"levels": {"pixel_density": 1.0}})()})()
    assert common.calibrated_for(model, {"kappa": 0.0, "density_weight": 2.0, "latent_density_weight": 0.0})
    assert not common.calibrated_for(model, {"latent_density_weight": 1.0})


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_fashion_mnist_selection_split_holds_out_training_images(script):
    """1,000 of the class and 1,000 of the others, never trained on; the same draw every time."""
    split = script("fashion_mnist").selection_split(str(FASHION_MNIST), 3, 32, 1)
    assert len(split.train) == 5000 and (split.train.labels == 0).all()
    assert (split.test.labels == 0).sum() == 1000 and (split.test.labels == 1).sum() == 1000
    assert not set(split.train.paths) & set(split.test.paths)
    assert all("train-images" in path for path in split.test.paths)
    again = script("fashion_mnist").selection_split(str(FASHION_MNIST), 3, 32, 1)
    assert again.test.paths == split.test.paths


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_fashion_mnist_with_fewer_training_images_draws_them_once_per_class(script):
    fashion = script("fashion_mnist")
    split = fashion.selection_split(str(FASHION_MNIST), 3, 32, 1)
    small = fashion.fewer_training_images(split, 3, 300)
    assert len(small.train) == 300 and set(small.train.paths) <= set(split.train.paths)
    assert small.test is split.test
    assert fashion.fewer_training_images(split, 3, 300).train.paths == small.train.paths
    assert fashion.fewer_training_images(split, 4, 300).train.paths != small.train.paths  # another class's draw
    with pytest.raises(ValueError, match="--train-images must lie in 1-5000, got 5001"):
        fashion.fewer_training_images(split, 3, 5001)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_fashion_mnist_on_the_selection_split(script, tmp_path):
    results = run(script("fashion_mnist"), tmp_path, "--classes", "3", "--split", "selection")["results"]
    assert results["split"] == "selection"
    (run_,) = results["groups"]["3"]["runs"]
    assert_unit(run_["image_auroc"])
    assert run_["test_images"] == 32  # the smoke subset of the held-out images
