"""The ``llmrecall`` command line. Commands call the same library code the service uses."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

# two cores: more BLAS/torch threads than that only add contention
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from llmrecall.errors import ConfigError, LLMRecallError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="llmrecall: recall (candidate generation) with language models.")
# tables are wide (15 columns): never squeeze them to a pipe's default 80 columns
console = Console(width=None if Console().is_terminal else 200)
# messages are single lines however long (a path, a list of problems): never wrap them
err = Console(stderr=True, soft_wrap=True)

DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="built-in dataset name")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="TOML data spec for your own files")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="pipeline TOML file, or a packaged config name: default, full")]
EngineOpt = Annotated[str | None, typer.Option(
    "--engine", help="local | ray (default: the config's [engine] kind, else local)")]


def _load_dataset(dataset: str | None, data: Path | None):
    if (dataset is None) == (data is None):
        raise typer.BadParameter("give exactly one of --dataset NAME or --data SPEC.toml")
    if dataset is not None:
        from llmrecall.data.builtin import load_builtin

        return load_builtin(dataset)
    from llmrecall.data.loaders import load_dataset_toml

    assert data is not None  # exactly one of the two is given (checked above)
    return load_dataset_toml(data)


def _fail(exc: Exception | str) -> None:
    # escaped: messages quote TOML tables ("[data]") that rich would take for markup
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(2)


def _say(message: str) -> None:
    """A progress line (dim); ``message`` may hold brackets (names, paths)."""
    err.print(f"[dim]{escape(message)}[/dim]")


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
        _fail(f"cannot write {option} {path}: {problem}")


@app.command()
def evaluate(
    dataset: DatasetOpt = None, data: DataOpt = None, config: ConfigOpt = None,
    protocol: Annotated[str, typer.Option(help="loo | recbole-general | cold-items")] = "loo",
    seed: int = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the JSON report here")] = None,
    split: Annotated[str, typer.Option(help="test (report) or valid (tuning)")] = "test",
    engine: EngineOpt = None,
) -> None:
    """Split, fit every channel, recall, fuse and print Recall/NDCG per channel and fused."""
    from llmrecall.config import load_config
    from llmrecall.engine import engine_for
    from llmrecall.evaluate.experiment import evaluate as run_evaluate
    from llmrecall.report import rich_table

    if output is not None:
        check_writable(output, "--output")
    try:
        ds = _load_dataset(dataset, data)
        cfg = load_config(config)
        with engine_for(engine, cfg):
            report = run_evaluate(ds, protocol, cfg, seed=seed, on=split, progress=_say)
    except LLMRecallError as exc:
        _fail(exc)
    console.print(rich_table(report))
    if output is not None:
        _write_text(output, json.dumps(report, indent=2))


@app.command()
def recall(
    user: Annotated[str, typer.Option("--user", "-u", help="raw user id")],
    dataset: DatasetOpt = None, data: DataOpt = None, config: ConfigOpt = None,
    k: Annotated[int, typer.Option("-k", min=1, max=5000)] = 20,
    explain: Annotated[bool, typer.Option("--explain/--no-explain")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Fit on all data and print one user's candidates, each with why it was recalled."""
    from llmrecall.config import load_config
    from llmrecall.pipeline import RecallPipeline

    try:
        ds = _load_dataset(dataset, data)
        cfg = load_config(config)
        pipeline = RecallPipeline(cfg).fit(ds)
    except LLMRecallError as exc:
        _fail(exc)
    _print_user(pipeline, ds, user, k, explain, as_json)


def _print_user(pipeline, ds, user: str, k: int, explain: bool, as_json: bool = False) -> None:
    from rich.table import Table

    from llmrecall.explain import explain_row

    history = ds.histories()
    index = int(ds.users.lookup([user])[0])
    if index < 0:
        err.print(f"[yellow]user {escape(repr(user))} is unknown: answering from an empty "
                  f"history[/yellow]")
        index = ds.n_users  # one past the known users: an empty history row
        history = _with_empty_user(history)
    result = pipeline.recall(np.array([index], np.int32), history, k, explain=explain)
    rows = explain_row(result.fused, 0, ds, pipeline)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    recent = history.of(index)[-5:]
    titles = ds.catalog.titles
    console.print(f"[bold]user {escape(user)}[/bold]: {len(history.of(index))} interactions; "
                  "latest: " + escape("; ".join(titles[i] for i in recent[::-1])))
    table = Table(title=escape(f"top {k} candidates for user {user}"))
    for col in ("#", "item", "title", "score", "why"):
        table.add_column(col)
    for r in rows:
        why = "\n".join(f"{x.channel} #{x.rank}: {x.text}" for x in r.reasons)
        table.add_row(str(r.rank), escape(r.item_id), escape(r.title), f"{r.score:.4f}",
                      escape(why))
    console.print(table)


