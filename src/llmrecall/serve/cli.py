"""``llmrecall build`` and ``llmrecall serve``: typer commands, also usable as functions."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from llmrecall import progress
from llmrecall.errors import LLMRecallError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build serving artifacts and run the recall service.")
err = Console(stderr=True, soft_wrap=True)  # one line per message, however long

PluginOpt = Annotated[list[str] | None, typer.Option(
    "--plugin", help="module to import first (registers extra channel kinds); repeatable")]


def _import_plugins(plugins: list[str] | None) -> None:
    for module in plugins or []:
        importlib.import_module(module)


@app.command("build")
def build_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="artifact root folder")],
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="built-in dataset")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="TOML data spec")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="pipeline TOML")] = None,
    plugin: PluginOpt = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="local | ray (default: the config's [engine] kind, else local)")] = None,
) -> None:
    """Fit the pipeline on all data and write a new artifact version (CURRENT points to it)."""
    from llmrecall.cli_support import check_writable, dataset_from_options
    from llmrecall.config import load_config
    from llmrecall.engine import engine_for
    from llmrecall.serve.artifacts import build
    from llmrecall.threads import use_threads

    use_threads()  # $LLMRECALL_THREADS, or the CPUs this process may run on
    if not progress.configured():  # `python -m llmrecall.serve build`: `llmrecall` chose none
        progress.configure()
    check_writable(out, "--out", folder=True)
    try:
        _import_plugins(plugin)
        cfg = load_config(config)
        if cfg.engine is not None and cfg.engine.log == "sharded":
            path = _build_sharded(dataset, data, cfg, engine, out)
        else:
            with engine_for(engine, cfg):
                # each channel's fit is a stage of llmrecall.progress
                path = build(dataset_from_options(dataset, data), cfg, out)
    except LLMRecallError as exc:
        _error(exc)
    except OSError as exc:  # checked above, but the disk may fill up while writing
        _error(f"cannot write the artifact under {out}: {exc}")
    progress.note(f"wrote {path}")


def _build_sharded(dataset: str | None, data: Path | None, cfg, engine: str | None,
                   out: Path) -> Path:
    """``build`` with ``[engine] log = "sharded"``: the log is never loaded here
    (:mod:`llmrecall.engine.sharded_build`)."""
    from llmrecall.data.spec import DataSpec
    from llmrecall.engine import engine_for
    from llmrecall.engine.sharded_build import build_sharded
    from llmrecall.errors import ConfigError

    if data is None or dataset is not None:
        raise ConfigError('[engine] log = "sharded" reads your files: give --data SPEC.toml '
                          "(not --dataset)")
    spec = DataSpec.from_toml(data)
    with engine_for(engine, cfg, sharded=True) as eng:
        path, ran = build_sharded(spec, cfg, out, engine=eng, work_dir=cfg.engine.work_dir,
                                  name=spec.name or data.stem, progress=progress.note)
    progress.note(f"built from {ran['shards']} shards: {ran['events']:,} events, "
                  f"{ran['users']:,} users, {ran['items']:,} items; found in work_dir: "
                  f"{ran['resumed']}")
    return path


def _error(exc: Exception | str) -> None:
    # escaped: messages quote TOML tables ("[data]", "[serve]") that rich takes for markup
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(2)


@app.command("serve")
def serve_command(
    artifact_dir: Annotated[Path, typer.Argument(help="artifact root (or a version folder)")],
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the write API key")] = None,
    state: Annotated[str | None, typer.Option(
        help="SQLite state file (default: DIR/state.sqlite), or a PostgreSQL URL "
        "(postgresql://user@host/db, or '$VAR' naming an environment variable holding one): "
        "replicas over one database")] = None,
    redis: Annotated[str | None, typer.Option(
        help="Redis URL (redis://host:6379/0, or '$VAR'): every replica over PostgreSQL "
        "answers with the events any replica acknowledged at once (a cache; optional)")] = None,
    vectors: Annotated[str | None, typer.Option(
        help="Milvus URI (milvus://host:port, http://host:port, or '$VAR'; milvus://PATH.db "
        "for Milvus Lite, one process): the semantic channels search a Milvus collection "
        "shared by the replicas instead of the artifact's FAISS index")] = None,
    settings: Annotated[Path | None, typer.Option(help="TOML file with a \\[serve] table")] = None,
    channel_budget_ms: Annotated[float | None, typer.Option(help="per-request channel deadline")] = None,
    refresher: Annotated[str | None, typer.Option(help="'module:factory' interest refresher")] = None,
    workers: Annotated[int | None, typer.Option(
        help="server processes sharing the port and the state file (default 1)")] = None,
    shared_state: Annotated[bool | None, typer.Option(
        "--shared-state/--no-shared-state",
        help="other servers write the same state file (instances behind a load balancer)")] = None,
    plugin: PluginOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run the HTTP recall service over an artifact (SIGHUP or POST /v1/admin/reload reloads)."""
    import uvicorn

    from llmrecall.threads import THREADS_ENV, use_threads

    # serving multiplies small matrices, and requests already run in batches on their own
    # threads: one BLAS thread per channel call unless a thread count is given
    os.environ.setdefault(THREADS_ENV, "1")
    use_threads()

    from llmrecall.serve.app import create_app
    from llmrecall.serve.artifacts import check_artifact
    from llmrecall.serve.settings import is_postgres_dsn, load_settings

    postgres = state is not None and is_postgres_dsn(state)
    try:
        cfg = load_settings(settings, artifact_dir=artifact_dir, host=host, port=port,
                            api_key_env=api_key_env,
                            state_path=Path(state) if state and not postgres else None,
                            postgres_dsn=state if postgres else None, redis_url=redis,
                            vectors=vectors,
                            channel_budget_ms=channel_budget_ms, refresher=refresher,
                            plugins=plugin or None, workers=workers,
                            shared_state=shared_state)
        # before anything is created (the state file defaults to DIR/state.sqlite) and
        # before uvicorn starts: a wrong folder is one line, not a startup traceback
        check_artifact(cfg.artifact_dir)
        cfg.state.resolved_vectors()  # an unset '$VAR' is one line too
    except LLMRecallError as exc:
        _error(exc)
    if cfg.workers == 1:
        from llmrecall.serve import connections

        connections.configure(cfg)
        uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=log_level,
                    **_uvicorn_options(cfg))
        return
    _serve_processes(cfg, log_level)


