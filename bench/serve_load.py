"""Load benchmark of the recall service on ml-1m (classic channels unless ``--config``).

Builds (or reuses) an artifact, starts ``llmrecall.serve serve`` as a subprocess on
127.0.0.1, and drives it from a SEPARATE process: ``wrk`` when installed, else an asyncio
httpx load generator (this script re-run with ``--drive``). Prints p50/p99 latency and
requests/s at each concurrency for ``POST /v1/recall`` (k=200, random known users), the
event ingestion rate (``POST /v1/events``), and the server's RSS.

    PYTHONPATH=src python bench/serve_load.py                 # build + run
    PYTHONPATH=src python bench/serve_load.py --artifact DIR  # reuse an artifact root
    PYTHONPATH=src python bench/serve_load.py --config configs/serve-all.toml  # all channels on
    PYTHONPATH=src python bench/serve_load.py --artifact DIR --repeats 5      # numbers to quote

Every run prints the 1-minute load average before and after it. ``--repeats N`` runs each
step N times in a row and then prints the median and the range (min-max) of req/s, p50 and
p99 over the N runs, with the range of the load averages seen: single runs on a shared
machine vary by 20 % and more, so quote the median and range, and the load.

``--config`` is the pipeline TOML the artifact is built from (default: the packaged classic
``default`` pipeline); ``configs/serve-all.toml`` adds every language-model channel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

API_KEY = "bench-key"
ROOT = Path(__file__).resolve().parents[1]


# ---- load generators (run in a separate process) ------------------------------------------
async def _drive(url: str, concurrency: int, duration: float, k: int, users: list[str],
                 kind: str, batch: int, items: list[str]) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    sent_events = 0
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={"X-API-Key": API_KEY}) as client:
        async def worker(seed: int) -> None:
            nonlocal errors, sent_events
            rnd = random.Random(seed)
            while time.perf_counter() < stop_at:
                if kind == "recall":
                    body = {"user_id": rnd.choice(users), "k": k}
                    path = "/v1/recall"
                else:
                    now = time.time()
                    body = {"events": [{"user_id": f"bench-{rnd.randrange(100000)}",
                                        "item_id": rnd.choice(items), "timestamp": now}
                                       for _ in range(batch)]}
                    path = "/v1/events"
                t = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                if not ok:
                    errors += 1
                elif kind == "events":
                    sent_events += batch

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "events_per_s": sent_events / wall}


def _wrk(url: str, concurrency: int, duration: float, k: int, users: list[str]) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write("users = {" + ",".join(f'"{u}"' for u in users) + "}\n"
                 "math.randomseed(os.time())\n"
                 "request = function()\n"
                 "  local body = '{\"user_id\":\"' .. users[math.random(#users)] .. "
                 f"'\",\"k\":{k}}}'\n"
                 "  return wrk.format('POST', '/v1/recall', {['Content-Type']='application/json'}, body)\n"
                 "end\n")
    script.close()
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True).stdout
    os.unlink(script.name)

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
    return {"requests": total, "errors": errors, "rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99")}


# ---- repeated runs ----------------------------------------------------------------------
#: the measures of a run that --repeats summarises
MEASURES = ("rps", "p50_ms", "p99_ms", "events_per_s")


def summarize(values: list[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of ``values`` (at least one; NaNs, e.g. the latency of
    a run without requests, are left out, and all-NaN gives NaN). The median of an even
    count is the mean of the two middle values."""
    if not values:
        raise ValueError("summarize() needs at least one value")
    finite = sorted(v for v in values if v == v)
    if not finite:
        nan = float("nan")
        return {"median": nan, "min": nan, "max": nan}
    n, mid = len(finite), len(finite) // 2
    median = finite[mid] if n % 2 else (finite[mid - 1] + finite[mid]) / 2
    return {"median": median, "min": finite[0], "max": finite[-1]}


