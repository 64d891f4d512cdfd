"""Scene image options: skip it, or re-encode it smaller, for brokers with small limits.

Off by default: the camera's JPEG goes out byte-exact. Re-encoding needs
Pillow (the optional `images` extra); the config check refuses the options
when it is missing, so this module imports it lazily. A JPEG that Pillow
cannot decode, or whose header claims more pixels than `images.max_pixels`
(checked before anything is decoded: a 1.5 MB JPEG can claim 10000x10000 and
cost 480 MiB), is published as it came (logged and counted): a bad image never
costs the read.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import Any

from gateway.config import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT, ImagesConfig, SceneMode
from gateway.errors import ImageTransformError
from gateway.event import AnyEvent, CameraEvent, Image, ImageKind, PlateEvent

log = logging.getLogger(__name__)

# Pillow's own guard, process-wide: it warns above MAX_IMAGE_PIXELS and refuses
# above twice that, for any Pillow use that would skip our check. Our check
# against images.max_pixels (at most this, see config.py) comes first.
PILLOW_MAX_PIXELS = MAX_PIXELS_LIMIT
DEFAULT_QUALITY = 85  # when only max_width is set
SKIPPED_REASON = "not published: images.scene is skip"


def within_payload_limit(event: AnyEvent, limit: int) -> tuple[AnyEvent, list[str]]:
    """The event with every picture over `limit` bytes (the broker's message
    size limit) published as missing instead, and the names of those pictures."""
    reason = f"over the broker's message size limit (mqtt.max_payload_bytes {limit})"
    if isinstance(event, CameraEvent):
        over = [n for n, i in event.images.items() if i.data is not None and len(i.data) > limit]
        if not over:
            return event, []
        images = {
            name: Image.missing(f"{len(image.data or b'')} bytes: {reason}")
            if name in over
            else image
            for name, image in event.images.items()
        }
        return replace(event, images=images), over
    changes: dict[str, Any] = {}  # PlateEvent field → the missing picture
    for kind in ImageKind:
        image = event.image(kind)
        if image is not None and image.data is not None and len(image.data) > limit:
            changes[f"{kind.value}_image"] = Image.missing(f"{len(image.data)} bytes: {reason}")
    if not changes:
        return event, []
    return replace(event, **changes), [name.removesuffix("_image") for name in changes]


def reencode_jpeg(
    data: bytes,
    quality: int | None,
    max_width: int | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> bytes:
    """`data` scaled down to `max_width` (aspect kept) and saved at `quality`.

    Returns the original bytes when re-encoding would not make them smaller
    (an already small image is not worth a generation loss). ImageTransformError
    for anything but a JPEG, and for one whose header claims more than
    `max_pixels`: refused from the header, before a byte of it is decoded.
    """
    from PIL import Image as PilImage

    PilImage.MAX_IMAGE_PIXELS = PILLOW_MAX_PIXELS
    try:
        # Image.open reads the header only; the pixels are decoded by load().
        # JPEG only: no other of Pillow's decoders is exposed to camera bytes.
        with PilImage.open(io.BytesIO(data), formats=["JPEG"]) as source:
            width, height = source.size
            if width * height > max_pixels:
                raise ImageTransformError(
                    f"the scene image claims {width}x{height} = {width * height:,} pixels, "
                    f"more than images.max_pixels ({max_pixels:,}); not decoded"
                )
            if max_width is not None and width > max_width:
                # Let the JPEG decoder scale down by 1/2..1/8 while decoding (no
                # smaller than the target): a fraction of the memory and time.
                source.draft(source.mode, (max_width, max(1, round(height * max_width / width))))
            source.load()
            picture = source.convert("RGB") if source.mode not in ("RGB", "L") else source.copy()
        if max_width is not None and picture.width > max_width:
            height = max(1, round(picture.height * max_width / picture.width))
            picture = picture.resize((max_width, height), PilImage.Resampling.LANCZOS)
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=quality or DEFAULT_QUALITY, optimize=True)
    except ImageTransformError:
        raise
    except Exception as exc:  # Pillow raises many types on bad input; the read must survive
        raise ImageTransformError(f"cannot re-encode the scene image: {exc}") from exc
    encoded = out.getvalue()
    return encoded if len(encoded) < len(data) else data


def apply_image_options(event: PlateEvent, options: ImagesConfig) -> PlateEvent:
    """The event with its scene image as configured (blocking: run off the loop)."""
    scene = event.scene_image
    if scene is None or scene.data is None:
        return event
    if options.scene is SceneMode.SKIP:
        return replace(event, scene_image=Image.missing(SKIPPED_REASON))
    if not options.reencode:
        return event
    data = reencode_jpeg(scene.data, options.quality, options.max_width, options.max_pixels)
    if data is scene.data:
        return event
    return replace(event, scene_image=Image(data=data))
