"""A real Postfix for the tests: a private instance on a free loopback port.

Debian's ``postfix`` package (installed by ``scripts/system-deps.sh``) brings
the binaries; everything else lives in a folder of the test's own: main.cf and
master.cf, the queue, a test CA and a server certificate for localhost and
127.0.0.1 (STARTTLS), a Cyrus sasldb2 file (AUTH PLAIN and LOGIN), a recipient
access map (chosen addresses answer 450 or 550), a message size limit, and
Maildir delivery for any address at the test domains (one Maildir per domain;
``delivered(address)`` picks that address's copies by their Delivered-To). The system's instance
(/etc/postfix, port 25) is never read, started or touched.

The master runs as root, as Postfix requires; its daemons drop to the
``postfix`` user, so the folder is readable by that user.
"""

from __future__ import annotations

import contextlib
import email
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path

import pytest

from neoforge.processes import free_port, start, wait_until
from neoforge.processes import stop as stop_process

__all__ = ["DOMAINS", "Postfix", "postfix_server"]

POSTFIX = "/usr/sbin/postfix"
DOMAINS = ("example.com", "corp.local")
# Logins live in a realm of their own, so no test recipient shares the name.
REALM = "neoforge.test"
_TCP_ESTABLISHED = "01"
# master.cf: every service Postfix needs here, none chrooted (the folder is not a chroot).
_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance in FOLDER, listening on 127.0.0.1:port."""

    def __init__(
        self,
        folder: Path,
        *,
        auth_required: bool = False,
        tls_required: bool = False,
        message_size_limit: int = 100_000,
        domains: tuple[str, ...] = DOMAINS,
    ) -> None:
        if not os.path.exists(POSTFIX):
            raise RuntimeError(f"{POSTFIX} is missing: run scripts/system-deps.sh (as root)")
        self.folder = folder
        self.host = "localhost"
        self.port = free_port()
        self.auth_required = auth_required
        self.tls_required = tls_required
        self.message_size_limit = message_size_limit
        self.domains = domains
        self.user = f"mailer@{REALM}"
        self.password = secrets.token_urlsafe(12)
        self.ca_file = folder / "tls" / "ca.pem"
        self.config = folder / "etc"
        self.mail = folder / "mail"
        self.log_file = folder / "maillog"
        self.start_seconds = 0.0  # of the last start(), for the curious
        self._owner = pwd.getpwnam("postfix")
        self._prepared = False
        self._database_type: str | None = None
        self._access: dict[str, str] = {}
        self._access_mtime = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._master: int | None = None
        self._log_start = 0

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Write the configuration (first time only), start the master, wait for its 220 banner."""
        began = time.monotonic()
        if not self._prepared:
            self._prepare()
            self._prepared = True
        self._log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        try:
            self._process = start(
                [POSTFIX, "-c", str(self.config), "start-fg"], log=self.folder / "postfix.log"
            )
            try:
                wait_until(self._ready, 20, f"postfix on port {self.port}")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; its log ends with:\n{self.log_tail()}") from exc
            self._master = self._master_pid()
            self.start_seconds = time.monotonic() - began
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the master this instance started (by PID) and its daemons; no-op when stopped."""
        master = self._master or self._master_pid()
        group: list[int] = []
        if master is not None:
            # The master leads a process group of its own, with its daemons in it.
            group = _group(master)
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGTERM)
        try:
            if master is not None:
                wait_until(lambda: not any(_alive(pid) for pid in group), 15, "postfix exit")
        finally:
            if master is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(master, signal.SIGKILL)
            if self._process is not None:
                stop_process(self._process)
            self._process = None
            self._master = None

    def restart(self) -> None:
        """Stop and start again on the same port, with the same queue and mailboxes."""
        self.stop()
        self.start()

    # -- what the test controls -------------------------------------------

    def set_access(self, address: str, reply: str) -> None:
        """Answer RCPT TO:<ADDRESS> with REPLY (e.g. "450 4.2.0 greylisted") from the next connection on."""
        self._access[address] = reply
        self._write_access()

    def clear_access(self) -> None:
        """Accept every recipient again (from the next connection on)."""
        self._access.clear()
        self._write_access()

    # -- what the test reads ----------------------------------------------

    def raw_delivered(self, address: str) -> list[bytes]:
        """The messages delivered to ADDRESS's Maildir, oldest first, as bytes."""
        folder = _find_folder(self.mail, address.rpartition("@")[2])
        if folder is None:
            return []
        files = [*(folder / "new").glob("*"), *(folder / "cur").glob("*")]
        files.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        messages = [path.read_bytes() for path in files]
        return [raw for raw in messages if _delivered_to(raw).casefold() == address.casefold()]

    def delivered(self, address: str) -> list[EmailMessage]:
        """The messages delivered to ADDRESS, parsed with email.policy.default."""
        return [
            email.message_from_bytes(raw, _class=EmailMessage, policy=default)
            for raw in self.raw_delivered(address)
        ]

    def wait_delivered(self, address: str, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
        """Poll until ADDRESS has COUNT+ messages; TimeoutError (with the log's tail) after TIMEOUT."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.delivered(address)
            if len(messages) >= count:
                return messages
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(messages)} of {count} message(s) delivered after {timeout:.0f} s; "
                    f"maillog ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def open_sessions(self) -> int:
        """Established TCP connections to the SMTP port (server side), from /proc/net/tcp."""
        wanted = f"0100007F:{self.port:04X}"
        count = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == _TCP_ESTABLISHED:
                count += 1
        return count

    def log_tail(self, lines: int = 30) -> str:
        """The last LINES lines of Postfix's own log, for failure messages."""
        text = ""
        for path in (self.folder / "postfix.log", self.log_file):
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- internals --------------------------------------------------------

    def _prepare(self) -> None:
        uid, gid = self._owner.pw_uid, self._owner.pw_gid
        # The daemons run as the postfix user and must reach their files.
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        for name in ("etc", "etc/sasl", "sasldb", "spool", "tls"):
            (self.folder / name).mkdir(mode=0o755, exist_ok=True)
        self.mail.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.mail, uid, gid)
        self._make_certificates()
        self._make_sasldb(uid, gid)
        # virtual(8) allows no $1 in regexp results, so one Maildir per domain
        # takes every address there; each copy carries its own Delivered-To.
        (self.config / "mailboxes").write_text("".join(f"@{domain} {domain}/\n" for domain in self.domains))
        (self.config / "unauthenticated.cidr").write_text("0.0.0.0/0 530 5.7.0 Authentication required\n")
        self._write_access()
        (self.config / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in self._main_cf().items())
        )
        (self.config / "master.cf").write_text(f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + _SERVICES)
        _backdate(*(path for path in self.config.rglob("*") if not path.name.startswith("access")))

    def _main_cf(self) -> dict[str, str]:
        uid, gid = self._owner.pw_uid, self._owner.pw_gid
        if self.auth_required:
            # Any client not logged in; the last entry is never reached, but smtpd wants one like it.
            refuse = f"check_client_access cidr:{self.config / 'unauthenticated.cidr'}"
            relay = f"permit_sasl_authenticated, {refuse}, reject_unauth_destination"
        else:
            relay = "permit_sasl_authenticated, reject_unauth_destination"
        access = f"{self._database_type}:{self._access_file}"
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.folder / "spool"),
            "data_directory": str(self.folder / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.folder),
            "myhostname": f"mx.{REALM}",
            "mydomain": REALM,
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_peername_lookup": "no",
            # Nothing leaves this machine: mail for other domains bounces at once.
            "default_transport": "error:5.7.1 this test server delivers only to its own domains",
            "relay_transport": "error:5.7.1 this test server delivers only to its own domains",
            "smtpd_relay_restrictions": relay,
            "smtpd_recipient_restrictions": f"check_recipient_access {access}",
            "message_size_limit": str(self.message_size_limit),
            "virtual_mailbox_limit": "0",
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_mailbox_base": str(self.mail),
            "virtual_mailbox_maps": f"texthash:{self.config / 'mailboxes'}",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "virtual_minimum_uid": str(uid),
            "smtpd_tls_cert_file": str(self.folder / "tls" / "server.pem"),
            "smtpd_tls_key_file": str(self.folder / "tls" / "server.key"),
            "smtpd_tls_security_level": "encrypt" if self.tls_required else "may",
            # As on a real submission server: no password over plain text.
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            # Debian's smtpd reads $config_directory/sasl/smtpd.conf whatever this says.
            "cyrus_sasl_config_path": str(self.config / "sasl"),
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_sasl_authenticated_header": "yes",
            # Speed over politeness towards misbehaving clients: tests make many errors on purpose.
            "smtpd_error_sleep_time": "0",
            "in_flow_delay": "0",
        }

    @property
    def _access_file(self) -> Path:
        return self.config / "access"

    def _write_access(self) -> None:
        source = self._access_file
        source.write_text("".join(f"{address} {reply}\n" for address, reply in self._access.items()))
        main_cf = self.config / "main.cf"
        if not main_cf.exists():
            main_cf.write_text("")  # postmap reads one
            _backdate(main_cf)
        # hash where this Postfix has it (Debian 12); later releases drop Berkeley DB for lmdb.
        # (Asking "postconf -m" would first resolve this host's name: seconds without DNS.)
        for kind in [self._database_type] if self._database_type else ["hash", "lmdb"]:
            made = subprocess.run(
                ["/usr/sbin/postmap", "-c", str(self.config), f"{kind}:{source}"], capture_output=True
            )
            if made.returncode == 0:
                self._database_type = kind
                break
        else:
            raise RuntimeError(f"postmap failed: {made.stderr.decode(errors='replace')}")
        # smtpd re-opens a changed table before its next connection, comparing
        # mtimes in whole seconds: two changes within one second must differ.
        database = next(path for path in self.config.glob("access.*"))
        mtime = max(int(database.stat().st_mtime), self._access_mtime + 1)
        os.utime(database, (mtime, mtime))
        self._access_mtime = mtime

    def _make_certificates(self) -> None:
        tls = self.folder / "tls"

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tls)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl(
            "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=NeoForge Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        (tls / "server.ext").write_text(
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid\n"
        )
        openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        )  # fmt: skip
        # Only root (the master) reads the key; the CA key is not needed again.
        (tls / "server.key").chmod(0o600)
        (tls / "ca.key").unlink()

    def _make_sasldb(self, uid: int, gid: int) -> None:
        sasl = self.config / "sasl"
        # Outside etc/: "postfix check" wants root to own everything there.
        database = self.folder / "sasldb" / "sasldb2"
        local, _, realm = self.user.rpartition("@")
        subprocess.run(
            ["/usr/sbin/saslpasswd2", "-p", "-f", str(database), "-c", "-u", realm, local],
            input=self.password.encode(),
            check=True,
            capture_output=True,
        )
        # smtpd (the postfix user) reads it, Cyrus finds it through smtpd.conf.
        os.chown(database, uid, gid)
        database.chmod(0o600)
        (sasl / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
            f"sasldb_path: {database}\nmech_list: PLAIN LOGIN\n"
        )

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"postfix exited with {self._process.returncode}:\n{self.log_tail()}")
        if self.log_file.exists():
            with self.log_file.open("rb") as log:
                log.seek(self._log_start)
                if b"fatal:" in log.read():
                    raise RuntimeError(f"postfix failed to start:\n{self.log_tail()}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            banner = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            sock.recv(512)
        return banner.startswith(b"220 ")

    def _master_pid(self) -> int | None:
        """The master's PID from this instance's own pid file, if that master is alive."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int((self.folder / "spool" / "pid" / "master.pid").read_text().strip())
            if _alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == "master":
                return pid
        return None


def _backdate(*paths: Path) -> None:
    # Postfix re-reads a config file changed within the last second until it
    # is older (a guard against half-written files): 2 s per fresh main.cf.
    then = time.time() - 60
    for path in paths:
        os.utime(path, (then, then))


def _group(pgid: int) -> list[int]:
    """The PIDs of process group PGID."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(stat.parent.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _delivered_to(raw: bytes) -> str:
    return str(BytesHeaderParser(policy=default).parsebytes(raw).get("Delivered-To", ""))


def _find_folder(parent: Path, name: str) -> Path | None:
    # Domains compare case-insensitively.
    if not parent.is_dir():
        return None
    for child in parent.iterdir():
        if child.name.casefold() == name.casefold():
            return child
    return None


@pytest.fixture(scope="session")
def postfix_server() -> Iterator[Postfix]:
    """A started Postfix for the whole session (STARTTLS offered, AUTH optional)."""
    folder = Path(tempfile.mkdtemp(prefix="neoforge-postfix-"))
    server = Postfix(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
