"""`unimm bench serve`: the load check. N concurrent clients for T seconds against a server on
loopback; requests/s, p50/p99 latency, errors, deliberate 503s, the server's peak memory, and
dynamic batching against one-at-a-time (the same server with max_batch 1).

Bounded by construction: at most 256 clients and 600 s per measurement (CLI), loopback only
(a URL elsewhere is refused), and one started server at a time, stopped with SIGINT (uvicorn's
graceful shutdown).
"""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import numpy as np

from ..utils.machine import conditions, thread_env
from .timing import peak_rss_mb

LOOPBACK = ("127.0.0.1", "localhost", "::1")
KINDS = ("generate", "chat", "edit")
MODES = {"batched": 16, "single": 1}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _requests(image_size: int):
    from ..data.splits import ShapesWorld, WorldConfig
    png = _png(ShapesWorld("test", WorldConfig(image_size=image_size)).image(0))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return {
        "generate": dict(url="/v1/images/generations",
                         json={"prompt": "a large red circle in the center", "n": 1}),
        "chat": dict(url="/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "How many shapes are there?"},
            {"type": "image_url", "image_url": {"url": url}}]}], "max_tokens": 16}),
        "edit": dict(url="/v1/images/edits", data={"prompt": "Make the circle blue."},
                     files={"image": ("scene.png", png, "image/png")}),
    }


async def _load(base: str, kind: str, req: dict, clients: int, seconds: float) -> dict:
    import httpx
    lat, errors, overloaded, samples = [], 0, 0, []
    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 limits=httpx.Limits(max_connections=clients)) as http:
        r = await http.post(**req)                                      # warm-up
        r.raise_for_status()
        t0 = time.perf_counter()
        end = t0 + seconds

        async def client():
            nonlocal errors, overloaded
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    r = await http.post(**req)
                except httpx.HTTPError as e:
                    errors += 1
                    samples.append(f"{type(e).__name__}: {e}")
                    continue
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                elif r.status_code == 503:                               # deliberate: back off
                    overloaded += 1
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", 1)),
                                            max(0.0, end - time.perf_counter())))
                else:
                    errors += 1
                    samples.append(f"{r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
        stats = (await http.get("/health")).json().get("batches", {})
    ms = np.array(lat) * 1000 if lat else np.zeros(1)
    return {"kind": kind, "clients": clients, "seconds": round(wall, 2), "ok": len(lat),
            "requests_per_s": round(len(lat) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": errors, "overloaded_503": overloaded, "error_samples": samples[:5],
            "server_batches": stats}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base: str, proc, limit_s: float = 120) -> dict:
    import httpx
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before serving")
        try:
            return httpx.get(base + "/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"no server answered at {base} within {limit_s:.0f} s")


def start_server(run, max_batch: int, clients: int, threads: int):
    port = _free_port()
    cmd = [sys.executable, "-m", "unimm.cli.main", "serve", "--port", str(port),
           "--max-batch", str(max_batch), "--queue-size", str(max(64, 2 * clients)),
           "--timeout", "120"]
    if run is not None:
        cmd += ["--run", str(run)]
    env = thread_env(threads, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGINT)                                # uvicorn: graceful shutdown
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_serve(run, url, clients: int, seconds: float, kinds: list[str], modes: list[str],
                threads: int = 1) -> dict:
    if not 1 <= clients <= 256 or not 0 < seconds <= 600:
        raise ValueError("clients must lie in [1, 256] and seconds in (0, 600]")
    bad = [k for k in kinds if k not in KINDS] + [m for m in modes if m not in MODES]
    if bad or not kinds:
        raise ValueError(f"unknown kind(s)/mode(s) {bad}; kinds: {', '.join(KINDS)}; "
                         f"modes: {', '.join(MODES)}")
    result = {"clients": clients, "seconds": seconds, "threads": threads, "modes": {},
              "conditions": conditions()}
    if url is not None:
        if urlparse(url).hostname not in LOOPBACK:
            raise ValueError(f"--url {url}: the load check runs on loopback only "
                             f"({', '.join(LOOPBACK)})")
        health = _wait_healthy(url.rstrip("/"), None, 10)
        reqs = _requests(health.get("image_size", 32))
        result["modes"]["external"] = {"rows": [asyncio.run(_load(url.rstrip("/"), k, reqs[k],
                                                                  clients, seconds))
                                                for k in kinds]}
        return result
    for mode in modes:
        proc, base = start_server(run, MODES[mode], clients, threads)
        try:
            health = _wait_healthy(base, proc)
            reqs = _requests(health["image_size"])
            rows = [asyncio.run(_load(base, k, reqs[k], clients, seconds)) for k in kinds]
            result["modes"][mode] = {"max_batch": MODES[mode], "rows": rows,
                                     "server_peak_rss_mb": peak_rss_mb(proc.pid)}
        finally:
            stop_server(proc)
    if "batched" in result["modes"] and "single" in result["modes"]:
        single = {r["kind"]: r for r in result["modes"]["single"]["rows"]}
        result["batching_gain"] = {
            r["kind"]: round(r["requests_per_s"] / single[r["kind"]]["requests_per_s"], 2)
            if single[r["kind"]]["requests_per_s"] else None
            for r in result["modes"]["batched"]["rows"]}
    return result


def markdown(r: dict) -> str:
    lines = [f"clients {r['clients']}, {r['seconds']} s per measurement, {r['threads']} thread(s)",
             "", "| mode | kind | req/s | p50 ms | p99 ms | errors | 503s | rows/call | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, m in r["modes"].items():
        for row in m["rows"]:
            b = row["server_batches"]
            per = b.get("by_kind", {}).get("answer" if row["kind"] == "chat" else "draw", {})
            rpc = round(per["rows"] / per["calls"], 1) if per.get("calls") else "-"
            lines.append(f"| {mode} | {row['kind']} | {row['requests_per_s']} | {row['p50_ms']} | "
                         f"{row['p99_ms']} | {row['errors']} | {row['overloaded_503']} | {rpc} | "
                         f"{m.get('server_peak_rss_mb', '-')} |")
    if "batching_gain" in r:
        lines += ["", "batching gain (req/s batched / one at a time): " + ", ".join(
            f"{k} {v}x" for k, v in r["batching_gain"].items())]
    return "\n".join(lines)
