#!/usr/bin/env bash
# Start or stop the production topology on this machine:
#   PostgreSQL (the machine's cluster), a Redis of the stack's own, two daphne
#   processes (each restarted when it dies, as systemd would), and nginx in
#   front on 127.0.0.1:$STACK_PORT with deploy/nginx.conf.
# Usage: deploy/stack.sh start|stop, or `manage ARGS` to run manage.py with the
# stack's settings. `make stack` / `make stack-stop`.
# Everything it writes lives in $STACK_DIR. Settings come from the environment
# like any deployment's; the defaults below suit this machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/var/stack}
STACK_PORT=${STACK_PORT:-8080}
STACK_DAPHNE_PORTS=${STACK_DAPHNE_PORTS:-8001 8002}
STACK_REDIS_PORT=${STACK_REDIS_PORT:-6380}
STACK_DB=${STACK_DB:-chatsite_stack}
BIN=$ROOT/.venv/bin

stack_env() {
  mkdir -p "$STACK_DIR"
  [ -s "$STACK_DIR/secret.key" ] || "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$STACK_DIR/secret.key"
  export DEBUG=0
  export SECRET_KEY; SECRET_KEY=$(cat "$STACK_DIR/secret.key")
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$STACK_DB}
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:$STACK_REDIS_PORT/0}
  export ALLOWED_HOSTS=${ALLOWED_HOSTS:-127.0.0.1,localhost}
  export CSRF_TRUSTED_ORIGINS=${CSRF_TRUSTED_ORIGINS:-http://127.0.0.1:$STACK_PORT,http://localhost:$STACK_PORT}
  export STATIC_ROOT=$STACK_DIR/static
  # The processes share the cores: each gets its part (docs/deploy.md).
  local processes; processes=$(echo $STACK_DAPHNE_PORTS | wc -w)
  export GENERATION_TORCH_THREADS=${GENERATION_TORCH_THREADS:-$(( $(nproc) / processes > 0 ? $(nproc) / processes : 1 ))}
}

start_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  if [ -z "$(psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$STACK_DB'")" ]; then
    createdb -h 127.0.0.1 -U postgres "$STACK_DB"
  fi
}

start_daphne() { # $1: index, $2: port. A loop restarts daphne when it dies.
  local index=$1 port=$2
  GENERATION_WORKER_NAME=daphne-$index nohup bash -c '
    while [ ! -e "$0/stopping" ]; do
      "$1/daphne" --proxy-headers --ping-interval 5 --ping-timeout 5 -b 127.0.0.1 -p "$2" --access-log "$0/daphne-$3.access.log" \
        chatsite.asgi:application >>"$0/daphne-$3.log" 2>&1 &
      echo $! >"$0/daphne-$3.pid"
      wait $! || true
      sleep 1
    done' "$STACK_DIR" "$BIN" "$port" "$index" >/dev/null 2>&1 &
  echo $! >"$STACK_DIR/supervisor-$index.pid"
}

write_nginx_conf() {
  local upstreams="" port
  for port in $STACK_DAPHNE_PORTS; do
    upstreams+="    server 127.0.0.1:$port max_fails=1 fail_timeout=5s;\n"
  done
  # The site file as deployed, with this machine's listen address, ports and paths.
  sed -e "s|listen 80;|listen 127.0.0.1:$STACK_PORT;|" \
      -e "s|server_name chat.example.com;|server_name 127.0.0.1 localhost;|" \
      -e "s|/srv/chatsite/staticfiles/|$STATIC_ROOT/|" \
      -e "/server 127.0.0.1:800[0-9]/d" \
      -e "s|^upstream \(chatsite[a-z_]*\) {|upstream \1 {\n$upstreams|" \
      "$ROOT/deploy/nginx.conf" >"$STACK_DIR/site.conf"
  # Workers run as whoever runs the stack, so they can read $STACK_DIR
  # wherever it lives (a production nginx keeps its distribution's user).
  cat >"$STACK_DIR/nginx.conf" <<CONF
user $(id -un);
worker_processes 1;
pid $STACK_DIR/nginx.pid;
error_log $STACK_DIR/nginx-error.log;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    access_log $STACK_DIR/nginx-access.log;
    client_body_temp_path $STACK_DIR/nginx-tmp/body;
    proxy_temp_path $STACK_DIR/nginx-tmp/proxy;
    include $STACK_DIR/site.conf;
}
CONF
  mkdir -p "$STACK_DIR/nginx-tmp"
}

wait_ready() {
  local port
  for port in $STACK_DAPHNE_PORTS; do
    for _ in $(seq 300); do
      curl -sf -o /dev/null "http://127.0.0.1:$port/accounts/login/" && break
      sleep 0.2
    done
  done
  curl -sf -o /dev/null "http://127.0.0.1:$STACK_PORT/accounts/login/"
}

refuse_busy_ports() {
  local port
  for port in $STACK_PORT $STACK_DAPHNE_PORTS $STACK_REDIS_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is in use: is a stack already running? ($0 stop)" >&2
      exit 1
    fi
  done
}

start() {
  stack_env
  refuse_busy_ports
  # Before anything starts: with GENERATION_BACKEND=openai, an engine that does
  # not answer stops the start here, naming GENERATION_OPENAI_BASE_URL.
  "$BIN/python" "$ROOT/manage.py" check --deploy --tag engine
  rm -f "$STACK_DIR/stopping"
  start_postgres
  redis-server --daemonize yes --bind 127.0.0.1 --port "$STACK_REDIS_PORT" --save "" --appendonly no \
    --dir "$STACK_DIR" --pidfile "$STACK_DIR/redis.pid" --logfile "$STACK_DIR/redis.log"
  "$BIN/python" "$ROOT/manage.py" migrate --noinput -v 0
  "$BIN/python" "$ROOT/manage.py" collectstatic --noinput -v 0
  local index=1 port
  for port in $STACK_DAPHNE_PORTS; do
    (cd "$ROOT" && start_daphne "$index" "$port")
    index=$((index + 1))
  done
  write_nginx_conf
  nginx -c "$STACK_DIR/nginx.conf"
  wait_ready
  echo "chatsite stack: http://127.0.0.1:$STACK_PORT/ (logs in $STACK_DIR)"
}

stop() {
  stack_env
  touch "$STACK_DIR/stopping"
  [ -f "$STACK_DIR/nginx.pid" ] && nginx -c "$STACK_DIR/nginx.conf" -s quit 2>/dev/null || true
  local file
  for file in "$STACK_DIR"/supervisor-*.pid "$STACK_DIR"/daphne-*.pid; do
    [ -f "$file" ] && kill "$(cat "$file")" 2>/dev/null || true
    rm -f "$file"
  done
  redis-cli -p "$STACK_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  echo "chatsite stack stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  manage) shift; stack_env; cd "$ROOT" && exec "$BIN/python" manage.py "$@" ;;
  *) echo "usage: $0 start|stop|manage ARGS..." >&2; exit 2 ;;
esac
