"""`genlab serve`: the REST API and web page of a trained classifier run (genlab.serve)."""
from __future__ import annotations

import inspect
import ipaddress
import json
import os
import socket

import click

from genlab.cli.common import CONTEXT, checkpoint_option, device_option, run_dir_argument
from genlab.core.errors import GenlabError

TOKEN_ENV = "GENLAB_API_TOKEN"
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_binding(host: str, token: str | None) -> None:
    """Loopback needs no token; any other address needs one of at least MIN_TOKEN characters."""
    if token is not None and len(token) < MIN_TOKEN:
        raise GenlabError(f"--token: use at least {MIN_TOKEN} characters, e.g. the output of "
                          f"python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not is_loopback(host) and not token:
        raise GenlabError(f"--host {host}: binding beyond loopback exposes the model to the network, "
                          f"so it needs an API token: pass --token TOKEN or set {TOKEN_ENV} "
                          f"(clients then send 'Authorization: Bearer TOKEN')")


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise GenlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@click.command("serve", context_settings=CONTEXT)
@run_dir_argument
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token. Example: --host 0.0.0.0")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port. Example: --port 8080")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own copy of the model. Example: --workers 2")
@click.option("--token", envvar=TOKEN_ENV, default=None, show_envvar=True,
              help=f"API token every /v1/ request must send as 'Authorization: Bearer TOKEN' "
                   f"(at least {MIN_TOKEN} characters). Example: --token \"$(openssl rand -hex 24)\"")
@device_option("Device the model runs on. Example: --device cuda")
@checkpoint_option()
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=10.0, show_default=True,
              help="Largest request body accepted (larger: 413). Example: --max-upload-mb 4")
@click.option("--max-images", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per request (more: 413). Example: --max-images 8")
@click.option("--max-megapixels", type=click.FloatRange(min=0.001), default=40.0, show_default=True,
              help="Pixels per image, read from its header before decoding (more: 413). "
                   "Example: --max-megapixels 12")
@click.option("--max-decoded-mb", type=click.FloatRange(min=1), default=256.0, show_default=True,
              help="Decoded pixel bytes per request (width x height x bytes per pixel, summed over "
                   "its images, from their headers before decoding; more: 413). "
                   "Example: --max-decoded-mb 64")
@click.option("--decode-budget-mb", type=click.FloatRange(min=1), default=512.0, show_default=True,
              help="Decoded pixel bytes of all requests at once (a request waits for its share, "
                   "then 503). Example: --decode-budget-mb 256")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests read and processed at once; more wait in line. "
                   "Example: --max-concurrent 16")
@click.option("--max-waiting", type=click.IntRange(min=0), default=512, show_default=True,
              help="Requests that may wait in line (at most 30 s); past it 503 with Retry-After. "
                   "Example: --max-waiting 100")
@click.option("--batch-window-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the server waits for more images to batch with the first. "
                   "Example: --batch-window-ms 2")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most images in one forward pass. Example: --max-batch 64")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log every request (uvicorn's access log). Example: --no-access-log")
def serve_cmd(run_dir, host, port, workers, token, device, checkpoint, max_upload_mb, max_images,
              max_megapixels, max_decoded_mb, decode_budget_mb, max_concurrent, max_waiting,
              batch_window_ms, max_batch, access_log):
    """Serve a classifier run: REST API (/v1/predict, /v1/model, /v1/health), a web page at /,
    OpenAPI docs at /docs.

    \b
    Examples:
      genlab serve runs/lesion_brain/20260101-120000
      curl -F file=@scan.png http://127.0.0.1:8000/v1/predict
      GENLAB_API_TOKEN=... genlab serve runs/lesion_brain/20260101-120000 --host 0.0.0.0
    """
    try:
        import uvicorn

        from genlab.serve.app import ENV_CONFIG, create_app
        from genlab.serve.limits import return_large_frees_to_the_os
    except ImportError as e:
        raise GenlabError(f"serving needs the [serve] extra ({e.name} is missing): "
                          f"pip install -e '.[serve]'") from None
    check_binding(host, token)
    _check_port_free(host, port)
    mib = 1024 * 1024
    config = {"run_dir": str(run_dir), "device": device, "token": token,
              "max_upload_bytes": int(max_upload_mb * mib), "batch_window_ms": batch_window_ms,
              "max_batch": max_batch, "checkpoint": checkpoint, "max_images": max_images,
              "max_pixels": int(max_megapixels * 1_000_000),
              "max_decoded_bytes": int(max_decoded_mb * mib),
              "decode_budget_bytes": int(decode_budget_mb * mib),
              "max_concurrent": max_concurrent, "max_waiting": max_waiting}
    return_large_frees_to_the_os()  # decoded images' memory goes back when freed
    app = create_app(**config)  # loads the model: a bad run folder fails here, with one line
    name = app.state.served.run.recipe.name
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {name} ({app.state.served.run.checkpoint}) on {app.state.served.run.device}")
    click.echo(f"  page  http://{shown}:{port}/    docs  http://{shown}:{port}/docs")
    click.echo("  token required on /v1/" if token else "  no token (loopback only)")
    # No uvicorn limit_concurrency: it counts open (also idle) connections and answers past it
    # with a 503 that closes the connection before the request body is read, which clients see
    # as a reset. Admission is the app's (--max-concurrent, --max-waiting: a line, then 503 +
    # Retry-After); the listen backlog holds a crowd's connections until they are accepted
    # (the kernel caps it at net.core.somaxconn).
    kw = {"host": host.strip("[]"), "port": port, "access_log": access_log, "log_level": "info",
          "timeout_keep_alive": 5, "server_header": False,
          "backlog": max(2048, max_concurrent + max_waiting)}
    if workers == 1:
        uvicorn.run(app, **kw)
    else:
        del app
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
            kw["timeout_worker_healthcheck"] = 120  # a worker loads torch and the model first
        os.environ[ENV_CONFIG] = json.dumps(config)
        uvicorn.run("genlab.serve.app:app_from_env", factory=True, workers=workers, **kw)


COMMANDS = (serve_cmd,)
