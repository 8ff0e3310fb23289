"""Fixtures: a real `mamori serve` process on an ephemeral loopback port.

The binary is the one `cargo build` produced (MAMORI_BIN overrides)."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MAMORI_BIN", str(ROOT / "target" / "debug" / "mamori"))
PASSWORD = "Correct horse 42!"


class Mamori:
    def __init__(self, data: Path, extra_args=(), config=""):
        self.data = data
        self.as2_port = None
        if config:
            data.mkdir(parents=True, exist_ok=True)
            (data / "mamori.toml").write_text(config)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--init", "--data", str(data), "--listen", "127.0.0.1:0", *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "MAMORI_LOG_LEVEL": "warn"},
        )
        self.admin_otp = None
        for line in self.proc.stdout:
            m = re.search(r"one-time password:\s+(\S+)", line)
            if m:
                self.admin_otp = m.group(1)
            m = re.match(r"mamori: listening on \S+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                if "--as2-listen" not in extra_args:
                    break
            m = re.match(r"mamori: AS2 \(mutual TLS\) on \S+:(\d+)", line)
            if m:
                self.as2_port = int(m.group(1))
                break
        else:
            raise RuntimeError("mamori exited before listening")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.base = f"https://localhost:{self.port}"
        self.ca = str(data / "tls" / "cert.pem")

    def api(self, method, path, token=None, body=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = requests.request(method, self.base + path, json=body, headers=headers, verify=self.ca, timeout=30)
        return r

    def login(self, user, pw):
        r = self.api("POST", "/api/v1/auth/login", body={"username": user, "password": pw})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def user(self, admin, name, roles):
        r = self.api("POST", "/api/v1/users", admin, {"name": name, "display": name, "roles": roles})
        assert r.status_code == 201, r.text
        # A clinical role waits for a second administrator's approval.
        pending = r.json().get("pending_request")
        if pending is not None:
            a = self.api("POST", f"/api/v1/account-requests/{pending}/approve", self.admin2, {})
            assert a.status_code == 200, a.text
        otp = r.json()["one_time_password"]
        t = self.login(name, otp)
        r = self.api("POST", "/api/v1/auth/password", t, {"current": otp, "new": PASSWORD})
        assert r.status_code == 200, r.text
        return self.login(name, PASSWORD)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _started(m):
    t = m.login("admin", m.admin_otp)
    r = m.api("POST", "/api/v1/auth/password", t, {"current": m.admin_otp, "new": PASSWORD})
    assert r.status_code == 200, r.text
    m.admin = m.login("admin", PASSWORD)
    m.admin2 = m.user(m.admin, "admin2", ["admin"])
    return m


@pytest.fixture
def mamori():
    d = Path(tempfile.mkdtemp(prefix="mamori-py-"))
    m = _started(Mamori(d / "data"))
    yield m
    m.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mamori_as2():
    """A mamori server with its AS2 listener (AS2 id MAMORI-H)."""
    d = Path(tempfile.mkdtemp(prefix="mamori-py-as2-"))
    cfg = '[exchange]\nas2_id = "MAMORI-H"\nretry_initial_seconds = 1\nretry_max_seconds = 2\nmax_attempts = 3\n'
    m = _started(Mamori(d / "data", ("--as2-listen", "127.0.0.1:0"), cfg))
    m.tmp = d
    yield m
    m.stop()
    shutil.rmtree(d, ignore_errors=True)