def aggregate(runs: list[dict]) -> dict:
    """One step's repeated runs: ``{measure: summarize(...)}`` for each of :data:`MEASURES`
    present in every run, ``errors`` summed, ``requests`` summed, and ``load_1min``: the
    summary of the load averages taken before and after the runs."""
    out: dict = {m: summarize([r[m] for r in runs]) for m in MEASURES
                 if runs and all(m in r for r in runs)}
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    out["requests"] = sum(r.get("requests", 0) for r in runs)
    loads = [r[key] for r in runs for key in ("load_before", "load_after") if key in r]
    if loads:
        out["load_1min"] = summarize(loads)
    return out


def _span(s: dict[str, float], digits: int) -> str:
    """'median (min–max)' with ``digits`` decimals."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}–{f.format(s['max'])})"


def _load() -> float:
    return os.getloadavg()[0]


def _measured(run, *args) -> dict:
    """``run(*args)``'s result with the 1-minute load average before and after it."""
    before = _load()
    res = run(*args)
    return {**res, "load_before": before, "load_after": _load()}


# ---- orchestration ----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_driver(args, url: str, concurrency: int, kind: str, users, items) -> dict:
    if kind == "recall" and args.driver == "wrk":
        return _wrk(url, concurrency, args.duration, args.k, users)
    spec = {"url": url, "concurrency": concurrency, "duration": args.duration, "k": args.k,
            "users": users, "kind": kind, "batch": args.event_batch, "items": items}
    proc = subprocess.run([sys.executable, __file__, "--drive"], input=json.dumps(spec),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _warm_every_process(url: str, backends: list[str] | None, users: list[str], args) -> float:
    """Recall every user once in each server process: one keep-alive connection per process
    (a backend's own address, or found by its ``x-llmrecall-process`` header), all users
    sent through each, in parallel. Returns the seconds it took."""
    import concurrent.futures

    import httpx

    t = time.perf_counter()
    clients: dict[str, httpx.Client] = {
        base: httpx.Client(base_url=base, timeout=60) for base in backends or []}
    for _ in range(0 if backends else 200):
        if len(clients) == args.workers:
            break
        client = httpx.Client(base_url=url, timeout=60)
        pid = client.get("/healthz").headers.get("x-llmrecall-process", "single")
        if pid in clients:
            client.close()
        else:
            clients[pid] = client
    if len(clients) < args.workers:
        raise SystemExit(f"reached {len(clients)} of {args.workers} server processes")

    def run(client: httpx.Client) -> None:
        for u in users:
            client.post("/v1/recall", json={"user_id": u, "k": args.k}).raise_for_status()
        client.close()

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(run, clients.values()))
    return time.perf_counter() - t


def _channel_errors(metrics: str) -> dict[str, float]:
    """``{"channel/reason": count}`` from the Prometheus ``llmrecall_channel_errors_total``."""
    out = {}
    for line in metrics.splitlines():
        m = re.match(r'llmrecall_channel_errors_total\{(.*)\} ([0-9.e+]+)$', line)
        if m and float(m.group(2)) > 0:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[f"{labels.get('channel')}/{labels.get('reason')}"] = float(m.group(2))
    return out


