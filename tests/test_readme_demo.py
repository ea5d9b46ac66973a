"""The documentation's demo cannot rot: benchmarks/readme_demo.py runs its very lines (shown on the fine-tune,
recognize and deploy pages), here at a reduced size."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from cnnctc.render import FONT_CANDIDATES, find_fonts

sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_demo  # noqa: E402


def documented_commands():
    """The README and the documentation pages, each backslash-continued command joined onto one line."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    return re.sub(r" *\\\n *", " ", text)


def test_the_script_runs_the_documentations_own_lines():
    shown = documented_commands()
    missing = [line for line in readme_demo.readme_lines() if line not in shown]
    assert not missing, f"lines the demo script runs that the documentation does not show: {missing}"


@pytest.mark.skipif(find_fonts() != list(FONT_CANDIDATES), reason="the demo needs the Debian fonts "
                    "(fonts-dejavu-core fonts-liberation fonts-freefont-ttf)")
def test_the_demo_pipeline_runs_end_to_end_at_a_reduced_size(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_demo.py"), "--quick", "--work",
                          str(tmp_path)], env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    tables = run.stdout.split("## README tables", 1)[1]
    for row in ("| greedy |", "| beam, width 10 |", "| lexicon, 300 words |", "`best.ckpt`", "`model.onnx`",
                "`model.int8.onnx`", "per-column argmaxes"):
        assert row in tables, row
    assert len(re.findall(r"^demo/valid/0000[0-4]\.png: ", tables, re.M)) == 5
    for name in ("model.onnx", "model.mindir", "model.mindir.json", "model.int8.onnx", "words.txt", "run/best.ckpt"):
        assert (tmp_path / "demo" / name).is_file(), name
