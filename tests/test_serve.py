"""genlab serve: every endpoint, every error code with its message, the token rule, batching,
in-memory uploads, pickle-free loading and the `genlab serve` command. CPU, small:
one tiny brain classifier trained once per session (tests/serve_helpers.py)."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
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

TOKEN = "s3cret-token-for-the-tests-0123456789"


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
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_status_and_reason(client, case):
    kw, status, message = CASES[case]
    r = client.post("/v1/predict", **kw)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert client.get("/v1/health").status_code == 200  # and the server still serves


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
