"""The MQTT side of the gateway, in three parts that `gateway.publisher.MqttPublisher` composes.

- `link`: one broker connection at a time (paho 2 on the asyncio loop).
- `window`: which outbox rows go out next, and which the broker acknowledged.
- `state`: the bridge's retained state (own copy, availability, bridge info).
"""
