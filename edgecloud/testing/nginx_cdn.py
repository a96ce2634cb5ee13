"""A CDN stand-in made of Debian's nginx, for tests and benchmarks: an origin that serves a
published TUF repository directory (or proxies an S3-compatible bucket) with TUF's cache
headers, and a caching proxy in front of it, the edge devices talk to.

Both listen on 127.0.0.1 at free ports, with every file (config, cache, logs, pid) in a temp
folder of its own; `stop()` stops the master by its PID. The edge's access log records the
bytes it sent and whether each answer came from its cache (`$upstream_cache_status`).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

from edgecloud.supervise import ManagedProcess, free_port

IMMUTABLE = "public, max-age=31536000, immutable"


def find_nginx() -> str | None:
    """The nginx binary (Debian: /usr/sbin/nginx from nginx-light), or None."""
    found = shutil.which("nginx") or next(iter(glob.glob("/usr/sbin/nginx")), None)
    return found


def _origin(root: Path | None, upstream: str | None, timestamp_max_age_s: int) -> str:
    if upstream is not None:  # a bucket sends the Cache-Control it was given on upload
        return f"location / {{ proxy_pass {upstream.rstrip('/')}/; }}"
    # no `always` on the immutable header: a 404 for the next root (N+1.root.json, asked on
    # every refresh) must never be cached, or a key rotation would never reach devices
    return f"""
      root {root};
      location = /metadata/timestamp.json {{
        add_header Cache-Control "public, max-age={timestamp_max_age_s}" always;
      }}
      location ~ ^/metadata/[0-9]+\\.[a-z]+\\.json$ {{
        add_header Cache-Control "{IMMUTABLE}";
      }}
      location /targets/ {{ add_header Cache-Control "{IMMUTABLE}"; }}
      location / {{ add_header Cache-Control "no-cache" always; }}
    """


class NginxCDN:
    """`url` is the caching edge; `origin_url` the origin behind it."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        upstream: str | None = None,
        timestamp_max_age_s: int = 0,
        binary: str | None = None,
    ) -> None:
        if (root is None) == (upstream is None):
            raise ValueError("give a published directory or an upstream URL")
        nginx = binary or find_nginx()
        if nginx is None:
            raise FileNotFoundError("nginx not found (Debian: apt-get install nginx-light)")
        self.dir = Path(tempfile.mkdtemp(prefix="edgecloud-nginx-"))
        for sub in ("cache", "tmp"):
            (self.dir / sub).mkdir()
        self.port, self.origin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.origin_url = f"http://127.0.0.1:{self.origin_port}"
        self.access_log = self.dir / "edge-access.log"
        d = self.dir
        user = "user root root;" if os.geteuid() == 0 else ""  # workers must read tmp dirs
        conf = f"""
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  types {{ application/json json; }}
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  log_format edge '$request_uri $status $body_bytes_sent $upstream_cache_status';
  proxy_cache_path {d}/cache levels=1:2 keys_zone=tuf:10m max_size=2g inactive=1d
                   use_temp_path=off;
  server {{
    listen 127.0.0.1:{self.origin_port};
    access_log off;
    {_origin(root, upstream, timestamp_max_age_s)}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    access_log {self.access_log} edge;
    location = /healthz {{ return 200 "ok"; }}
    location / {{
      proxy_pass {self.origin_url};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache tuf;
      proxy_cache_lock on;
      proxy_cache_revalidate on;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
  }}
}}
"""
        (d / "nginx.conf").write_text(conf)
        self.process = ManagedProcess(
            [nginx, "-p", str(d), "-c", str(d / "nginx.conf")],
            f"{self.url}/healthz",
            log_path=str(d / "stderr.log"),
            name="nginx",
        )

    def start(self) -> NginxCDN:
        self.process.start()
        self.process.wait_ready(30)
        return self

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def served(self) -> list[tuple[str, int, int, str]]:
        """(path, status, bytes, cache status) of each answer the edge sent so far."""
        out = []
        for line in self.access_log.read_text().splitlines() if self.access_log.exists() else []:
            path, status, size, cache = line.split(" ")
            out.append((path, int(status), int(size), cache))
        return out

    def __enter__(self) -> NginxCDN:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
