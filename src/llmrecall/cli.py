"""The ``llmrecall`` command line. Commands call the same library code the service uses."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from llmrecall import progress
from llmrecall.cli_support import check_writable, err
from llmrecall.cli_support import dataset_from_options as _load_dataset
from llmrecall.cli_support import fail as _fail
from llmrecall.errors import ConfigError, LLMRecallError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="llmrecall: recall (candidate generation) with language models.")
# tables are wide (15 columns): never squeeze them to a pipe's default 80 columns
console = Console(width=None if Console().is_terminal else 200)

#: commands that apply a thread default of their own when none is given (the service: 1)
OWN_THREAD_DEFAULT = ("serve",)
#: long-running services: their log is their output, so they show no progress of their own
NO_PROGRESS = ("serve", "lm-serve")


@app.callback()
def _global_options(
    ctx: typer.Context,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, envvar="LLMRECALL_THREADS", show_envvar=True,
        help="threads for BLAS, OpenMP and the channels; default: the CPUs this process may "
             "run on (serve: 1)")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", envvar="LLMRECALL_QUIET", show_envvar=True,
        help="no progress bars or stage lines on stderr, only errors (results are unchanged)")
    ] = False,
) -> None:
    # applied here, when a command runs, not when the module is imported
    if threads is not None or ctx.invoked_subcommand not in OWN_THREAD_DEFAULT:
        from llmrecall.threads import use_threads

        use_threads(threads)
    # bars on a terminal, one line per stage otherwise; put back when the command ends
    previous = progress.configure(quiet or ctx.invoked_subcommand in NO_PROGRESS)
    ctx.call_on_close(lambda: progress.set_reporter(previous))


DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="built-in dataset name")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="TOML data spec for your own files")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="pipeline TOML file, or a packaged config name: default, full")]
EngineOpt = Annotated[str | None, typer.Option(
    "--engine", help="local | ray (default: the config's [engine] kind, else local)")]


def _say(message: str) -> None:
    """A message about the work (dim on a terminal; none with --quiet); ``message`` is plain
    text, brackets and all."""
    progress.note(message)


def _tell(markup: str) -> None:
    """A result line on stderr (a summary the tables do not hold); none with --quiet."""
    if progress.reporter() is not progress.SILENT:
        err.print(markup)


@app.command()
def evaluate(
    dataset: DatasetOpt = None, data: DataOpt = None, config: ConfigOpt = None,
    protocol: Annotated[str, typer.Option(help="loo | recbole-general | cold-items")] = "loo",
    seed: int = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the JSON report here")] = None,
    split: Annotated[str, typer.Option(help="test (report) or valid (tuning)")] = "test",
    html: Annotated[Path | None, typer.Option(
        "--report", help="also write the HTML report (charts) here")] = None,
    engine: EngineOpt = None,
) -> None:
    """Split, fit every channel, recall, fuse and print Recall/NDCG per channel and fused.

    With --output X.json, the per-target ranks the HTML report is drawn from go to
    X.ranks.npz beside it (`llmrecall report X.json` reads both).
    """
    from llmrecall.config import load_config
    from llmrecall.engine import engine_for
    from llmrecall.evaluate.experiment import run_experiment
    from llmrecall.report import rich_table

    if output is not None:
        check_writable(output, "--output")
    if html is not None:
        from llmrecall.evaluate.report_html import require_plotly

        check_writable(html, "--report")
        try:
            require_plotly()
        except LLMRecallError as exc:
            _fail(exc)
    kept: dict = {}
    try:
        cfg = load_config(config)
        if cfg.engine is not None and cfg.engine.log == "sharded":
            _evaluate_sharded(dataset, data, cfg, engine, protocol, seed, split, output, html)
            return
        ds = _load_dataset(dataset, data)
        with engine_for(engine, cfg):
            report, _pipeline, data_split = run_experiment(
                ds, protocol, cfg, seed=seed, on=split, progress=_say,
                on_lists=lambda lists, fused: kept.update(lists=lists, fused=fused))
    except LLMRecallError as exc:
        _fail(exc)
    console.print(rich_table(report))
    if output is not None:
        _write_text(output, json.dumps(report, indent=2))
    if output is not None or html is not None:
        from llmrecall.evaluate.ranks import build_ranks

        ranks = build_ranks(report, data_split, kept["lists"], kept["fused"])
        if output is not None:
            _write_ranks(output, ranks)
        if html is not None:
            from llmrecall.evaluate.report_html import run_from_memory, write_report

            label = output.stem if output is not None else f"{report['dataset']} {protocol}"
            try:
                write_report([run_from_memory(label, report, ranks)], html)
            except LLMRecallError as exc:
                _fail(exc)
            except OSError as exc:
                _fail(f"cannot write {html}: {exc.strerror or exc}")
            _say(f"wrote {html}")


def _evaluate_sharded(dataset: str | None, data: Path | None, cfg, engine: str | None,
                      protocol: str, seed: int, split: str, output: Path | None, html: Path | None) -> None:
    """``evaluate`` with ``[engine] log = "sharded"``: the log is never loaded here
    (:mod:`llmrecall.engine.sharded`); no per-target ranks, so no HTML report."""
    from llmrecall.data.spec import DataSpec
    from llmrecall.engine import engine_for
    from llmrecall.engine.sharded import evaluate_sharded
    from llmrecall.report import rich_table

    if data is None or dataset is not None:
        raise ConfigError('[engine] log = "sharded" reads your files: give --data SPEC.toml '
                          "(not --dataset)")
    if html is not None:
        raise ConfigError('--report needs every target\'s rank in one process; [engine] log = '
                          '"sharded" keeps none')
    spec = DataSpec.from_toml(data)
    with engine_for(engine, cfg, sharded=True) as eng:
        report = evaluate_sharded(spec, cfg, protocol, engine=eng, on=split, seed=seed,
                                  work_dir=cfg.engine.work_dir if cfg.engine else None,
                                  name=spec.name or data.stem, progress=_say)
    console.print(rich_table(report))
    if output is not None:
        _write_text(output, json.dumps(report, indent=2))
        _say(f"wrote {output} (no per-target ranks with the sharded log)")


def _tune_sharded(dataset: str | None, data: Path | None, cfg, engine: str | None,
                  trials: int, output: Path, protocol: str, metric: str | None,
                  storage: Path | None, study_name: str | None, timeout: float | None,
                  space: str, max_users: int | None, min_gain: float | None,
                  seed: int) -> None:
    """``tune`` with ``[engine] log = "sharded"``: the study scored shard by shard and the
    test comparison from the shards (:mod:`llmrecall.engine.sharded_tune`)."""
    from llmrecall.data.spec import DataSpec
    from llmrecall.engine import engine_for
    from llmrecall.engine.sharded_tune import tune_sharded
    from llmrecall.tune.compare import comparison_table

    if data is None or dataset is not None:
        raise ConfigError('[engine] log = "sharded" reads your files: give --data SPEC.toml '
                          "(not --dataset)")
    if protocol != "loo":
        raise ConfigError(f'tune with [engine] log = "sharded" covers the loo protocol, '
                          f"not {protocol!r}")
    if max_users is not None:
        raise ConfigError('--max-users: tune with [engine] log = "sharded" scores every '
                          "shard's validation users")
    spec = DataSpec.from_toml(data)
    with engine_for(engine, cfg, sharded=True) as eng:
        tuned, report, comparison = tune_sharded(
            spec, cfg, trials, metric, engine=eng, work_dir=cfg.engine.work_dir,
            storage=storage, study_name=study_name, seed=seed, space=space,  # type: ignore[arg-type]
            timeout=timeout, min_gain=min_gain, name=spec.name or data.stem, say=_say)
    _write_text(output, tuned.to_toml(), quiet=True)
    _tell(f"validation {report['metric']}: untuned {_fmt(report['baseline_value'])}, "
          f"tuned {_fmt(report['best_value'])} ({report['trials']['complete']} complete, "
          f"{report['trials']['pruned']} pruned trials in the study, "
          f"{report['seconds']:.0f}s this run, {report['engine']['shards']} shards); "
          f"wrote {escape(str(output))}")
    if report["kept_baseline"] and report["best_value"] != report["baseline_value"]:
        _tell(f"kept the untuned config: the best trial's gain is below the noise "
              f"floor {report['min_gain']:.4f} (--min-gain)")
    console.print(comparison_table(comparison))
    side = output.with_name(f"{output.stem}.comparison.json")
    _write_text(side, json.dumps({"tuning": report, **comparison}, indent=2, default=str))


def _write_ranks(output: Path, ranks) -> None:
    """The per-target ranks (``llmrecall report`` draws from them) beside ``output``."""
    from llmrecall.evaluate.ranks import save_ranks, sidecar_path

    try:
        save_ranks(sidecar_path(output), ranks)
    except OSError as exc:
        _fail(f"cannot write {sidecar_path(output)}: {exc.strerror or exc}")
    _say(f"wrote {sidecar_path(output)}")


@app.command("report")
def report_command(
    results: Annotated[list[Path], typer.Argument(help=(
        "results JSON files of `llmrecall evaluate -o` (each with its .ranks.npz beside it)"))],
    out: Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write")],
    k: Annotated[int, typer.Option("-k", min=1, help=(
        "cut-off of the complementarity, segment and bias charts"))] = 50,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="series name of each results file, in order (default: file names)")] = None,
) -> None:
    """Write one self-contained HTML file of interactive charts for one or more evaluations:
    recall/NDCG curves, channel complementarity, recall by user and item segment, coverage
    and popularity bias, cold vs warm items, timings (docs/report.md)."""
    from llmrecall.evaluate.report_html import load_run, require_plotly, unique_labels, write_report

    check_writable(out, "--out")
    if label and len(label) != len(results):
        _fail(f"--label given {len(label)} times for {len(results)} results files")
    names = list(label) if label else unique_labels(results)
    try:
        require_plotly()
        runs = [load_run(path, name) for path, name in zip(results, names)]
        write_report(runs, out, k)
    except LLMRecallError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    _say(f"wrote {out}")


@app.command()
def recall(
    user: Annotated[str, typer.Option("--user", "-u", help="raw user id")],
    dataset: DatasetOpt = None, data: DataOpt = None, config: ConfigOpt = None,
    k: Annotated[int, typer.Option("-k", min=1, max=5000)] = 20,
    explain: Annotated[bool, typer.Option("--explain/--no-explain")] = True,
    all_reasons: Annotated[bool, typer.Option(
        "--all-reasons", help="a reason from every channel that proposed a candidate, not "
                              "only from the 3 that added most to its score")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the service's JSON answer "
                                                         "instead of a table")] = False,
    history: Annotated[list[str] | None, typer.Option(
        "--history", help="raw item id added to the user's history, oldest first (repeatable)")] = None,
    category: Annotated[list[str] | None, typer.Option(
        "--category", help="only items in this category (repeatable: any of them)")] = None,
    deny: Annotated[list[str] | None, typer.Option(
        "--deny", help="raw item id never to return (repeatable)")] = None,
) -> None:
    """Fit on all data and print one user's candidates, each with why it was recalled: the
    service's answer (POST /v1/recall, same code) for this user, history and filters.
    A learned fusion (`[fusion] method = "learned"`) is fitted first, as `build` fits it."""
    from llmrecall.config import load_config
    from llmrecall.serve.artifacts import fit_pipeline

    try:
        ds = _load_dataset(dataset, data)
        cfg = load_config(config)
        pipeline = fit_pipeline(ds, cfg)
    except LLMRecallError as exc:
        _fail(exc)
    _print_user(pipeline, ds, user, k, explain, as_json,
                {"history": history or [], "filters": {"categories": category or [],
                                                       "deny_items": deny or []},
                 **({"max_reasons": None} if all_reasons else {})})


def _print_user(pipeline, ds, user: str, k: int, explain: bool, as_json: bool = False,
                extra: dict | None = None) -> None:
    """``user``'s candidates from ``pipeline`` over ``ds``'s histories, answered as the
    service answers a ``POST /v1/recall`` with ``extra`` (history, filters) in its body
    (:class:`~llmrecall.serve.request.LocalRecall`)."""
    from rich.table import Table

    from llmrecall.serve.request import LocalRecall
    from llmrecall.serve.schemas import RecallRequest

    local = LocalRecall(ds, pipeline)
    try:
        req = RecallRequest.model_validate({"user_id": user, "k": k, "explain": explain,
                                            **(extra or {})})
        resolved, body = local.answer(req)
    except (LLMRecallError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        _fail(exc)
    finally:
        local.close()
    if not body["known_user"]:
        err.print(f"[yellow]user {escape(repr(user))} is unknown: answering as for a new "
                  f"user[/yellow]")
    if body["ignored_history_items"]:
        err.print(f"[yellow]unknown history items ignored: "
                  f"{escape(', '.join(body['ignored_history_items']))}[/yellow]")
    if as_json:
        console.print_json(json.dumps(body))
        return
    items = resolved.query.history.items
    titles = local.state.titles
    console.print(f"[bold]user {escape(user)}[/bold]: {len(items)} interactions; latest: "
                  + escape("; ".join(titles[i] for i in items[-5:][::-1])))
    table = Table(title=escape(f"top {k} candidates for user {user}"))
    for col in ("#", "item", "title", "score", "why"):
        table.add_column(col)
    for rank, c in enumerate(body["candidates"], 1):
        why = "\n".join(f"{r['channel']} #{r['rank']}: {r['why']}" for r in c.get("reasons", []))
        table.add_row(str(rank), escape(c["item_id"]), escape(c["title"]), f"{c['score']:.4f}",
                      escape(why or ", ".join(c["channels"])))
    console.print(table)


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
    kept: dict = {}
    try:
        cfg = load_config(config)
        ds = load_builtin(dataset)
        report, pipeline, data_split = run_experiment(
            ds, "loo", cfg, progress=_say,
            on_lists=lambda lists, fused: kept.update(lists=lists, fused=fused))
    except LLMRecallError as exc:
        _fail(exc)
    console.print(rich_table(report))
    _write_text(output, json.dumps(report, indent=2))
    from llmrecall.evaluate.ranks import build_ranks

    # the ranks beside the JSON: `llmrecall report results/demo.json` draws the charts
    _write_ranks(output, build_ranks(report, data_split, kept["lists"], kept["fused"]))
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
        cfg = load_config(config)
        if cfg.engine is not None and cfg.engine.log == "sharded":
            _tune_sharded(dataset, data, cfg, engine, trials, output, protocol, metric,
                          storage, study_name, timeout, space, max_users, min_gain, seed)
            return
        stack.enter_context(engine_for(engine, cfg))
        ds = _load_dataset(dataset, data)
        metric = metric or default_metric(cfg)
        # one split and one set of fitted channels for tuning and the test comparison: the
        # comparison fits only what tuning changed
        split = make_split(ds, protocol, seed)
        models = FittedChannels(split.train)
        tuned, report = run_tune(ds, protocol, cfg, trials, metric, storage=storage,
                                 study_name=study_name, seed=seed, space=space, timeout=timeout,
                                 max_users=max_users, split=split, models=models,
                                 min_gain=min_gain)
        _write_text(output, tuned.to_toml(), quiet=True)
        _tell(f"validation {report['metric']}: untuned {_fmt(report['baseline_value'])}, "
              f"tuned {_fmt(report['best_value'])} ({report['trials']['complete']} complete, "
              f"{report['trials']['pruned']} pruned trials in the study, "
              f"{report['seconds']:.0f}s this run); wrote {escape(str(output))}")
        if report["kept_baseline"] and report["best_value"] != report["baseline_value"]:
            _tell(f"kept the untuned config: the best trial's gain is below the noise "
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
    from llmrecall.lm.generators import get_generator
    from llmrecall.tune.interest_prompts import DEFAULT_VARIANT, interest_variants, search_interest_prompts
    from llmrecall.tune.objective import parse_metric
    from llmrecall.tune.prompt_report import prompt_report
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
        # one generator (one model load) writes the interest texts and proposes templates
        generator = get_generator("default", threads=threads)
        proposer = GeneratorProposer(generator, per_round=proposals) if rounds else None
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
    report = prompt_report(search, metric=metric, users=n, protocol=protocol, seed=seed,
                           rejected_proposals=0 if proposer is None else proposer.rejected)
    table = Table(title=f"prompt search: validation {metric}, {n} users (±: binomial SE)")
    for col in ("variant", "version", "round", metric, "±", "seconds", ""):
        table.add_column(col, justify="left" if col in ("variant", "version", "") else "right")
    for row in report.rows:
        table.add_row(row.name, row.version, str(row.round), f"{row.score:.4f}", f"{row.se:.4f}",
                      f"{row.seconds:.0f}", row.mark)
    console.print(table)
    side = output.with_name(f"{output.name}.search.json")
    _write_text(side, json.dumps(report.summary, indent=2, ensure_ascii=False), quiet=True)
    if report.comparison is not None:
        _tell(f"{report.comparison.sentence()}; "
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
        _say(f"wrote {path}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def synth(
    users: Annotated[int, typer.Option("--users", min=1, help="distinct users")],
    items: Annotated[int, typer.Option("--items", min=2, help="distinct items")],
    events: Annotated[int, typer.Option("--events", min=1, help="interactions in all")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write")],
    seed: int = 0,
    search_share: Annotated[float, typer.Option(
        "--search-share", min=0.0, max=1.0,
        help="share of sessions that start with a search (0: no search log)")] = 0.0,
) -> None:
    """Write a seeded synthetic log for scale tests: power-law popularity and activity,
    sessions, titles and categories, optionally searches; OUT/data.toml reads it with
    --data."""
    from llmrecall.data.synth import synthesize

    check_writable(out, "--out", folder=True)
    try:
        summary = synthesize(out, users=users, items=items, events=events, seed=seed,
                             search_share=search_share)
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
