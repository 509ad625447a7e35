"""genlab serve: every endpoint, every error code with its message, the token rule, batching,
in-memory uploads, pickle-free loading, the limits (malformed bodies, decoded bytes, admission
under a crowd of connections) and the `genlab serve` command. CPU, small: one tiny brain
classifier trained once per session (tests/serve_helpers.py)."""
from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="serving needs the [serve] extra")
import httpx
from fastapi.testclient import TestClient
from serve_helpers import start_server, tiny_brain_run

from genlab.cli import main
from genlab.cli.serve import check_binding, is_loopback
from genlab.core.errors import GenlabError
from genlab.serve import create_app
from genlab.serve.images import Upload, decode_image, json_depth_over
from genlab.serve.limits import Busy, Gate

TOKEN = "s3cret-token-for-the-tests-0123456789"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_brain_run(tmp_path_factory)


@pytest.fixture(scope="module")
def brain_pngs(tmp_path_factory) -> list[Path]:
    """Four images written by `genlab data brain` (the files a user would send)."""
    out = tmp_path_factory.mktemp("brain_png") / "brain"
    assert main(["data", "brain", "--out", str(out), "--n", "4", "--split", "test"]) == 0
    return sorted(p for p in out.rglob("*.png") if p.parent != out)


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir)) as c:
        yield c


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(h=50, w=60, seed=0) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- endpoints
def test_health_and_model(client, run_dir):
    h = client.get("/v1/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert h.json()["model"] == "tiny_lesion_brain" and h.json()["device"] == "cpu"
    m = client.get("/v1/model").json()
    assert m["classes"] == ["A", "B", "C", "Z"] and m["input_shape"] == [1, 128, 96]
    assert m["preprocessing"]["resize"].startswith("to 96x128") and "PNG" in m["preprocessing"]["formats"]
    assert m["lesion"]["negative_classes"] == ["Z"] and m["lesion"]["threshold"] == 0.5
    assert "acc" in m["test_metrics"] and m["test_metrics_source"].startswith("metrics.json")
    assert m["genlab_version"] == __import__("genlab").__version__
    assert m["serving"]["token_required"] is False and m["gradcam_available"] is True


def test_page_docs_and_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and 'id="pred-class"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/png"} <= set(body)
    assert {"400", "401", "413", "415"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])
    assert client.get("/docs").status_code == 200 and client.get("/redoc").status_code == 200


def test_predict_multipart_matches_genlab_predict(client, run_dir, brain_pngs):
    """The server's answer is `genlab predict`'s: same preprocessing, probabilities, lesion call."""
    import genlab

    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in brain_pngs]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    run = genlab.load_run(run_dir)
    probs = run.model.predict_proba(run.read_images(brain_pngs))
    p_lesion = run.model.lesion_probability(probs)
    for i, (p, path) in enumerate(zip(preds, brain_pngs)):
        assert p["name"] == path.name
        got = torch.tensor([p["probabilities"][c] for c in ("A", "B", "C", "Z")])
        assert torch.allclose(got, probs[i], atol=1e-6)
        assert p["class"] == "ABCZ"[int(probs[i].argmax())]
        assert p["lesion"]["call"] == bool(p_lesion[i] >= 0.5)
        assert abs(p["lesion"]["probability"] - float(p_lesion[i])) < 1e-6
        assert p["input"]["converted"] == [] and p["gradcam_png"] is None


def _same_answer(p: dict, q: dict, tol: float = 1e-6) -> bool:
    """The same probabilities within float tolerance: batched and single-image CPU kernels need
    not agree to the last bit, and the server promises the same answer, not the same bits."""
    return p.keys() == q.keys() and all(abs(p[k] - q[k]) <= tol for k in p)


def test_predict_json_raw_and_gradcam(client, brain_pngs):
    data = brain_pngs[0].read_bytes()
    b64 = base64.b64encode(data).decode()
    r = client.post("/v1/predict", json={"images": [b64, "data:image/png;base64," + b64],
                                         "names": ["one"], "gradcam": True})
    assert r.status_code == 200, r.text
    a, b = r.json()["predictions"]
    assert a["name"] == "one" and b["name"] == "image 1"
    assert _same_answer(a["probabilities"], b["probabilities"])
    cam = Image.open(io.BytesIO(base64.b64decode(a["gradcam_png"])))
    assert cam.format == "PNG" and cam.size == (96, 128) and cam.mode == "RGB"
    model = client.app.state.served.model  # Grad-CAM left the model as it was: eval, no .grad
    assert not model.training and all(p.grad is None for p in model.parameters())
    raw = client.post("/v1/predict?gradcam=false", content=data, headers={"content-type": "image/png"})
    assert raw.status_code == 200
    assert _same_answer(raw.json()["predictions"][0]["probabilities"], a["probabilities"])
    form = client.post("/v1/predict", files={"file": ("x.png", data, "image/png")}, data={"gradcam": "1"})
    assert form.json()["predictions"][0]["gradcam_png"]


