#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and tests it as an operator meets it: install with dpkg -i, the
# conffile and private directories in place, the commands work (as the siptap user too), the
# unit verifies, a reload of a bad file fails; then apt-style purge leaves nothing behind.
# Needs root and a machine it may install packages on (CI's). Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
cargo deb --locked >/dev/null
deb=$(ls -t target/debian/siptap_*.deb | head -1)
echo "test-deb: $deb"
dpkg --purge siptap >/dev/null 2>&1 || true

dpkg -i "$deb" >/dev/null
siptap --version | grep -q "^siptap $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)$" || fail "--version"
# the conffile: registered as one, private to root and the siptap group, valid and idle
grep -qx /etc/siptap/config.toml /var/lib/dpkg/info/siptap.conffiles || fail "config.toml is not a conffile"
[ "$(stat -c '%a %U %G' /etc/siptap/config.toml)" = "640 root siptap" ] || fail "config.toml mode/owner: $(stat -c '%a %U %G' /etc/siptap/config.toml)"
siptap check-config | grep -q "/etc/siptap/config.toml: ok" || fail "check-config on the default path"
runuser -u siptap -- siptap check-config >/dev/null || fail "the siptap user cannot read its configuration"
grep -q '^interfaces = \[\]' /etc/siptap/config.toml || fail "the shipped config captures"
# state and logs: private to the siptap user, before the first start
[ "$(stat -c '%a %U' /var/lib/siptap)" = "700 siptap" ] || fail "/var/lib/siptap: $(stat -c '%a %U' /var/lib/siptap)"
[ "$(stat -c '%a %U' /var/log/siptap)" = "750 siptap" ] || fail "/var/log/siptap"
# docs, man pages, completions, dashboards, logrotate
for f in /usr/share/man/man1/siptap.1.gz /usr/share/man/man1/siptap-run.1.gz \
	/usr/share/bash-completion/completions/siptap /usr/share/siptap/grafana/siptap-dashboard.json \
	/usr/share/siptap/prometheus/siptap.rules.yml /etc/logrotate.d/siptap /usr/lib/systemd/system/siptap.service; do
	[ -s "$f" ] || fail "missing $f"
done
if command -v systemd-analyze >/dev/null; then
	systemd-analyze verify /usr/lib/systemd/system/siptap.service 2>&1 | grep siptap.service && fail "unit does not verify"
fi
if command -v logrotate >/dev/null; then
	logrotate -d /etc/logrotate.d/siptap >/dev/null 2>&1 || fail "logrotate rejects its snippet"
fi
# `systemctl reload` runs this: a bad file fails and nothing is signalled
sleep 300 & victim=$!
cp /etc/siptap/config.toml /tmp/siptap-bad.toml && echo "bogus = 1" >>/tmp/siptap-bad.toml
siptap reload --config /tmp/siptap-bad.toml --pid $victim 2>/dev/null && fail "reload of a bad file succeeded"
kill -0 $victim || fail "reload signalled despite the bad file"
kill $victim; rm -f /tmp/siptap-bad.toml

# purge: config, state, logs and the user go
echo secret >/var/lib/siptap/identity.key
dpkg --purge siptap >/dev/null
for p in /etc/siptap /var/lib/siptap /var/log/siptap /usr/bin/siptap; do
	[ ! -e "$p" ] || fail "$p left after purge"
done
getent passwd siptap >/dev/null && fail "user siptap left after purge"
echo "test-deb: ok (install, conffile, directories, commands, reload check, purge)"
