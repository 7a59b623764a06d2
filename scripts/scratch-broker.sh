#!/usr/bin/env bash
# A second, throw-away RabbitMQ node on 127.0.0.1:5673 (node rabbit2@localhost, data in
# /tmp/rabbit2), for running the broker-restart tests without disturbing the shared broker:
#
#   source scripts/scratch-broker.sh            # starts it (once) and exports RABBITMQ_* for rabbitmqctl
#   AIAPPS_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/ AIAPPS_TEST_RESTART_BROKER=1 \
#     .venv/bin/pytest tests/distributed tests/test_transport_rabbitmq.py
#   rabbitmqctl stop                            # when done (with the exports still set)
#
# Needs Debian's rabbitmq-server; run as root (the server drops to the rabbitmq user).
base=/tmp/rabbit2
export RABBITMQ_NODENAME=rabbit2@localhost RABBITMQ_NODE_PORT=5673 RABBITMQ_DIST_PORT=25673 \
  RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log \
  RABBITMQ_ENABLED_PLUGINS_FILE=$base/plugins RABBITMQ_FEATURE_FLAGS_FILE=$base/feature_flags \
  RABBITMQ_PLUGINS_EXPAND_DIR=$base/plugins-expand RABBITMQ_CONFIG_FILE=$base/rabbitmq
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  mkdir -p "$base/mnesia" "$base/log"
  echo "[]." > "$base/plugins"
  # the system config pins the listener to 5672; this one moves it
  echo "listeners.tcp.local = 127.0.0.1:5673" > "$base/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$base" 2>/dev/null || true
  (cd "$base" && rabbitmq-server -detached)
  for _ in $(seq 1 60); do
    rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 && break
    sleep 1
  done
fi
rabbitmq-diagnostics -q check_port_connectivity