def _with_empty_user(history):
    from dataclasses import replace

    return replace(history, indptr=np.append(history.indptr, history.indptr[-1]))


@app.command()
def demo(
    dataset: Annotated[str, typer.Option("--dataset", "-d")] = "ml-100k",
    config: Annotated[str, typer.Option("--config", "-c", help="config file or packaged name")] = "full",
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("results/demo.json"),
) -> None:
    """The main job on the embedded defaults: evaluate the full pipeline (classic and
    language-model channels) under `loo`, then explain one user's candidates."""
    from llmrecall.config import load_config
    from llmrecall.data.builtin import load_builtin
    from llmrecall.evaluate.experiment import run_experiment
    from llmrecall.report import rich_table

    check_writable(output, "--output")
    try:
        cfg = load_config(config)
        ds = load_builtin(dataset)
        report, pipeline, _split = run_experiment(ds, "loo", cfg, progress=_say)
    except LLMRecallError as exc:
        _fail(exc)
    console.print(rich_table(report))
    _write_text(output, json.dumps(report, indent=2))
    # the pipeline was fitted on the train split; it recalls from the user's full, fresh
    # history — the same thing the service does between two model builds
    _print_user(pipeline, ds, user or ds.users.ids[0], 10, True)


@app.command()
def tune(
    trials: Annotated[int, typer.Option("--trials", "-n", min=0, help="trials to run now")],
    output: Annotated[Path, typer.Option("--output", "-o", help="write the tuned TOML here")],
    dataset: DatasetOpt = None, data: DataOpt = None, config: ConfigOpt = None,
    protocol: Annotated[str, typer.Option(help="loo | recbole-general | cold-items")] = "loo",
    metric: Annotated[str | None, typer.Option(
        help="validation metric to maximise, NAME@K (default recall@<fusion k>)")] = None,
    storage: Annotated[Path | None, typer.Option(
        help="SQLite file holding the study; rerun to resume it")] = None,
    study_name: Annotated[str | None, typer.Option(help="name of the study in --storage")] = None,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after S seconds")] = None,
    space: Annotated[str, typer.Option(help="all (fusion + channel params) | fusion")] = "all",
    max_users: Annotated[int | None, typer.Option(
        help="tune on a sample of this many validation users")] = None,
    min_gain: Annotated[float | None, typer.Option(
        help="keep the untuned config unless the best trial beats it on validation by this "
             "much (default: one standard error of the metric; 0: any gain)")] = None,
    seed: int = 0,
    engine: EngineOpt = None,
) -> None:
    """Tune fusion and channel parameters on validation; write the tuned TOML; compare on test.

    The tuner sees the validation split only. Once it is done, the default and the tuned
    configs are evaluated on test, once, and compared channel by channel (printed, and
    written as JSON next to the output: <output stem>.comparison.json).
    """
    from contextlib import ExitStack

    from llmrecall.config import load_config
    from llmrecall.engine import engine_for
    from llmrecall.evaluate.protocols import make_split
    from llmrecall.tune.compare import compare_on_test, comparison_table
    from llmrecall.tune.space import is_space
    from llmrecall.tune.store import FittedChannels
    from llmrecall.tune.study import default_metric
    from llmrecall.tune.study import tune as run_tune

    check_writable(output, "--output")
    if storage is not None:
        check_writable(storage, "--storage")
    stack = ExitStack()  # the engine, closed when the command is done
    try:
        if not is_space(space):  # as tune() would, but before the data is loaded
            raise ConfigError(f"space must be 'all' or 'fusion', got {space!r}")
        ds = _load_dataset(dataset, data)
        cfg = load_config(config)
        metric = metric or default_metric(cfg)
        stack.enter_context(engine_for(engine, cfg))
        # one split and one set of fitted channels for tuning and the test comparison: the
        # comparison fits only what tuning changed
        split = make_split(ds, protocol, seed)
        models = FittedChannels(split.train)
        tuned, report = run_tune(ds, protocol, cfg, trials, metric, storage=storage,
                                 study_name=study_name, seed=seed, space=space, timeout=timeout,
                                 max_users=max_users, split=split, models=models,
                                 min_gain=min_gain)
        _write_text(output, tuned.to_toml(), quiet=True)
        err.print(f"validation {report['metric']}: untuned {_fmt(report['baseline_value'])}, "
                  f"tuned {_fmt(report['best_value'])} ({report['trials']['complete']} complete, "
                  f"{report['trials']['pruned']} pruned trials in the study, "
                  f"{report['seconds']:.0f}s this run); wrote {escape(str(output))}")
        if report["kept_baseline"] and report["best_value"] != report["baseline_value"]:
            err.print(f"kept the untuned config: the best trial's gain is below the noise "
                      f"floor {report['min_gain']:.4f} (--min-gain)")
        comparison = compare_on_test(ds, protocol, cfg, tuned, metric, seed=seed,
                                     progress=_say,
                                     split=split, models=models)
    except LLMRecallError as exc:
        _fail(exc)
    finally:
        stack.close()
    console.print(comparison_table(comparison))
    side = output.with_name(f"{output.stem}.comparison.json")
    _write_text(side, json.dumps({"tuning": report, **comparison}, indent=2, default=str))


