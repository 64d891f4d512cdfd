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
- `binary_sensor` "Known vehicle present" on `<base>/<camera>/presence`: on at a
  read of a known plate, off `presence_hold_seconds` after the camera's last
  one (the pipeline keeps the time; see `Pipeline` for why not `off_delay`).
- `switch` "Enabled" (with `bridge.requests`): its command is the bridge
  request `camera/switch`, so Home Assistant switches a camera through the
  same code path, queue, metrics and ACL as any other client; its state is
  `<base>/<camera>/enabled` (retained `ON`/`OFF`).
- Device triggers (`device_automation`): "unknown plate read", "black list
  plate read" (the camera reported the plate on its black list) and one
  "known plate read" per known-plates name that applies to the camera (the
  config's and the runtime ones), each on a topic of its own
  (`<base>/<camera>/trigger/...`) that gets one message per read, repeats
  included: Home Assistant fires a device trigger on any message on its topic.

The gateway's device carries a connectivity binary sensor on the bridge
state, a "Republish discovery" button (with `bridge.requests`: the request
`discovery/republish`) and a "<name> last seen" timestamp sensor per
known-plates name, on `<base>/bridge/last_seen/<name slug>`.

Camera entities are available when the bridge is online AND the camera is
(`availability_mode: all`); a disabled camera says `offline`, so they show
unavailable. The two connectivity sensors and the "Enabled" switch only
follow the bridge: the sensors could otherwise never show "disconnected", and
Home Assistant ignores a service call on an unavailable entity, so a switch
that followed its camera could never turn it on again.

Discovery is published on every connect and again when Home Assistant says
`online` on `<prefix>/status` (its birth message, e.g. after a restart).
The camera ids announced last time are kept in a small JSON file beside the
outbox; a camera no longer in the config gets empty retained configs, which
removes its entities and device from Home Assistant. The same goes for the
configs made per known-plates name (triggers, last seen): their topics are
kept there too, and a name removed (from the config, at runtime, or expired)
loses them, at the next start or at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway import __version__
from gateway.config import DEFAULT_CLIENT_ID, AnyCameraConfig, Config, SceneMode
from gateway.event import ImageKind, PlateEvent, format_time
from gateway.topics import Topics, known_name_slug

if TYPE_CHECKING:
    from gateway.adapters.base import CameraSwitches
    from gateway.known_plates import KnownPlatesRegistry
    from gateway.runtime import KnownPlatesChange

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
    ("binary_sensor", "known_vehicle"),
    ("switch", "enabled"),
    ("device_automation", "unknown_plate"),
    ("device_automation", "black_list_plate"),
)
BRIDGE_ENTITIES: tuple[tuple[str, str], ...] = (
    ("binary_sensor", "bridge"),
    ("button", "republish_discovery"),
)
# Device triggers: (type, subtype). Home Assistant tells a device's triggers
# apart by type and subtype (automations name them so since 2024.2): changing
# one breaks the automations that use it.
TRIGGER_KNOWN = "known plate read"  # subtype: the known-plates name
TRIGGER_UNKNOWN = ("unknown plate read", "any unknown plate")
TRIGGER_BLACK_LIST = ("black list plate read", "camera black list")
PRESENCE_ON = "on"
PRESENCE_OFF = "off"
# The bridge request the "Enabled" switch sends (payload_on/payload_off carry the camera).
SWITCH_REQUEST = "camera/switch"
# Bound on the configs made per known-plates name (a trigger per camera and a
# "last seen" each): every one is retained, kept in memory and re-sent on each
# connect, and runtime requests can add names (up to 10,000 entries). Names
# past it (config names first, then runtime ones, each in sorted order) get
# none; the log says which.
MAX_NAME_CONFIGS = 10_000
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


def presence_payload(
    camera: str, state: str, present: PlateEvent | None, at: datetime
) -> dict[str, Any]:
    """ "Known vehicle present": `state` on/off, and the vehicle (the one that
    left, for `off`; none when nothing is known of it, e.g. at start)."""
    return {
        "state": state,
        "camera": camera,
        "plate": present.plate if present is not None else None,
        "known": present.known if present is not None else None,
        "time": format_time(at),
    }


