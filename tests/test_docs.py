"""The docs and the code stay together: every flag and setting documented (and nothing that is
gone), links that resolve, a short README whose make commands exist, generated pages current."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

from funetgan.cli import build_parser
from funetgan.config import all_keys

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS = ROOT / "docs" / "commands.md"
PAGES = [README, ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "benchmarks" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def documented_keys() -> set[str]:
    """The settings keys of docs/commands.md: first column of a table row, backticked."""
    return set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)?)` \|", COMMANDS.read_text(), re.M))


def test_every_flag_of_every_command_is_documented():
    text = COMMANDS.read_text()
    missing = []
    for name, parser in subcommands().items():
        if f"funetgan {name}" not in text:
            missing.append(f"command {name}")
        for action in parser._actions:
            names = action.option_strings or [action.metavar or action.dest]
            missing += [f"{name} {flag}" for flag in names if f"`{flag}" not in text]
    assert not missing, f"not in docs/commands.md: {missing}"


def test_every_setting_is_documented_and_every_documented_setting_exists():
    keys, documented = set(all_keys()), documented_keys()
    assert not keys - documented, f"settings missing from docs/commands.md: {sorted(keys - documented)}"
    assert not documented - keys, f"docs/commands.md documents settings that do not exist: {sorted(documented - keys)}"


def test_documented_keys_are_found_by_the_pattern():
    # The pattern above must see the tables at all (else the second assertion proves nothing).
    assert {"model.image_size", "score.normal_quantile", "batch_size", "log.mlflow"} <= documented_keys()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files: {broken}"


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"


def test_readme_make_commands_name_makefile_targets():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README.read_text(), re.S)
    used = [
        line.split()[1]
        for block in blocks
        for line in block.splitlines()
        if line.startswith("make ") and len(line.split()) > 1
    ]
    assert used, "README shows no make command"
    assert set(used) <= targets, f"README runs make targets the Makefile lacks: {set(used) - targets}"


def test_generated_pages_are_current():
    """docs/benchmarks.md and the README's results table equal what make_docs.py writes from
    the committed results files (run `python benchmarks/make_docs.py` after adding one)."""
    docs = make_docs()
    page, readme, _ = docs.render(ROOT / "benchmarks" / "results", README.read_text())
    assert (ROOT / "docs" / "benchmarks.md").read_text() == page, "docs/benchmarks.md is stale: run make_docs.py"
    assert README.read_text() == readme, "README's results table is stale: run python benchmarks/make_docs.py"


def calibration_results(split: str, seeds: int = 2) -> dict:
    runs = [
        {
            "seed": s,
            "image_auroc": 0.9 + 0.01 * s,
            "pixel_auroc": 0.8,
            "aupro": 0.7,
            "specificity": 0.99,
            "dice": 0.3 + 0.1 * s,
            "image_rate_same": 0.01,
            "expected_image_rate": 0.0099,
            "steps": {"gan": {"steps": 100 * (s + 1)}},
            "settings": {"gan": {"max_minutes": 6}, "encoder": {"max_minutes": 1.5}},
            "mask_rules": {"plain": {"dice": 0.2}, "hysteresis": {"dice": 0.1}},
        }
        for s in range(seeds)
    ]
    return {
        "script": "benchmarks/calibration.py",
        "date": "2026-12-05T12:00:00+00:00",
        "command": f"python benchmarks/calibration.py --split {split}",
        "machine": {"cpu": "Test CPU", "cores": 2, "device": "cpu"},
        "options": {},
        "results": {
            "split": split,
            "normal_quantile": 0.99,
            "target_band": [0.5, 2.0],
            "groups": {"demo": {"runs": runs}},
        },
    }


def test_make_docs_writes_tables_plots_and_the_readme_section(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    (results / "calibration-report.json").write_text(json.dumps(calibration_results("report")))
    (results / "calibration-selection.json").write_text(json.dumps(calibration_results("selection")))
    speed = {
        "script": "benchmarks/train_speed.py",
        "date": "2026-12-05",
        "command": "python benchmarks/train_speed.py",
        "machine": {"cpu": "Test CPU", "cores": 2, "device": "cpu"},
        "load": "load average 3.5",
        "results": {
            "stages": [
                {
                    "stage": "adversarial",
                    "size": 32,
                    "threads": 1,
                    "seconds_per_step": 0.5,
                    "steps_per_s": 2.0,
                    "gflop_per_step": 30.0,
                    "gflop_per_s": 60.0,
                }
            ],
            "breakdown": [],
        },
    }
    (results / "train_speed.json").write_text(json.dumps(speed))
    (results / "broken.json").write_text("{not json")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\nend\n")
    assert make_docs().main(["--results", str(results), "--docs", str(docs), "--readme", str(readme)]) == 0
    page, text = (docs / "benchmarks.md").read_text(), readme.read_text()
    # mean ± std over the two seeds, in the README's table and on the page; the selection split
    # stays out of the README
    assert (
        "| demo (brick crops) | 0.905 ± 0.007 | 0.800 ± 0.000 | 0.700 ± 0.000 | 0.990 ± 0.000 | 0.350 ± 0.071 |"
    ) in text
    assert "--split report" in text and "--split selection" not in text and "\nold\n" not in text
    assert text.startswith("# x\n") and text.endswith("end\n")
    assert "0.905 ± 0.007" in page and "| hysteresis | 0.100 ± 0.000 |" in page
    assert "load average 3.5" in page and "| adversarial | 32 px | 1 | 0.500 | 2.00 | 30.0 | 60.0 |" in page
    assert "broken.json" in page  # listed, not fatal
    for name in ("calibration-report-quality.png", "calibration-report-flagged.png", "train_speed-steps.png"):
        assert (docs / "images" / name).stat().st_size > 1000 and f"images/{name}" in page


def test_make_docs_without_results(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert (
        make_docs().main(
            ["--results", str(tmp_path / "none"), "--docs", str(tmp_path / "docs"), "--readme", str(readme)]
        )
        == 0
    )
    assert "No results files yet" in readme.read_text()
    readme.write_text("no markers\n")
    assert make_docs().main(["--results", str(tmp_path), "--docs", str(tmp_path), "--readme", str(readme)]) == 2


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def section_rows(page: Path, heading: str) -> list[list[str]]:
    """The cells of each row of the first table under `heading`, backticks removed."""
    text = page.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| `")]
    return [[cell.strip().strip("`") for cell in row] for row in rows]


def test_the_module_map_lists_exactly_the_modules_in_src():
    listed = [row[0] for row in section_rows(ARCHITECTURE, "Module map")]
    modules = sorted(path.relative_to(ROOT / "src").as_posix() for path in (ROOT / "src").rglob("*.py"))
    assert sorted(listed) == modules and len(set(listed)) == len(listed)


def test_the_term_list_is_the_table_of_terms():
    from funetgan.scoring.terms import all_terms

    listed = [(name, kind, weight) for name, kind, weight, _ in section_rows(ARCHITECTURE, "Terms")]
    table = [(t.name, t.kind, "none" if t.weight is None else f"score.{t.weight}") for t in all_terms()]
    assert listed == table
