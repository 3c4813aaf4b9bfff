#!/usr/bin/env bash
# ActiveMQ Classic (Debian's `activemq`) for the STOMP queue backend (docs/queues.md, "JMS broker
# over STOMP"): install it if missing, configure the Debian instance `main`, start it and wait
# until 127.0.0.1:61613 answers a STOMP CONNECT. Idempotent: safe to run again at any time.
#
#   bash ci/activemq.sh           install + configure + start (nothing to do when already up)
#   bash ci/activemq.sh stop      stop the broker (its KahaDB store keeps persistent messages)
#   bash ci/activemq.sh restart   stop, then start (tests/queue/test_stomp.py restarts it so)
#
# There is no systemd here: Debian's SysV script (`service activemq start`) starts every instance
# linked into /etc/activemq/instances-enabled, as the `activemq` user, in the background.
set -euo pipefail

INSTANCE=main
AVAILABLE=/etc/activemq/instances-available/$INSTANCE
ENABLED=/etc/activemq/instances-enabled/$INSTANCE
BASE=/var/lib/activemq/$INSTANCE             # the instance's ACTIVEMQ_BASE (data, extra jars)
PIDFILE=/var/run/activemq/$INSTANCE.pid
HOST=127.0.0.1
STOMP_PORT=61613
STOMP_TLS_PORT=61614
# a self-signed certificate for 127.0.0.1, so the tests can check stomp+ssl:// (verified against
# broker-cert.pem); a real deployment uses its own keystore
KEYSTORE=$AVAILABLE/broker.p12
CERTIFICATE=$AVAILABLE/broker-cert.pem
KEYSTORE_PASSWORD=fieldsync-test-broker
START_TIMEOUT=${ACTIVEMQ_START_TIMEOUT:-120} # seconds; the JVM starts in ~5 s on 2 idle cores
MARKER="fieldsync broker configuration v4"   # bump when the configuration below changes
CHANGED=0

log() { echo "activemq.sh: $*" >&2; }

# 0 when the broker answers CONNECT with CONNECTED on the STOMP port
stomp_ready() {
  python3 - "$HOST" "$STOMP_PORT" <<'PY'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        s.settimeout(3)
        s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        reply = s.recv(4096)
        s.sendall(b"DISCONNECT\n\n\0")
    sys.exit(0 if reply.startswith(b"CONNECTED") else 1)
except OSError:
    sys.exit(1)
PY
}

