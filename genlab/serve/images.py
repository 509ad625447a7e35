"""Reading a prediction request: its body (multipart, JSON with base64, or one raw image) into
image bytes, and image bytes into the model's input tensor.

Everything happens in memory: no upload is ever written to disk (multipart bodies are parsed
here with python-multipart's streaming parser, not spooled to temporary files) and no name a
client sends is used as a path. Problems are `ServeError`s carrying the HTTP status and a
one-line reason the client can act on:

    400  not an image, a corrupt image, bad base64, malformed JSON or multipart (also JSON
         nested deeper than MAX_JSON_DEPTH, a number longer than MAX_NUMBER_DIGITS digits, a
         multipart boundary over MAX_BOUNDARY characters), no image
    413  body over the limit (checked in the app's guard), too many images, too many pixels,
         more decoded bytes than the request may use (estimated from the headers, before any
         pixel is decoded)
    415  a request Content-Type that is not multipart/form-data, application/json or image/*

Decoding is in two steps so that the app can bound memory before it spends any: `open_image`
reads only the header and estimates the decoded bytes (width x height x the bytes per pixel
Pillow stores for the mode; JPEG after its reduced-scale draft), `decode_opened` decodes.

Preprocessing (the model's own, the same as `genlab predict` and the `folder` data source):
the file is decoded with Pillow (formats PNG, JPEG, BMP, TIFF, WebP, GIF, PPM/PGM only; an
animated file gives its first frame), converted to grayscale 'L' for a 1-channel model or RGB for
a 3-channel one (16-bit and float images scaled, not clipped; an alpha channel is dropped), resized
to the model's (H, W) with bilinear filtering (aspect ratio not kept), and divided by 255 into
[0, 1]. EXIF orientation is not applied (training did not apply it either). Each prediction
reports what was converted.

Downscale on decode: a JPEG is decoded at a reduced scale (Pillow's draft, as the `folder` data
source does). Any image at least twice the model's size along an axis is then box-averaged by
an integer factor along it (Pillow's reduce; in strips with numpy for 16-bit) to no less than
twice the model's size, before the mode conversion and the bilinear resize of the exact source
box (Pillow's own resize(reducing_gap=2), with the conversion moved between its two steps), so
a large image costs its decoded pixels once and nothing more. That step is reported in
`converted`; the result is within a grey level or two of the full-resolution path (a 16-bit
1900x2600 image: at most 2/255). Images smaller than twice the model's size are preprocessed
exactly as the data source does.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

# the decoders the server runs; others (EPS, which calls Ghostscript, and exotic ones) are refused
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp", "image/gif",
               "image/x-portable-pixmap", "image/x-portable-graymap", "application/octet-stream")
IMAGE_FIELDS = ("file", "files", "image", "images")
MAX_JSON_DEPTH = 8  # the request object is 2 deep ({"images": [...]}); deeper is refused unparsed
MAX_NUMBER_DIGITS = 100  # no number belongs in a request; a long one is refused, not converted
MAX_BOUNDARY = 256  # python-multipart's limit; RFC 2046 allows 70


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


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def json_depth_over(text: bytes, limit: int) -> bool:
    """Whether JSON `text` nests arrays/objects deeper than `limit`, found without parsing it
    (the parser recurses once per level): strings are blanked out, then the running count of
    opening minus closing brackets is scanned in 1 MB chunks. Linear time, bounded memory."""
    skeleton = _JSON_STRING.sub(b'""', text)
    if skeleton.count(b"[") + skeleton.count(b"{") <= limit:
        return False
    depth, chunk = 0, 1 << 20
    for start in range(0, len(skeleton), chunk):
        steps = _BRACKET_STEP[np.frombuffer(skeleton, np.uint8, min(chunk, len(skeleton) - start),
                                            start)]
        running = depth + np.cumsum(steps, dtype=np.int64)
        if running.max(initial=depth) > limit:
            return True
        depth = int(running[-1]) if len(running) else depth
    return False


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ServeError(400, f"malformed JSON: a number of {len(digits):,} digits; the server "
                              f"reads at most {MAX_NUMBER_DIGITS}")
    return int(digits)


def _parse_json(body: bytes, max_images: int) -> ParsedRequest:
    if json_depth_over(body, MAX_JSON_DEPTH):
        raise ServeError(400, f"malformed JSON: nested deeper than {MAX_JSON_DEPTH} levels (a "
                              f"request is {{\"images\": [base64, ...]}})")
    try:
        doc = json.loads(body, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServeError(400, f"malformed JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # a safety net behind the checks above
        raise ServeError(400, f"malformed JSON: {type(e).__name__}: {str(e)[:100]}") from None
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
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    if len(boundary) > MAX_BOUNDARY:
        raise ServeError(400, f"malformed multipart body: a boundary of {len(boundary):,} "
                              f"characters; the server accepts at most {MAX_BOUNDARY}")

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

    callbacks = {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_end": on_end}
    try:  # the parser's constructor checks the boundary too: it is inside the try
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as e:  # every python-multipart error (ParseError, boundary, ...)
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
def pixel_bytes(mode: str) -> int:
    """Bytes per pixel Pillow stores for `mode`: 1 for 1/L/P, 2 for 16-bit, else 4 (I, F, and
    every multi-band mode, RGB included, is stored in 32-bit pixels)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


_NO_REDUCE = ("1", "P", "PA")  # Pillow cannot reduce these: converted to the model's mode first


@dataclass
class Opened:
    """An image whose header is read and nothing decoded yet; `nbytes`: what decoding will
    hold at most (the decoded image, plus the converted copy for 1/P/PA images)."""

    im: Image.Image
    name: str
    original: dict
    nbytes: int


