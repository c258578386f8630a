"""The README's Python examples run as written (with fewer training steps) and do what they say."""

import math
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    return blocks


# The API example trains for its one variable `minutes`; here for about a second, the rest as written.
TEST_MINUTES = 0.02


def run_api_example(namespace: dict) -> None:
    code = python_blocks()[0]
    (budget,) = re.findall(r"^minutes = .*$", code, re.M)
    exec(compile(code.replace(budget, f"minutes = {TEST_MINUTES}"), "README.md", "exec"), namespace)
    assert namespace["config"].gan.max_minutes + namespace["config"].encoder.max_minutes == pytest.approx(TEST_MINUTES)


def test_python_example_says_how_long_it_takes():
    """The README's promise to a newcomer: the budget, and the time in all (measured: CHANGELOG.md)."""
    (line,) = [line for line in python_blocks()[0].splitlines() if line.startswith("minutes = ")]
    budget, total = re.fullmatch(
        r"minutes = (\d+) +# of training: under (\d+) minutes in all on a 2-core CPU", line
    ).groups()
    assert int(budget) < int(total) <= 10  # a coffee break


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    run_api_example(namespace)
    printed = capsys.readouterr().out.split()[-2:]
    image_auroc, pixel_auroc = map(float, printed)  # the printed values are the two AUROCs ...
    metrics = namespace["metrics"]
    assert (image_auroc, pixel_auroc) == (metrics["image"]["auroc"], metrics["pixel"]["auroc"])
    # ... of a test set with both kinds of image and pixel truth (an AUROC of one kind is undefined) ...
    labels = namespace["splits"].test.labels
    assert 0 < labels.sum() < len(labels) and namespace["splits"].test.masks is not None
    # ... and the saved model loads with its calibration: the thresholds of the model that scored.
    assert (tmp_path / "model.safetensors").exists()
    loaded = namespace["model"]
    assert loaded.calibration is not None and loaded.calibration.normals > 0
    assert math.isfinite(loaded.image_threshold) and math.isfinite(loaded.pixel_threshold)
    assert loaded.image_threshold == metrics["image"]["threshold"]
    assert loaded.pixel_threshold == metrics["pixel"]["threshold"]


def test_deployment_example_runs(tmp_path, monkeypatch, capsys):
    """The Deployment section's example continues the Python API example."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    (deployment,) = [block for block in python_blocks() if "OnnxScorer" in block]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    run_api_example(namespace)
    exec(compile(deployment, "README.md", "exec"), namespace)
    assert capsys.readouterr().out.split()[-2:] == ["True", "True"]
    assert (tmp_path / "model.onnx").exists()