# activemq, and XStream: the broker converts the statistics plugin's map messages for STOMP
# clients with it (`transformation: jms-map-xml`); Debian's activemq does not ship it
install_packages() {
  local missing=()
  for package in activemq libxstream-java; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Rewrites the instance's activemq.xml from Debian's original (kept as activemq.xml.debian),
# adding:
# - a STOMP transport connector on 127.0.0.1:61613, with TCP_NODELAY: receipts and deliveries
#   are small frames that a client waits for, which Nagle's algorithm would hold back ~40 ms;
# - a dead-letter queue per queue (DLQ.<queue>) instead of the shared ActiveMQ.DLQ, so one
#   queue's dead letters can be browsed and replayed on their own;
# - an unbounded message-group map: the default remembers 1024 groups (devices) and reassigns
#   the ones it forgets, which could give one device's messages to two consumers at once;
# - the statistics plugin (ActiveMQ.Statistics.Destination.<queue> answers depth requests);
# - a STOMP+TLS connector on 127.0.0.1:61614 with the self-signed test certificate.
# Children of <broker> stay in alphabetical order, as ActiveMQ's schema wants.
configure_instance() {
  local xml=$AVAILABLE/activemq.xml
  [ -f "$xml" ] || { log "no $xml: is Debian's activemq installed?"; exit 1; }
  if ! grep -q "$MARKER" "$xml"; then
    log "configuring $xml"
    grep -q "fieldsync broker configuration" "$xml" || cp "$xml" "$xml.debian"
    python3 - "$xml.debian" "$xml" "$MARKER" "$HOST" "$STOMP_PORT" "$STOMP_TLS_PORT" "$KEYSTORE" "$KEYSTORE_PASSWORD" <<'PY'
import sys
source, target, marker, host, port, tls_port, keystore, password = sys.argv[1:]
text = open(source, encoding="utf-8").read()

def insert_before(anchor: str, block: str) -> None:
    global text
    if text.count(anchor) != 1:
        sys.exit(f"activemq.sh: cannot find {anchor!r} exactly once in {source}")
    text = text.replace(anchor, block + anchor)

insert_before("        <persistenceAdapter>", f"""        <!-- {marker}, written by fieldsync's ci/activemq.sh -->
        <destinationPolicy>
            <policyMap>
                <policyEntries>
                    <policyEntry queue=">">
                        <deadLetterStrategy>
                            <individualDeadLetterStrategy queuePrefix="DLQ." useQueueForQueueMessages="true"/>
                        </deadLetterStrategy>
                        <messageGroupMapFactory>
                            <simpleMessageGroupMapFactory/>
                        </messageGroupMapFactory>
                    </policyEntry>
                </policyEntries>
            </policyMap>
        </destinationPolicy>

""")
insert_before("        <transportConnectors>", f"""        <plugins>
            <statisticsBrokerPlugin/>
        </plugins>

        <sslContext>
            <sslContext keyStore="file:{keystore}" keyStoreType="PKCS12" keyStorePassword="{password}"/>
        </sslContext>

""")
insert_before("        </transportConnectors>",
              f'            <transportConnector name="stomp" uri="stomp://{host}:{port}?transport.tcpNoDelay=true"/>\n'
              f'            <transportConnector name="stomp+ssl" uri="stomp+ssl://{host}:{tls_port}?transport.tcpNoDelay=true"/>\n')
open(target, "w", encoding="utf-8").write(text)
PY
    CHANGED=1
  fi
  # Debian's options send the broker's console to /dev/null and it has no log4j configuration:
  # keep the console and INFO logs in data/console.log, so a failed start can be diagnosed (an
  # instance's options file replaces the global one, which it sources)
  if ! grep -qs "$MARKER" "$AVAILABLE/options"; then
    cat > "$AVAILABLE/options" <<OPTIONS
# $MARKER (ci/activemq.sh): Debian's defaults, with the console kept in a file
. /usr/share/activemq/activemq-options
ACTIVEMQ_OUT="\$ACTIVEMQ_BASE/data/console.log"
OPTIONS
    cat > "$AVAILABLE/log4j.properties" <<'LOG4J'
log4j.rootLogger=INFO, console
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
LOG4J
    CHANGED=1
  fi
  if [ ! -f "$KEYSTORE" ] || [ ! -f "$CERTIFICATE" ]; then
    log "making a self-signed certificate for $HOST"
    rm -f "$KEYSTORE" "$CERTIFICATE"
    keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -dname "CN=$HOST" \
      -ext "SAN=ip:$HOST,dns:localhost" -storetype PKCS12 -keystore "$KEYSTORE" \
      -storepass "$KEYSTORE_PASSWORD" -keypass "$KEYSTORE_PASSWORD" >/dev/null 2>&1
    keytool -exportcert -rfc -alias broker -keystore "$KEYSTORE" -storepass "$KEYSTORE_PASSWORD" \
      -file "$CERTIFICATE" >/dev/null 2>&1
    chown root:activemq "$KEYSTORE" && chmod 640 "$KEYSTORE" && chmod 644 "$CERTIFICATE"
    CHANGED=1
  fi
  ln -sfn "$AVAILABLE" "$ENABLED"
  # the instance's data (KahaDB) must belong to the broker's user; lib/ is on its class path
  install -d -o activemq -g activemq "$BASE" "$BASE/data" "$BASE/lib" /var/run/activemq
  ln -sfn /usr/share/java/xstream.jar "$BASE/lib/xstream.jar"
}

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_broker() {
  if ((CHANGED)) && running_pid >/dev/null; then
    log "the configuration changed: restarting"
    stop_broker
  fi
  if stomp_ready; then
    return
  fi
  if ! running_pid >/dev/null; then
    log "starting ActiveMQ instance $INSTANCE"
    service activemq start >/dev/null
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until stomp_ready; do
    if ((SECONDS >= deadline)) || ! running_pid >/dev/null; then
      log "ActiveMQ does not accept STOMP on $HOST:$STOMP_PORT; the end of $BASE/data/console.log:"
      tail -n 40 "$BASE/data/console.log" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
  log "ActiveMQ accepts STOMP on $HOST:$STOMP_PORT"
}

stop_broker() {
  local pid
  pid=$(running_pid) || { rm -f "$PIDFILE"; return 0; }
  log "stopping ActiveMQ (pid $pid)"
  # SIGTERM runs the broker's shutdown hook, which closes KahaDB cleanly
  kill -TERM "$pid"
  for _ in $(seq 240); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "ActiveMQ (pid $pid) ignored SIGTERM for 60 s; killing it"
    kill -KILL "$pid"
  fi
  rm -f "$PIDFILE"
}

case "${1:-start}" in
  start) install_packages; configure_instance; start_broker ;;
  stop) stop_broker ;;
  restart) install_packages; configure_instance; stop_broker; start_broker ;;
  *) echo "usage: $0 [start|stop|restart]" >&2; exit 2 ;;
esac
