"""Reading a prediction request: its body (multipart, JSON with base64, or one raw image) into
image bytes, and image bytes into the model's input tensor.

Everything happens in memory: no upload is ever written to disk (multipart bodies are parsed
here with python-multipart's streaming parser, not spooled to temporary files) and no name a
client sends is used as a path. Problems are `ServeError`s carrying the HTTP status and a
one-line reason the client can act on:

    400  not an image, a corrupt image, bad base64, malformed JSON or multipart, no image
    413  body over the limit (checked in the app's guard), too many images, too many pixels
    415  a request Content-Type that is not multipart/form-data, application/json or image/*

Preprocessing (the model's own, the same as `genlab predict` and the `folder` data source):
the file is decoded with Pillow (formats PNG, JPEG, BMP, TIFF, WebP, GIF, PPM/PGM only; an
animated file gives its first frame), converted to grayscale 'L' for a 1-channel model or RGB for
a 3-channel one (16-bit and float images scaled, not clipped; an alpha channel is dropped), resized
to the model's (H, W) with bilinear filtering (aspect ratio not kept), and divided by 255 into
[0, 1]. EXIF orientation is not applied (training did not apply it either). Each prediction
reports what was converted.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

# the decoders the server runs; others (EPS, which calls Ghostscript, and exotic ones) are refused
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp", "image/gif",
               "image/x-portable-pixmap", "image/x-portable-graymap", "application/octet-stream")
IMAGE_FIELDS = ("file", "files", "image", "images")


class ServeError(Exception):
    """A client error answered as JSON {"detail": message} with this HTTP status."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Upload:
    """One image as received: its bytes and a label for messages (file name or position)."""

    data: bytes
    name: str


@dataclass
class ParsedRequest:
    uploads: list[Upload]
    gradcam: bool = False


@dataclass
class Decoded:
    """(C, H, W) float32 in [0, 1] and what the preprocessing did to the original."""

    x: torch.Tensor
    name: str
    original: dict = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)


def _flag(value, what: str) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ServeError(400, f"{what}: expected true or false, got {str(value)[:40]!r}")


def _label(name: str | None, i: int) -> str:
    # echoed back in JSON only (the page shows it as text); never used as a path
    return (name or f"image {i}")[:200]


# ----------------------------------------------------------------------------- request bodies
def parse_request(content_type: str | None, body: bytes, query_gradcam: str | None,
                  max_images: int) -> ParsedRequest:
    """The images and options of a POST /v1/predict body (see the module docstring)."""
    from python_multipart.multipart import parse_options_header

    if not content_type:
        raise ServeError(415, "missing Content-Type: send multipart/form-data (image files), "
                              "application/json ({\"images\": [base64, ...]}) or image/png|jpeg")
    ctype, params = parse_options_header(content_type)
    ctype = ctype.decode("latin-1").lower()
    if ctype == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise ServeError(400, "multipart/form-data without a boundary parameter")
        req = _parse_multipart(body, boundary, max_images)
    elif ctype == "application/json":
        req = _parse_json(body, max_images)
    elif ctype in IMAGE_TYPES:
        req = ParsedRequest([Upload(body, "image 0")])
    else:
        raise ServeError(415, f"unsupported Content-Type {ctype!r}: send multipart/form-data, "
                              f"application/json or one raw image (image/png, image/jpeg, ...)")
    if query_gradcam is not None:
        req.gradcam = _flag(query_gradcam, "gradcam query parameter")
    if not req.uploads:
        raise ServeError(400, "no image in the request (multipart: a file field named 'file' or "
                              "'files'; JSON: {\"images\": [base64, ...]})")
    if len(req.uploads) > max_images:
        raise ServeError(413, f"{len(req.uploads)} images in one request; the server takes at "
                              f"most {max_images}")
    return req


