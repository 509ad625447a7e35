"""Load test of `genlab serve` on loopback: throughput and latency, answers to bad requests, and
what a crowd of simultaneous connections gets.

    .venv/bin/python scripts/load_serve.py                            # 2,000 requests, 16 clients
    .venv/bin/python scripts/load_serve.py --malformed 0.1 --token "$(openssl rand -hex 24)"
    .venv/bin/python scripts/load_serve.py --run runs/lesion_brain/<stamp> --requests 5000
    .venv/bin/python scripts/load_serve.py --connections 300          # the crowd (below)

Crowd mode (--connections N): N TCP connections are opened at once, then each sends one
prediction request (one brain PNG, multipart) at the same moment, and every connection is
counted as answered (200), busy (503 with a Retry-After header), reset (the connection was
closed or reset before a complete HTTP response: the failure the server must never show) or
other (any other status, a 503 without Retry-After, a timeout). It exits 1 unless resets and
other are 0. --client httpx sends the same crowd through one httpx client instead (a
transport error there counts as a reset). The model is a tiny classifier trained for the
purpose in a temporary folder (a few seconds; --run to use another); --max-concurrent and
--max-waiting set the server's admission limits (`genlab serve` options). `crowd()` is also
what tests/test_serve.py runs, smaller. With --big-png K every request carries K 77 KB 16-bit
6300 x 6300 PNGs (76 MiB each once decoded) instead: a 413 (over the decoded-bytes limit) is
then a clean refusal too. Each round reports the server's peak memory (Linux /proc).

The server is `genlab serve RUN --host 127.0.0.1` in a subprocess (its own process, as in
production); the clients are `--concurrency` asyncio tasks sharing one httpx client, each sending
one request at a time until `--requests` are done or `--max-seconds` have passed. A good request
is one hard-mode brain test image (one of 64 distinct PNGs from the brain factory, multipart
upload) and must come back 200 with a valid prediction. With `--malformed p`, a share p of the
requests is drawn (seeded) from the bad kinds below, and each must get exactly its status:

    not_image 400, truncated_png 400, bad_base64 400, bad_json 400, unknown_field 400,
    text_plain 415, too_many_images 413, oversized 413 (a body over --max-upload-mb),
    no_token 401 (only with --token)

Reported: requests, errors (anything but the expected status, or a connection error),
throughput (requests/s over the whole run), p50/p99 latency of the good requests and of all
requests, and the server's batching (forward passes, mean images per pass) from /v1/health.
The run: --run, else the newest finished hard-mode classifier run under runs/lesion_brain*/,
else one trained for the benchmark (recipes/lesion_brain.yaml, --train-steps steps; slow).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the run
def find_run() -> Path | None:
    """The newest finished hard-mode brain classifier run under runs/lesion_brain*/."""
    found = []
    for rec in ROOT.glob("runs/lesion_brain*/*/recipe.yaml"):
        run = rec.parent
        try:
            r = yaml.safe_load(rec.read_text())
        except (OSError, yaml.YAMLError):
            continue
        ckpts = run / "checkpoints"
        has_weights = (ckpts / "best.pt").is_file() or any(ckpts.glob("step-*.pt"))
        if (r.get("family") == "classifier" and r.get("data", {}).get("name") == "brain"
                and r["data"].get("mode") == "hard" and has_weights and (run / "metrics.json").is_file()):
            found.append(run)
    return max(found, key=lambda p: p.name) if found else None


def train_run(steps: int) -> Path:
    print(f"no finished hard-mode brain classifier under runs/lesion_brain*/: training one "
          f"({steps} steps of recipes/lesion_brain.yaml)", flush=True)
    subprocess.run([sys.executable, "-m", "genlab", "train", str(ROOT / "recipes/lesion_brain.yaml"),
                    "--set", f"train.steps={steps}", "--tag", "load-bench", "--quiet",
                    "--out", str(ROOT / "runs")], check=True)
    run = find_run()
    if run is None:
        raise SystemExit("training finished but no run was found")
    return run


# ----------------------------------------------------------------------------- requests
def brain_pngs(n: int) -> list[bytes]:
    """n distinct hard-mode brain test images as PNG files (what `genlab data brain` writes)."""
    from genlab.data.brain import BrainConfig, BrainData

    data = BrainData(BrainConfig(mode="hard", test_size=max(n, 1)), seed=0)
    x = data.get("test", __import__("torch").arange(n))["x"]
    out = []
    for img in (x[:, 0].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bad_requests(max_upload: int, max_images: int, png: bytes, with_token: bool) -> dict:
    """kind -> (expected status, httpx request kwargs without auth)."""
    tiny = base64.b64encode(png).decode()
    kinds = {
        "not_image": (400, {"files": {"file": ("notes.txt", b"not an image at all", "text/plain")}}),
        "truncated_png": (400, {"files": {"file": ("cut.png", png[: len(png) // 3], "image/png")}}),
        "bad_base64": (400, {"json": {"images": ["***not base64***"]}}),
        "bad_json": (400, {"content": b'{"images": [', "headers": {"content-type": "application/json"}}),
        "unknown_field": (400, {"files": {"file": ("a.png", png, "image/png")}, "data": {"x": "1"}}),
        "text_plain": (415, {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        "too_many_images": (413, {"json": {"images": [tiny] * (max_images + 1)}}),
        "oversized": (413, {"content": b"\0" * (max_upload + 1024),
                            "headers": {"content-type": "image/png"}}),
    }
    if with_token:
        kinds["no_token"] = (401, {"files": {"file": ("a.png", png, "image/png")}, "no_auth": True})
    return kinds


def check_good(resp: httpx.Response, classes: list[str]) -> bool:
    if resp.status_code != 200:
        return False
    p = resp.json()["predictions"]
    if len(p) != 1 or p[0]["class"] not in classes:
        return False
    return abs(sum(p[0]["probabilities"].values()) - 1.0) < 1e-4


# ----------------------------------------------------------------------------- the load
async def load(url: str, args, images: list[bytes], classes: list[str], token: str | None) -> list[dict]:
    rng = random.Random(args.seed)
    plan = []
    bad = bad_requests(int(args.max_upload_mb * 1024 * 1024), args.max_images, images[0], token is not None)
    kinds = sorted(bad)
    for i in range(args.requests):
        plan.append(rng.choice(kinds) if rng.random() < args.malformed else "good")
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    records: list[dict] = []
    nxt = 0
    deadline = time.perf_counter() + args.max_seconds
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
        async def worker():
            nonlocal nxt
            while nxt < len(plan) and time.perf_counter() < deadline:
                i, nxt = nxt, nxt + 1
                kind = plan[i]
                if kind == "good":
                    expect, kw = 200, {"files": {"file": (f"{i}.png", images[i % len(images)], "image/png")}}
                else:
                    expect, kw = bad[kind]
                kw = dict(kw)
                headers = {**({} if kw.pop("no_auth", False) else auth), **kw.pop("headers", {})}
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/predict", headers=headers, **kw)
                    ok = (check_good(resp, classes) if kind == "good"
                          else resp.status_code == expect and bool(resp.json().get("detail")))
                    status, error = resp.status_code, None if ok else resp.text[:200]
                except httpx.HTTPError as e:
                    ok, status, error = False, None, f"{type(e).__name__}: {e}"
                records.append({"kind": kind, "expect": expect, "status": status, "ok": ok,
                                "ms": (time.perf_counter() - t0) * 1000, "error": error})

        t_start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(args.concurrency)])
        records.append({"wall_s": time.perf_counter() - t_start})
    return records


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def train_tiny_run(out: Path) -> Path:
    """A tiny 4-syndrome brain classifier (1 x 128 x 96, a few seconds on a CPU) under `out`:
    its accuracy does not matter to a crowd, only that it is served like a real one."""
    import contextlib

    from genlab.core.recipe import from_mapping
    from genlab.engine.trainer import Trainer

    recipe = {
        "name": "tiny_lesion_brain", "family": "classifier", "seed": 0,
        "data": {"name": "brain", "mode": "hard", "train_size": 256, "val_size": 32, "test_size": 32},
        "model": {"backbone": "vgg_sep", "channels": [4, 8, 8], "stem_stride": 2,
                  "localisation": False},
        "train": {"steps": 6, "batch_size": 16, "lr": 3e-3, "device": "cpu", "eval_batches": 1},
        "log": {"every": 4, "eval_every": 1000, "render_every": 1000, "checkpoint_every": 4,
                "keep_checkpoints": 3, "render_examples": 16},
    }
    with contextlib.redirect_stdout(io.StringIO()):
        t = Trainer(from_mapping(recipe), out_root=out, quiet=True, progress=False)
        t.run()
    return t.run_dir


# ----------------------------------------------------------------------------- the server
class Server:
    """`genlab serve RUN --host 127.0.0.1 --port <free> ARGS` in a subprocess, returned once
    /v1/health answers; `stop()` (also on leaving a `with` block) ends it: terminate, then kill."""

    def __init__(self, run: Path, args: list[str], token: str | None = None, timeout: float = 120):
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if token:
            env["GENLAB_API_TOKEN"] = token
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the reader after exit
            prefix="load_serve_", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", str(run), "--host",
                                      "127.0.0.1", "--port", str(self.port), "--no-access-log", *args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_up(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with code {self.proc.returncode}; "
                                 f"log: {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/health", headers=self.auth, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not answer within {timeout:.0f} s; log: {self.log.name}")

    def memory_mb(self, reset_peak: bool = False) -> tuple[int, int] | None:
        """The server's (resident, peak resident) memory in MiB (Linux), the peak first reset to
        the current size when asked; None where /proc does not tell."""
        try:
            if reset_peak:
                Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            status = dict(line.split(":", 1) for line in
                          Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
            return int(status["VmRSS"].split()[0]) // 1024, int(status["VmHWM"].split()[0]) // 1024
        except (OSError, KeyError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------- the crowd
def big_png() -> bytes:
    """A 16-bit 6300 x 6300 grayscale PNG of zeros: about 77 KB that decode to 76 MiB (39.7
    megapixels, under the 40-megapixel default)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((6300, 6300), np.uint16)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def multipart_request(host: str, port: int, png: bytes | list[bytes],
                      token: str | None = None) -> tuple[bytes, bytes]:
    """POST /v1/predict with `png` (one or several) as multipart files, as raw HTTP/1.1 bytes:
    (head, body). Keep-alive, as every HTTP/1.1 client sends it."""
    b = "genlab-crowd-7d41e0"
    body = b"".join(f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
                    for i, data in enumerate([png] if isinstance(png, bytes) else png))
    body += f"--{b}--\r\n".encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {len(body)}\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n")
    return head.encode(), body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise asyncio.IncompleteReadError(b"", None)  # closed before any status line
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers


