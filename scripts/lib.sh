# shellcheck shell=bash
# Shared by scripts/test and scripts/run (sourced, not executed).
#
# payhook_venv: create .venv if missing, and `pip install -e '.[dev]'` whenever pyproject.toml
# (or the interpreter) changed since the last install (stamp in .venv/.payhook-installed).
# payhook_services_up: start or reuse the servers, export their URLs, and register an EXIT trap
# that stops only the servers this invocation started.
# payhook_promtool: install promtool (Debian's prometheus package) when it is not on PATH.
#
# payhook_browser: install Debian's Chromium and ChromeDriver when /usr/bin/chromedriver is
# missing (the console's browser tests, tests/console/test_browser.py, drive them).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO" || exit 1

payhook_venv() {
    local python=${PYTHON:-python3} stamp=.venv/.payhook-installed want
    if [[ ! -x .venv/bin/python ]]; then
        if ! "$python" -c 'import ensurepip' 2>/dev/null; then
            # Debian ships venv's pip bootstrap separately.
            local sudo=()
            [[ $EUID -eq 0 ]] || sudo=(sudo)
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 \
                install -y -q python3-venv
        fi
        echo "scripts: creating .venv with $("$python" --version)" >&2
        "$python" -m venv .venv
    fi
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python --version)"
    if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        echo "scripts: installing payhook and its dev dependencies into .venv" >&2
        local t0=$SECONDS
        .venv/bin/python -m pip install -q -e '.[dev]'
        printf '%s' "$want" >"$stamp"
        echo "scripts: installed in $((SECONDS - t0))s" >&2
    fi
    export PATH="$REPO/.venv/bin:$PATH"
    export VIRTUAL_ENV="$REPO/.venv"
}

payhook_browser() {
    [[ -x /usr/bin/chromedriver && -x /usr/bin/chromium ]] && return 0
    local sudo=() t0=$SECONDS
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    echo "scripts: installing chromium and chromium-driver (apt-get) for the browser tests" >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q chromium chromium-driver >&2
    echo "scripts: installed chromium in $((SECONDS - t0))s" >&2
}

PAYHOOK_STARTED_FILE=
payhook_stop_started() {
    local status=$?
    if [[ -n $PAYHOOK_STARTED_FILE ]]; then
        if [[ -s $PAYHOOK_STARTED_FILE ]]; then
            # shellcheck disable=SC2046
            "$REPO/scripts/services.sh" stop $(sort -u "$PAYHOOK_STARTED_FILE") || true
        fi
        rm -f "$PAYHOOK_STARTED_FILE"
    fi
    return "$status"
}

payhook_services_up() {
    PAYHOOK_STARTED_FILE=$(mktemp "${TMPDIR:-/tmp}/payhook-started.XXXXXX")
    trap payhook_stop_started EXIT
    # Turn Ctrl-C / SIGTERM into a normal exit so the EXIT trap runs once, after the child.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    "$REPO/scripts/services.sh" start --record "$PAYHOOK_STARTED_FILE"
    local preset=${PAYHOOK_TEST_BROKER_CONTROL-}
    eval "$("$REPO/scripts/services.sh" env)"
    # An explicit PAYHOOK_TEST_BROKER_CONTROL from the caller wins (0 disables restart tests).
    [[ -z $preset ]] || export PAYHOOK_TEST_BROKER_CONTROL=$preset
    if [[ ${PAYHOOK_TEST_BROKER_CONTROL:-} == 1 ]]; then
        echo "scripts: the broker is ours; tests may restart it (PAYHOOK_TEST_BROKER_CONTROL=1)" >&2
    fi
}

# promtool checks and unit-tests deploy/prometheus/ (tests/deploy/test_prometheus.py). Debian
# ships it only in the prometheus package, whose postinst also starts the Prometheus server
# (invoke-rc.d on a machine without systemd, deb-systemd-invoke with it; only a policy-rc.d
# that says no, as in Docker images, prevents that), listening on *:9090 with a default
# config. A test machine needs the binary only, so that server is stopped again and kept from
# starting at boot; one that was already running before the install is left alone.
# --no-install-recommends: the recommended prometheus-node-exporter would start a daemon too.
_payhook_prometheus_running() { # a live process named prometheus (/proc: procps may be missing)
    local dir name key value
    for dir in /proc/[0-9]*; do
        read -r name 2>/dev/null <"$dir/comm" && [[ $name == prometheus ]] || continue
        while read -r key value _; do
            [[ $key == State: ]] && { [[ $value == Z ]] || return 0; break; }
        done 2>/dev/null <"$dir/status"
    done
    return 1
}
payhook_promtool() {
    command -v promtool >/dev/null && return 0
    local sudo=() t0=$SECONDS was_running=
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    _payhook_prometheus_running && was_running=1
    echo "scripts: installing promtool (apt-get install prometheus)" >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q --no-install-recommends prometheus >&2
    if [[ -z $was_running ]]; then
        if [[ -d /run/systemd/system ]]; then
            "${sudo[@]}" systemctl disable --now prometheus.service >&2 || true
        elif [[ -x /etc/init.d/prometheus ]]; then
            "${sudo[@]}" /etc/init.d/prometheus stop >&2 || true
            "${sudo[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
        if _payhook_prometheus_running; then
            echo "scripts: warning: a Prometheus server is still running after the install" >&2
        fi
    fi
    command -v promtool >/dev/null || { echo "scripts: promtool is still missing" >&2; return 1; }
    echo "scripts: installed promtool in $((SECONDS - t0))s ($(promtool --version | head -n1))" >&2
}
