"""Fleet at scale: simulated devices against 2 fleet API processes over PostgreSQL, with TUF
metadata and models behind nginx as the CDN; side by side with today's single fleet server.

Each simulated device is an asyncio task's poll, not a process: it checks `timestamp.json` on
the CDN, follows new snapshot/targets metadata there, downloads a model its cohort is told to
install from the CDN, and reports to one of the two API processes (the other when that one
does not answer). Polls arrive at devices / interval x compress per second (time compressed:
`--compress 1` is the real rate of the default 1,800 s interval).

Phases:
  1. steady: all devices on 1.0.0; the API's CPU per report, p50/p99 of polls and reports;
  2. baseline: the same load against today's single server (`--baseline-ref`, run from a
     `git archive` of that commit) over the same PostgreSQL: its CPU per report;
  3. rollout 5 -> 25 -> 100%: bytes the API served vs bytes the CDN served; with
     `--kill-leader`, the controller's process is SIGKILLed at 25% and the other takes over;
     afterwards every acknowledged report is checked in the database and the steps counted.

Run:  python benchmarks/fleet_scale.py [--devices 20000] [--compress 10] [--steady-s 60]
Full: python benchmarks/fleet_scale.py --devices 100000 --compress 2 --steady-s 300
Prints one JSON document (raw samples in --out) and a summary table on stderr. Noisy on a
shared 2-core machine: the devices, nginx, PostgreSQL and the API all share it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from edgecloud.fleet.credentials import DEVICE_PREFIX, issue
from edgecloud.fleet.mirror import DirectorySink, Publisher
from edgecloud.fleet.repository import ModelRepository, repo_lock
from edgecloud.fleet.rollout import Gates, ModelRelease, RolloutPlan, choose_release
from edgecloud.fleet.state import CredentialRow, FleetStore
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from edgecloud.testing.cputime import tree_cpu_s
from edgecloud.testing.figures import sample_digest, write_result
from edgecloud.testing.nginx_cdn import NginxCDN
from edgecloud.testing.postgres import PostgresServer, find_bin_dir

MODEL = "bench"
OPERATOR = "bench-operator-token-0123456789"
OPERATOR_AUTH = {"authorization": f"Bearer {OPERATOR}"}
ROOT = Path(__file__).resolve().parent.parent
BASELINE_REF = "8e97e44"  # main before the stateless fleet API: one process, write-behind


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Sim:
    """The simulated fleet: credentials, what each device runs, and the measurements."""

    creds: dict[str, str]
    api: list[str]
    cdn: str
    version: dict[str, str] = field(default_factory=dict)
    poll_ms: list[float] = field(default_factory=list)
    report_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # device -> version of its last 204
    api_bytes: int = 0
    reports_ok: int = 0
    failovers: int = 0
    _meta: dict[str, Any] = field(default_factory=dict)  # parsed metadata by URL path

    def err(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _json(s: aiohttp.ClientSession, sim: Sim, path: str, cacheable: bool) -> Any:
    if cacheable and path in sim._meta:
        async with s.get(sim.cdn + path) as r:  # still fetched: the CDN's work is real
            await r.read()
        return sim._meta[path]
    async with s.get(sim.cdn + path) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}")
    data = json.loads(body)
    if cacheable:
        sim._meta[path] = data
    return data


async def poll(s: aiohttp.ClientSession, sim: Sim, device: str) -> None:
    """One device's poll: metadata from the CDN, maybe a model, then a report to the API."""
    t0 = time.perf_counter()
    try:
        ts = await _json(s, sim, "/metadata/timestamp.json", cacheable=False)
        sim.poll_ms.append((time.perf_counter() - t0) * 1000)
        snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
        snap = await _json(s, sim, f"/metadata/{snap_v}.snapshot.json", cacheable=True)
        targets_v = snap["signed"]["meta"]["targets.json"]["version"]
        path = f"/metadata/{targets_v}.targets.json"
        targets = await _json(s, sim, path, cacheable=True)
        key = f"releases:{targets_v}"
        if key not in sim._meta:
            rels = []
            for name, tf in targets["signed"]["targets"].items():
                rel = ModelRelease.from_custom(tf.get("custom"))
                if rel is not None:
                    rels.append((rel, name, tf["hashes"]["sha256"]))
            sim._meta[key] = rels
        rels = sim._meta[key]
        choice = choose_release([r for r, _, _ in rels], MODEL, device, "9.9.9")
        want = choice.release.version if choice.release else sim.version[device]
        if want != sim.version[device]:
            name, sha = next((n, h) for r, n, h in rels if r.version == want)
            folder, _, base = name.rpartition("/")
            async with s.get(f"{sim.cdn}/targets/{folder}/{sha}.{base}") as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"target HTTP {r.status}")
            sim.version[device] = want
    except Exception:
        sim.err("cdn")
    body = json.dumps(
        {
            "device_id": device,
            "model": MODEL,
            "version": sim.version[device],
            "agent_version": "9.9.9",
            "metrics": {"error_rate": 0.0, "p95_ms": 80.0 + random.random() * 20, "eval_score": 1},
        }
    )
    headers = {"authorization": f"Bearer {sim.creds[device]}", "content-type": "application/json"}
    first = hash(device) % len(sim.api)
    for attempt in range(len(sim.api)):
        url = sim.api[(first + attempt) % len(sim.api)]
        t1 = time.perf_counter()
        try:
            async with s.post(f"{url}/v1/devices/report", data=body, headers=headers) as r:
                sim.api_bytes += len(await r.read())
                if r.status == 204:
                    sim.report_ms.append((time.perf_counter() - t1) * 1000)
                    sim.reports_ok += 1
                    sim.acked[device] = sim.version[device]
                    return
                sim.err(f"report_{r.status}")
                return
        except (TimeoutError, aiohttp.ClientError):
            sim.failovers += 1  # a process that is gone: the next API replica
    sim.err("report_unreachable")


