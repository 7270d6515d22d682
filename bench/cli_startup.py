"""CLI start-up, as whole processes: `redraft --help`, `redraft --version`, and `redraft run` from exec to its first
model request (the moment the model endpoint -- here a bare listening socket -- receives the request).

    python -m bench.cli_startup [-n RUNS]

Prints min and median wall and CPU seconds (CPU from the kernel's accounting of each finished process). One
warm-up run each is not counted. SQLite in a temporary directory; no model is needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REDRAFT = str(Path(sys.executable).with_name("redraft"))


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def to_first_request(env: dict[str, str], listener: socket.socket) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [REDRAFT, "run", "Explain fsync."], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    conn, _ = listener.accept()
    conn.recv(65536)  # the request's first bytes
    took = time.perf_counter() - started
    proc.kill()
    _, _, usage = os.wait4(proc.pid, 0)  # CPU up to the kill, a little past the first request
    conn.close()
    return took, usage.ru_utime + usage.ru_stime


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {min(values):.3f} | {statistics.median(values):.3f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_startup")
    parser.add_argument("-n", type=int, default=10, help="counted runs of each (default 10)")
    runs = parser.parse_args(argv).n
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDRAFT_")}
        env.update(
            REDRAFT_DATABASE_URL=str(Path(tmp) / "bench.sqlite"),
            REDRAFT_BASE_URL=f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
            REDRAFT_MODEL="bench",
            REDRAFT_MAX_RETRIES="0",
        )
        lines = ["| measure | min s | median s |", "|---|---|---|"]
        for name, args in (("--help", [REDRAFT, "--help"]), ("--version", [REDRAFT, "--version"])):
            timed(args, env)
            figures = [timed(args, env) for _ in range(runs)]
            lines.append(row(f"`redraft {name}` wall", [w for w, _ in figures]))
            lines.append(row(f"`redraft {name}` CPU", [c for _, c in figures]))
        to_first_request(env, listener)
        figures = [to_first_request(env, listener) for _ in range(runs)]
        lines.append(row("`redraft run` to first model request, wall", [w for w, _ in figures]))
        lines.append(row("`redraft run` to first model request, CPU (to the kill)", [c for _, c in figures]))
    print(f"{runs} runs each, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