def _parse_json(body: bytes, max_images: int) -> ParsedRequest:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServeError(400, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ServeError(400, "JSON body must be an object: {\"images\": [base64, ...], "
                              "\"gradcam\": false}")
    unknown = sorted(set(doc) - {"image", "images", "names", "gradcam"})
    if unknown:
        raise ServeError(400, f"unknown JSON key(s) {unknown}; expected images (or image), "
                              f"names, gradcam")
    items = doc.get("images", [])
    if "image" in doc:
        items = [doc["image"], *(items if isinstance(items, list) else [items])]
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ServeError(400, "images: expected a list of base64 strings")
    if len(items) > max_images:
        raise ServeError(413, f"{len(items)} images in one request; the server takes at most "
                              f"{max_images}")
    names = doc.get("names") or []
    if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
        raise ServeError(400, "names: expected a list of strings")
    uploads = []
    for i, s in enumerate(items):
        if s.startswith("data:"):  # a data URL: data:image/png;base64,....
            head, _, s = s.partition(",")
            if ";base64" not in head:
                raise ServeError(400, f"image {i}: a data URL must be base64-encoded")
        try:
            data = base64.b64decode("".join(s.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ServeError(400, f"image {i}: invalid base64 ({e})") from None
        uploads.append(Upload(data, _label(names[i] if i < len(names) else None, i)))
    return ParsedRequest(uploads, _flag(doc.get("gradcam", False), "gradcam"))


def _parse_multipart(body: bytes, boundary: bytes, max_images: int) -> ParsedRequest:
    """In-memory multipart/form-data: parts with a filename (or named file/files/image/images)
    are images; a 'gradcam' field is the flag; any other field is an error."""
    from python_multipart import MultipartParser
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import parse_options_header

    parts: list[tuple[dict[str, str], bytearray]] = []
    state = {"field": b"", "value": b"", "headers": {}, "data": bytearray(), "ended": False}

    def on_part_begin():
        state["headers"], state["data"] = {}, bytearray()
        if len(parts) > max_images + 4:  # stop early on a flood of parts
            raise ServeError(413, f"too many multipart parts; the server takes at most "
                                  f"{max_images} images")

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state["field"], state["value"] = b"", b""

    def on_part_data(data, start, end):
        state["data"] += data[start:end]

    def on_part_end():
        parts.append((state["headers"], state["data"]))

    def on_end():
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_end": on_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise ServeError(400, f"malformed multipart body: {e}") from None
    if not state["ended"]:
        raise ServeError(400, "malformed multipart body: it ends before the closing boundary")
    req = ParsedRequest([])
    for headers, data in parts:
        _, opts = parse_options_header(headers.get("content-disposition", ""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts.get(b"filename")
        if filename is not None or name in IMAGE_FIELDS:
            label = filename.decode("utf-8", "replace") if filename else None
            req.uploads.append(Upload(bytes(data), _label(label, len(req.uploads))))
        elif name == "gradcam":
            req.gradcam = _flag(bytes(data).decode("utf-8", "replace"), "gradcam form field")
        else:
            raise ServeError(400, f"unknown form field {name[:40]!r}: send image files (field "
                                  f"'file' or 'files') and optionally 'gradcam'")
    return req


# ----------------------------------------------------------------------------- decoding
def decode_image(up: Upload, channels: int, size: tuple[int, int], max_pixels: int) -> Decoded:
    """One upload -> the model's input (see the module docstring); a ServeError says why not."""
    from genlab.data.folders import _to_mode  # the data source's conversion, shared on purpose

    h, w = size
    if not up.data:
        raise ServeError(400, f"{up.name}: empty file")
    try:
        im = Image.open(io.BytesIO(up.data), formats=list(FORMATS))
    except Image.DecompressionBombError as e:
        raise ServeError(413, f"{up.name}: {e}") from None
    except Image.UnidentifiedImageError:
        raise ServeError(400, f"{up.name}: not an image (or not in a format the server reads: "
                              f"{', '.join(FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on a bad header
        raise ServeError(400, f"{up.name}: corrupt image header ({type(e).__name__}: {e})") from None
    with im:
        ow, oh = im.size
        if ow * oh > max_pixels:
            raise ServeError(413, f"{up.name}: {ow}x{oh} = {ow * oh:,} pixels; the server decodes "
                                  f"at most {max_pixels:,}")
        original = {"format": im.format, "mode": im.mode, "width": ow, "height": oh}
        target = "L" if channels == 1 else "RGB"
        converted = []
        try:
            im.draft(target, (w, h))  # JPEG: decode at a reduced scale, as the data source does
            im.load()
            frames = getattr(im, "n_frames", 1)
            out = _to_mode(im, channels)
            if im.mode != target:
                converted.append(f"mode {im.mode} -> {target}")
            if frames > 1:
                converted.append(f"first of {frames} frames")
            if out.size != (w, h):
                converted.append(f"resized {out.size[0]}x{out.size[1]} -> {w}x{h} (W x H, bilinear)")
                out = out.resize((w, h), Image.Resampling.BILINEAR)
            a = np.array(out, dtype=np.uint8)
        except ServeError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated data, bad chunks, decoder errors
            raise ServeError(400, f"{up.name}: corrupt or truncated {im.format} image "
                                  f"({type(e).__name__}: {e})") from None
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    return Decoded(x, up.name, original, converted)


def png_base64(rgb: np.ndarray) -> str:
    """(3, H, W) float in [0, 1] -> base64 PNG."""
    img = Image.fromarray((np.clip(rgb, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
