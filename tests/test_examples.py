"""The scripts of examples/ use only the public API and run: each is run for a few steps on
scikit-learn's digits, so a change of the API that breaks one fails here."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import stopgrad

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NAMES = [p.name for p in EXAMPLES]


def test_the_examples_are_there():
    assert {"simsiam_gsg_fashion_mnist.py", "byol_gsg_own_backbone.py", "simclr_eqco.py",
            "evaluate_exported_backbone.py"} <= set(NAMES)


@pytest.mark.parametrize("path", EXAMPLES, ids=NAMES)
def test_an_example_uses_only_the_public_api(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no docstring saying what it shows"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("stopgrad"), \
                f"{path.name}:{node.lineno} imports from {node.module}: use `import stopgrad as sg`"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("stopgrad"):
                    assert alias.name == "stopgrad" and alias.asname == "sg", f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sg":
            assert node.attr in stopgrad.__all__, f"{path.name}:{node.lineno} uses sg.{node.attr}, not public"
    lines = len(path.read_text().splitlines())
    assert 30 <= lines <= 90, f"{path.name} has {lines} lines: an example should stay short"


def run(*argv, cwd=ROOT):
    done = subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("name", ["simsiam_gsg_fashion_mnist.py", "byol_gsg_own_backbone.py", "simclr_eqco.py"])
def test_a_training_example_runs_a_few_steps(name):
    out = run(ROOT / "examples" / name, "--steps", 3, "--batch-size", 32, "--data", "digits", "--device", "cpu")
    assert "step 3/3" in out
    top1 = float(out.strip().splitlines()[-1].split(":")[-1])
    assert 0.1 < top1 <= 1.0  # digits has 10 balanced classes: chance is 0.1


def test_the_evaluation_example_scores_an_exported_backbone(tmp_path):
    run("-m", "stopgrad", "train", "--config", "digits/quick", "--epochs", 1, "--log", "jsonl",
        "--out", tmp_path / "run")
    out = run(ROOT / "examples" / "evaluate_exported_backbone.py", "--run", tmp_path / "run", "--device", "cpu")
    assert "kNN top-1" in out and "effective_rank" in out and "linear probe top-1" in out, out