async def load(sim: Sim, devices: list[str], rate: float, seconds: float,
               stop: Callable[[], Awaitable[bool]] | None = None) -> int:
    """Polls at `rate` per second for `seconds` (or until `await stop()`), devices in a
    shuffled round; at most 512 in flight. Returns the number of polls started. `stop` runs
    on the event loop: it must not block it (the simulated devices would stall)."""
    conn = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    started = 0
    order = devices[:]
    random.shuffle(order)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and not (stop is not None and await stop()):
            due = int((time.monotonic() - t0) * rate)
            while started < due and len(tasks) < 512:
                device = order[started % len(order)]
                started += 1
                t = asyncio.create_task(poll(s, sim, device))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return started


def cpu_s(procs: list[psutil.Process]) -> float:
    return tree_cpu_s(p.pid for p in procs)


def provision(url: str, devices: list[str], schema: str) -> dict[str, str]:
    """Credentials for every device, written straight to the database (enrolment is not what
    is measured here; it is tested elsewhere)."""
    store = FleetStore(url) if schema == "new" else None
    from sqlalchemy import create_engine

    from edgecloud.fleet.state import database_url

    engine = store.engine if store else create_engine(database_url(url))
    if store is None:
        CredentialRow.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    creds, rows = {}, []
    now = time.time()
    for d in devices:
        new = issue(DEVICE_PREFIX)
        creds[d] = new.token
        rows.append({"token_id": new.token_id, "hash": new.hash, "device_id": d, "created_at": now})
    with Session(engine) as s, s.begin():
        for i in range(0, len(rows), 5000):
            s.execute(insert(CredentialRow), rows[i : i + 5000])
    engine.dispose()
    return creds


def server(
    tmp: Path, name: str, repo: Path, db_url: str, *extra: str, pythonpath: Path | None = None
) -> ManagedProcess:
    port = free_port()
    env = {"EDGECLOUD_FLEET_TOKEN": OPERATOR, "BENCH_FLEET_DB": db_url}
    cmd = edgecloud_command(
        "fleet",
        "serve",
        "--repo",
        str(repo),
        "--port",
        str(port),
        "--db-env",
        "BENCH_FLEET_DB",
        "--report-rate",
        "100",
        "--report-burst",
        "100",
        "--max-devices",
        "2000000",
        *extra,
    )
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    p = ManagedProcess(
        cmd,
        f"http://127.0.0.1:{port}/readyz",
        env=env,
        log_path=str(tmp / f"{name}.log"),
        name=name,
    )
    p.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return p


def baseline_tree(tmp: Path, ref: str) -> Path:
    """Today's code at `ref` (its edgecloud package), to run its fleet server."""
    out = tmp / "baseline"
    out.mkdir()
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "edgecloud"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    return out


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if f'"event":"{event}"' in line:
            out.append(json.loads(line[line.index("{") :]))
    return out


