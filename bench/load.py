"""The HTTP load generator and per-process accounting the serving benchmarks share (CPU and GPU checks).

``load`` keeps ``concurrency`` requests in flight for ``warmup + duration`` seconds and counts what
completes inside the measured window. The client is aiohttp by default: on a 2-core machine the load
generator shares the cores with the server, and httpx spent about 1.2-2 ms of CPU per request there
(``--client httpx`` keeps it for comparison with earlier runs). ``load_procs`` splits the same load over several client
processes, for servers faster than one Python process can drive. ``cpu_seconds`` and ``vm_hwm_mb``
read ``/proc`` so a benchmark can say where the CPU went and how much memory each process peaked at.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def _drive(send: Callable[[bytes], Awaitable[bool]], bodies: list[bytes], concurrency: int, warmup: float,
                 duration: float, offset: int) -> tuple[list[float], int]:  # fmt: skip
    """``concurrency`` loops of ``send``; the latencies of the successes and the failures inside the window."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def worker(k: int) -> None:
        nonlocal errors
        i = k + offset
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            ok = await send(bodies[i % len(bodies)])
            t1 = time.perf_counter()
            i += concurrency
            # Throughput counts what completes inside the window, whenever it was sent.
            if measure_from <= t1 <= stop_at:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, errors


async def _load(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, warmup: float,
                duration: float, offset: int = 0, client: str = "aiohttp") -> tuple[list[float], int]:  # fmt: skip
    if client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

            async def send_aiohttp(body: bytes) -> bool:
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            return await _drive(send_aiohttp, bodies, concurrency, warmup, duration, offset)
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def send_httpx(body: bytes) -> bool:
            try:
                return (await http.post(url, content=body, headers=headers)).status_code == 200
            except httpx.HTTPError:
                return False

        return await _drive(send_httpx, bodies, concurrency, warmup, duration, offset)


def summary(concurrency: int, duration: float, latencies: list[float], errors: int) -> dict[str, Any]:
    return {
        "concurrency": concurrency, "img_s": len(latencies) / duration, "errors": errors,
        "p50_ms": 1000 * percentile(latencies, 50), "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
    }  # fmt: skip


def load(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, warmup: float,
         duration: float, client: str = "aiohttp") -> dict[str, Any]:  # fmt: skip
    """One client process (this one)."""
    latencies, errors = asyncio.run(_load(url, headers, bodies, concurrency, warmup, duration, 0, client))
    return summary(concurrency, duration, latencies, errors)


def _child(args: tuple[str, dict[str, str], list[bytes], int, float, float, int]) -> tuple[list[float], int]:
    return asyncio.run(_load(*args))


def load_procs(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, warmup: float,
               duration: float, procs: int) -> dict[str, Any]:  # fmt: skip
    """``concurrency`` requests in flight, spread over ``procs`` client processes."""
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    jobs = [(url, headers, bodies, c, warmup, duration, 7919 * i) for i, c in enumerate(shares)]
    with ProcessPoolExecutor(procs) as pool:
        parts = list(pool.map(_child, jobs))
    latencies = [x for lat, _ in parts for x in lat]
    return summary(concurrency, duration, latencies, sum(e for _, e in parts))


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process (Linux /proc VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dump(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2, default=str))
