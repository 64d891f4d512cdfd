"""Prometheus metrics (prefix `lpr_`), one registry per gateway instance.

A registry per instance rather than the global one, so that several gateways
(tests, bench) can live in one process without colliding.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # Intake
        self.events_received = Counter(
            "lpr_events_received",
            "Reads and camera events received",
            ["camera", "source"],
            registry=r,
        )
        self.events_refused = Counter(
            "lpr_events_refused",
            "Reads refused at intake (outbox full, shutting down)",
            ["camera", "reason"],
            registry=r,
        )
        self.duplicates_suppressed = Counter(
            "lpr_duplicates_suppressed", "Reads suppressed as duplicates", ["camera"], registry=r
        )
        self.parse_errors = Counter(
            "lpr_parse_errors",
            "Camera input that could not be parsed",
            ["source", "kind"],
            registry=r,
        )
        # Outbox
        self.outbox_depth = Gauge("lpr_outbox_events", "Events waiting in the outbox", registry=r)
        self.outbox_bytes = Gauge("lpr_outbox_bytes", "Bytes waiting in the outbox", registry=r)
        # MQTT
        self.events_published = Counter(
            "lpr_events_published",
            "Events whose every message the broker acknowledged",
            ["camera"],
            registry=r,
        )
        self.messages_published = Counter(
            "lpr_mqtt_messages_published", "MQTT messages acknowledged by the broker", registry=r
        )
        self.messages_refused = Counter(
            "lpr_mqtt_messages_refused",
            "Messages the broker refused for good (MQTT 5 PUBACK error), dropped",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "lpr_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_reconnects = Counter(
            "lpr_mqtt_reconnects", "Broker (re)connect attempts", registry=r
        )
        self.publish_latency = Histogram(
            "lpr_publish_latency_seconds",
            "From acceptance into the outbox to the broker's PUBACK of the event",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        # Cameras
        self.camera_connected = Gauge(
            "lpr_camera_connected", "1 while the gateway has a live session", ["camera"], registry=r
        )
        self.camera_reconnects = Counter(
            "lpr_camera_reconnects", "Camera session (re)connect attempts", ["camera"], registry=r
        )
        self.camera_parse_errors = Counter(
            "lpr_camera_parse_errors",
            "Parse errors of a camera session by kind (TCP, RTSP; lpr_parse_errors sums by source)",
            ["camera", "kind"],
            registry=r,
        )
        self.camera_frames = Counter(
            "lpr_camera_frames", "Protocol frames / documents received", ["camera"], registry=r
        )
        self.camera_bytes = Counter(
            "lpr_camera_bytes_received", "Bytes received from a camera", ["camera"], registry=r
        )
        self.camera_auth_failures = Counter(
            "lpr_camera_auth_failures",
            "Logins refused by a camera (config problem)",
            ["camera"],
            registry=r,
        )
        self.http_requests = Counter(
            "lpr_http_requests", "HTTP push requests by reply status", ["status"], registry=r
        )
        self.http_unmatched = Counter(
            "lpr_http_unmatched_requests",
            "Requests on a camera path with match (device, source) that no camera there took",
            ["path"],
            registry=r,
        )
        self.image_fetch_failures = Counter(
            "lpr_image_fetch_failures",
            "Plate pictures that could not be fetched",
            ["camera", "reason"],
            registry=r,
        )
        self.asyncio_tasks = Gauge(
            "lpr_asyncio_tasks",
            "asyncio tasks alive in the gateway (at scrape time): a leak shows as growth",
            registry=r,
        )
        self.bytes_skipped = Counter(
            "lpr_camera_bytes_skipped",
            "Garbage bytes skipped while resynchronising",
            ["camera"],
            registry=r,
        )
        self.known_plate_matches = Counter(
            "lpr_known_plate_matches",
            "Reads matched to a known_plates entry, by match kind (exact, fuzzy)",
            ["camera", "match"],
            registry=r,
        )
        self.history_dropped = Counter(
            "lpr_history_dropped",
            "Reads left out of the history because its writer fell behind (published all the same)",
            registry=r,
        )
        self.images_over_broker_limit = Counter(
            "lpr_images_over_broker_limit",
            "Pictures over mqtt.max_payload_bytes, published as missing (the event says why)",
            ["camera", "image"],
            registry=r,
        )
        self.image_transform_failures = Counter(
            "lpr_image_transform_failures",
            "Scene images that could not be re-encoded (published as received)",
            ["camera"],
            registry=r,
        )
        self.http_connections_open = Gauge(
            "lpr_http_connections_open", "Open connections to the HTTP push receiver", registry=r
        )
        self.http_connections_closed = Counter(
            "lpr_http_connections_closed",
            "HTTP connections the gateway closed on a camera: over a cap (total, per_source), "
            "headers not sent in time (header_timeout), idle keep-alive (idle_timeout)",
            ["reason"],
            registry=r,
        )
        self.outbox_dead_letters = Gauge(
            "lpr_outbox_dead_letters",
            "Events set aside in the outbox's dead-letter table (kept, not published)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "lpr_outbox_dead_lettered",
            "Events moved to the dead-letter table, by reason",
            ["reason"],
            registry=r,
        )
        self.topics_refused = Counter(
            "lpr_topics_refused",
            "Events refused at intake because a topic could not be made valid",
            ["camera"],
            registry=r,
        )
        self.task_restarts = Counter(
            "lpr_task_restarts",
            "Long-lived tasks (publisher, adapters, HTTP server) restarted after a crash",
            ["task"],
            registry=r,
        )
        self.log_lines_suppressed = Counter(
            "lpr_log_lines_suppressed",
            "Repeated camera complaints not written to the log (rate limit)",
            registry=r,
        )
        self.bridge_requests = Counter(
            "lpr_bridge_requests",
            "Requests on <base>/bridge/request/<path> by request (unknown for a path that is "
            "none) and status (ok, error)",
            ["request", "status"],
            registry=r,
        )
        self.event_pictures_not_retained = Counter(
            "lpr_event_pictures_not_retained",
            "Camera-event pictures published without retain: the camera has more picture"
            " topics than the bound",
            ["camera"],
            registry=r,
        )
        self.retained_republished = Counter(
            "lpr_retained_republished",
            "Retained messages re-sent from the gateway's own copy after a reconnect",
            registry=r,
        )
        # The web page (ui.listen)
        self.ui_watchers = Gauge(
            "lpr_ui_live_watchers",
            "Live pages connected to the web page's event stream",
            registry=r,
        )
        self.ui_live_dropped = Counter(
            "lpr_ui_live_dropped",
            "Live items a slow live page did not get (its queue was full; the oldest went)",
            registry=r,
        )
        self.ui_watchers_dropped = Counter(
            "lpr_ui_live_watchers_dropped",
            "Live pages disconnected because their connection did not take a write in time",
            registry=r,
        )
        self.ui_watchers_refused = Counter(
            "lpr_ui_live_watchers_refused",
            "Live pages refused because too many were connected",
            registry=r,
        )
        self.ui_logins_refused = Counter(
            "lpr_ui_logins_refused",
            "Web page requests with a wrong login (past 10 a minute from one address: 429)",
            registry=r,
        )
        self.ui_csrf_refused = Counter(
            "lpr_ui_csrf_refused",
            "Web page form posts refused: missing or wrong token, another site's origin",
            registry=r,
        )

        # ONVIF scene description (Profile M): one read per tracked object.
        self.scene_tracks = Counter(
            "lpr_scene_tracks",
            "Scene-description objects finished, by how they ended: absent, deleted, "
            "max_age, evicted (the per-camera bound was reached), session_end",
            ["camera", "end"],
            registry=r,
        )
        self.scene_reads_merged = Counter(
            "lpr_scene_reads_merged",
            "Scene-description objects a plate notification of the same vehicle stands for "
            "(published once, as the notification's read)",
            ["camera"],
            registry=r,
        )

    def child(self, metric: _Metric, *values: str) -> _Metric:
        """`metric.labels(*values)`, looked up once: `labels()` validates and
        takes a lock on every call (~2.4 us; a read counts five times on its way).
        For label values from a bounded set only (camera ids, status codes)."""
        key = (id(metric), values)
        try:
            child: _Metric = self._children[key]
        except KeyError:
            child = self._children[key] = metric.labels(*values)
        return child

    def camera_parse_error(self, source: str, camera: str, kind: str) -> None:
        """One parse error of a camera session: by source and by camera."""
        self.parse_errors.labels(source=source, kind=kind).inc()
        self.camera_parse_errors.labels(camera=camera, kind=kind).inc()

    def auth_failures_of(self, camera: str) -> float:
        """How many logins of `camera` were refused so far, in O(1) (the web
        page takes it on every availability change, a login storm included;
        a registry lookup would scan every series). prometheus_client has no
        public getter for one child's value."""
        return float(self.camera_auth_failures.labels(camera=camera)._value.get())

    def camera_known(self, camera: str, source: str) -> None:
        """Create a camera's series at zero so dashboards show it before its first read."""
        self.events_received.labels(camera=camera, source=source)
        self.events_published.labels(camera=camera)
        self.camera_connected.labels(camera=camera).set(0)
        self.camera_reconnects.labels(camera=camera)