def pg_figures(pg: PostgresServer, db: str) -> dict[str, Any]:
    def one(conn: Any, sql: str) -> int:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    with pg.connect(db) as conn:
        size = one(conn, "SELECT pg_database_size(current_database())")
        tables = ("fleet_devices", "fleet_events", "fleet_device_credentials", "fleet_rollouts")
        rows = {t: one(conn, f"SELECT count(*) FROM {t}") for t in tables}
    return {"size_mb": round(size / 1e6, 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--interval", type=float, default=1800.0, help="the agents' poll interval")
    ap.add_argument("--compress", type=float, default=10.0, help="time compression factor")
    ap.add_argument("--steady-s", type=float, default=60.0)
    ap.add_argument("--idle-s", type=float, default=10.0, help="idle measurement first")
    ap.add_argument("--rollout-timeout-s", type=float, default=240.0)
    ap.add_argument("--model-kb", type=int, default=64)
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--kill-leader", action="store_true")
    args = ap.parse_args()
    rate = args.devices / args.interval * args.compress
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL server binaries not found: apt-get install -y postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    devices = [f"box-{i:07d}" for i in range(args.devices)]
    result: dict[str, Any] = {
        "devices": args.devices,
        "interval_s": args.interval,
        "compress": args.compress,
        "polls_per_s": round(rate, 1),
        "cpus": os.cpu_count(),
    }
    pg = PostgresServer(bin_dir).start()
    procs: list[ManagedProcess] = []
    cdn: NginxCDN | None = None
    try:
        # the repository: 1.0.0 stable, 1.1.0 to roll out; published to the CDN's origin
        repo_path = tmp / "repo"
        repo = ModelRepository.init(repo_path)
        for v, stable in (("1.0.0", True), ("1.1.0", False)):
            f = tmp / f"{v}.gguf"
            f.write_bytes(os.urandom(args.model_kb * 1024))
            repo.add_model(f, MODEL, v, stable=stable)
        mirror = tmp / "mirror"
        Publisher(repo_path, [DirectorySink(mirror)], 1).publish()
        cdn = NginxCDN(mirror, timestamp_max_age_s=1).start()
        db = pg.create_database("fleet")
        t0 = time.monotonic()
        creds = provision(pg.url(db), devices, "new")
        print(
            f"provisioned {len(devices)} devices in {time.monotonic() - t0:.0f} s", file=sys.stderr
        )
        extra = ("--tick", "1", "--mirror", str(mirror), "--timestamp-max-age", "1")
        a, b = (server(tmp, n, repo_path, pg.url(db), *extra) for n in ("api-a", "api-b"))
        procs += [a, b]
        for p in (a, b):
            p.start()
        for p in (a, b):
            p.wait_ready(60)
        urls = [a.url, b.url]  # type: ignore[attr-defined]
        sim = Sim(creds, urls, cdn.url, dict.fromkeys(devices, "1.0.0"))
        api_ps = [psutil.Process(p.pid) for p in (a, b)]
        pg_ps = [psutil.Process(int((pg.data / "postmaster.pid").read_text().split()[0]))]
        me = psutil.Process()

        # 0. idle: what the processes cost with no device (controller passes, lease tries,
        # mirror checks), so the per-report figure can be split into fixed and marginal
        i0, w0 = cpu_s(api_ps), time.monotonic()
        time.sleep(args.idle_s)
        idle_cores = (cpu_s(api_ps) - i0) / (time.monotonic() - w0)
        result["api_idle_cores"] = round(idle_cores, 4)

        # 1. steady load
        c0, p0, m0 = cpu_s(api_ps), cpu_s(pg_ps), cpu_s([me])
        w0 = time.monotonic()
        started = asyncio.run(load(sim, devices, rate, args.steady_s))
        wall = time.monotonic() - w0
        c1, p1, m1 = cpu_s(api_ps), cpu_s(pg_ps), cpu_s([me])
        n = sim.reports_ok
        steady = {
            "polls": started,
            "reports_ok": n,
            "achieved_per_s": round(n / wall, 1),
            "errors": dict(sim.errors),
            "api_cpu_ms_per_report": round((c1 - c0) / max(1, n) * 1000, 3),
            "api_marginal_cpu_ms_per_report": round(
                (c1 - c0 - idle_cores * wall) / max(1, n) * 1000, 3
            ),
            "pg_cpu_ms_per_report": round((p1 - p0) / max(1, n) * 1000, 3),
            "sim_cpu_ms_per_poll": round((m1 - m0) / max(1, started) * 1000, 3),
            "poll_ms": {
                "p50": round(percentile(sim.poll_ms, 0.5), 1),
                "p99": round(percentile(sim.poll_ms, 0.99), 1),
            },
            "report_ms": {
                "p50": round(percentile(sim.report_ms, 0.5), 1),
                "p99": round(percentile(sim.report_ms, 0.99), 1),
            },
        }
        result["steady"] = steady
        # cores = the fixed cost of the processes + the reports' marginal cost (API and
        # PostgreSQL); reports per second = devices / interval
        marginal_s = max(0.0, (c1 - c0 - idle_cores * wall) / max(1, n))
        pg_s = (p1 - p0) / max(1, n)
        result["projected_cores"] = {
            str(fleet): {
                "reports_per_s": round(fleet / args.interval, 1),
                "api_cores": round(idle_cores + fleet / args.interval * marginal_s, 3),
                "postgres_cores": round(fleet / args.interval * pg_s, 3),
            }
            for fleet in (100_000, 1_000_000)
        }
        print(json.dumps({"steady": steady}), file=sys.stderr)

        # 2. today's single server, same load, same PostgreSQL
        if not args.no_baseline:
            base_db = pg.create_database("fleet_baseline")
            base_creds = provision(pg.url(base_db), devices, "old")
            tree = baseline_tree(tmp, args.baseline_ref)
            base_repo = tmp / "baseline-repo"  # its own copy: its controller runs too
            shutil.copytree(repo_path, base_repo)
            old = server(
                tmp, "baseline", base_repo, pg.url(base_db), "--tick", "1", pythonpath=tree
            )
            procs.append(old)
            old.start()
            old.wait_ready(120)
            bsim = Sim(base_creds, [old.url], cdn.url, dict.fromkeys(devices, "1.0.0"))  # type: ignore[attr-defined]
            old_ps = [psutil.Process(old.pid)]
            i0, w0 = cpu_s(old_ps), time.monotonic()
            time.sleep(args.idle_s)
            old_idle = (cpu_s(old_ps) - i0) / (time.monotonic() - w0)
            c0 = cpu_s(old_ps)
            w0 = time.monotonic()
            asyncio.run(load(bsim, devices, rate, args.steady_s))
            wall = time.monotonic() - w0
            c1 = cpu_s(old_ps)
            old.stop()
            result["baseline"] = {
                "ref": args.baseline_ref,
                "reports_ok": bsim.reports_ok,
                "achieved_per_s": round(bsim.reports_ok / wall, 1),
                "errors": dict(bsim.errors),
                "api_cpu_ms_per_report": round((c1 - c0) / max(1, bsim.reports_ok) * 1000, 3),
                "api_idle_cores": round(old_idle, 4),
                "api_marginal_cpu_ms_per_report": round(
                    (c1 - c0 - old_idle * wall) / max(1, bsim.reports_ok) * 1000, 3
                ),
                "report_ms": {
                    "p50": round(percentile(bsim.report_ms, 0.5), 1),
                    "p99": round(percentile(bsim.report_ms, 0.99), 1),
                },
                "note": "writes behind (answers before the database has the report)",
            }
            result["ratio_cpu_per_report_new_over_baseline"] = round(
                steady["api_cpu_ms_per_report"]
                / max(1e-9, result["baseline"]["api_cpu_ms_per_report"]),
                2,
            )
            print(json.dumps({"baseline": result["baseline"]}), file=sys.stderr)

        # 3. a 5 -> 25 -> 100% rollout under the same load
        sim.reports_ok, sim.api_bytes, sim.errors = 0, 0, {}
        sim.acked.clear()
        cdn_before = len(cdn.served())
        quorum = min(20, max(3, args.devices // 200))  # 10% of the 5% stage, up to 20
        plan = RolloutPlan(
            stages=[5, 25, 100], soak_s=10, min_reports=quorum, gates=Gates(max_p95_ms=500)
        )
        with repo_lock(repo_path):
            ModelRepository(repo_path).start_rollout(MODEL, "1.1.0", 5, plan)
        killed: dict[str, Any] = {}
        t_roll = time.monotonic()

        async def status() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=10) as client:
                for u in urls:
                    try:
                        got = await client.get(f"{u}/v1/fleet/status", headers=OPERATOR_AUTH)
                        return dict(got.json())
                    except httpx.HTTPError:
                        continue
            return {}

        async def stop() -> bool:
            now = time.monotonic()
            if now - getattr(stop, "last", 0) < 1:
                return False
            stop.last = now  # type: ignore[attr-defined]
            rel: dict[str, Any] = next(
                (r for r in (await status()).get("releases", []) if r["version"] == "1.1.0"),
                {})
            if args.kill_leader and not killed and rel.get("percent", 0) >= 25:
                leader = next(
                    p for p in (a, b) if log_events(Path(str(p.log_path)), "controller.lease_taken")
                )
                os.killpg(leader.pid, signal.SIGKILL)
                killed.update(
                    name=leader.name, at_percent=rel["percent"], at_s=round(now - t_roll, 1)
                )
            return rel.get("stage") in ("stable", "aborted")

        polls = asyncio.run(load(sim, devices, rate, args.rollout_timeout_s, stop))
        final: dict[str, Any] = next(
            (r for r in asyncio.run(status())["releases"] if r["version"] == "1.1.0"), {}
        )
        served = cdn.served()[cdn_before:]
        counts: dict[str, int] = {}
        for u in urls:  # each process counts its own requests
            try:
                got = httpx.get(f"{u}/v1/fleet/status", headers=OPERATOR_AUTH, timeout=10)
            except httpx.HTTPError:
                continue  # the killed one
            for k, v in got.json().get("requests", {}).items():
                counts[k] = counts.get(k, 0) + v
        steps = sorted((e for p in (a, b) for e in log_events(Path(str(p.log_path)),
                                                              "rollout.step")),
                       key=lambda e: str(e.get("ts", "")))  # both processes' steps, in time order
        # every acknowledged report is in the database (none lost, whichever process took it)
        with Session(FleetStore(pg.url(db)).engine) as s:
            stored: dict[str, str] = dict(
                s.execute(text("SELECT device_id, version FROM fleet_devices")).all()
            )
        lost = [d for d, v in sim.acked.items() if d not in stored]
        result["rollout"] = {
            "final": {k: final.get(k) for k in ("stage", "percent", "reason")},
            "seconds": round(time.monotonic() - t_roll, 1),
            "polls": polls,
            "reports_ok": sim.reports_ok,
            "errors": dict(sim.errors),
            "failovers": sim.failovers,
            "steps": [(e["action"], e["percent"]) for e in steps],
            "killed": killed or None,
            "acknowledged_reports_missing_in_db": len(lost),
            "devices_on_1.1.0": sum(1 for v in sim.version.values() if v == "1.1.0"),
            "api_bytes_served": sim.api_bytes,
            "api_tuf_requests": {k: counts.get(k, 0) for k in ("metadata", "targets")},
            "cdn_bytes_served": {
                "targets": sum(n for p, _, n, _ in served if p.startswith("/targets/")),
                "metadata": sum(n for p, _, n, _ in served if p.startswith("/metadata/")),
            },
            "cdn_cache_hits": sum(1 for *_, c in served if c == "HIT"),
            "cdn_requests": len(served),
        }
        result["postgres"] = pg_figures(pg, db)
        print(json.dumps({"rollout": result["rollout"]}), file=sys.stderr)
    finally:
        for p in procs:
            p.stop()
        if cdn is not None:
            cdn.stop()
        pg.stop()
    samples = {"poll_ms": sample_digest(sim.poll_ms), "report_ms": sample_digest(sim.report_ms)}
    print(json.dumps(result, indent=2))
    write_result("fleet_scale", summary=result, samples=samples, params=vars(args))
    _summary(result)


def _summary(r: dict[str, Any]) -> None:
    s = r["steady"]
    lines = [
        f"{r['devices']} devices, {r['interval_s']:g} s interval x{r['compress']:g} "
        f"= {r['polls_per_s']} polls/s (achieved {s['achieved_per_s']}/s)",
        f"API CPU per report: {s['api_cpu_ms_per_report']} ms (+ PostgreSQL "
        f"{s['pg_cpu_ms_per_report']} ms); report p50/p99 {s['report_ms']['p50']}/"
        f"{s['report_ms']['p99']} ms; CDN poll p50/p99 "
        f"{s['poll_ms']['p50']}/{s['poll_ms']['p99']} ms",
    ]
    if "baseline" in r:
        bl = r["baseline"]
        lines.append(
            f"today's single server: {bl['api_cpu_ms_per_report']} ms CPU per report "
            f"(p99 {bl['report_ms']['p99']} ms); "
            f"ratio {r['ratio_cpu_per_report_new_over_baseline']}x"
        )
    if "rollout" in r:
        ro = r["rollout"]
        lines.append(
            f"rollout: {ro['final']} in {ro['seconds']} s, steps {ro['steps']}, "
            f"API bytes {ro['api_bytes_served']}, CDN target bytes "
            f"{ro['cdn_bytes_served']['targets']}"
        )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
