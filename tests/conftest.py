import pytest
import torch


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
