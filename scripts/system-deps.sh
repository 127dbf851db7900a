#!/usr/bin/env bash
# Debian packages the test suite needs: promtool (package prometheus) for the
# alert-rule tests, chromium for the Flower browser test (Playwright drives
# /usr/bin/chromium; `playwright install` cannot download a browser here), and
# postfix with Cyrus SASL (saslpasswd2, the PLAIN/LOGIN and sasldb plugins) for
# tests/postfix.py, which runs a private instance from its own config folder,
# and faketime (libfaketime) for the clock-skew test (tests/test_leases.py).
# Installed only when missing; no daemon is left running, and the system's
# postfix is never configured (no main.cf) nor started. iproute2 (`ip netns`) and util-linux
# (`unshare`) for the multi-host test bed of network namespaces (tests/hosts.py).
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
for package in postfix sasl2-bin libsasl2-modules libsasl2-modules-db; do
  installed "$package" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Do not let package scripts start services (prometheus and postfix would start their daemons).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
# "No configuration": the package writes no /etc/postfix/main.cf, so nothing
# could run the system instance by accident; the tests bring their own config.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt_opts=(-o DPkg::Lock::Timeout=300)
apt-get "${apt_opts[@]}" update -qq
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# The system's postfix must not be running: our tests use private instances only.
if [ -e /var/spool/postfix/pid/master.pid ]; then
  pid=$(tr -dc 0-9 < /var/spool/postfix/pid/master.pid)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = master ]; then
    echo "system-deps: the system's postfix master (pid $pid) is running; stop it with 'postfix stop'" >&2
    exit 1
  fi
fi
