"""nginx (Debian's) serving a make_shards output directory on 127.0.0.1, for the streaming tests
and benchmarks/http_shards.py: a temporary config, started as a child process, stopped by PID."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx serving ``root`` (a make_shards output directory, as it is) on 127.0.0.1:``port``; started
    with a temporary config in ``workdir``, stopped by PID (SIGTERM: fast shutdown)."""

    def __init__(self, root: Path, workdir: Path):
        if not os.path.exists(NGINX):
            raise FileNotFoundError("nginx is not installed: run scripts/install_system.sh (make install does)")
        self.port, self.dir, self.proc = free_port(), workdir, None
        workdir.mkdir(parents=True, exist_ok=True)
        self.access_log = workdir / "access.log"
        self.conf = workdir / "nginx.conf"
        d = workdir
        self.conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  types {{ application/json json; application/x-tar tar; }}
  server {{ listen 127.0.0.1:{self.port}; root {root}; }}
}}
""")
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self) -> "Nginx":
        cmd = [NGINX, "-e", str(self.dir / "error.log"), "-p", str(self.dir), "-c", str(self.conf)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    err = (self.dir / "error.log").read_text() if (self.dir / "error.log").exists() else ""
                    raise RuntimeError(f"nginx did not start: {self.proc.communicate()[0]} {err}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
