#!/usr/bin/env bash
# callscreen installer (Debian/Ubuntu). Idempotent: run it again to upgrade.
#
#   sudo ./install.sh              production: Redis, /opt/callscreen, /etc/callscreen, Asterisk
#                                  (or FreePBX) dialplan + AGI script + prompts, systemd service
#   sudo ./install.sh --uninstall  undo the above (keeps /etc/callscreen and the Redis data)
#   ./install.sh --dev             developer setup: .venv with test tools, redis-server, and (as
#                                  root) mmdebstrap for the Asterisk sandbox tests
#   ./install.sh --prompts DIR     only generate the en/fr prompts into a sounds directory
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="${CALLSCREEN_PREFIX:-/opt/callscreen}"
ETC="${CALLSCREEN_ETC:-/etc/callscreen}"
AST_ETC="${CALLSCREEN_ASTERISK_ETC:-/etc/asterisk}"
UNIT=/etc/systemd/system/callscreen.service
SPOOL="${CALLSCREEN_SPOOL:-/var/spool/callscreen}"
INCLUDE_LINE="#include extensions_callscreen.conf"
PROMPT_MARK="callscreen/challenge-intro"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
systemd_running() { [ -d /run/systemd/system ] && have systemctl; }

apt_install() {
    # Install only what is missing; apt-get update once, on demand.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! is_root || ! have apt-get; then
        warn "please install: ${missing[*]} (needs root and apt-get)"
        return 0
    fi
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_bin() {
    local py
    py="$(command -v python3 || true)"
    [ -n "$py" ] || die "python3 not found"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "callscreen needs Python >= 3.11"
    echo "$py"
}

# ---------------------------------------------------------------------------------------------
dev_install() {
    if have apt-get && is_root; then
        apt_install redis-server python3-venv espeak-ng sox
        apt_install mmdebstrap  # the real Asterisk 22 sandbox of the integration tests
        # The packaged Redis is not needed running for the tests (they start their own).
    elif ! have redis-server; then
        warn "redis-server is missing: the tests need it (apt-get install redis-server)"
    fi
    local py
    py="$(python_bin)"
    [ -x "$HERE/.venv/bin/python" ] || { say "creating .venv"; "$py" -m venv "$HERE/.venv"; }
    say "installing callscreen (editable) and test tools into .venv"
    "$HERE/.venv/bin/python" -m pip install -q --upgrade pip
    "$HERE/.venv/bin/python" -m pip install -q -e "$HERE[test]"
    say "done. Run the tests with:  .venv/bin/pytest"
}

# ---------------------------------------------------------------------------------------------
asterisk_setting() {
    # A directory from `core show settings` (e.g. "AGI", "Data"), empty if Asterisk is not running.
    have asterisk || return 0
    asterisk -rx "core show settings" 2>/dev/null | awk -v want="$1" -F': *' '
        tolower($1) ~ tolower(want) && tolower($1) ~ /director/ { gsub(/^ +| +$/, "", $2); print $2; exit }'
}

agi_dir() {
    local dir
    dir="$(asterisk_setting "AGI")"
    [ -n "$dir" ] && { echo "$dir"; return; }
    for dir in /usr/share/asterisk/agi-bin /var/lib/asterisk/agi-bin; do
        [ -d "$dir" ] && { echo "$dir"; return; }
    done
    echo /var/lib/asterisk/agi-bin
}

sounds_dir() {
    local data
    data="$(asterisk_setting "Data")"
    [ -n "$data" ] && [ -d "$data/sounds" ] && { echo "$data/sounds"; return; }
    for dir in /usr/share/asterisk/sounds /var/lib/asterisk/sounds; do
        [ -d "$dir" ] && { echo "$dir"; return; }
    done
}

is_freepbx() { [ -f /etc/freepbx.conf ] || [ -f /etc/amportal.conf ]; }

dialplan_target() {
    if is_freepbx; then echo "$AST_ETC/extensions_custom.conf"; else echo "$AST_ETC/extensions.conf"; fi
}

make_prompts() {
    # "To be connected, please type the following digits" and friends, spoken by espeak-ng,
    # converted by sox to 8 kHz mono 16-bit WAV (Asterisk's "wav" format).
    local sounds="$1"
    have espeak-ng && have sox || { warn "espeak-ng/sox missing: stock beep prompts will be used"; return 0; }
    while IFS='|' read -r lang voice name text; do
        [ -n "$lang" ] || continue
        local dir="$sounds/$lang/callscreen"
        mkdir -p "$dir"
        espeak-ng -v "$voice" -s 150 -w "$dir/$name.tmp.wav" "$text"
        sox -q "$dir/$name.tmp.wav" -r 8000 -c 1 -b 16 "$dir/$name.wav"
        rm -f "$dir/$name.tmp.wav"
    done <<'EOF'
en|en-gb|challenge-intro|To be connected, please type the following digits.
en|en-gb|challenge-retry|That was not right. Please listen and type the digits again.
en|en-gb|challenge-thanks|Thank you. Connecting you now.
en|en-gb|storm-explain|This number has been used by a telemarketing company without our consent. We did not call you. If you still want to reach us, press 1.
fr|fr|challenge-intro|Pour être mis en relation, veuillez taper les chiffres suivants.
fr|fr|challenge-retry|Ce n'est pas le bon code. Écoutez, puis tapez à nouveau les chiffres.
fr|fr|challenge-thanks|Merci. Nous vous mettons en relation.
fr|fr|storm-explain|Ce numéro a été utilisé par une société de démarchage téléphonique sans notre accord. Nous ne vous avons pas appelé. Si vous souhaitez tout de même nous joindre, tapez 1.
EOF
}

enable_redis_aof() {
    local conf=/etc/redis/redis.conf
    [ -f "$conf" ] || return 0
    grep -qE '^appendonly yes' "$conf" || {
        sed -i -E 's/^#? *appendonly .*/appendonly yes/' "$conf"
        grep -qE '^appendonly yes' "$conf" || echo "appendonly yes" >> "$conf"
    }
    grep -qE '^appendfsync everysec' "$conf" || {
        sed -i -E 's/^#? *appendfsync .*/appendfsync everysec/' "$conf"
        grep -qE '^appendfsync everysec' "$conf" || echo "appendfsync everysec" >> "$conf"
    }
}

start_service() {
    # $1 service name, $2... fallback command when systemd is not running (containers, chroots)
    local name="$1"; shift
    if systemd_running; then
        systemctl enable --now "$name" >/dev/null
        systemctl restart "$name"
    elif have service && [ -x "/etc/init.d/$name" ]; then
        service "$name" restart >/dev/null || service "$name" start >/dev/null
    else
        warn "systemd is not running: starting $name in the background"
        "$@"
    fi
}

PIDFILE=/run/callscreen.pid

stop_background() {
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        kill -TERM "$(cat "$PIDFILE")" && sleep 1
    fi
    rm -f "$PIDFILE"
}

start_background() {
    # Without systemd (containers, chroots): a plain background daemon with a pid file.
    stop_background
    nohup setsid "$PREFIX/venv/bin/callscreen" serve >>/var/log/callscreen.log 2>&1 &
    echo $! > "$PIDFILE"
}

prod_install() {
    is_root || die "run as root (sudo ./install.sh), or ./install.sh --dev for a developer setup"
    local redis_was_there=1
    have redis-server || redis_was_there=0
    apt_install python3 python3-venv redis-server espeak-ng sox
    [ "$redis_was_there" -eq 1 ] || enable_redis_aof

    say "installing callscreen into $PREFIX/venv"
    local py
    py="$(python_bin)"
    [ -x "$PREFIX/venv/bin/python" ] || "$py" -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
    "$PREFIX/venv/bin/python" -m pip install -q --upgrade "$HERE"
    ln -sf "$PREFIX/venv/bin/callscreen" /usr/local/bin/callscreen

    id callscreen >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin callscreen

    say "configuration in $ETC (existing files are never overwritten)"
    install -d -m 0755 "$ETC" "$ETC/callscreen.d" "$ETC/rules"
    [ -e "$ETC/callscreen.yaml" ] || install -m 0644 "$HERE/config/callscreen.yaml" "$ETC/callscreen.yaml"
    for rule in "$HERE"/rules/*.yaml; do
        local dest
        dest="$ETC/rules/$(basename "$rule")"
        if [ ! -e "$dest" ]; then
            install -m 0644 "$rule" "$dest"
        elif ! cmp -s "$rule" "$dest"; then
            install -m 0644 "$rule" "$dest.dist"  # the admin's version stays in force
            warn "$dest was changed locally; the new version is $dest.dist"
        fi
    done

    # Writes that cannot reach Redis wait here. The FastAGI server (user callscreen) and the
    # process AGI (Asterisk's user) both write it: a setgid directory of Asterisk's group.
    local spool_group=callscreen
    if getent group asterisk >/dev/null; then
        spool_group=asterisk
        usermod -a -G asterisk callscreen
    fi
    install -d -m 2770 -o callscreen -g "$spool_group" "$SPOOL"
    [ -e "$ETC/callscreen.d/00-spool.yaml" ] ||
        printf 'spool_dir: %s\n' "$SPOOL" > "$ETC/callscreen.d/00-spool.yaml"

    start_service redis-server redis-server --daemonize yes

    if have asterisk || [ -d "$AST_ETC" ]; then
        local agi sounds target
        agi="$(agi_dir)"
        say "AGI script -> $agi/callscreen.agi"
        install -d "$agi"
        sed "1s|.*|#!$PREFIX/venv/bin/python|" "$HERE/agi_scripts/callscreen.agi" > "$agi/callscreen.agi"
        chmod 0755 "$agi/callscreen.agi"

        say "dialplan -> $AST_ETC/extensions_callscreen.conf"
        install -m 0644 "$HERE/config/extensions_callscreen.conf" "$AST_ETC/extensions_callscreen.conf"
        target="$(dialplan_target)"
        touch "$target"
        # Already included (by us, or by the admin, quoted or not)? Then leave the file alone.
        grep -qE '^[[:space:]]*#include[[:space:]]+"?extensions_callscreen\.conf"?' "$target" ||
            printf '\n%s\n' "$INCLUDE_LINE" >> "$target"

        sounds="$(sounds_dir)"
        if [ -n "$sounds" ]; then
            say "prompts (en, fr) -> $sounds/{en,fr}/callscreen"
            make_prompts "$sounds"
        fi
    else
        warn "Asterisk not found: install it, then run this script again to add the dialplan"
    fi

    say "service callscreen (FastAGI on 127.0.0.1:4573)"
    cat > "$UNIT" <<EOF
[Unit]
Description=callscreen FastAGI call screening server
After=network.target redis-server.service
Wants=redis-server.service

[Service]
User=callscreen
Group=callscreen
ExecStart=$PREFIX/venv/bin/callscreen serve
ExecReload=/bin/kill -HUP \$MAINPID
Restart=on-failure
RestartSec=2
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$SPOOL
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
EOF
    if systemd_running; then
        systemctl daemon-reload
    fi
    start_service callscreen start_background

    if have asterisk && asterisk -rx "core show version" >/dev/null 2>&1; then
        asterisk -rx "dialplan reload" >/dev/null && say "Asterisk dialplan reloaded"
    fi
    say "installed. Check a number:  callscreen check 0162000000 --to <your number>"
    say "hook incoming calls with:    same => n,Gosub(callscreen,s,1(\${EXTEN}))"
}

uninstall() {
    is_root || die "run as root"
    say "removing callscreen (keeping $ETC and the Redis data)"
    if systemd_running; then systemctl disable --now callscreen >/dev/null 2>&1 || true; fi
    stop_background
    rm -f "$UNIT"
    systemd_running && systemctl daemon-reload || true
    local agi sounds target
    agi="$(agi_dir)"
    rm -f "$agi/callscreen.agi" "$AST_ETC/extensions_callscreen.conf"
    for target in "$AST_ETC/extensions.conf" "$AST_ETC/extensions_custom.conf"; do
        [ -f "$target" ] && sed -i "\|^$INCLUDE_LINE\$|d" "$target"
    done
    sounds="$(sounds_dir)"
    [ -n "$sounds" ] && rm -rf "$sounds"/*/callscreen
    rm -f /usr/local/bin/callscreen
    rm -rf "$PREFIX"
    if have asterisk && asterisk -rx "core show version" >/dev/null 2>&1; then
        asterisk -rx "dialplan reload" >/dev/null || true
    fi
    say "done. Remove $ETC yourself if you no longer need your lists and rules."
}

case "${1:-}" in
    --dev) dev_install ;;
    --uninstall) uninstall ;;
    --prompts) [ -n "${2:-}" ] || die "--prompts needs Asterisk's sounds directory"; make_prompts "$2" ;;
    ""|--prod) prod_install ;;
    -h|--help) sed -n '2,10p' "$0" ;;
    *) die "unknown option $1 (try --help)" ;;
esac
