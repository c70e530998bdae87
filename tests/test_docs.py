"""The documentation stays true to the code: every `stopgrad` command shown in README.md and docs/
parses against the current command line, every preset and experiment it names exists, every
relative link points at a file, and the Python examples of the API guide run."""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def commands(page: Path) -> list[str]:
    """The `stopgrad ...` commands of a page's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in code_blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if "-m stopgrad " in line:
                line = "stopgrad " + line.split("-m stopgrad ", 1)[1]
            if line.startswith("stopgrad "):
                out.append(line)
    return out


ALL = [(str(page.relative_to(ROOT)), c) for page in PAGES for c in commands(page)]


def test_the_docs_show_commands():
    assert len(ALL) >= 25, len(ALL)


@pytest.mark.parametrize("page,command", ALL, ids=[f"{p}: {c[:60]}" for p, c in ALL])
def test_every_command_in_the_docs_parses(page, command):
    from stopgrad.cli import make_parser
    from stopgrad.config import presets
    from stopgrad.reproduce import EXPERIMENTS
    argv = shlex.split(command)[1:]
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse ({exc})")
    if getattr(args, "config", None) and not args.config.endswith(".yaml"):
        assert args.config in presets(), f"{page}: unknown preset {args.config}"
    if args.command == "reproduce" and args.name:
        assert args.name in EXPERIMENTS, f"{page}: unknown experiment {args.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


API_BLOCKS = code_blocks(ROOT / "docs" / "api.md", "python")


def test_the_api_guide_shows_code():
    assert len(API_BLOCKS) >= 3


@pytest.mark.parametrize("block", range(len(API_BLOCKS)))
def test_the_api_guide_code_runs(block):
    scope: dict = {}
    exec(compile(API_BLOCKS[block], f"docs/api.md python block {block}", "exec"), scope)
    if "loss" in scope:
        assert scope["loss"].shape == () and scope["loss"].grad_fn is not None