def _wait_ready(servers, url: str, backends: list[str] | None, workers: int) -> None:
    """Until every server process answers /healthz (each behind the balancer, or the
    ``workers`` of one server: a fresh connection each time), then the balancer itself."""
    import httpx

    ready: set[str] = set()  # processes that answered
    for base in backends or [url]:
        want = workers if backends is None else 1
        while len(ready) < want:
            try:
                r = httpx.get(base + "/healthz", timeout=1)
                if r.status_code == 200:
                    ready.add(r.headers.get("x-llmrecall-process", "single"))
                    continue
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for p in servers):
                raise SystemExit("a server failed to start")
            time.sleep(0.1)
        ready = set()
    while True:  # the balancer itself
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--config", default=None, help="pipeline TOML (default: built-in classic)")
    parser.add_argument("--artifact", type=Path, default=None, help="reuse this artifact root")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--event-batch", type=int, default=100)
    parser.add_argument("--event-concurrency", type=int, default=8)
    parser.add_argument("--driver", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--settings", type=Path, default=None,
                        help="service settings TOML ([serve] table) passed to the server")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (serve --workers); RSS is summed over them")
    parser.add_argument("--balancer", choices=["none", "nginx"], default="none",
                        help="nginx: --workers separately started servers behind nginx")
    parser.add_argument("--warm", action="store_true",
                        help="before measuring, recall every user once in every process, so "
                             "per-user caches hold each user's state (a user already seen "
                             "since their last event); without it the caches fill during the run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each step this many times; print the median and min-max")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.drive:
        spec = json.loads(sys.stdin.read())  # a load generator process, run by main()
        print(json.dumps(asyncio.run(_drive(**spec))))
        return
    if args.driver == "auto":
        args.driver = "wrk" if shutil.which("wrk") else "httpx"

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LLMRECALL_API_KEY": API_KEY,
           "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    artifact = args.artifact or work / "artifact"
    build_s = None
    if not (artifact / "CURRENT").exists():
        cmd = [sys.executable, "-m", "llmrecall.serve", "build", "--dataset", args.dataset,
               "--out", str(artifact)] + (["--config", args.config] if args.config else [])
        t = time.perf_counter()
        subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "2"}, check=True)
        build_s = time.perf_counter() - t

    from llmrecall.serve.artifacts import resolve

    folder = resolve(artifact)
    users = json.loads((folder / "users.json").read_text())
    items = json.loads((folder / "items.json").read_text())
    servers, url, backends = _start(args, artifact, work, env)
    try:
        import httpx
        import psutil

        t = time.perf_counter()
        _wait_ready(servers, url, backends, args.workers)
        start_s = time.perf_counter() - t
        for u in users[:50 * args.workers]:  # warm-up, spread over the processes
            httpx.post(url + "/v1/recall", json={"user_id": u, "k": args.k})
        warm_s = _warm_every_process(url, backends, users, args) if args.warm else None
        rows = []
        for conc in [int(c) for c in args.concurrency.split(",")]:
            what = f"recall k={args.k}"
            runs = []
            for i in range(args.repeats):
                res = _measured(_run_driver, args, url, conc, "recall", users, items)
                runs.append(res)
                print(f"{what} c={conc:<3} run {i + 1}/{args.repeats} {res['rps']:8.1f} req/s"
                      f"  p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  errors "
                      f"{res['errors']}  load {res['load_before']:.2f} -> {res['load_after']:.2f}",
                      flush=True)
            rows.append(_row(what, conc, runs))
            if args.repeats > 1:
                s = rows[-1]
                print(f"{what} c={conc:<3} median (min–max) of {args.repeats}: "
                      f"{_span(s['rps_range'], 1)} req/s  p50 {_span(s['p50_ms_range'], 2)} ms  "
                      f"p99 {_span(s['p99_ms_range'], 2)} ms  load {_span(s['load_1min'], 2)}",
                      flush=True)
        what = f"events batch={args.event_batch}"
        runs = []
        for i in range(args.repeats):
            ev = _measured(_run_driver, args, url, args.event_concurrency, "events", users,
                           items)
            runs.append(ev)
            print(f"{what} c={args.event_concurrency} run {i + 1}/{args.repeats}: "
                  f"{ev['events_per_s']:.0f} events/s ({ev['rps']:.1f} batches/s, p50 "
                  f"{ev['p50_ms']:.2f} ms, p99 {ev['p99_ms']:.2f} ms, errors {ev['errors']})  "
                  f"load {ev['load_before']:.2f} -> {ev['load_after']:.2f}", flush=True)
        rows.append(_row(what, args.event_concurrency, runs))
        if args.repeats > 1:
            s = rows[-1]
            print(f"{what} c={args.event_concurrency} median (min–max) of {args.repeats}: "
                  f"{_span(s['events_per_s_range'], 0)} events/s  p99 "
                  f"{_span(s['p99_ms_range'], 2)} ms  load {_span(s['load_1min'], 2)}", flush=True)
        trees = [psutil.Process(p.pid) for p in servers]
        rss = sum(p.memory_info().rss for tree in trees
                  for p in [tree, *tree.children(recursive=True)]) / 2**20
        after = httpx.post(url + "/v1/recall", json={"user_id": users[0], "k": args.k})
        assert after.status_code == 200
        # a channel left out of an answer (deadline, error) is counted by the server:
        # numbers bought by dropping channels would not be the pipeline's numbers
        # (separately started servers each count their own)
        dropped: dict[str, float] = {}
        for base in backends or [url]:
            for key, n in _channel_errors(httpx.get(base + "/metrics").text).items():
                dropped[key] = dropped.get(key, 0.0) + n
        summary = {"dataset": args.dataset, "driver": args.driver, "workers": args.workers,
                   "balancer": args.balancer, "repeats": args.repeats,
                   "duration_s": args.duration,
                   "warm_s": warm_s, "build_s": build_s,
                   "server_start_s": start_s, "server_rss_mib": rss, "cpus": os.cpu_count(),
                   "channels": after.json()["channel_counts"], "channel_errors": dropped,
                   "results": rows}
        print(f"channels answering: {sorted(after.json()['channel_counts'])}")
        print("channels left out of answers during the run (reason: count): "
              + (", ".join(f"{k}: {v:.0f}" for k, v in dropped.items()) or "none"))
        print(f"server RSS {rss:.0f} MiB; start {start_s:.1f} s"
              + (f"; build {build_s:.0f} s" if build_s else "") + f"; driver {args.driver}")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)  # state (and the artifact unless reused)