@app.command("tune-prompts")
def tune_prompts(
    output: Annotated[Path, typer.Option("--output", "-o", help=(
        "where the best template goes: OUTPUT.txt + OUTPUT.json (version, score, revision); "
        "OUTPUT.search.json holds every scored variant"))],
    dataset: DatasetOpt = None, data: DataOpt = None,
    protocol: Annotated[str, typer.Option(help="loo | recbole-general | cold-items")] = "loo",
    users: Annotated[int, typer.Option("--users", "-u", min=1, help=(
        "score on a seeded sample of this many validation users"))] = 50,
    rounds: Annotated[int, typer.Option("--rounds", "-r", min=0, help=(
        "rounds in which the generator writes new templates from the best ones"))] = 0,
    proposals: Annotated[int, typer.Option(min=1, help="new templates per round")] = 2,
    metric: Annotated[str, typer.Option(help="validation metric to maximise, NAME@K")] = "recall@50",
    variants: Annotated[Path | None, typer.Option(help=(
        "JSON list of {name, template, params} to score instead of the built-in set; the "
        "default variant is always scored too"))] = None,
    noun: Annotated[str, typer.Option(help="what the catalog holds, e.g. movies")] = "items",
    language: Annotated[str, typer.Option(help="prompt language: en | zh")] = "en",
    store: Annotated[Path | None, typer.Option(help=(
        "SQLite cache of generated text (default OUTPUT.generations.sqlite): reruns are cheap"))] = None,
    embedder: Annotated[str, typer.Option(
        help="matching embedder name, or 'none' for BM25 only")] = "default",
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads")] = 1,
    seed: int = 0,
) -> None:
    """Search prompt templates for the llm_interest channel by validation recall.

    Scores each variant (template text + generation settings) on a seeded sample of
    validation users, optionally lets the generator propose new templates for --rounds,
    saves the best one versioned with its score, and prints best against the default prompt.
    Only the train part and the validation task are used; test is never read.
    """
    from rich.table import Table

    from llmrecall.evaluate.protocols import make_split
    from llmrecall.interest.backends import LocalLlamaGenerator
    from llmrecall.tune.interest_prompts import (
        DEFAULT_VARIANT,
        binomial_se,
        default_row,
        interest_variants,
        search_interest_prompts,
    )
    from llmrecall.tune.objective import parse_metric
    from llmrecall.tune.prompts import GeneratorProposer, PromptVariant

    if output.suffix == ".txt":
        output = output.with_suffix("")  # OUTPUT names a stem: OUTPUT.txt, OUTPUT.json, ...
    check_writable(output, "--output")
    if store is not None:
        check_writable(store, "--store")
    try:
        parse_metric(metric)
        if language not in ("en", "zh"):
            raise typer.BadParameter("--language must be en or zh")
        ds = _load_dataset(dataset, data)
        starting = interest_variants(noun, language)
        if variants is not None:
            try:
                rows = json.loads(variants.read_text(encoding="utf-8"))
                own = [PromptVariant(r["name"], r["template"], r.get("params", {})) for r in rows]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise typer.BadParameter(f"--variants {variants}: expected a JSON list of "
                                         f"{{name, template, params}}: {exc}") from None
            default = [v for v in starting if v.name == DEFAULT_VARIANT]
            starting = default + [v for v in own if v.name != DEFAULT_VARIANT]
        split = make_split(ds, protocol, seed)
        generator = LocalLlamaGenerator(threads=threads)
        proposer = None
        if rounds:
            from llmrecall.lm.generators import get_generator

            proposer = GeneratorProposer(get_generator("default", threads=threads),
                                         per_round=proposals)
        store = store or output.with_name(f"{output.name}.generations.sqlite")
        # only the train part and the validation task go further: test stays here, unread
        search = search_interest_prompts(
            split.train, split.valid, starting, generator, noun=noun, metric=metric,
            max_users=users, seed=seed, rounds=rounds, proposer=proposer, output=output,
            store_path=store, embedder_name=None if embedder == "none" else embedder,
            embedding_cache=output.with_name(f"{output.name}.lm_cache.sqlite"),
            progress=_say)
    except LLMRecallError as exc:
        _fail(exc)
    n = int(min(users, len(split.valid.users)))
    best, default = search.best, default_row(search)
    table = Table(title=f"prompt search: validation {metric}, {n} users (±: binomial SE)")
    for col in ("variant", "version", "round", metric, "±", "seconds", ""):
        table.add_column(col, justify="left" if col in ("variant", "version", "") else "right")
    for s in search.scored:
        mark = " ".join(m for m, on in (("best", s is best), ("default", s is default)) if on)
        table.add_row(s.variant.name, s.variant.version, str(s.round), f"{s.score:.4f}",
                      f"{binomial_se(s.score, n):.4f}", f"{s.seconds:.0f}", mark)
    console.print(table)
    summary = {"metric": metric, "users": n, "protocol": protocol, "seed": seed,
               "best": {"name": best.variant.name, "version": best.variant.version,
                        "score": best.score, "se": binomial_se(best.score, n)},
               "default": None if default is None else {
                   "name": default.variant.name, "version": default.variant.version,
                   "score": default.score, "se": binomial_se(default.score, n)},
               "rejected_proposals": 0 if proposer is None else proposer.rejected,
               **search.as_dict()}
    side = output.with_name(f"{output.name}.search.json")
    _write_text(side, json.dumps(summary, indent=2, ensure_ascii=False), quiet=True)
    if default is not None:
        diff_se = float(np.hypot(summary["best"]["se"], summary["default"]["se"]))
        err.print(f"best {best.variant.name} {best.score:.4f} vs default {default.score:.4f} "
                  f"(difference {best.score - default.score:+.4f} ± {diff_se:.4f}, "
                  f"{'more' if best.score - default.score > 2 * diff_se else 'not more'} than "
                  f"two standard errors); "
                  f"{'saved' if search.saved else 'kept the saved template (it scored at least as well)'} "
                  f"{escape(str(search.path))}; wrote {escape(str(side))}")


