"""``python -m serving.app`` in its own process (its own Ray), for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ebr.config import Workspace
from ebr.net import free_port
from tests.conftest import REPO

READY_S = 180.0


class Server:
    """``python -m serving.app`` on a workspace, in its own process (its own Ray)."""

    def __init__(self, ws: Workspace, token: str = "test-admin-token") -> None:
        self.ws, self.port, self.token = ws, free_port(), token
        env = {**os.environ, "PYTHONPATH": str(REPO), "EBR_ADMIN_TOKEN": token}
        cmd = [sys.executable, "-m", "serving.app", "--workspace", str(ws.root),
               "--port", str(self.port)]  # fmt: skip
        self.log = open(ws.root / "serve.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60.0)
        deadline = time.monotonic() + READY_S
        while True:
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, (ws.root / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "serving did not become ready"
            time.sleep(1.0)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        resp = self.client.request(method, path, json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)  # the server's own PID: never a broad kill
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def processes(self, marker: str) -> list[int]:
        """PIDs of this server's descendant processes (its Ray's workers: Serve replicas)
        whose command line holds ``marker``."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(pid)
        return found
