"""What the command-line apps share (``llmrecall`` in :mod:`llmrecall.cli`, and the
``build`` / ``serve`` commands in :mod:`llmrecall.serve.cli`, which it includes): the dataset
options, the one-line error exit and the writability check run before any work."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # not at import: the command line starts without numpy, polars, scipy
    from llmrecall.data.dataset import Dataset

# messages are single lines however long (a path, a list of problems): never wrap them
err = Console(stderr=True, soft_wrap=True)


def dataset_from_options(dataset: str | None, data: Path | None) -> Dataset:
    """The dataset of the ``--dataset NAME`` (built-in) or ``--data SPEC.toml`` (your own
    files) option: exactly one of them must be given (else a usage error)."""
    if (dataset is None) == (data is None):
        raise typer.BadParameter("give exactly one of --dataset NAME or --data SPEC.toml")
    if dataset is not None:
        from llmrecall.data.builtin import load_builtin

        return load_builtin(dataset)
    from llmrecall.data.loaders import load_dataset_toml

    assert data is not None  # exactly one of the two is given (checked above)
    return load_dataset_toml(data)


def fail(exc: Exception | str) -> None:
    """Print ``error: <exc>`` on one line and exit with status 2."""
    # escaped: messages quote TOML tables ("[data]") that rich would take for markup
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(2)


def check_writable(path: Path, option: str, folder: bool = False) -> None:
    """Fail now, with one line, if ``path`` (a file, or a folder when ``folder``) cannot be
    written: a command finds out before it reads data or fits anything, not after.

    Probes by creating (and removing) a temporary file in ``path``'s folder, or in its
    nearest existing ancestor when that folder does not exist yet (nothing is created
    there: the command makes the folders when it writes). Permissions alone would not do:
    root passes every permission check and still cannot write to a read-only file system.
    """
    import tempfile

    path = Path(path).expanduser()
    problem = None
    if folder and path.exists() and not path.is_dir():
        problem = f"{path} is not a folder"
    elif not folder and path.is_dir():
        problem = f"{path} is a folder"
    else:
        probe = path if folder else path.parent
        probe = probe.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            problem = f"{probe} is not a folder"
        else:
            try:
                with tempfile.TemporaryFile(dir=probe):
                    pass
            except OSError as exc:
                problem = f"cannot create files in {probe} ({exc.strerror or exc})"
    if problem is not None:
        fail(f"cannot write {option} {path}: {problem}")
