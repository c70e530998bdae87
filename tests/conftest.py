import pytest
import torch
from hypothesis import settings

# property-based tests: a fixed, quick sample by default (deterministic in CI); `--hypothesis-profile slow`
# tries twenty times as many inputs, freshly drawn
settings.register_profile("default", max_examples=30, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("slow", max_examples=600, deadline=None, print_blob=True)
settings.load_profile("default")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The pixel baselines' cache ($XDG_CACHE_HOME/stopgrad/baselines) in a folder of this session, never
    the user's: shared by the session's tests (its entries are keyed by the images themselves) and
    inherited by the processes they start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def run_cli(capsys):
    """Run the command line in-process: ``run_cli(*argv) -> (exit code, stdout, stderr)``."""
    from stopgrad.cli import main

    def run(*argv):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return run