async def _one(host: str, port: int, request: tuple[bytes, bytes], connected, go: asyncio.Event,
               timeout: float, body_delay_s: float) -> dict:
    """Connect, report it, wait for `go`, send `request`, read one response; its outcome. The
    head and the body go in two writes `body_delay_s` apart, as an upload over a real network
    arrives: a server that answers and closes before the body is in then resets the connection
    (the kernel's answer to data for a closed socket), and the client loses the answer."""
    writer, t0 = None, time.perf_counter()
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        finally:
            connected()
        await go.wait()
        t0 = time.perf_counter()
        writer.write(request[0])
        await writer.drain()
        await asyncio.sleep(body_delay_s)
        writer.write(request[1])
        await writer.drain()
        status, headers = await asyncio.wait_for(_read_response(reader), timeout)
        if headers.get("connection", "").lower() == "close":
            # a clean close is an end of file; a reset means many clients (httpx, anything on
            # anyio) lost this answer, even though this reader got it from its buffer first
            await asyncio.wait_for(reader.read(1), 5.0)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
            asyncio.IncompleteReadError) as e:  # no complete HTTP response: what must not happen
        return {"outcome": "reset", "why": type(e).__name__, "ms": (time.perf_counter() - t0) * 1e3}
    except (asyncio.TimeoutError, OSError, ValueError, IndexError) as e:
        return {"outcome": "other", "why": f"{type(e).__name__}: {e}"[:120],
                "ms": (time.perf_counter() - t0) * 1e3}
    finally:
        if writer is not None:
            writer.close()
    ms = (time.perf_counter() - t0) * 1e3
    if status == 200:
        return {"outcome": "answered", "ms": ms}
    if status == 503 and headers.get("retry-after"):
        return {"outcome": "busy", "ms": ms}
    if status == 413:  # a request over a limit (--big-png): refused cleanly, as it should be
        return {"outcome": "too_large", "ms": ms}
    return {"outcome": "other", "ms": ms,
            "why": f"HTTP {status}" + (" without Retry-After" if status == 503 else "")}