def _write_text(path: Path, text: str, quiet: bool = False) -> None:
    """Write a result file (its folders made); a failure is one error line, not a traceback
    (checked before the work, but the disk may still fill up or the folder go away)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")
    if not quiet:
        err.print(f"wrote {escape(str(path))}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def synth(
    users: Annotated[int, typer.Option("--users", min=1, help="distinct users")],
    items: Annotated[int, typer.Option("--items", min=2, help="distinct items")],
    events: Annotated[int, typer.Option("--events", min=1, help="interactions in all")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write")],
    seed: int = 0,
) -> None:
    """Write a seeded synthetic log for scale tests: power-law popularity and activity,
    sessions, titles and categories; OUT/data.toml reads it with --data."""
    from llmrecall.data.synth import synthesize

    check_writable(out, "--out", folder=True)
    try:
        summary = synthesize(out, users=users, items=items, events=events, seed=seed)
    except LLMRecallError as exc:
        _fail(exc)
    err.print(f"wrote {summary.events:,} events of {summary.users:,} users on "
              f"{summary.items:,} items in {summary.files} files; read it with "
              f"--data {escape(str(summary.spec))}")


@app.command()
def datasets() -> None:
    """List the built-in datasets and their sizes."""
    from llmrecall.data.builtin import BUILTIN, load_builtin

    for name in BUILTIN:
        try:
            console.print(load_builtin(name).describe())
        except LLMRecallError as exc:
            console.print(escape(f"{name}: unavailable ({exc})"))


# the service: `llmrecall build` writes an artifact, `llmrecall serve DIR` runs the HTTP API
from llmrecall.serve.cli import build_command, serve_command  # noqa: E402


@app.command("lm-serve")
def lm_serve(
    host: Annotated[str, typer.Option(
        help="bind address; keep loopback unless a proxy fronts it")] = "127.0.0.1",
    port: int = 8080,
    embedder: Annotated[str, typer.Option(help="local embedder name, or 'none'")] = "default",
    generator: Annotated[str, typer.Option(help="local generator name, or 'none'")] = "default",
    threads: int = 1,
) -> None:
    """Serve the packaged local models over the OpenAI-compatible API (/v1/embeddings,
    /v1/chat/completions, /v1/models)."""
    from llmrecall.lm.server import main as serve_models

    serve_models(host=host, port=port, embedder=None if embedder == "none" else embedder,
                 generator=None if generator == "none" else generator, threads=threads)


app.command("build")(build_command)
app.command("serve")(serve_command)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except LLMRecallError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(2)