def open_image(up: Upload, channels: int, size: tuple[int, int], max_pixels: int) -> Opened:
    """Read `up`'s header (no pixel is decoded): its format, mode and size, the pixel limit, and
    the decoded-bytes estimate; a ServeError says why not."""
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
    ow, oh = im.size
    original = {"format": im.format, "mode": im.mode, "width": ow, "height": oh}
    try:
        if ow * oh > max_pixels:
            raise ServeError(413, f"{up.name}: {ow}x{oh} = {ow * oh:,} pixels; the server decodes "
                                  f"at most {max_pixels:,}")
        try:  # JPEG: decode at a reduced scale, as the data source does (changes size and mode)
            im.draft("L" if channels == 1 else "RGB", (w, h))
        except Exception as e:  # noqa: BLE001 - a bad JPEG header
            raise ServeError(400, f"{up.name}: corrupt image header ({type(e).__name__}: {e})") from None
        nbytes = im.width * im.height * pixel_bytes(im.mode)
        if im.mode in _NO_REDUCE or im.mode not in Image.MODES:
            nbytes += im.width * im.height * (1 if channels == 1 else 4)
    except BaseException:
        im.close()
        raise
    return Opened(im, up.name, original, nbytes)


def _reduce16(im: Image.Image, kx: int, ky: int) -> Image.Image:
    """Pillow's box `reduce((kx, ky))` for 16-bit images (which Pillow does not reduce): the mean
    of each box, partial boxes at the edges included, rounded; in strips of rows of about 4 MB,
    so no full-size copy is made."""
    width, height = im.size
    xs, ys = np.arange(0, width, kx), np.arange(0, height, ky)
    cx = np.diff(np.append(xs, width))
    out = np.empty((len(ys), len(xs)), np.uint16)
    rows = max(1, (4 << 20) // (2 * width * ky))  # output rows per strip
    for j in range(0, len(ys), rows):
        y0, y1 = int(ys[j]), min(height, int(ys[j]) + rows * ky)
        strip = np.asarray(im.crop((0, y0, width, y1)))
        sums = np.add.reduceat(np.add.reduceat(strip, xs, axis=1, dtype=np.uint64),
                               np.arange(0, y1 - y0, ky), axis=0)
        cy = np.diff(np.append(np.arange(0, y1 - y0, ky), y1 - y0))
        out[j:j + len(cy)] = np.floor(sums / (cy[:, None] * cx[None, :]) + 0.5).astype(np.uint16)
    return Image.fromarray(out)


def _shrink(im: Image.Image, channels: int,
            size: tuple[int, int]) -> tuple[Image.Image, tuple[float, ...] | None, str | None]:
    """Downscale on decode (see the module docstring): `im` box-reduced by an integer factor per
    axis to no less than twice `size`, the box of the original image in it (its last row and
    column may be partial boxes), and what was done; `im`, None, None when it is small. This is
    Pillow's resize(reducing_gap=2), with the mode conversion done between its two steps."""
    h, w = size
    kx, ky = max(1, im.width // (2 * w)), max(1, im.height // (2 * h))
    if kx == ky == 1:
        return im, None, None
    width, height = im.size
    if im.mode.startswith("I;16"):
        small = _reduce16(im, kx, ky)
    else:
        if im.mode in _NO_REDUCE or im.mode not in Image.MODES:
            im = im.convert("L" if channels == 1 else "RGB")  # what the conversion would do
        small = im.reduce((kx, ky))
    return (small, (0.0, 0.0, width / kx, height / ky),
            f"reduced {width}x{height} -> {small.width}x{small.height} (box average, {kx}x{ky})")


def decode_opened(op: Opened, channels: int, size: tuple[int, int]) -> Decoded:
    """Decode an opened image into the model's input (see the module docstring)."""
    from genlab.data.folders import _to_mode  # the data source's conversion, shared on purpose

    h, w = size
    target = "L" if channels == 1 else "RGB"
    converted = []
    im = op.im
    try:  # `with im:` would not free it: Pillow's Image.__exit__ does nothing; close() does
        try:
            im.load()
            frames = getattr(im, "n_frames", 1)
            mode = im.mode
            small, box, note = _shrink(im, channels, size)
            if note:
                converted.append(note)
            out = _to_mode(small, channels)
            if mode != target:
                converted.append(f"mode {mode} -> {target}")
            if frames > 1:
                converted.append(f"first of {frames} frames")
            if out.size != (w, h) or box is not None:
                converted.append(f"resized {out.size[0]}x{out.size[1]} -> {w}x{h} (W x H, bilinear)")
                out = out.resize((w, h), Image.Resampling.BILINEAR, box=box)
            a = np.array(out, dtype=np.uint8)
        except (ServeError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - truncated data, bad chunks, decoder errors
            raise ServeError(400, f"{op.name}: corrupt or truncated {im.format} image "
                                  f"({type(e).__name__}: {e})") from None
    finally:
        im.close()  # the decoded pixels go now, not when the request ends
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    return Decoded(x, op.name, op.original, converted)


def decode_image(up: Upload, channels: int, size: tuple[int, int], max_pixels: int) -> Decoded:
    """One upload -> the model's input: `open_image` then `decode_opened`."""
    return decode_opened(open_image(up, channels, size, max_pixels), channels, size)


def png_base64(rgb: np.ndarray) -> str:
    """(3, H, W) float in [0, 1] -> base64 PNG."""
    img = Image.fromarray((np.clip(rgb, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