async def crowd(host: str, port: int, n: int, png: bytes | list[bytes], token: str | None = None,
                timeout: float = 60.0, send_on_connect: bool = False,
                body_delay_s: float = 0.05) -> dict:
    """`n` connections opened at once, then `n` requests sent at the same moment (or each as
    soon as its connection is open: `send_on_connect`): the counts answered / busy (503 +
    Retry-After) / reset / other, latencies, and the first problems."""
    request = multipart_request(host, port, png, token)
    go, all_in, pending = asyncio.Event(), asyncio.Event(), [n]
    if send_on_connect:
        go.set()

    def connected():
        pending[0] -= 1
        if pending[0] == 0:
            all_in.set()

    tasks = [asyncio.create_task(_one(host, port, request, connected, go, timeout, body_delay_s))
             for _ in range(n)]
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(all_in.wait(), timeout)  # every connection open (or failed) first
    except asyncio.TimeoutError:
        pass
    connect_s = time.perf_counter() - t0
    go.set()
    return _tally(await asyncio.gather(*tasks), n, t0, connect_s)


async def crowd_httpx(url: str, n: int, png: bytes | list[bytes], token: str | None = None,
                      timeout: float = 60.0) -> dict:
    """The same crowd sent by one httpx client with `n` connections (what the issue's
    reproduction used): `n` requests at once; a transport error is counted as a reset."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)

    async def one(client):
        t0 = time.perf_counter()
        try:
            r = await client.post(url + "/v1/predict", headers=auth, files=[
                ("files", (f"{i}.png", data, "image/png"))
                for i, data in enumerate([png] if isinstance(png, bytes) else png)])
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ConnectError) as e:
            return {"outcome": "reset", "why": type(e).__name__, "ms": (time.perf_counter() - t0) * 1e3}
        except httpx.HTTPError as e:
            return {"outcome": "other", "why": type(e).__name__, "ms": (time.perf_counter() - t0) * 1e3}
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code == 200:
            return {"outcome": "answered", "ms": ms}
        if r.status_code == 503 and r.headers.get("retry-after"):
            return {"outcome": "busy", "ms": ms}
        if r.status_code == 413:
            return {"outcome": "too_large", "ms": ms}
        return {"outcome": "other", "ms": ms, "why": f"HTTP {r.status_code}"
                + (" without Retry-After" if r.status_code == 503 else "")}

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        results = await asyncio.gather(*[one(client) for _ in range(n)])
    return _tally(results, n, t0, None)


def _tally(results: list[dict], n: int, t0: float, connect_s: float | None) -> dict:
    answered = [r["ms"] for r in results if r["outcome"] == "answered"]
    busy = [r["ms"] for r in results if r["outcome"] == "busy"]
    return {"connections": n,
            **{k: sum(r["outcome"] == k for r in results)
               for k in ("answered", "busy", "too_large", "reset", "other")},
            "connect_s": None if connect_s is None else round(connect_s, 2),
            "wall_s": round(time.perf_counter() - t0, 2),
            "answered_p50_ms": round(pct(answered, 50), 1),
            "answered_max_ms": round(max(answered, default=float("nan")), 1),
            "busy_max_ms": round(max(busy, default=float("nan")), 1),
            "problems": sorted({r["why"] for r in results if "why" in r})[:5]}


def crowd_main(args) -> int:
    """--connections N (see the module docstring); 0 when nothing was reset or other."""
    server_args = ["--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch),
                   "--device", args.device]
    for opt in ("max_concurrent", "max_waiting"):  # only when given: older servers lack them
        if getattr(args, opt) is not None:
            server_args += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    png = brain_pngs(1)[0]
    sent = [big_png()] * args.big_png if args.big_png else png
    with tempfile.TemporaryDirectory(prefix="load_serve_run_") as tmp:
        run = args.run or train_tiny_run(Path(tmp))
        with Server(run, server_args, args.token) as server:
            for _ in range(4):  # warm-up, not counted
                httpx.post(server.url + "/v1/predict", headers=server.auth,
                           files={"file": ("w.png", png, "image/png")}, timeout=60)
            rounds = []
            for _ in range(args.rounds):
                before = server.memory_mb(reset_peak=True)
                if args.client == "httpx":
                    r = asyncio.run(crowd_httpx(server.url, args.connections, sent, args.token))
                else:
                    r = asyncio.run(crowd("127.0.0.1", server.port, args.connections, sent,
                                          args.token, send_on_connect=args.send_on_connect,
                                          body_delay_s=args.body_delay_ms / 1000))
                after = server.memory_mb()
                if before and after:
                    r["server_rss_mb"], r["server_peak_mb"] = before[0], after[1]
                rounds.append(r)
            alive = httpx.post(server.url + "/v1/predict", headers=server.auth, timeout=60,
                               files={"file": ("last.png", png, "image/png")}).status_code == 200
            health = httpx.get(server.url + "/v1/health", headers=server.auth).json()
            model = httpx.get(server.url + "/v1/model", headers=server.auth).json()
    summary = {"rounds": rounds, "alive_after": alive, "server_batches": health["batches"],
               "server_max_batch": health["max_batch_seen"], "serving": model.get("serving"),
               "settings": {"connections": args.connections, "run": str(args.run or "tiny"),
                            "client": args.client, "big_png": args.big_png,
                            "send_on_connect": args.send_on_connect,
                            "body_delay_ms": args.body_delay_ms,
                            "device": args.device, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end"}
    print(json.dumps(summary, indent=2))
    print("\n| connections | answered (200) | busy (503 + Retry-After) | 413 | reset | other "
          "| p50 answered | slowest answer | wall | server memory, peak |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        mem = (f"{r['server_rss_mb']} MiB, +{r['server_peak_mb'] - r['server_rss_mb']} MiB"
               if "server_peak_mb" in r else "n/a")
        print(f"| {r['connections']} | {r['answered']} | {r['busy']} | {r['too_large']} | {r['reset']} "
              f"| {r['other']} | {r['answered_p50_ms']} ms | {r['answered_max_ms']} ms | {r['wall_s']} s "
              f"| {mem} |")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(r["reset"] or r["other"] for r in rounds) or not alive else 0


# ----------------------------------------------------------------------------- throughput
def throughput_main(args) -> int:
    """The default mode (see the module docstring); 0 when every request got its answer."""
    run = args.run or find_run() or train_run(args.train_steps)
    images = brain_pngs(64)
    server_args = ["--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch),
                   "--max-upload-mb", str(args.max_upload_mb), "--max-images", str(args.max_images),
                   "--device", args.device]
    with Server(run, server_args, args.token) as server:
        url, auth = server.url, server.auth
        info = httpx.get(url + "/v1/model", headers=auth).json()
        classes = info["classes"]
        for img in images[:16]:  # warm-up, not counted
            httpx.post(url + "/v1/predict", headers=auth, files={"file": ("w.png", img, "image/png")})
        before = httpx.get(url + "/v1/health", headers=auth).json()
        records = asyncio.run(load(url, args, images, classes, args.token))
        after = httpx.get(url + "/v1/health", headers=auth).json()
        alive = httpx.post(url + "/v1/predict", headers=auth,
                           files={"file": ("last.png", images[0], "image/png")}).status_code == 200

    wall = records.pop()["wall_s"]
    good = [r for r in records if r["kind"] == "good"]
    bad = [r for r in records if r["kind"] != "good"]
    errors = [r for r in records if not r["ok"]]
    batches = after["batches"] - before["batches"]
    imgs = after["images"] - before["images"]
    by_kind = {}
    for r in bad:
        k = by_kind.setdefault(r["kind"], {"expected": r["expect"], "n": 0, "correct": 0})
        k["n"] += 1
        k["correct"] += int(r["ok"])
    summary = {
        "run": str(run), "model": info["name"], "requests": len(records), "good": len(good),
        "malformed": len(bad), "errors": len(errors), "concurrency": args.concurrency,
        "wall_s": round(wall, 2), "throughput_rps": round(len(records) / wall, 1),
        "good_p50_ms": round(pct([r["ms"] for r in good], 50), 1),
        "good_p99_ms": round(pct([r["ms"] for r in good], 99), 1),
        "all_p50_ms": round(pct([r["ms"] for r in records], 50), 1),
        "all_p99_ms": round(pct([r["ms"] for r in records], 99), 1),
        "mean_ms": round(statistics.fmean(r["ms"] for r in records), 1),
        "server_batches": batches, "server_images": imgs,
        "mean_batch": round(imgs / batches, 2) if batches else None,
        "max_batch_seen": after["max_batch_seen"], "malformed_by_kind": by_kind,
        "alive_after": alive, "first_errors": [e["error"] for e in errors[:5]],
        "settings": {"batch_window_ms": args.batch_window_ms, "max_batch": args.max_batch,
                     "device": args.device, "token": bool(args.token),
                     "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                   f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end",
    }
    print(json.dumps(summary, indent=2))
    print(f"\n| requests | malformed | errors | concurrency | throughput | p50 (good) | p99 (good) "
          f"| mean batch |\n|---|---|---|---|---|---|---|---|\n"
          f"| {summary['requests']:,} | {summary['malformed']} | {summary['errors']} | "
          f"{args.concurrency} | {summary['throughput_rps']} req/s | {summary['good_p50_ms']} ms | "
          f"{summary['good_p99_ms']} ms | {summary['mean_batch']} |")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if errors or not alive else 0



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="classifier run folder (default: see above)")
    ap.add_argument("--requests", type=int, default=2000, help="requests to send (default 2000)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--malformed", type=float, default=0.0, help="share of bad requests (e.g. 0.1)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long")
    ap.add_argument("--token", default=None, help="start the server with this token (adds no_token)")
    ap.add_argument("--batch-window-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-upload-mb", type=float, default=1.0, help="server body cap (default 1)")
    ap.add_argument("--max-images", type=int, default=8, help="server images per request (default 8)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=300, help="when a run must be trained")
    ap.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    crowd_opts = ap.add_argument_group("crowd mode")
    crowd_opts.add_argument("--connections", type=int, default=0,
                            help="open this many connections at once, one request each (e.g. 300)")
    crowd_opts.add_argument("--rounds", type=int, default=1, help="crowds to send, one after another")
    crowd_opts.add_argument("--client", choices=("raw", "httpx"), default="raw",
                            help="raw: asyncio sockets, every connection open before any request "
                                 "is sent (default); httpx: one httpx client, N requests at once")
    crowd_opts.add_argument("--send-on-connect", action="store_true",
                            help="each connection sends at once instead of waiting for all to open")
    crowd_opts.add_argument("--body-delay-ms", type=float, default=50.0,
                            help="gap between a request's head and its body (default 50)")
    crowd_opts.add_argument("--big-png", type=int, default=0, metavar="K",
                            help="each request carries K 77 KB 16-bit 6300x6300 PNGs instead of "
                                 "one brain image (decoded-bytes limits; 413 counts as refused)")
    crowd_opts.add_argument("--max-concurrent", type=int, default=None,
                            help="server: requests processed at once (genlab serve's default if unset)")
    crowd_opts.add_argument("--max-waiting", type=int, default=None,
                            help="server: requests waiting for a slot (genlab serve's default if unset)")
    args = ap.parse_args()
    # SIGTERM (a timeout, a killed job) ends the script through its `finally` blocks, so the
    # server it started is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(crowd_main(args) if args.connections > 0 else throughput_main(args))


if __name__ == "__main__":
    main()
