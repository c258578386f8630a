"""The README's Python example runs as written (with fewer training steps)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    code = blocks[0]
    assert "steps = 300" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("steps = 300", "steps = 2"), "README.md", "exec"), {})
    image_auroc, pixel_auroc = map(float, capsys.readouterr().out.split()[-2:])
    assert 0 <= image_auroc <= 1 and 0 <= pixel_auroc <= 1
    assert (tmp_path / "model.safetensors").exists()


def test_deployment_example_runs(tmp_path, monkeypatch, capsys):
    """The Deployment section's example continues the Python API example."""
    import pytest
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (deployment,) = [block for block in blocks if "OnnxScorer" in block]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0].replace("steps = 300", "steps = 2"), "README.md", "exec"), namespace)
    exec(compile(deployment, "README.md", "exec"), namespace)
    assert capsys.readouterr().out.split()[-2:] == ["True", "True"]
    assert (tmp_path / "model.onnx").exists()
