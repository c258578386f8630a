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


def run_api_example(namespace: dict) -> None:
    code = python_blocks()[0]
    assert "steps = 300" in code
    exec(compile(code.replace("steps = 300", "steps = 2"), "README.md", "exec"), namespace)


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
