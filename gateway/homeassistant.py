"""Home Assistant MQTT discovery: one HA device per camera, behind the gateway's own device.

Per camera (`<prefix>/<component>/<node_id>/<camera>_<entity>/config`, retained):

- `event` "Read": fires on every read, also when the same plate is read twice
  in a row (a sensor whose state does not change fires nothing). Its state
  topic is `<base>/<camera>/ha_event`, one small JSON per read with
  `event_type` (`plate_read`, `known_plate`, `unknown_plate`) and the read's
  main fields as event attributes; the pipeline renders it into the outbox
  with the read's other messages, after them.
- `sensor` "Plate": the last plate, `force_update`, the event JSON (never image
  bytes: the event JSON has none) as attributes from `<base>/<camera>/last`.
- `image` "Plate image" and "Scene image" on the retained image topics, and
  "Evidence image 0/1" once the camera has sent such a picture (most cameras
  have no evidence cameras linked: an entity that never gets a picture is
  clutter). Which cameras sent which is kept in the state file below, so the
  entities survive a restart without waiting for the next evidence picture.
- `binary_sensor` "Connection" (connectivity) on the camera availability topic.

The gateway's device carries a connectivity binary sensor on the bridge state.
Camera entities are available when the bridge is online AND the camera is
(`availability_mode: all`); the two connectivity sensors only follow the
bridge, or they could never show "disconnected".

Discovery is published on every connect and again when Home Assistant says
`online` on `<prefix>/status` (its birth message, e.g. after a restart).
The camera ids announced last time are kept in a small JSON file beside the
outbox; a camera no longer in the config gets empty retained configs, which
removes its entities and device from Home Assistant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gateway import __version__
from gateway.config import DEFAULT_CLIENT_ID, AnyCameraConfig, Config, SceneMode
from gateway.event import ImageKind, PlateEvent
from gateway.topics import Topics

log = logging.getLogger(__name__)

ORIGIN_NAME = "lpr-gateway"
SUPPORT_URL = "https://github.com/lpr-gateway/lpr-gateway"
MANUFACTURER = "Milesight"
EVENT_TYPES = ("plate_read", "known_plate", "unknown_plate")
# Home Assistant asks every discovering client at once when it comes online:
# wait a moment so that its MQTT subscriptions are in place (HA's own advice).
BIRTH_REPUBLISH_DELAY_SECONDS = 1.0
STATE_FILE_SUFFIX = ".homeassistant.json"

# Entities of a camera: (component, key). The key makes the object id and the
# unique id; changing one orphans the entity in users' Home Assistant.
CAMERA_ENTITIES: tuple[tuple[str, str], ...] = (
    ("event", "read"),
    ("sensor", "plate"),
    ("image", "plate_image"),
    ("image", "scene_image"),
    ("binary_sensor", "connection"),
)
BRIDGE_ENTITIES: tuple[tuple[str, str], ...] = (("binary_sensor", "bridge"),)
# Announced per camera only once it has sent such a picture (`evidence` in the state file).
EVIDENCE_KINDS: tuple[ImageKind, ...] = (ImageKind.EVIDENCE0, ImageKind.EVIDENCE1)
EVIDENCE_ENTITIES: tuple[tuple[str, str], ...] = tuple(
    ("image", f"{kind.value}_image") for kind in EVIDENCE_KINDS
)


def ha_event_type(event: PlateEvent, known_plates_configured: bool) -> str:
    """`known_plate` for a known read; `unknown_plate` when there is a table it
    missed; `plate_read` when no known plates are configured at all."""
    if event.known is not None:
        return "known_plate"
    return "unknown_plate" if known_plates_configured else "plate_read"


def ha_event_payload(event: PlateEvent, event_type: str) -> dict[str, Any]:
    """The event entity's payload: `event_type` and a few fields as attributes."""
    return {
        "event_type": event_type,
        "id": event.id,
        "camera": event.camera,
        "plate": event.plate,
        "plate_normalized": event.plate_normalized,
        "known": event.known,
        "match": event.match,
        "list": event.list.value if event.list else None,
        "direction": event.direction.value,
        "confidence": event.confidence,
    }


class StatePublisher(Protocol):
    """What discovery needs of the MQTT side: `gateway.mqtt.state.BridgeState`."""

    def publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None: ...

    def on_connected(self, hook: Callable[[], None]) -> None: ...

    def subscribe(self, topic: str, handler: Callable[[str, bytes, bool], None]) -> None: ...


def default_node_id(config: Config) -> str:
    # A derived client id names the host: the node id (in every unique id)
    # stays what it always was without one, so entities survive an upgrade.
    client_id = DEFAULT_CLIENT_ID if config.mqtt.client_id_derived else config.mqtt.client_id
    node = config.homeassistant.node_id or client_id
    return re.sub(r"[^a-zA-Z0-9_-]", "_", node) or "lpr-gateway"