def test_other_sizes_and_modes_are_converted(client):
    rgba = np.random.default_rng(1).integers(0, 256, (40, 30, 4), dtype=np.uint8)
    deep = (np.random.default_rng(2).random((200, 150)) * 65535).astype(np.uint16)
    jpeg = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(jpeg, format="JPEG")
    files = [("files", ("rgba.png", _png(rgba), "image/png")),
             ("files", ("deep.png", _png(deep), "image/png")),
             ("files", ("photo.jpg", jpeg.getvalue(), "image/jpeg"))]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    conv = {p["name"]: p["input"] for p in r.json()["predictions"]}
    assert conv["rgba.png"]["original"]["mode"] == "RGBA"
    assert "mode RGBA -> L" in conv["rgba.png"]["converted"]
    assert "resized 30x40 -> 96x128 (W x H, bilinear)" in conv["rgba.png"]["converted"]
    assert conv["deep.png"]["original"]["mode"].startswith("I")
    assert conv["photo.jpg"]["original"]["format"] == "JPEG"


# ----------------------------------------------------------------------------- bad input
CASES = {
    "415 text/plain": ({"content": b"hello", "headers": {"content-type": "text/plain"}},
                       415, "unsupported Content-Type 'text/plain'"),
    "415 no content type": ({"content": b"hello", "headers": {"content-type": ""}}, 415, "Content-Type"),
    "400 not an image": ({"files": {"file": ("notes.txt", b"just some text", "text/plain")}},
                         400, "notes.txt: not an image"),
    "400 truncated": ({"files": {"file": ("cut.png", _rgb()[:120], "image/png")}},
                      400, "cut.png: corrupt or truncated PNG image"),
    "400 empty file": ({"files": {"file": ("e.png", b"", "image/png")}}, 400, "e.png: empty file"),
    "400 bad base64": ({"json": {"images": ["not*base64!"]}}, 400, "image 0: invalid base64"),
    "400 bad json": ({"content": b"{oops", "headers": {"content-type": "application/json"}},
                     400, "malformed JSON"),
    "400 json not object": ({"json": [1, 2]}, 400, "JSON body must be an object"),
    "400 unknown json key": ({"json": {"images": [], "imgs": []}}, 400, "unknown JSON key(s) ['imgs']"),
    "400 no image": ({"json": {"images": []}}, 400, "no image in the request"),
    "400 unknown field": ({"files": {"file": ("a.png", _rgb(), "image/png")}, "data": {"evil": "1"}},
                          400, "unknown form field 'evil'"),
    "400 bad flag": ({"json": {"images": [], "gradcam": "maybe"}}, 400, "gradcam: expected true or false"),
    "400 broken multipart": ({"content": b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                                  "headers": {"content-type": "multipart/form-data; boundary=XYZ"}},
                             400, "malformed multipart body"),
    "400 no boundary": ({"content": b"x", "headers": {"content-type": "multipart/form-data"}},
                        400, "without a boundary"),
    "400 eps refused": ({"files": {"file": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n",
                                             "application/postscript")}},
                        400, "not in a format the server reads"),
    # small bodies that used to reach the parser's limits and come back as 500s
    "400 json nested 2000 deep": ({"content": b"[" * 2000 + b"]" * 2000,
                                   "headers": {"content-type": "application/json"}},
                                  400, "malformed JSON: nested deeper than 8 levels"),
    "400 json nested in an object": ({"content": b'{"images": ' + b"[" * 50 + b"]" * 50 + b"}",
                                      "headers": {"content-type": "application/json"}},
                                     400, "nested deeper than 8 levels"),
    "400 json 5000-digit integer": ({"content": b'{"images":[],"gradcam":' + b"9" * 5000 + b"}",
                                     "headers": {"content-type": "application/json"}},
                                    400, ("malformed JSON: a number of 5,000 digits; the server reads "
                                          "at most 100")),
    "400 multipart boundary of 300": ({"content": b"x", "headers": {
                                          "content-type": "multipart/form-data; boundary=" + "b" * 300}},
                                      400, "a boundary of 300 characters; the server accepts at most 256"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_status_and_reason(client, case):
    kw, status, message = CASES[case]
    r = client.post("/v1/predict", **kw)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert client.get("/v1/health").status_code == 200  # and the server still serves


def test_json_depth_is_found_without_parsing():
    assert not json_depth_over(b'{"images": ["a", "b"], "names": ["[[[[[[[[[[[[[[[["]}', 8)
    assert not json_depth_over(b'{"a": "\\"[[[[[[[[[[[[\\"", "b": [[1]]}', 8)  # escaped quotes
    assert json_depth_over(b'{"a": "x", "b": ' + b"[" * 9 + b"]" * 9 + b"}", 8)
    assert not json_depth_over(b"[" * 8 + b"]" * 8, 8)
    assert json_depth_over(b"[" * 3_000_000, 8)  # over several scanning chunks
    assert not json_depth_over(b"[]," * 2_000_000, 8)  # wide, not deep


def test_no_malformed_body_escapes_as_a_500(client, monkeypatch):
    """The safety net: whatever a body makes the request parser raise is a 400 naming it."""
    import genlab.serve.app as app_module

    def broken(*a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(app_module, "parse_request", broken)
    r = client.post("/v1/predict", json={"images": []})
    assert r.status_code == 400 and r.json()["detail"] == "malformed request body (RecursionError)"


def test_limits_413(run_dir):
    app = create_app(run_dir, max_upload_bytes=20_000, max_images=2, max_pixels=100 * 100)
    with TestClient(app) as c:
        big = c.post("/v1/predict", content=b"\0" * 30_000, headers={"content-type": "image/png"})
        assert big.status_code == 413 and "at most 20,000" in big.json()["detail"]

        def chunks():  # no Content-Length: the cap applies while the body streams in
            for _ in range(10):
                yield b"\0" * 5_000

        streamed = c.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
        assert streamed.status_code == 413 and "over 20,000 bytes" in streamed.json()["detail"]
        small = _png(np.zeros((8, 8), np.uint8))
        many = c.post("/v1/predict", json={"images": [base64.b64encode(small).decode()] * 3})
        assert many.status_code == 413 and "takes at most 2" in many.json()["detail"]
        huge = c.post("/v1/predict", files={"file": ("wide.png", _png(np.zeros((101, 100), np.uint8)),
                                                     "image/png")})
        assert huge.status_code == 413 and "wide.png: 100x101 = 10,100 pixels" in huge.json()["detail"]
        ok = c.post("/v1/predict", files={"file": ("ok.png", small, "image/png")})
        assert ok.status_code == 200


def test_busy_server_answers_503(run_dir):
    with TestClient(create_app(run_dir, max_queue=1)) as c:
        img = base64.b64encode(_rgb()).decode()
        r = c.post("/v1/predict", json={"images": [img, img]})
        assert r.status_code == 503 and "server busy" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"


def test_uploads_never_touch_the_disk(run_dir, tmp_path, monkeypatch):
    """A client-sent file name is only echoed; multipart bodies are parsed in memory."""
    import tempfile

    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    secret = tmp_path / "secret.png"
    secret.write_bytes(_rgb())
    with TestClient(create_app(run_dir)) as c:
        big = _png(np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8))
        assert len(big) > 2 * 1024 * 1024  # more than starlette would keep in memory
        r = c.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 200
        r = c.post("/v1/predict", files={"file": (str(secret), b"", "image/png")})
        assert r.status_code == 400 and "empty file" in r.json()["detail"]  # the path was not read
        r = c.post("/v1/predict", files={"file": ("../../../../etc/passwd", b"x", "image/png")})
        assert r.status_code == 400 and "not an image" in r.json()["detail"]
    assert list(spool.iterdir()) == []


def test_checkpoints_load_without_unpickling(run_dir, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    state = torch.load(bad / "checkpoints" / "best.pt", weights_only=True)
    state["payload"] = Evil()
    torch.save(state, bad / "checkpoints" / "best.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|Unsupported global"):
        create_app(bad)
    assert not Path("pwned.txt").exists() and not (tmp_path / "pwned.txt").exists()


# ----------------------------------------------------------------------------- the token
def test_token_is_checked_on_every_api_request(run_dir):
    with TestClient(create_app(run_dir, token=TOKEN)) as c:
        img = {"files": {"file": ("a.png", _rgb(), "image/png")}}
        for method, path, kw in (("get", "/v1/health", {}), ("get", "/v1/model", {}),
                                 ("post", "/v1/predict", img), ("get", "/v1/nothing", {})):
            none = getattr(c, method)(path, **kw)
            assert none.status_code == 401 and "API token" in none.json()["detail"]
            assert none.headers["www-authenticate"].startswith("Bearer")
            wrong = getattr(c, method)(path, headers={"Authorization": "Bearer nope"}, **kw)
            assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/health", headers=auth).status_code == 200
        assert c.get("/v1/model", headers=auth).json()["serving"]["token_required"] is True
        assert c.post("/v1/predict", headers=auth, **img).status_code == 200
        # an unauthenticated oversized upload is refused as unauthenticated, before its body is read
        big = c.post("/v1/predict", content=b"\0" * (11 << 20), headers={"content-type": "image/png"})
        assert big.status_code == 401
        # the static page and the docs carry no model data and stay reachable
        assert c.get("/").status_code == 200 and c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_binding_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("myhost")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(GenlabError, match="needs an API token"):
        check_binding("0.0.0.0", None)
    with pytest.raises(GenlabError, match="at least 16 characters"):
        check_binding("127.0.0.1", "short")


def test_serve_command_refuses_open_binding_without_token(run_dir, capsys, monkeypatch):
    monkeypatch.delenv("GENLAB_API_TOKEN", raising=False)
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 2
    assert "needs an API token" in capsys.readouterr().err
    assert main(["serve", str(run_dir.parent / "missing")]) == 2
    assert "not a genlab run folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- batching
def test_requests_arriving_together_share_a_forward_pass(run_dir):
    app = create_app(run_dir, batch_window_ms=400, max_batch=8)
    imgs = [_rgb(seed=i) for i in range(6)]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*[
                c.post("/v1/predict", files={"file": (f"{i}.png", img, "image/png")})
                for i, img in enumerate(imgs)])
            health = await c.get("/v1/health")
        await app.state.batcher.stop()
        return rs, health.json()

    rs, health = asyncio.run(go())
    assert all(r.status_code == 200 for r in rs)
    sizes = [r.json()["predictions"][0]["batch"]["size"] for r in rs]
    assert max(sizes) > 1, sizes
    assert health["max_batch_seen"] > 1 and health["images"] == 6 and health["batches"] < 6
    # batching changes nothing in the answers
    with TestClient(create_app(run_dir, batch_window_ms=0)) as c:
        alone = c.post("/v1/predict", files={"file": ("0.png", imgs[0], "image/png")}).json()
    p_alone = alone["predictions"][0]["probabilities"]
    p_batched = rs[0].json()["predictions"][0]["probabilities"]
    assert _same_answer(p_alone, p_batched, tol=1e-5)


# ----------------------------------------------------------------------------- the real server
def test_genlab_serve_over_http(run_dir, brain_pngs, tmp_path):
    proc, url = start_server(run_dir, log=tmp_path / "serve.log")
    try:
        png = brain_pngs[0].read_bytes()
        r = httpx.post(url + "/v1/predict", files={"file": ("b.png", png, "image/png")})
        assert r.status_code == 200 and r.json()["predictions"][0]["class"] in "ABCZ"
        assert "server" not in {k.lower() for k in r.headers}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ----------------------------------------------------------------------------- decoded bytes
def _png_header(width: int, height: int, bit_depth: int = 16, color_type: int = 0) -> bytes:
    """A PNG whose header declares width x height (16-bit grayscale by default) and whose pixel
    data is a few bytes: a tiny file that would decode to a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_decoded_bytes_are_bounded_per_request_before_decoding(client, run_dir):
    crafted = _png_header(6300, 6300)  # 39.7 megapixels (under the 40 M default), 16 bits each
    assert len(crafted) < 200
    t0 = time.perf_counter()
    files = [("files", (f"{i}.png", crafted, "image/png")) for i in range(4)]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 413, r.text  # not 400 (corrupt data): nothing was decoded
    assert r.json()["detail"] == ("4 images decode to 302.8 MiB together; the server decodes at "
                                  "most 256.0 MiB per request")
    assert time.perf_counter() - t0 < 5
    rgb = _png_header(4000, 3000, bit_depth=8, color_type=2)  # RGB: Pillow keeps 4 bytes a pixel
    with TestClient(create_app(run_dir, max_decoded_bytes=40 << 20)) as c:
        one = c.post("/v1/predict", files={"file": ("big.png", crafted, "image/png")})
        assert one.status_code == 413
        assert one.json()["detail"] == ("big.png: a 6300x6300 I;16 image decodes to 75.7 MiB; the "
                                        "server decodes at most 40.0 MiB per request")
        r = c.post("/v1/predict", files={"file": ("photo.png", rgb, "image/png")})
        assert r.status_code == 413 and "photo.png: a 4000x3000 RGB image decodes to 45.8 MiB" \
            in r.json()["detail"]
        assert c.get("/v1/model").json()["serving"]["max_decoded_bytes"] == 40 << 20


def test_large_images_are_downscaled_while_decoding(client, tmp_path):
    """A 16-bit image many times the model's size is box-reduced before conversion: cheap, and
    within a few grey levels of the full-resolution path."""
    from genlab.data.folders import load_image

    yy, xx = np.mgrid[0:2600, 0:1900]
    deep = ((np.sin(xx / 90) * np.cos(yy / 120) + 1) / 2 * 65535).astype(np.uint16)
    data = _png(deep)
    r = client.post("/v1/predict", files={"file": ("deep.png", data, "image/png")})
    assert r.status_code == 200, r.text
    conv = r.json()["predictions"][0]["input"]["converted"]
    assert conv[0] == "reduced 1900x2600 -> 212x260 (box average, 9x10)"  # >= 2x the 96x128 input
    assert conv[1:] == ["mode I;16 -> L", "resized 212x260 -> 96x128 (W x H, bilinear)"]
    fast = decode_image(Upload(data, "deep.png"), 1, (128, 96), 40_000_000).x.numpy()
    (tmp_path / "deep.png").write_bytes(data)  # the data source's full-resolution path
    full = load_image(tmp_path / "deep.png", 1, (128, 96)) / 255.0
    assert np.abs(fast - full).max() <= 3 / 255 and np.abs(fast - full).mean() <= 0.5 / 255
    small = decode_image(Upload(_png(deep[:200, :150]), "s.png"), 1, (128, 96), 40_000_000)
    assert not any(c.startswith("reduced") for c in small.converted)  # small images: as before


def test_decode_budget_is_shared_by_all_requests(run_dir):
    """Decoded bytes of all requests at once are bounded: a request that cannot get its share
    in time gets 503 with Retry-After; once the budget frees up it is served."""
    app = create_app(run_dir, queue_timeout_s=0.3)
    with TestClient(app) as c:
        budget = app.state.decode_budget
        assert budget.capacity == 512 << 20
        budget.used = budget.capacity  # as if other requests were decoding right now
        r = c.post("/v1/predict", files={"file": ("a.png", _rgb(), "image/png")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == ("server busy: waited 0.3 s for bytes of decoded pixels; "
                                      "retry later")
        budget.used = 0
        assert c.post("/v1/predict", files={"file": ("a.png", _rgb(), "image/png")}).status_code == 200
        assert c.get("/v1/health").json()["decoding_bytes"] == 0


# ----------------------------------------------------------------------------- admission
def test_gate_queues_first_come_first_served_and_refuses_past_its_line():
    async def go():
        gate = Gate(capacity=100, max_waiting=2, timeout_s=0.5, what="units")
        await gate.acquire(60)
        order = []

        async def take(n, tag):
            await gate.acquire(n)
            order.append(tag)

        big = asyncio.create_task(take(80, "big"))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(take(10, "small"))  # would fit now, but waits behind big
        await asyncio.sleep(0.01)
        assert gate.waiting == 2 and order == []
        with pytest.raises(Busy, match="2 requests waiting"):
            await gate.acquire(1)  # the line is full: refused at once
        gate.release(60)
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and gate.used == 90
        with pytest.raises(Busy, match="waited 0.5 s for units"):
            await gate.acquire(20)  # never fits in time
        assert gate.waiting == 0 and gate.used == 90
        gate.release(90)
        waiter = asyncio.create_task(gate.acquire(100))
        await asyncio.sleep(0.01)
        waiter.cancel()  # a waiter that goes away leaves no trace
        await asyncio.gather(waiter, return_exceptions=True)
        assert gate.waiting == 0 and gate.used == 100  # it was granted at once (nothing held)
        gate.release(100)
        async with gate.hold(100):
            assert gate.used == 100
        assert gate.used == 0

    asyncio.run(go())


def test_requests_past_the_admission_limits_get_503(run_dir):
    app = create_app(run_dir, max_concurrent=1, max_waiting=0)
    with TestClient(app) as c:
        app.state.slots.used = 1  # the one slot is taken
        r = c.post("/v1/predict", files={"file": ("a.png", _rgb(), "image/png")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == ("server busy: 1 of 1 request slots in use and 0 requests "
                                      "waiting for them (the most that may wait); retry later")
        assert c.get("/v1/health").json()["active_requests"] == 1  # GETs are not held back
        app.state.slots.used = 0
        assert c.post("/v1/predict", files={"file": ("a.png", _rgb(), "image/png")}).status_code == 200
        serving = c.get("/v1/model").json()["serving"]
        assert serving["max_concurrent"] == 1 and serving["max_waiting"] == 0


def _load_script():
    spec = importlib.util.spec_from_file_location("load_serve", ROOT / "scripts" / "load_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _busy_answer_with_connection_close(url: str, png: bytes) -> bytes:
    """With the server's one slot and its line of one taken, a request asking to close the
    connection: all the client reads of its answer (see _send_then_read)."""
    load = _load_script()
    port = int(url.rsplit(":", 1)[1])
    head, body = load.multipart_request("127.0.0.1", port, png)

    async def until(active: int, waiting: int) -> None:
        async with httpx.AsyncClient() as c:  # GETs are not held back by admission
            for _ in range(200):
                h = (await c.get(url + "/v1/health")).json()
                if (h["active_requests"], h["waiting_requests"]) == (active, waiting):
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(f"the server never had {active} active and {waiting} waiting: {h}")

    _, stalled = await asyncio.open_connection("127.0.0.1", port)
    stalled.write(head + body[:10])  # holds the one slot: its body never completes
    await until(1, 0)
    _, queued = await asyncio.open_connection("127.0.0.1", port)
    queued.write(head + body)  # waits in the line of one
    await until(1, 1)
    # a 2 MB upload: past 64 KiB uvicorn stops reading a body nobody asked for, so without
    # reading it first the server would close with bytes unread, and its kernel would reset
    big_head, big_body = load.multipart_request("127.0.0.1", port, os.urandom(2 << 20))
    answer = await asyncio.to_thread(_send_then_read, port, big_head.replace(
        b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1), big_body)
    for w in (stalled, queued):
        w.close()
    await until(0, 0)  # a client that goes away gives its slot back
    return answer


def _send_then_read(port: int, head: bytes, body: bytes) -> bytes:
    """A client that sends its whole request before it reads (as most do), the body a moment
    after the head, as over a network: everything it then reads, or b'reset' when a reset
    erased the answer (a server that closes with the body unread makes its kernel send one)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        time.sleep(0.05)
        try:
            sock.sendall(body)
            time.sleep(0.3)  # reading only now, as a client still busy sending would
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return b"reset"
    return data


def test_a_crowd_of_connections_is_answered_or_told_to_retry(run_dir, brain_pngs, tmp_path):
    """150 connections at once against `genlab serve` (uvicorn on loopback) with one request
    slot and a line of one: no connection is reset; each gets 200 or 503 with Retry-After."""
    load = _load_script()
    png = brain_pngs[0].read_bytes()
    proc, url = start_server(run_dir, "--max-concurrent", "1", "--max-waiting", "1",
                             "--batch-window-ms", "700", log=tmp_path / "serve.log")
    try:
        port = int(url.rsplit(":", 1)[1])
        raw = asyncio.run(load.crowd("127.0.0.1", port, 150, png, timeout=30))
        assert raw["reset"] == 0 and raw["other"] == 0, raw
        assert raw["answered"] >= 1 and raw["busy"] >= 1 and raw["answered"] + raw["busy"] == 150
        client = asyncio.run(load.crowd_httpx(url, 150, png, timeout=30))  # the client
        assert client["reset"] == 0 and client["other"] == 0, client
        assert client["answered"] + client["busy"] == 150
        answer = asyncio.run(_busy_answer_with_connection_close(url, png))
        assert answer.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1\r\n" in answer.lower()
        assert answer.endswith(b"retry later\"}")  # the whole answer, then a clean close
        for _ in range(20):  # and it serves on, once the requests above are done
            r = httpx.post(url + "/v1/predict", files={"file": ("b.png", png, "image/png")}, timeout=30)
            if r.status_code != 503:
                break
            time.sleep(float(r.headers["retry-after"]) / 4)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
