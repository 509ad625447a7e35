"""The REST API and web page of a trained classifier run (FastAPI).

    app = create_app("runs/lesion_brain/20260101-120000")      # then: uvicorn.run(app)

Endpoints (OpenAPI schema at /openapi.json, interactive docs at /docs and /redoc):

    GET  /              the web page: pick or drop an image, see class, probabilities, Grad-CAM
    GET  /v1/health     liveness and serving counters
    GET  /v1/model      classes, input shape, preprocessing, lesion rule, the run's test metrics
    POST /v1/predict    one or several images -> class, probabilities, lesion call (+ Grad-CAM)

Token rule: when the app has a token, every request under /v1/ must carry
`Authorization: Bearer <token>` (401 otherwise, compared in constant time). The page at / and
the API docs are static (no model data, no inference) and stay open, so a browser can load
them; the page asks for the token and sends it with its API calls.

Hardening: a request body over `max_upload_bytes` is refused with 413 before it reaches a
handler (by Content-Length when given, else while it streams in); bodies are parsed in memory
(nothing a client sends is written to disk or used as a path) and a malformed one is a 400,
never a 500; only the decoders in `genlab.serve.images.FORMATS` run. Model weights are loaded
by `genlab.load_run` (torch.load with weights_only=True: no arbitrary object is unpickled).

Limits, and what happens past each (every 503 carries Retry-After: 1):
- admission: at most `max_concurrent` requests with a body (POST) are read and processed at
  once; more wait in a first-come-first-served line of at most `max_waiting` for up to
  `queue_timeout_s`; a request finding the line full, or waiting longer, gets 503. A waiting
  request holds only its connection (its body stays unread), so a crowd costs neither memory
  nor a reset connection. This replaces uvicorn's connection limit, which counted idle
  connections and closed refused ones with their bodies unread (the clients saw resets).
- per image: `max_pixels` (413), read from the header before decoding.
- per request: `max_images` images (413), and `max_decoded_bytes` of decoded pixels, the sum
  of width x height x bytes per pixel over its images, estimated from their headers before
  decoding (413).
- server-wide: at most `decode_budget_bytes` of decoded pixels at once, over all requests (a
  request waits for its share, up to `queue_timeout_s`, then 503), and at most one request per
  CPU core decoding at a time.
- the micro-batcher: more than `max_queue` images waiting for the model gives 503.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import threading
import time
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

import genlab
from genlab.serve.batcher import MicroBatcher, QueueFull
from genlab.serve.images import (
    Decoded,
    Opened,
    ServeError,
    decode_opened,
    open_image,
    parse_request,
)
from genlab.serve.limits import Busy, Gate, return_large_frees_to_the_os
from genlab.serve.model import ServedModel

MIB = 1024 * 1024
DEFAULT_MAX_UPLOAD = 10 * MIB
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_DECODED = 256 * MIB  # per request: one 40-megapixel RGB image is 160 MiB
DEFAULT_DECODE_BUDGET = 512 * MIB  # all requests together
DEFAULT_MAX_CONCURRENT = 32  # requests read and processed at once (bodies in memory)
DEFAULT_MAX_WAITING = 512  # requests waiting for one of those slots (connections only)
DEFAULT_QUEUE_TIMEOUT_S = 30.0
RETRY_AFTER_S = 1
ENV_CONFIG = "GENLAB_SERVE_CONFIG"  # create_app's arguments as JSON, for `--workers N`


# ----------------------------------------------------------------------------- response schemas
class LesionCall(BaseModel):
    probability: float = Field(description="P(lesion) = 1 - P(negative classes)")
    threshold: float = Field(description="model.lesion_threshold of the run")
    call: bool = Field(description="probability >= threshold")
    negative_classes: list[str]


class InputReport(BaseModel):
    original: dict = Field(description="format, mode, width, height as received")
    converted: list[str] = Field(description="what the preprocessing changed (mode, size)")


class Prediction(BaseModel):
    name: str = Field(description="the file name sent, or 'image <i>'")
    class_: str = Field(alias="class", description="predicted class")
    probability: float = Field(description="probability of the predicted class")
    probabilities: dict[str, float]
    lesion: LesionCall | None = Field(description="null when the run has no negative class")
    input: InputReport
    gradcam_png: str | None = Field(description="base64 PNG: Grad-CAM of the predicted class over "
                                                "the preprocessed image (when gradcam=true)")
    batch: dict = Field(description="size of the forward pass this image shared; queued_ms")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]
    elapsed_ms: float


class Health(BaseModel):
    status: str
    model: str
    device: str
    uptime_s: float
    batches: int
    images: int
    max_batch_seen: int
    queued: int = Field(description="images waiting for the model")
    active_requests: int = Field(description="requests being read or processed")
    waiting_requests: int = Field(description="requests waiting for a slot")
    decoding_bytes: int = Field(description="decoded-pixel bytes reserved by requests now")


class ErrorResponse(BaseModel):
    detail: str


ERRORS = {400: {"model": ErrorResponse, "description": "bad input (the reason is in detail)"},
          401: {"model": ErrorResponse, "description": "missing or wrong API token"},
          413: {"model": ErrorResponse,
                "description": "body, image count, pixel count or decoded bytes too large"},
          415: {"model": ErrorResponse, "description": "unsupported Content-Type"},
          503: {"model": ErrorResponse,
                "description": "server busy (see Retry-After); the reason is in detail"}}

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                        "description": "one or more image files (field 'file' or 'files')"},
                               "gradcam": {"type": "boolean", "default": False}}}},
            "application/json": {"schema": {
                "type": "object",
                "properties": {"images": {"type": "array", "items": {"type": "string"},
                                          "description": "base64 (or data: URL) images"},
                               "names": {"type": "array", "items": {"type": "string"}},
                               "gradcam": {"type": "boolean", "default": False}},
                "required": ["images"]}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [{"name": "gradcam", "in": "query", "required": False,
                    "schema": {"type": "boolean"},
                    "description": "add a Grad-CAM overlay (base64 PNG) to every prediction"}],
}


# ----------------------------------------------------------------------------- the guard
def _json_error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _busy(detail: str) -> JSONResponse:
    return _json_error(503, f"server busy: {detail}; retry later",
                       {"Retry-After": str(RETRY_AFTER_S)})


async def _drain(receive, limit: int, seconds: float = 2.0) -> None:
    """Read and drop a request body (at most `limit` bytes, `seconds`): a server that closes a
    connection with unread bytes makes the kernel send a reset, and the client loses the answer."""
    async def read():
        seen = 0
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(read(), seconds)


class Guard:
    """ASGI middleware: the token check on /v1/, admission (`slots`: requests with a body wait
    for one, or get 503), the body size cap, security headers."""

    def __init__(self, app, token: str | None, max_body: int, page_csp: str, slots: Gate):
        self.app, self.token, self.max_body, self.page_csp = app, token, max_body, page_csp
        self.slots = slots

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]

        async def send_secure(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if path == "/":
                    extra += [(b"content-security-policy", self.page_csp.encode()),
                              (b"x-frame-options", b"DENY")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if self.token and (path == "/v1" or path.startswith("/v1/")) and not self._authorized(headers):
            resp = _json_error(401, "missing or wrong API token: send 'Authorization: Bearer <token>'",
                               {"WWW-Authenticate": 'Bearer realm="genlab"'})
            return await resp(scope, receive, send_secure)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send_secure)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _json_error(400, "invalid Content-Length")(scope, receive, send_secure)
            if n > self.max_body:
                return await _json_error(413, f"request body of {n:,} bytes; the server accepts "
                                              f"at most {self.max_body:,}")(scope, receive, send_secure)
        try:
            await self.slots.acquire()  # wait in line, holding only the connection
        except Busy as e:
            closing = (scope.get("http_version") == "1.0"
                       or b"close" in headers.get(b"connection", b"").lower())
            if closing:  # the server closes after answering: read the body first (no reset)
                await _drain(receive, self.max_body)
            return await _busy(str(e))(scope, receive, send_secure)
        try:
            return await self._admitted(scope, receive, send_secure)
        finally:
            self.slots.release()

    async def _admitted(self, scope, receive, send_secure):
        chunks, total = [], 0
        while True:  # read the whole (capped) body here, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                return await _json_error(413, f"request body over {self.max_body:,} bytes, the "
                                              f"most the server accepts")(scope, receive, send_secure)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send_secure)


def _page() -> tuple[str, str]:
    """The page's HTML and a Content-Security-Policy allowing exactly its inline script/style."""
    html = resources.files("genlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                        for s in found)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           f"img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
           f"frame-ancestors 'none'")
    return html, csp