def state_file_path(config: Config) -> Path:
    outbox = config.outbox.path
    return outbox.with_name(outbox.name + STATE_FILE_SUFFIX)


class Discovery:
    """Builds and publishes the discovery configs; removes dropped cameras."""

    def __init__(self, config: Config, publisher: StatePublisher) -> None:
        self.config = config
        self.publisher = publisher
        self.prefix = config.homeassistant.discovery_prefix
        self.topics = Topics(config.mqtt.base_topic)
        self.node_id = default_node_id(config)
        self.state_file = state_file_path(config)
        self.device_ids: dict[str, str] = {}
        # camera id → the evidence pictures (ImageKind values) it has sent
        self.evidence: dict[str, set[str]] = {}
        self._previous_cameras: list[str] = []
        self._birth_task: asyncio.Task[None] | None = None
        self.published_count = 0  # whole discovery rounds sent (tests, logs)
        self._load_state()

    # -- wiring ----------------------------------------------------------------

    def attach(self) -> None:
        self.publisher.on_connected(self.publish_all)
        self.publisher.subscribe(f"{self.prefix}/status", self._on_status)

    def _on_status(self, _topic: str, payload: bytes, retain: bool) -> None:
        if payload.strip().lower() != b"online":
            return
        if retain:
            # A retained birth arrives right after our own connect, when
            # discovery has just been sent: nothing new to say.
            return
        log.info("Home Assistant is online: republishing discovery")
        if self._birth_task is not None and not self._birth_task.done():
            return
        self._birth_task = asyncio.get_running_loop().create_task(self._republish_later())

    async def _republish_later(self) -> None:
        await asyncio.sleep(BIRTH_REPUBLISH_DELAY_SECONDS)
        self.publish_all()

    def close(self) -> None:
        if self._birth_task is not None:
            self._birth_task.cancel()

    def note_event(self, event: PlateEvent) -> None:
        """Learn the camera's own device id and which evidence pictures it sends from
        its reads; re-announce the camera when either is new."""
        new_device = bool(event.device_id) and self.device_ids.get(event.camera) != event.device_id
        sent = self.evidence.get(event.camera, set())
        new_evidence = {
            kind.value
            for kind in EVIDENCE_KINDS
            if (image := event.image(kind)) is not None
            and image.data is not None
            and kind.value not in sent
        }
        if not new_device and not new_evidence:
            return
        camera = next((c for c in self.config.cameras if c.id == event.camera), None)
        if camera is None:
            return
        if new_device and event.device_id:
            self.device_ids[event.camera] = event.device_id
            log.info(
                "camera %s: device id %s learned; updating discovery", camera.id, event.device_id
            )
        if new_evidence:
            self.evidence[event.camera] = sent | new_evidence
            log.info(
                "camera %s: first %s picture(s); announcing their image entities",
                camera.id,
                ", ".join(sorted(new_evidence)),
            )
        self._save_state()
        for topic, payload in self.camera_configs(camera).items():
            self.publisher.publish_state(topic, payload)

    # -- publishing --------------------------------------------------------------

    def publish_all(self) -> None:
        """Every config (retained), then removal of the cameras dropped from the config."""
        configs = self.bridge_configs()
        for camera in self.config.cameras:
            configs.update(self.camera_configs(camera))
        for topic, payload in configs.items():
            self.publisher.publish_state(topic, payload)
        current = [c.id for c in self.config.cameras]
        for camera_id in self._previous_cameras:
            if camera_id in current:
                continue
            log.info(
                "camera %s is no longer configured: removing its Home Assistant entities", camera_id
            )
            for component, key in CAMERA_ENTITIES + EVIDENCE_ENTITIES:
                self.publisher.publish_state(self.config_topic(component, camera_id, key), b"")
            self.evidence.pop(camera_id, None)
        self._previous_cameras = current
        self._save_state()
        self.published_count += 1

    def config_topic(self, component: str, camera: str | None, key: str) -> str:
        object_id = f"{camera}_{key}" if camera else key
        return f"{self.prefix}/{component}/{self.node_id}/{object_id}/config"

    def bridge_device(self) -> dict[str, Any]:
        return {
            "identifiers": [self.node_id],
            "name": "LPR gateway"
            if self.node_id == "lpr-gateway"
            else f"LPR gateway {self.node_id}",
            "manufacturer": ORIGIN_NAME,
            "model": "LPR to MQTT gateway",
            "sw_version": __version__,
        }

    def camera_device(self, camera: AnyCameraConfig) -> dict[str, Any]:
        device: dict[str, Any] = {
            "identifiers": [f"{self.node_id}_{camera.id}"],
            "name": camera.name,
            "manufacturer": MANUFACTURER,
            "model": f"LPR camera ({camera.protocol.value})",
            "via_device": self.node_id,
        }
        device_id = self.device_ids.get(camera.id)
        if device_id:
            device["serial_number"] = device_id
        return device

    def _common(self, component: str, camera: str | None, key: str, name: str) -> dict[str, Any]:
        slug = f"{self.node_id}_{camera}_{key}" if camera else f"{self.node_id}_{key}"
        object_id = re.sub(r"[^a-z0-9_]", "_", slug.lower())
        return {
            "name": name,
            "unique_id": slug,
            "object_id": object_id,  # Home Assistant before 2025.10
            "default_entity_id": f"{component}.{object_id}",  # 2025.10 and later
            "origin": {"name": ORIGIN_NAME, "sw_version": __version__, "support_url": SUPPORT_URL},
        }

    def _camera_availability(self, camera: str) -> dict[str, Any]:
        return {
            "availability": [
                {"topic": self.topics.state},
                {"topic": self.topics.availability(camera)},
            ],
            "availability_mode": "all",
        }

    def bridge_configs(self) -> dict[str, bytes]:
        document = {
            **self._common("binary_sensor", None, "bridge", "Bridge"),
            "device": self.bridge_device(),
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": self.topics.state,
            "payload_on": "online",
            "payload_off": "offline",
        }
        return {self.config_topic("binary_sensor", None, "bridge"): _dumps(document)}

    def camera_configs(self, camera: AnyCameraConfig) -> dict[str, bytes]:
        """The retained config payload per discovery topic for one camera."""
        cam = camera.id
        device = self.camera_device(camera)
        available = self._camera_availability(cam)
        last = self.topics.last(cam)
        documents: dict[tuple[str, str], dict[str, Any] | None] = {
            ("event", "read"): {
                **self._common("event", cam, "read", "Read"),
                **available,
                "device": device,
                "state_topic": self.topics.ha_event(cam),
                "event_types": list(EVENT_TYPES),
                "icon": "mdi:car-connected",
            },
            ("sensor", "plate"): {
                **self._common("sensor", cam, "plate", "Plate"),
                **available,
                "device": device,
                "state_topic": last,
                "value_template": "{{ value_json.plate }}",
                "json_attributes_topic": last,
                "force_update": True,
                "icon": "mdi:card-text-outline",
            },
            ("image", "plate_image"): {
                **self._common("image", cam, "plate_image", "Plate image"),
                **available,
                "device": device,
                "image_topic": self.topics.image(cam, ImageKind.PLATE),
                "content_type": "image/jpeg",
            },
            ("image", "scene_image"): (
                None
                if camera.images.scene is SceneMode.SKIP
                else {
                    **self._common("image", cam, "scene_image", "Scene image"),
                    **available,
                    "device": device,
                    "image_topic": self.topics.image(cam, ImageKind.SCENE),
                    "content_type": "image/jpeg",
                }
            ),
            ("binary_sensor", "connection"): {
                **self._common("binary_sensor", cam, "connection", "Connection"),
                "availability": [{"topic": self.topics.state}],
                "device": device,
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": self.topics.availability(cam),
                "payload_on": "online",
                "payload_off": "offline",
            },
        }
        for kind in EVIDENCE_KINDS:
            if kind.value in self.evidence.get(cam, ()):
                number = kind.value.removeprefix("evidence")
                key = f"{kind.value}_image"
                documents[("image", key)] = {
                    **self._common("image", cam, key, f"Evidence image {number}"),
                    **available,
                    "device": device,
                    "image_topic": self.topics.image(cam, kind),
                    "content_type": "image/jpeg",
                }
        return {
            self.config_topic(component, cam, key): b"" if doc is None else _dumps(doc)
            for (component, key), doc in documents.items()
        }

    # -- the state file ------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            document = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); starting without it", self.state_file, exc)
            return
        if not isinstance(document, dict):
            return
        cameras = document.get("cameras")
        if isinstance(cameras, list):
            self._previous_cameras = [c for c in cameras if isinstance(c, str)]
        device_ids = document.get("device_ids")
        if isinstance(device_ids, dict):
            self.device_ids = {
                str(k): str(v) for k, v in device_ids.items() if isinstance(v, str) and v
            }
        evidence = document.get("evidence")
        if isinstance(evidence, dict):
            known = {kind.value for kind in EVIDENCE_KINDS}
            self.evidence = {
                str(k): {x for x in v if x in known}
                for k, v in evidence.items()
                if isinstance(v, list)
            }

    def _save_state(self) -> None:
        document = {
            "cameras": self._previous_cameras,
            "device_ids": self.device_ids,
            "evidence": {camera: sorted(kinds) for camera, kinds in self.evidence.items()},
        }
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
            os.replace(temporary, self.state_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
