"""A throwaway redis-server for tests and benchmarks: 127.0.0.1, an ephemeral port, no
persistence, its own directory; killed and restarted on the same port for failure tests; over
TLS (rediss://, a self-signed certificate for 127.0.0.1) where asked."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from pathlib import Path

from edgecloud.supervise import ManagedProcess, free_port

CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")


def find_redis_server() -> str | None:
    """The redis-server binary (Debian's package puts it in /usr/bin), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return next((c for c in CANDIDATES if Path(c).is_file()), None)


class RedisServer:
    """One redis-server process; `url` stays the same across kill() and start()."""

    def __init__(self, workdir: Path, binary: str | None = None, port: int | None = None,
                 tls: bool = False) -> None:
        binary = binary or find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server not found (Debian: apt-get install redis-server)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(self.port)]
        self.tls: ssl.SSLContext | None = None
        if tls:
            from edgecloud.testing.tlskeys import write_self_signed

            key, cert = workdir / "redis-key.pem", workdir / "redis-cert.pem"
            write_self_signed(key, cert)
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                      "--tls-auth-clients", "no"]
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={cert}"
            self.tls = ssl.create_default_context(cafile=str(cert))
        self.proc = ManagedProcess(
            [binary, *listen, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"],
            None, log_path=str(workdir / f"redis-{self.port}.log"), name="redis-server")

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        self.proc.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"redis-server exited; see its log {self.proc.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                    s = (self.tls.wrap_socket(raw, server_hostname="127.0.0.1")
                         if self.tls is not None else raw)
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis-server not up within {timeout_s} s")

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.proc.kill()
        if self.proc.proc is not None:
            self.proc.proc.wait(timeout=10)

    def stop(self) -> None:
        self.proc.stop()