# ----------------------------------------------------------------------------- the intake
class Intake:
    """A POST /v1/predict body -> the model's inputs, within the limits: the body is parsed and
    the image headers read (per-image pixels, per-request decoded bytes: 413), then the request
    waits for its share of the server-wide decode budget (`budget`; 503 past its timeout), then
    the pixels are decoded. Parsing and decoding run in worker threads, at most one per CPU core
    at once; whatever a body makes the parser raise is a 400, never a 500."""

    def __init__(self, served: ServedModel, max_images: int, max_pixels: int,
                 max_decoded_bytes: int, budget: Gate):
        self.served, self.max_images, self.max_pixels = served, max_images, max_pixels
        self.max_decoded_bytes, self.budget = max_decoded_bytes, budget
        self.cpu_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    async def __call__(self, body: bytes, content_type: str | None,
                       query_gradcam: str | None) -> list[tuple[Decoded, bool]]:
        req, opened = await run_in_threadpool(self.open, body, content_type, query_gradcam)
        try:
            async with self.budget.hold(sum(op.nbytes for op in opened)):
                return await run_in_threadpool(self.decode, opened, req.gradcam)
        finally:
            for op in opened:
                op.im.close()

    def open(self, body: bytes, content_type: str | None, query_gradcam: str | None):
        with self.cpu_slots:
            try:
                req = parse_request(content_type, body, query_gradcam, self.max_images)
            except (ServeError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - a safety net: a body the checks missed is a 400
                raise ServeError(400, f"malformed request body ({type(e).__name__})") from None
            if req.gradcam and not self.served.model.can_explain:
                raise ServeError(400, "gradcam: this model has no convolutional trunk, so there "
                                      "is no Grad-CAM map")
            opened: list[Opened] = []
            try:
                for up in req.uploads:
                    opened.append(open_image(up, self.served.channels, self.served.size,
                                             self.max_pixels))
                    self._check_decoded(opened)
            except BaseException:
                for op in opened:
                    op.im.close()
                raise
            return req, opened

    def _check_decoded(self, opened: list[Opened]) -> None:
        """413 when the images opened so far decode to more than the limit together."""
        total, limit, last = sum(op.nbytes for op in opened), self.max_decoded_bytes, opened[-1]
        if total <= limit:
            return
        if last.nbytes > limit:
            o = last.original
            raise ServeError(413, f"{last.name}: a {o['width']}x{o['height']} {o['mode']} image "
                                  f"decodes to {last.nbytes / MIB:,.1f} MiB; the server decodes at "
                                  f"most {limit / MIB:,.1f} MiB per request")
        raise ServeError(413, f"{len(opened)} images decode to {total / MIB:,.1f} MiB together; "
                              f"the server decodes at most {limit / MIB:,.1f} MiB per request")

    def decode(self, opened: list[Opened], gradcam: bool) -> list[tuple[Decoded, bool]]:
        with self.cpu_slots:
            return [(decode_opened(op, self.served.channels, self.served.size), gradcam)
                    for op in opened]


# ----------------------------------------------------------------------------- the app
def create_app(run_dir: str | Path, device: str = "cpu", token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD, batch_window_ms: float = 5.0,
               max_batch: int = 32, *, checkpoint: str = "best", max_images: int = 32,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = 1024,
               max_decoded_bytes: int = DEFAULT_MAX_DECODED,
               decode_budget_bytes: int = DEFAULT_DECODE_BUDGET,
               max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_waiting: int = DEFAULT_MAX_WAITING,
               queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving the classifier of `run_dir` (see the module docstring).

    token: required on /v1/ when given. max_upload_bytes: cap on a request body. batch_window_ms
    and max_batch: how long the batcher waits for more images and how many share one forward
    pass. max_images: images per request. max_pixels: per image, before decoding. max_queue:
    images waiting for the model before 503. max_decoded_bytes: decoded pixels per request
    (413); decode_budget_bytes: decoded pixels of all requests at once (raised to at least
    max_decoded_bytes). max_concurrent, max_waiting, queue_timeout_s: admission (503 past them).
    """
    if min(max_upload_bytes, max_images, max_pixels, max_decoded_bytes, max_concurrent) < 1 \
            or max_waiting < 0 or queue_timeout_s <= 0:
        raise ValueError("serving limits must be positive (max_waiting may be 0)")
    decode_budget_bytes = max(decode_budget_bytes, max_decoded_bytes)
    # The endpoints below are closures over this app's model, batcher and limits (FastAPI's
    # usual shape), which is why this function is long; each endpoint is short.
    served = ServedModel(Path(run_dir), device, checkpoint)
    batcher = MicroBatcher(served.predict, batch_window_ms, max_batch, max_queue)
    started = time.time()
    slots = Gate(max_concurrent, max_waiting, queue_timeout_s, "request slots")
    # every admitted request may wait here, so the line is as long as there are slots
    budget = Gate(decode_budget_bytes, max_concurrent, queue_timeout_s, "bytes of decoded pixels")
    intake = Intake(served, max_images, max_pixels, max_decoded_bytes, budget)
    html, csp = _page()
    serving = {"max_upload_bytes": max_upload_bytes, "max_images": max_images,
               "max_pixels": max_pixels, "max_decoded_bytes": max_decoded_bytes,
               "decode_budget_bytes": decode_budget_bytes, "max_concurrent": max_concurrent,
               "max_waiting": max_waiting, "queue_timeout_s": queue_timeout_s,
               "batch_window_ms": batch_window_ms, "max_batch": max_batch, "max_queue": max_queue,
               "token_required": bool(token)}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.stop()
        batcher.close()

    app = FastAPI(title=f"genlab classifier: {served.run.recipe.name}",
                  version=genlab.__version__, lifespan=lifespan,
                  description="Classify images with a trained genlab classifier run. "
                              + ("Every /v1/ request needs 'Authorization: Bearer <token>'."
                                 if token else "No token required (loopback server)."))
    app.state.served, app.state.batcher = served, batcher
    app.state.slots, app.state.decode_budget = slots, budget
    app.add_middleware(Guard, token=token, max_body=max_upload_bytes, page_csp=csp, slots=slots)

    @app.exception_handler(ServeError)
    async def _serve_error(request, exc: ServeError):
        return _json_error(exc.status, exc.detail)

    @app.exception_handler(QueueFull)
    async def _queue_full(request, exc: QueueFull):
        return _busy(str(exc))

    @app.exception_handler(Busy)
    async def _at_a_limit(request, exc: Busy):
        return _busy(str(exc))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # no traceback, no internals to the client
        return _json_error(500, f"internal error ({type(exc).__name__})")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(html)

    @app.get("/v1/health", response_model=Health, responses={401: ERRORS[401]})
    async def health():
        """Liveness, and how many batches and images the server has run."""
        return {"status": "ok", "model": served.run.recipe.name, "device": str(served.run.device),
                "uptime_s": round(time.time() - started, 3), "batches": batcher.batches,
                "images": batcher.images, "max_batch_seen": batcher.max_batch_seen,
                "queued": batcher.pending, "active_requests": slots.used,
                "waiting_requests": slots.waiting, "decoding_bytes": budget.used}

    info = served.info()

    @app.get("/v1/model", responses={401: ERRORS[401]})
    async def model_info() -> dict:
        """Classes, input shape and preprocessing, the lesion rule, the run's test metrics,
        the genlab version and the serving limits."""
        return {**info, "serving": serving}

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
              openapi_extra=PREDICT_BODY)
    async def predict(request: Request):
        """Classify one or several images: multipart files (field 'file'/'files'), JSON
        {"images": [base64, ...]}, or one raw image body. Add gradcam=true (query, form field or
        JSON key) for Grad-CAM overlays. Images are converted as GET /v1/model's preprocessing says."""
        t0 = time.perf_counter()
        body = await request.body()
        items = await intake(body, request.headers.get("content-type"),
                             request.query_params.get("gradcam"))
        preds = await batcher.submit(items)
        return JSONResponse({"model": served.run.recipe.name, "predictions": preds,
                             "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)})

    def openapi():  # the bearer scheme, so /docs has an Authorize button
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "required on /v1/ when the server has a token"}}
            for p, ops in schema["paths"].items():
                if p.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `genlab serve --workers N`: create_app(**json(GENLAB_SERVE_CONFIG))."""
    return_large_frees_to_the_os()
    return create_app(**json.loads(os.environ[ENV_CONFIG]))
