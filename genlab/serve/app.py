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
(nothing a client sends is written to disk or used as a path); images over `max_pixels` are
refused before decoding, and at most one image per CPU core is decoded at a time; only the
decoders in `genlab.serve.images.FORMATS` run; more than
`max_queue` images waiting gives 503 at once. Model weights are loaded by `genlab.load_run`
(torch.load with weights_only=True: no arbitrary object is unpickled).
"""
from __future__ import annotations

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
from genlab.serve.images import ServeError, decode_image, parse_request
from genlab.serve.model import ServedModel

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
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
    queued: int


class ErrorResponse(BaseModel):
    detail: str


ERRORS = {400: {"model": ErrorResponse, "description": "bad input (the reason is in detail)"},
          401: {"model": ErrorResponse, "description": "missing or wrong API token"},
          413: {"model": ErrorResponse, "description": "body, image count or pixel count too large"},
          415: {"model": ErrorResponse, "description": "unsupported Content-Type"},
          503: {"model": ErrorResponse, "description": "too many images waiting; retry later"}}

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


class Guard:
    """ASGI middleware: the token check on /v1/, the body size cap, security headers."""

    def __init__(self, app, token: str | None, max_body: int, page_csp: str):
        self.app, self.token, self.max_body, self.page_csp = app, token, max_body, page_csp

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


# ----------------------------------------------------------------------------- the app
def create_app(run_dir: str | Path, device: str = "cpu", token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD, batch_window_ms: float = 5.0,
               max_batch: int = 32, *, checkpoint: str = "best", max_images: int = 32,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = 1024) -> FastAPI:
    """The FastAPI app serving the classifier of `run_dir` (see the module docstring).

    token: required on /v1/ when given. max_upload_bytes: cap on a request body. batch_window_ms
    and max_batch: how long the batcher waits for more images and how many share one forward
    pass. max_images: images per request. max_pixels: per image, before decoding. max_queue:
    images waiting before 503.
    """
    served = ServedModel(Path(run_dir), device, checkpoint)
    batcher = MicroBatcher(served.predict, batch_window_ms, max_batch, max_queue)
    started = time.time()
    decode_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
    html, csp = _page()
    c = served.channels
    serving = {"max_upload_bytes": max_upload_bytes, "max_images": max_images,
               "max_pixels": max_pixels, "batch_window_ms": batch_window_ms,
               "max_batch": max_batch, "max_queue": max_queue, "token_required": bool(token)}

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
    app.add_middleware(Guard, token=token, max_body=max_upload_bytes, page_csp=csp)

    @app.exception_handler(ServeError)
    async def _serve_error(request, exc: ServeError):
        return _json_error(exc.status, exc.detail)

    @app.exception_handler(QueueFull)
    async def _busy(request, exc: QueueFull):
        return _json_error(503, f"server busy: {exc}; retry later", {"Retry-After": "1"})

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
                "queued": batcher.pending}

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

        def prepare():  # in a worker thread; at most `decode_slots` decode at once (memory)
            with decode_slots:
                return _prepare()

        def _prepare():
            req = parse_request(request.headers.get("content-type"), body,
                                request.query_params.get("gradcam"), max_images)
            if req.gradcam and not served.model.can_explain:
                raise ServeError(400, "gradcam: this model has no convolutional trunk, so there "
                                      "is no Grad-CAM map")
            return [(decode_image(u, c, served.size, max_pixels), req.gradcam) for u in req.uploads]

        items = await run_in_threadpool(prepare)
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
    return create_app(**json.loads(os.environ[ENV_CONFIG]))