def last_seen_payload(event: PlateEvent) -> dict[str, Any]:
    """A known-plates name's "Last seen": when (the gateway's clock), where, which plate."""
    return {
        "time": format_time(event.received),
        "known": event.known,
        "camera": event.camera,
        "plate": event.plate,
    }


def name_keys(names: Iterable[str]) -> dict[str, str]:
    """name → the key of its entities (object ids, unique ids): its topic slug.

    Two names with one slug (`Staff`, `staff`) would share an entity: the
    later one in sorted order gets a short hash of its own. Their trigger
    topics are the same all the same (the slug): said in the log.
    """
    keys: dict[str, str] = {}
    taken: dict[str, str] = {}
    for name in sorted(names):
        key = known_name_slug(name).replace(".", "_")
        if key in taken:
            log.warning(
                "known-plates names %r and %r share the topic level %r: a read of either "
                "fires both names' Home Assistant triggers; rename one to keep them apart",
                taken[key],
                name,
                key,
            )
            key = f"{key}_{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
        taken[key] = name
        keys[name] = key
    return keys


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

    def __init__(
        self,
        config: Config,
        publisher: StatePublisher,
        known_plates: KnownPlatesRegistry | None = None,
        switches: CameraSwitches | None = None,
    ) -> None:
        self.config = config
        self.publisher = publisher
        # The names the triggers and "Last seen" sensors are made for, and the
        # camera switches the "Enabled" switches show (None: none announced).
        self.known_plates = known_plates
        self.switches = switches
        # The switch and the button send bridge requests: without the API they could do nothing.
        self.controls = config.bridge.requests
        self.prefix = config.homeassistant.discovery_prefix
        self.topics = Topics(config.mqtt.base_topic)
        self.node_id = default_node_id(config)
        self.state_file = state_file_path(config)
        self.device_ids: dict[str, str] = {}
        # camera id → the evidence pictures (ImageKind values) it has sent
        self.evidence: dict[str, set[str]] = {}
        self._previous_cameras: list[str] = []
        # discovery topic → payload of the configs made per known-plates name, as
        # announced last (payloads are empty when read from the state file:
        # only the topics are kept, to remove what is no longer there)
        self._name_configs: dict[str, bytes] = {}
        self._names_left_out = 0  # names past MAX_NAME_CONFIGS, said once per change
        # The names' "last seen" state topics (every name's, within the bound or
        # not: reads publish them): one of a name gone is emptied. Those of names
        # gone while the gateway was stopped are the start's (`retired_topic`).
        self._last_seen_topics = self.last_seen_topics()
        self._birth_task: asyncio.Task[None] | None = None
        self.published_count = 0  # whole discovery rounds sent (tests, logs)
        self._load_state()

    # -- wiring ----------------------------------------------------------------

    def attach(self) -> None:
        self.publisher.on_connected(self.publish_all)
        self.publisher.subscribe(f"{self.prefix}/status", self._on_status)
        if self.switches is not None:
            self.switches.listeners.append(self.camera_switched)

    def camera_switched(self, camera: str, enabled: bool) -> None:
        """A camera switched on or off (by anyone): the "Enabled" switch shows it."""
        self.publisher.publish_state(self.topics.enabled(camera), b"ON" if enabled else b"OFF")

    def known_plates_changed(self, _change: KnownPlatesChange) -> None:
        """A name added, removed or expired at runtime: its entities follow at once."""
        self.sync_names()

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
        """Every config (retained), then removal of the cameras dropped from the config
        and of the names no longer known."""
        configs = self.bridge_configs()
        for camera in self.config.cameras:
            configs.update(self.camera_configs(camera))
        for topic, payload in configs.items():
            self.publisher.publish_state(topic, payload)
        if self.switches is not None:
            for camera in self.config.cameras:
                self.camera_switched(camera.id, not self.switches.is_disabled(camera.id))
        current = [c.id for c in self.config.cameras]
        for camera_id in self._previous_cameras:
            if camera_id in current:
                continue
            log.info(
                "camera %s is no longer configured: removing its Home Assistant entities", camera_id
            )
            for component, key in CAMERA_ENTITIES + EVIDENCE_ENTITIES:
                self.publisher.publish_state(self.config_topic(component, camera_id, key), b"")
            self.publisher.publish_state(self.topics.enabled(camera_id), b"")
            self.evidence.pop(camera_id, None)
        self._previous_cameras = current
        self.sync_names(resend=True)  # saves the state file
        self.published_count += 1

    def sync_names(self, resend: bool = False) -> None:
        """Announce the configs made per known-plates name that are new or changed
        (all of them with `resend`); empty the ones of names gone."""
        configs = self.name_configs()
        for topic, payload in configs.items():
            if resend or self._name_configs.get(topic) != payload:
                self.publisher.publish_state(topic, payload)
        for topic in self._name_configs.keys() - configs.keys():
            log.info("removing Home Assistant discovery %s: its known-plates name is gone", topic)
            self.publisher.publish_state(topic, b"")
        self._name_configs = configs
        last_seen = self.last_seen_topics()
        for topic in sorted(self._last_seen_topics - last_seen):
            self.publisher.publish_state(topic, b"")
        self._last_seen_topics = last_seen
        self._save_state()

    def last_seen_topics(self) -> set[str]:
        if self.known_plates is None:
            return set()
        return {self.topics.last_seen(name) for name in self.known_plates.names}

    def name_cameras(self) -> dict[str, tuple[str, ...]]:
        """Known-plates name → the cameras (in config order) a read at which can be
        known by it: every camera for the config's names and unscoped runtime
        entries, the named ones for scoped entries. Within `MAX_NAME_CONFIGS`
        (one config per camera and one "last seen" per name): config names
        first, then runtime ones, each in sorted order."""
        if self.known_plates is None:
            return {}
        every = tuple(c.id for c in self.config.cameras)
        runtime: dict[str, set[str] | None] = {}
        for entry in self.known_plates.runtime:
            if entry.name in self.known_plates.config_table:
                continue
            scope = runtime.setdefault(entry.name, set())
            if entry.cameras is None or scope is None:
                runtime[entry.name] = None
            else:
                scope.update(entry.cameras)
        ordered: list[tuple[str, tuple[str, ...]]] = [
            (name, every) for name in sorted(self.known_plates.config_table)
        ]
        for name in sorted(runtime):
            scope = runtime[name]
            ordered.append(
                (name, every if scope is None else tuple(c for c in every if c in scope))
            )
        result: dict[str, tuple[str, ...]] = {}
        count = 0
        for index, (name, cameras) in enumerate(ordered):
            count += 1 + len(cameras)
            if count > MAX_NAME_CONFIGS:
                left = len(ordered) - index
                if self._names_left_out != left:
                    log.warning(
                        "Home Assistant: %d known-plates name(s) get no triggers or 'last seen' "
                        "sensor (more than %d configs in all), from %r on",
                        left,
                        MAX_NAME_CONFIGS,
                        name,
                    )
                self._names_left_out = left
                return result
            result[name] = cameras
        self._names_left_out = 0
        return result

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
        bridge_available = {"availability": [{"topic": self.topics.state}]}
        documents: dict[tuple[str, str], dict[str, Any] | None] = {
            ("binary_sensor", "bridge"): {
                **self._common("binary_sensor", None, "bridge", "Bridge"),
                "device": self.bridge_device(),
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": self.topics.state,
                "payload_on": "online",
                "payload_off": "offline",
            },
            ("button", "republish_discovery"): (
                {
                    **self._common("button", None, "republish_discovery", "Republish discovery"),
                    **bridge_available,
                    "device": self.bridge_device(),
                    "entity_category": "config",
                    "icon": "mdi:home-import-outline",
                    "command_topic": self.topics.bridge_request("discovery/republish"),
                    "payload_press": "{}",
                }
                if self.controls
                else None
            ),
        }
        return {
            self.config_topic(component, None, key): b"" if doc is None else _dumps(doc)
            for (component, key), doc in documents.items()
        }

    def name_configs(self) -> dict[str, bytes]:
        """Per known-plates name: its "known plate read" trigger at each camera it
        applies to, and its "Last seen" sensor on the gateway's device."""
        if self.known_plates is None:
            return {}
        name_cameras = self.name_cameras()
        keys = name_keys(name_cameras)
        devices = {c.id: self.camera_device(c) for c in self.config.cameras}
        configs: dict[str, bytes] = {}
        for name, cameras in name_cameras.items():
            key = f"known_{keys[name]}"
            for camera in cameras:
                topic = self.topics.trigger_known(camera, name)
                configs[self.config_topic("device_automation", camera, key)] = _dumps(
                    self._trigger(devices[camera], TRIGGER_KNOWN, name, topic)
                )
        bridge_available = {"availability": [{"topic": self.topics.state}]}
        for name, name_key in sorted(keys.items()):
            key = f"last_seen_{name_key}"
            topic = self.topics.last_seen(name)
            configs[self.config_topic("sensor", None, key)] = _dumps(
                {
                    **self._common("sensor", None, key, f"{name} last seen"),
                    **bridge_available,
                    "device": self.bridge_device(),
                    "device_class": "timestamp",
                    "icon": "mdi:car-clock",
                    "state_topic": topic,
                    "value_template": "{{ value_json.time }}",
                    "json_attributes_topic": topic,
                    "json_attributes_template": (
                        "{{ {'camera': value_json.camera, 'plate': value_json.plate,"
                        " 'known': value_json.known} | tojson }}"
                    ),
                }
            )
        return configs

    def _trigger(
        self, device: dict[str, Any], trigger_type: str, subtype: str, topic: str
    ) -> dict[str, Any]:
        return {
            "automation_type": "trigger",
            "type": trigger_type,
            "subtype": subtype,
            "topic": topic,
            "qos": 1,
            "device": device,
            "origin": {"name": ORIGIN_NAME, "sw_version": __version__, "support_url": SUPPORT_URL},
        }

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
            ("binary_sensor", "known_vehicle"): {
                **self._common("binary_sensor", cam, "known_vehicle", "Known vehicle present"),
                **available,
                "device": device,
                "device_class": "presence",
                "icon": "mdi:car-key",
                "state_topic": self.topics.presence(cam),
                "value_template": "{{ value_json.state }}",
                "payload_on": PRESENCE_ON,
                "payload_off": PRESENCE_OFF,
                "json_attributes_topic": self.topics.presence(cam),
                "json_attributes_template": (
                    "{{ {'plate': value_json.plate, 'known': value_json.known,"
                    " 'since': value_json.time} | tojson }}"
                ),
            },
            # Only the bridge: it must be usable while its camera is off (see above).
            ("switch", "enabled"): (
                {
                    **self._common("switch", cam, "enabled", "Enabled"),
                    "availability": [{"topic": self.topics.state}],
                    "device": device,
                    "entity_category": "config",
                    "icon": "mdi:cctv",
                    "command_topic": self.topics.bridge_request(SWITCH_REQUEST),
                    "payload_on": json.dumps({"id": cam, "enabled": True}),
                    "payload_off": json.dumps({"id": cam, "enabled": False}),
                    "state_topic": self.topics.enabled(cam),
                    "state_on": "ON",
                    "state_off": "OFF",
                }
                if self.controls and self.switches is not None
                else None
            ),
            ("device_automation", "unknown_plate"): self._trigger(
                device, *TRIGGER_UNKNOWN, self.topics.trigger_unknown(cam)
            ),
            ("device_automation", "black_list_plate"): self._trigger(
                device, *TRIGGER_BLACK_LIST, self.topics.trigger_black_list(cam)
            ),
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
        name_topics = document.get("name_topics")
        if isinstance(name_topics, list):
            prefix = f"{self.prefix}/"
            self._name_configs = {
                t: b"" for t in name_topics if isinstance(t, str) and t.startswith(prefix)
            }

    def _save_state(self) -> None:
        document = {
            "cameras": self._previous_cameras,
            "device_ids": self.device_ids,
            "evidence": {camera: sorted(kinds) for camera, kinds in self.evidence.items()},
            "name_topics": sorted(self._name_configs),
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
