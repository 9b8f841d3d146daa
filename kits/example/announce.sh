#!/bin/sh
# Instance daemon of the example kit. aegisd runs one per instance of the kit, in the
# instance's config directory (~/.aegis/kits/HANDLE), and sends SIGHUP when a file there
# changes. It announces where the instance is reachable and reports its config files.
set -u

report() {
    for f in "$AEGIS_KIT_CONFIG_DIR"/*; do
        [ -f "$f" ] || continue
        echo "config $(basename "$f"): $(head -c 200 "$f" | tr '\n' ' ')"
    done
}

trap 'echo "config changed"; report' HUP
trap 'echo "announce: stopping"; exit 0' TERM INT

echo "announce: instance $AEGIS_INSTANCE_HANDLE ($AEGIS_INSTANCE_ID) of kit $AEGIS_KIT $AEGIS_KIT_VERSION"
for port in $(echo "$AEGIS_EXPOSES" | tr ',' ' '); do
    echo "announce: guest port ${port%%:*} is on public port $(echo "${port#*:}" | cut -d/ -f1)"
done
report
# `wait` returns when a signal arrives, so traps run at once rather than after a sleep.
while :; do
    sleep 5 &
    wait $!
done
