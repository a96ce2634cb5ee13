"""Resource and energy sampling during a run: psutil, NVML (if a GPU), Intel RAPL (if readable).

A background thread samples every `interval_s`; blocking calls stay off the event loop.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Literal

from edgecloud.bench.results import Energy
from edgecloud.bench.stats import counter_delta, energy_ratios, estimate_joules

RAPL_ROOT = Path("/sys/class/powercap")
DEFAULT_WATTS_PER_CORE = 10.0  # used only for the labelled estimate


def find_pid_by_port(port: int) -> int | None:
    """The process listening on TCP `port` on this machine, if it can be seen."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        return None
    return None


def machine_info() -> dict[str, object]:
    """What the run ran on (no paths, no user names)."""
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu,
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    gpus = _Nvml.open()
    if gpus is not None:
        info["gpus"] = gpus.names()
        gpus.close()
    return info


class _Rapl:
    """Package energy counters under /sys/class/powercap (intel-rapl:N), when readable."""

    def __init__(self, zones: list[tuple[Path, int]]) -> None:
        self.zones = zones

    @classmethod
    def open(cls) -> _Rapl | None:
        zones = []
        for zone in sorted(RAPL_ROOT.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:  # packages only, not their sub-zones
                continue
            try:
                int((zone / "energy_uj").read_text())
                wrap = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            zones.append((zone / "energy_uj", wrap))
        return cls(zones) if zones else None

    def read(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self.zones]

    def joules(self, before: list[int], after: list[int]) -> float:
        total = sum(
            counter_delta(b, a, w) for b, a, (_, w) in zip(before, after, self.zones, strict=True)
        )
        return total / 1e6


class _Nvml:
    """NVIDIA GPUs through nvidia-ml-py, when it is installed and a GPU is present."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml = nvml
        self.handles = handles

    @classmethod
    def open(cls) -> _Nvml | None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            if n == 0:
                pynvml.nvmlShutdown()
                return None
            return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)])
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return None

    def names(self) -> list[str]:
        return [str(self.nvml.nvmlDeviceGetName(h)) for h in self.handles]

    def sample(self) -> dict[str, float]:
        util = mem = power = 0.0
        for h in self.handles:
            util += self.nvml.nvmlDeviceGetUtilizationRates(h).gpu
            mem += self.nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
            try:
                power += self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception:
                pass
        return {"gpu_util_pct": util / len(self.handles), "gpu_mem_mb": mem, "gpu_power_w": power}

    def energy_mj(self) -> int | None:
        try:
            return sum(int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles)
        except Exception:
            return None

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


class ResourceSampler:
    """Samples CPU/RSS of the system, this process and a server process; reads energy."""

    def __init__(self, server_pid: int | None, t0: float, interval_s: float = 0.5) -> None:
        import psutil

        self.t0 = t0
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self._me = psutil.Process(os.getpid())
        self._cores = psutil.cpu_count(logical=True) or 1
        self._server = None
        if server_pid is not None:
            try:
                self._server = psutil.Process(server_pid)
            except psutil.Error:
                self._server = None
        self.server_pid = server_pid if self._server is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-resources", daemon=True)
        self._rapl = _Rapl.open()
        self._nvml = _Nvml.open()
        self._cpu_times0: Any = None
        self._server_cpu0 = 0.0
        self._rapl0: list[int] = []
        self._nvml0: int | None = None

    def start(self) -> ResourceSampler:
        import psutil

        psutil.cpu_percent(None)
        self._me.cpu_percent(None)
        self._cpu_times0 = psutil.cpu_times()
        if self._server is not None:
            self._server.cpu_percent(None)
            self._server_cpu0 = self._server_cpu()
        if self._rapl is not None:
            self._rapl0 = self._rapl.read()
        if self._nvml is not None:
            self._nvml0 = self._nvml.energy_mj()
        self._thread.start()
        return self

    def _server_cpu(self) -> float:
        assert self._server is not None
        times = self._server.cpu_times()
        total = times.user + times.system
        for child in self._server.children(recursive=True):
            try:
                ct = child.cpu_times()
                total += ct.user + ct.system
            except Exception:
                pass
        return float(total)

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(self.interval_s):
            s: dict[str, float] = {
                "t_s": round(time.perf_counter() - self.t0, 3),
                # Whole machine, in the same unit as the processes: 100 = one busy core.
                "system_cpu_pct": psutil.cpu_percent(None) * self._cores,
                "client_cpu_pct": self._me.cpu_percent(None),
                "client_rss_mb": self._me.memory_info().rss / 2**20,
            }
            if self._server is not None:
                try:
                    s["server_cpu_pct"] = self._server.cpu_percent(None)
                    s["server_rss_mb"] = self._server.memory_info().rss / 2**20
                except psutil.Error:
                    pass
            if self._nvml is not None:
                s.update(self._nvml.sample())
            self.samples.append(s)

    def stop(self, requests: int, output_tokens: int, watts_per_core: float) -> Energy:
        """End sampling; the energy of the run, measured where possible, else estimated."""
        import psutil

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

        def energy(
            source: Literal["nvml", "rapl", "estimate"],
            joules: float,
            note: str,
            measured: bool = True,
        ) -> Energy:
            per_req, per_j = energy_ratios(joules, requests, output_tokens)
            return Energy(
                source=source,
                measured=measured,
                joules=joules,
                joules_per_request=per_req,
                tokens_per_joule=per_j,
                note=note,
            )

        try:
            if self._nvml is not None and self._nvml0 is not None:
                end = self._nvml.energy_mj()
                if end is not None:
                    joules = (end - self._nvml0) / 1000.0
                    return energy("nvml", joules, "GPU energy counter (NVML), all GPUs")
            if self._rapl is not None:
                joules = self._rapl.joules(self._rapl0, self._rapl.read())
                return energy("rapl", joules, "Intel RAPL package counters (whole machine)")
            if self._server is not None:
                cpu_s = self._server_cpu() - self._server_cpu0
                scope = f"server process {self.server_pid}"
            else:
                t1 = psutil.cpu_times()
                cpu_s = _busy(t1) - _busy(self._cpu_times0)
                scope = "whole machine (no server pid: includes the bench itself)"
            note = (
                f"estimate: {cpu_s:.2f} CPU-s of the {scope} x "
                f"{watts_per_core:g} W per busy core; no RAPL/NVML counter"
            )
            return energy("estimate", estimate_joules(cpu_s, watts_per_core), note, False)
        finally:
            if self._nvml is not None:
                self._nvml.close()


def _busy(t: Any) -> float:
    idle = getattr(t, "idle", 0.0) + getattr(t, "iowait", 0.0)
    return float(sum(t) - idle)
