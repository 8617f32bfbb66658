"""Images over HTTP: data URLs and uploads in (checked before decoding), PNG base64 out.

Notable choices:
- Only `data:` URLs are read: the server never fetches a URL a client names (no SSRF, works
  offline).
- The pixel limit is checked on the header (`Image.open` is lazy) before any decoding, so a
  small file that expands into a huge image is refused cheaply.
- Images of another size than the model's are resized to it (box filter when shrinking,
  nearest when enlarging), so a phone photo or a 256x256 render can be asked about; the
  reply is about what the model saw at its own size.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import ImageError, load_image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def decode_data_url(url: str, max_bytes: int) -> bytes:
    if not url.startswith("data:"):
        raise ImageError("image_url: only data URLs are accepted (data:image/png;base64,...); "
                         "this server fetches nothing from the network")
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ImageError("image_url: a data URL must look like data:image/png;base64,<base64>")
    mime = head[5:-7].lower()
    if not mime.startswith("image/"):
        raise ImageError(f"image_url: data URL of type {mime or 'unknown'!r}; "
                         f"an image is expected ({', '.join(f.lower() for f in FORMATS)})")
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageError(f"image_url: the image is over the {max_bytes} byte limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image_url: the data URL's payload is not valid base64") from None


def read_image(data: bytes, size: int, max_pixels: int, allow_gray: bool = False,
               what: str = "image") -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8, or ImageError saying why not."""
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ImageError(f"{what}: not a readable image; accepted formats: "
                         f"{', '.join(FORMATS)}") from None
    with im:
        if im.format not in FORMATS:
            raise ImageError(f"{what}: format {im.format} is not accepted; accepted: "
                             f"{', '.join(FORMATS)}")
        if im.width * im.height > max_pixels:
            raise ImageError(f"{what}: {im.width}x{im.height} pixels is over this server's limit "
                             f"of {max_pixels} pixels")
        try:
            im.seek(0)
            im.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageError(f"{what}: the {im.format} data is damaged ({e})") from None
        rgb = load_image(im, what=what, allow_gray=allow_gray)
    if rgb.shape[:2] != (size, size):
        shrink = rgb.shape[0] * rgb.shape[1] > size * size
        rgb = np.asarray(Image.fromarray(rgb).resize(
            (size, size), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST))
    return rgb


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
