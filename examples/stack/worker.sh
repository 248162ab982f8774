#!/bin/bash
# The stack example's worker: a process on the host (not a container) that
# counts its rounds in the cache, once a second, over Redis's inline protocol
# with bash's /dev/tcp. Gantry gives it the address of the cache, a service
# it depends on, as GANTRY_CACHE_HOST and GANTRY_CACHE_PORT; while
# it cannot reach it, it says so and tries again.
set -u
trap 'exit 0' TERM INT
while :; do
  if [ -z "${GANTRY_CACHE_HOST:-}" ] || [ -z "${GANTRY_CACHE_PORT:-}" ]; then
    echo "no cache address: GANTRY_CACHE_HOST and GANTRY_CACHE_PORT are not set" >&2
  elif exec 3<>"/dev/tcp/$GANTRY_CACHE_HOST/$GANTRY_CACHE_PORT"; then
    printf 'INCR worker:rounds\r\n' >&3
    if read -r -t 5 reply <&3; then
      reply=${reply%$'\r'}
      echo "round ${reply#:}"
    else
      echo "the cache did not answer" >&2
    fi
    exec 3>&-
  else
    echo "cannot reach the cache at $GANTRY_CACHE_HOST:$GANTRY_CACHE_PORT" >&2
  fi
  sleep 1 &
  wait $!
done
