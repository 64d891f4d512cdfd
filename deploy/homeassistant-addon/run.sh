#!/usr/bin/with-contenv bashio
# shellcheck shell=bash
# Add-on entry: the Mosquitto add-on's broker (services API) + the add-on options
# (/data/options.json) → a gateway config, then exec the gateway (it gets SIGTERM).
set -euo pipefail

OPTIONS_FILE="${LPR_ADDON_OPTIONS:-/data/options.json}"
CONFIG_FILE="${LPR_ADDON_CONFIG:-/tmp/lpr-gateway.yaml}"
HELPER="${LPR_ADDON_HELPER:-/usr/local/lib/lpr-gateway/options_to_config.py}"
PYTHON="${LPR_ADDON_PYTHON:-/opt/lpr-gateway/venv/bin/python}"

if ! bashio::services.available "mqtt"; then
    bashio::exit.nok "No MQTT broker: install and start the Mosquitto broker add-on."
fi

# Broker credentials go to the gateway as environment variables, referenced as
# ${LPR_MQTT_PASSWORD} in the generated config: no broker secret is written to disk.
LPR_MQTT_HOST="$(bashio::services mqtt "host")"
LPR_MQTT_PORT="$(bashio::services mqtt "port")"
LPR_MQTT_SSL="$(bashio::services mqtt "ssl")"
LPR_MQTT_USERNAME="$(bashio::services mqtt "username")"
LPR_MQTT_PASSWORD="$(bashio::services mqtt "password")"
export LPR_MQTT_HOST LPR_MQTT_PORT LPR_MQTT_SSL LPR_MQTT_USERNAME LPR_MQTT_PASSWORD

bashio::log.info "MQTT broker: ${LPR_MQTT_HOST}:${LPR_MQTT_PORT} (ssl: ${LPR_MQTT_SSL}) as ${LPR_MQTT_USERNAME}"

umask 077   # the generated config holds the camera passwords of the options
"${PYTHON}" "${HELPER}" "${OPTIONS_FILE}" "${CONFIG_FILE}"

bashio::log.info "Starting lpr-gateway with ${CONFIG_FILE}"
exec lpr-gateway run -c "${CONFIG_FILE}"
