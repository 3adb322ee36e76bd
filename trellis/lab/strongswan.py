"""strongSwan (charon) peers inside lab namespaces.

Each :class:`Charon` has its own directory with strongswan.conf, swanctl.conf, credentials
(swanctl/x509, x509ca, private), its vici socket and its log. charon runs as
``ip netns exec NS unshare -m sh -c 'mount -t tmpfs tmpfs /run && exec charon'``: its own /run
keeps its pid file apart from other instances. The kernel here has no ESP, so charon uses
kernel-libipsec (a TUN device ``ipsec0``, ESP in userspace, always UDP-encapsulated).

The Debian packages do not build the save-keys plugin. ``log_keys=True`` instead raises the IKE
and CHD log levels to 4, at which charon logs the keys it derives; :mod:`trellis.lab.keylog` turns
those lines into Wireshark decryption rows.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trellis.controller.ca import write_private_key
from trellis.lab.keylog import KeyLog, parse_key_log
from trellis.lab.netns import Lab, Netns
from trellis.lab.process import BackgroundProcess, CommandError, LabError, run
from trellis.lab.swanctl import SwanctlConfig
from trellis.lab.tshark import (
    ESP_AUTHENTICATION,
    ESP_ENCRYPTION,
    IKEV2_INTEGRITY,
    EspSa,
    Ikev2Sa,
    ikev2_encryption_name,
)
from trellis.lab.vici_text import IkeSa, parse_list_sas

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
# Plugins charon loads (load_modular = no): crypto from OpenSSL (AES-GCM, X25519, ECDSA, Ed25519),
# credentials, kernel-libipsec for ESP in userspace, kernel-netlink for addresses and routes.
CHARON_PLUGINS = (
    "random nonce openssl sha2 hmac kdf pem pkcs1 pkcs8 x509 pubkey revocation constraints "
    "kernel-libipsec kernel-netlink socket-default vici"
)
SWANCTL_PLUGINS = "random openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints"
DEFAULT_LOG_LEVELS: Mapping[str, int] = {"default": 1, "cfg": 2, "ike": 2, "chd": 2, "knl": 1, "enc": 1}
# The levels at which charon logs derived IKE and CHILD SA keys (DBG4 in keymat_v2.c).
KEY_LOG_LEVELS: Mapping[str, int] = {"ike": 4, "chd": 4}
START_TIMEOUT = 10.0
LOG_TAIL_LINES = 60

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class InstalledCredentials:
    """File names to put into swanctl.conf (``certs``/``cacerts``)."""

    cert: str | None
    cacerts: tuple[str, ...]


def save_keys_plugin_available() -> bool:
    """Whether this strongSwan has the save-keys plugin (Debian bookworm's does not)."""
    return Path("/usr/lib/ipsec/plugins/libstrongswan-save-keys.so").exists()


class Charon:
    """One charon daemon in a lab namespace. Create with :func:`start_charon`."""

    def __init__(
        self,
        lab: Lab,
        netns: Netns,
        *,
        name: str,
        log_keys: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.netns = netns
        self.name = name
        self.log_keys = log_keys
        self.dir = lab.path("strongswan", name, "x").parent
        self.swanctl_dir = self.dir / "swanctl"
        for sub in ("x509", "x509ca", "private"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / "strongswan.conf"
        self.swanctl_conf_path = self.swanctl_dir / "swanctl.conf"
        self.socket_path = self.dir / "charon.vici"
        self.log_path = self.dir / "charon.log"
        self.settings = dict(settings or {})
        self.process: BackgroundProcess | None = None

    @property
    def vici_uri(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def env(self) -> dict[str, str]:
        return {"STRONGSWAN_CONF": str(self.conf_path), "SWANCTL_DIR": str(self.swanctl_dir)}

    # ---- process ---------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write strongswan.conf, start charon and wait until its vici socket answers."""
        if self.process is not None:
            raise LabError(f"charon {self.name} already started")
        self.conf_path.write_text(self.render_strongswan_conf())
        # A fresh log: the key-log parser must not see a previous run's lines.
        self.log_path.unlink(missing_ok=True)
        script = f"mount -t tmpfs tmpfs /run && exec {CHARON}"
        self.process = self.lab.start(
            self.netns, ["unshare", "-m", "sh", "-c", script], name=f"charon-{self.name}", env=self.env
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise LabError(f"charon {self.name} exited at start\n{self.diagnostics()}")
            if self.socket_path.exists():
                done = self._swanctl(["--stats"], check=False)
                if done.returncode == 0:
                    return
            if time.monotonic() >= deadline:
                raise LabError(
                    f"charon {self.name} did not answer on vici in {timeout}s\n{self.diagnostics()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def render_strongswan_conf(self) -> str:
        levels = dict(DEFAULT_LOG_LEVELS)
        if self.log_keys:
            levels.update(KEY_LOG_LEVELS)
        level_lines = "\n".join(f"      {group} = {level}" for group, level in levels.items())
        extra = "\n".join(f"  {key} = {value}" for key, value in self.settings.items())
        return f"""# Written by trellis.lab for charon {self.name} in {self.netns.name}
charon {{
  load_modular = no
  load = {CHARON_PLUGINS}
{extra}
  plugins {{
    vici {{
      socket = {self.vici_uri}
    }}
    revocation {{
      enable_crl = no
      enable_ocsp = no
    }}
  }}
  filelog {{
    lab {{
      path = {self.log_path}
      time_format = %b %e %T
      ike_name = yes
      append = no
      flush_line = yes
{level_lines}
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
}}
swanctl {{
  load = {SWANCTL_PLUGINS}
}}
"""

    # ---- configuration -----------------------------------------------------------------------

    def install_credentials(
        self,
        *,
        cacerts: Sequence[x509.Certificate] = (),
        cert: x509.Certificate | None = None,
        key: PrivateKey | None = None,
        name: str = "local",
    ) -> InstalledCredentials:
        """Write CA certificates to swanctl/x509ca, ``cert`` to x509/NAME.pem and ``key`` (PKCS#8,
        0600) to private/NAME.pem. They are loaded by :meth:`load`."""
        ca_files = []
        for i, ca in enumerate(cacerts):
            file_name = f"ca{i}.pem" if i else "ca.pem"
            (self.swanctl_dir / "x509ca" / file_name).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
            ca_files.append(file_name)
        cert_file = None
        if cert is not None:
            cert_file = f"{name}.pem"
            (self.swanctl_dir / "x509" / cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            write_private_key(self.swanctl_dir / "private" / f"{name}.pem", key)
        return InstalledCredentials(cert=cert_file, cacerts=tuple(ca_files))

    def load(self, config: SwanctlConfig) -> None:
        """Write swanctl.conf and load connections, secrets and credentials (``--load-all``)."""
        self.swanctl_conf_path.write_text(config.render())
        self.swanctl("--load-all", "--file", str(self.swanctl_conf_path))

    # ---- control -----------------------------------------------------------------------------

    def swanctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run swanctl against this charon (any namespace works: vici is a unix socket)."""
        return self._swanctl(list(args), timeout=timeout).stdout

    def initiate(self, child: str, *, ike: str | None = None, timeout: int = 20) -> None:
        """Initiate CHILD SA ``child`` (and its IKE SA) and wait until it is up or failed."""
        args = ["--initiate", "--child", child, "--timeout", str(timeout)]
        if ike is not None:
            args += ["--ike", ike]
        try:
            self._swanctl(args, timeout=timeout + 5)
        except CommandError as e:
            raise LabError(f"charon {self.name}: initiating {child} failed\n{e}\n{self.diagnostics()}") from e

    def terminate(self, *, ike: str | None = None, child: str | None = None, timeout: int = 10) -> None:
        if (ike is None) == (child is None):
            raise ValueError("terminate exactly one of ike= or child=")
        args = ["--terminate", "--timeout", str(timeout)]
        args += ["--ike", ike] if ike is not None else ["--child", str(child)]
        self._swanctl(args, timeout=timeout + 5)

    def list_sas(self) -> list[IkeSa]:
        """The IKE SAs charon has, with their CHILD SAs (``swanctl --list-sas``)."""
        return parse_list_sas(self._swanctl(["--list-sas", "--pretty"]).stdout)

    def wait_for_child_sa(
        self, child: str, *, ike: str | None = None, timeout: float = 20.0, state: str = "INSTALLED"
    ) -> IkeSa:
        """Wait until a CHILD SA named ``child`` is in ``state``; returns its IKE SA (the CHILD SA is
        ``sa.child(child)``). On timeout the error carries the SAs seen and the charon log tail."""
        deadline = time.monotonic() + timeout
        seen: list[IkeSa] = []
        while True:
            seen = self.list_sas()
            for sa in seen:
                if ike is not None and sa.name != ike:
                    continue
                found = sa.find_child(child)
                if found is not None and found.state == state:
                    return sa
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"charon {self.name} died while waiting for {child}\n{self.diagnostics()}")
            if time.monotonic() >= deadline:
                raise LabError(
                    f"charon {self.name}: no CHILD SA {child!r} in state {state} after {timeout}s; "
                    f"SAs: {[sa.summary() for sa in seen]}\n{self.diagnostics()}"
                )
            time.sleep(0.2)

    # ---- diagnostics -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{text}"

    def diagnostics(self) -> str:
        parts = [self.log_tail()]
        if self.process is not None:
            parts.append(self.process.output_tail(20))
        return "\n".join(parts)

    def key_log(self) -> KeyLog:
        """The keys charon logged (needs ``log_keys=True``)."""
        if not self.log_keys:
            raise LabError(f"charon {self.name} was started without log_keys=True")
        return parse_key_log(self.log_text())

    def esp_sas(self) -> list[EspSa]:
        """Wireshark ``esp_sa`` rows for both directions of every CHILD SA charon has now
        (needs ``log_keys=True``): feed them to :func:`trellis.lab.tshark.decryption_preferences`."""
        key_log = self.key_log()
        rows = []
        for ike in self.list_sas():
            for child in ike.children:
                keys = key_log.child_keys(child.spi_in)
                encryption = ESP_ENCRYPTION[child.encr_alg]
                integrity = child.raw.get("integ-alg")
                authentication = ESP_AUTHENTICATION[integrity if isinstance(integrity, str) else None]
                rows.append(
                    EspSa(
                        spi=child.spi_out,
                        encryption=encryption,
                        encryption_key=keys.encr_out,
                        authentication=authentication,
                        authentication_key=keys.integ_out,
                        src=ike.local_host,
                        dst=ike.remote_host,
                    )
                )
                rows.append(
                    EspSa(
                        spi=child.spi_in,
                        encryption=encryption,
                        encryption_key=keys.encr_in,
                        authentication=authentication,
                        authentication_key=keys.integ_in,
                        src=ike.remote_host,
                        dst=ike.local_host,
                    )
                )
        return rows

    def ikev2_sas(self) -> list[Ikev2Sa]:
        """Wireshark ``ikev2_decryption_table`` rows for every IKE SA charon has now
        (needs ``log_keys=True``)."""
        key_log = self.key_log()
        rows = []
        for ike in self.list_sas():
            keys = key_log.ike_keys(ike.uniqueid)
            if ike.encr_alg is None or ike.encr_keysize is None:
                raise LabError(f"IKE SA {ike.summary()} reports no encryption algorithm")
            integrity = ike.raw.get("integ-alg")
            rows.append(
                Ikev2Sa(
                    spi_i=ike.initiator_spi,
                    spi_r=ike.responder_spi,
                    sk_ei=keys.sk_ei,
                    sk_er=keys.sk_er,
                    encryption=ikev2_encryption_name(ike.encr_alg, ike.encr_keysize),
                    sk_ai=keys.sk_ai,
                    sk_ar=keys.sk_ar,
                    integrity=IKEV2_INTEGRITY[integrity if isinstance(integrity, str) else None],
                )
            )
        return rows

    def _swanctl(
        self, args: list[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return run([SWANCTL, *args, "--uri", self.vici_uri], check=check, timeout=timeout, env=self.env)


def start_charon(
    lab: Lab,
    netns: Netns,
    *,
    name: str | None = None,
    log_keys: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Charon:
    """Start charon in ``netns`` (stopped when ``lab`` closes) and return it once vici answers.

    ``settings`` are extra ``key = value`` lines for the ``charon`` section of strongswan.conf,
    e.g. ``{"retransmit_tries": "2"}``."""
    if shutil.which(SWANCTL) is None or not Path(CHARON).exists():
        raise LabError("strongSwan is not installed (strongswan-charon, strongswan-swanctl)")
    charon = Charon(lab, netns, name=name or netns.role, log_keys=log_keys, settings=settings)
    charon.start()
    return charon
