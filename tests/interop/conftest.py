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
    def __init__(self, data: Path):
        self.data = data
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data", str(data), "--listen", "127.0.0.1:0"],
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


@pytest.fixture
def mamori():
    d = Path(tempfile.mkdtemp(prefix="mamori-py-"))
    m = Mamori(d / "data")
    t = m.login("admin", m.admin_otp)
    r = m.api("POST", "/api/v1/auth/password", t, {"current": m.admin_otp, "new": PASSWORD})
    assert r.status_code == 200, r.text
    m.admin = m.login("admin", PASSWORD)
    yield m
    m.stop()
    shutil.rmtree(d, ignore_errors=True)