def _uvicorn_options(cfg) -> dict:
    """uvicorn options common to one and several processes: the connection protocol with
    read deadlines and a connection cap (:mod:`llmrecall.serve.connections`)."""
    from llmrecall.serve.connections import PROTOCOL

    return {"http": PROTOCOL, "timeout_keep_alive": cfg.keep_alive_timeout_s,
            "access_log": False, "timeout_graceful_shutdown": 5}


def _serve_processes(cfg, log_level: str) -> None:
    """uvicorn's process supervisor: ``cfg.workers`` processes accept on one socket, each
    building the app from the settings in the environment; SIGHUP replaces them one by one
    (each new process loads the artifact CURRENT names before the old one stops)."""
    import shutil
    import tempfile

    import uvicorn

    from llmrecall.serve.app import SETTINGS_ENV
    from llmrecall.serve.metrics import METRICS_DIR_PREFIX, MULTIPROC_ENV, clean_stale_metrics_dirs
    from llmrecall.serve.supervision import SUPERVISOR_ENV

    os.environ[SETTINGS_ENV] = cfg.model_dump_json()
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # workers end when this process does
    own_dir = MULTIPROC_ENV not in os.environ  # a directory the caller chose is left alone
    if own_dir:
        # a supervisor killed with SIGKILL could not remove its folder: the next one does.
        # The owner's pid is in the name, so a running server's folder is never touched
        clean_stale_metrics_dirs()
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    try:
        uvicorn.run("llmrecall.serve.app:app_from_env", factory=True, workers=cfg.workers,
                    host=cfg.host, port=cfg.port, log_level=log_level, **_uvicorn_options(cfg))
    finally:
        if own_dir:
            shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    app()
