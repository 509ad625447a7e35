"""Load test of `genlab serve` on loopback: throughput and latency, and answers to bad requests.

    .venv/bin/python scripts/load_serve.py                            # 2,000 requests, 16 clients
    .venv/bin/python scripts/load_serve.py --malformed 0.1 --token "$(openssl rand -hex 24)"
    .venv/bin/python scripts/load_serve.py --run runs/lesion_brain/<stamp> --requests 5000

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
    args = ap.parse_args()

    run = args.run or find_run() or train_run(args.train_steps)
    images = brain_pngs(64)
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "genlab", "serve", str(run), "--port", str(port), "--no-access-log",
           "--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch),
           "--max-upload-mb", str(args.max_upload_mb), "--max-images", str(args.max_images),
           "--device", args.device]
    env = dict(os.environ)
    if args.token:
        env["GENLAB_API_TOKEN"] = args.token
    log = tempfile.NamedTemporaryFile(prefix="load_serve_", suffix=".log", delete=False)  # noqa: SIM115
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}; log: {log.name}")
            try:
                if httpx.get(url + "/v1/health", headers=auth, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        info = httpx.get(url + "/v1/model", headers=auth).json()
        classes = info["classes"]
        for img in images[:16]:  # warm-up, not counted
            httpx.post(url + "/v1/predict", headers=auth, files={"file": ("w.png", img, "image/png")})
        before = httpx.get(url + "/v1/health", headers=auth).json()
        records = asyncio.run(load(url, args, images, classes, args.token))
        after = httpx.get(url + "/v1/health", headers=auth).json()
        alive = httpx.post(url + "/v1/predict", headers=auth,
                           files={"file": ("last.png", images[0], "image/png")}).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

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
    if errors or not alive:
        sys.exit(1)


if __name__ == "__main__":
    main()