def _row(what: str, concurrency: int, runs: list[dict]) -> dict:
    """A step's JSON row: the medians as the step's ``rps`` / ``p50_ms`` / ... (what a
    single run reported before), ``<measure>_range`` = ``{median, min, max}``, the load
    range and every run."""
    agg = aggregate(runs)
    row: dict = {"what": what, "concurrency": concurrency,
                 "requests": agg["requests"], "errors": agg["errors"]}
    for m in MEASURES:
        if m in agg:
            row[m] = agg[m]["median"]
            row[f"{m}_range"] = agg[m]
    row["load_1min"] = agg.get("load_1min")
    row["runs"] = runs
    return row


def _start(args, artifact: Path, work: Path, env: dict):
    """The server(s) under test: ``(processes, url to load, backend urls or None)``.

    ``--balancer none``: one ``llmrecall serve --workers N`` (its processes share one
    socket). ``--balancer nginx``: N single-process ``serve --shared-state`` instances on
    their own ports over one state file, behind nginx (deploy/nginx.conf: least
    connections, kept-alive upstream connections), so requests, not connections, are
    spread over the processes.
    """
    def serve(port: int, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "llmrecall.serve", "serve", str(artifact), "--port", str(port),
             "--state", str(work / "state.sqlite"), *extra]
            + (["--settings", str(args.settings)] if args.settings else []), env=env)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    if args.balancer == "none":
        return [serve(port, "--workers", str(args.workers))], url, None
    if not shutil.which("nginx"):
        raise SystemExit("--balancer nginx: nginx is not installed (apt-get install nginx-light)")
    ports = [_free_port() for _ in range(args.workers)]
    servers = [serve(p, "--shared-state") for p in ports]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for key, value in {"{prefix}": str(work), "{listen}": f"127.0.0.1:{port}",
                       "{servers}": "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
                       }.items():
        conf = conf.replace(key, value)
    (work / "nginx.conf").write_text(conf)
    servers.append(subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]))
    return servers, url, [f"http://127.0.0.1:{p}" for p in ports]


if __name__ == "__main__":
    main()
