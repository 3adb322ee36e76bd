"""The configuration of ``trellis-agent run --config FILE``: the static IKE peers
(trellis.agent.ikeconfig) plus the site's own sections::

    state_dir: /var/lib/trellis      # where the running agent writes tunnels.json (its status);
                                     # --state-dir overrides; relative to this file
    policy_view: view.binpb          # optional; relative to this file: a trellis.v1.PolicyView
                                     # (binary or JSON) that the data plane enforces on every
                                     # packet, as the controller's view would be (stateful:
                                     # only the side a rule names opens flows, replies pass).
                                     # Re-read on SIGHUP; flows the new view allows go on.
                                     # Without it everything the SAs carry passes.
    dataplane:
      backend: userspace             # or none: IKE only, ESP left to something else
      tun_name: trellis0
      underlay_mtu: 1500             # the TUN MTU follows from it and the SA overhead
      tun_addresses: [10.1.0.1/32]   # optional; the source of our ICMP errors
      gro: true                      # merge received TCP segments for the TUN device
      tso: false                     # take TCP super-packets from the TUN device
      clamp_mss: true
      replay_window: 1024
      rekey_bytes: 500000000         # soft byte/packet lifetimes of every CHILD SA (rekey) ...
      life_bytes: 550000000          # ... and hard ones (the SA stops); time is IKE's business
      rekey_packets: 1000000
      life_packets: 1100000
      fail_closed: true              # route the configured remote selectors into the tunnel
                                     # device from the start: while a tunnel is down, its
                                     # traffic is dropped, never sent in clear

The policy view is what the controller compiles for this site (trellis.controller.policy:
compile_view, then wire.view_to_proto): its peers are named by identity, its rules use inner
(LAN) addresses, and each site enforces its own view, outbound and inbound, whatever its peer
does. The file is checked at start and on every reload (a bad one is refused and the previous
view stays). It lets an operator filter a static site, e.g. an external gateway that gets no
view from a controller, with the same rules and the same compiler.

With the userspace backend the data plane carries ESP in UDP only, so every peer's
``encapsulation`` must stay ``forced`` (the default). The key log (``keylog: DIR``) gets the
esp_sa rows of every CHILD SA next to the IKE rows. Every error names the field.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from trellis.agent.esp.constants import DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW
from trellis.agent.esp.selectors import IPNetwork
from trellis.agent.ike.config import PeerConfig
from trellis.agent.ikeconfig import MAX_CONFIG_BYTES, ConfigError, StaticConfig, parse_static_config
from trellis.agent.site.tunnels import EspPolicy, SiteConfigError, selector_networks

SITE_SECTIONS = ("dataplane", "state_dir", "policy_view")
TUN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1
MIN_UNDERLAY_MTU = 576
MAX_UNDERLAY_MTU = 65535
MAX_LIFETIME_COUNT = 1 << 62


class Backend(enum.StrEnum):
    USERSPACE = "userspace"
    NONE = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataplaneSettings:
    backend: Backend = Backend.USERSPACE
    tun_name: str = "trellis0"
    underlay_mtu: int = 1500
    tun_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    gro: bool = True
    tso: bool = False
    clamp_mss: bool = True
    fail_closed: bool = True
    esp: EspPolicy = field(default_factory=EspPolicy)


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteConfig:
    ike: StaticConfig
    dataplane: DataplaneSettings
    state_dir: Path | None = None
    policy_view: Path | None = None  # read by the running site (policyfile.load_policy_view)


_BOOLEANS = ("gro", "tso", "clamp_mss", "fail_closed")
_COUNTS = ("rekey_bytes", "life_bytes", "rekey_packets", "life_packets")
_FIELDS = ("backend", "tun_name", "underlay_mtu", "tun_addresses", "replay_window", *_BOOLEANS, *_COUNTS)


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, f"expected a whole number from {low} to {high}")
    return value


def parse_dataplane(value: Any, path: str = "dataplane") -> DataplaneSettings:
    if value is None:
        return DataplaneSettings()
    if not isinstance(value, dict):
        raise _fail(path, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in _FIELDS)
    if unknown:
        raise _fail(path, f"unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    options: dict[str, Any] = {}
    if value.get("backend") is not None:
        try:
            options["backend"] = Backend(str(value["backend"]))
        except ValueError:
            raise _fail(f"{path}.backend", "expected 'userspace' or 'none'") from None
    if value.get("tun_name") is not None:
        name = value["tun_name"]
        if not isinstance(name, str) or not TUN_NAME.match(name):
            raise _fail(
                f"{path}.tun_name", "expected an interface name of 1 to 15 letters, digits, '_', '.', '-'"
            )
        options["tun_name"] = name
    if value.get("underlay_mtu") is not None:
        options["underlay_mtu"] = _integer(
            value["underlay_mtu"], f"{path}.underlay_mtu", MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU
        )
    if value.get("tun_addresses") is not None:
        items = value["tun_addresses"]
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list):
            raise _fail(f"{path}.tun_addresses", "expected a list of addresses with prefix length")
        addresses = []
        for index, item in enumerate(items):
            try:
                addresses.append(ipaddress.ip_interface(str(item)))
            except ValueError as e:
                raise _fail(f"{path}.tun_addresses[{index}]", str(e)) from None
        options["tun_addresses"] = tuple(addresses)
    for name in _BOOLEANS:
        if value.get(name) is not None:
            if not isinstance(value[name], bool):
                raise _fail(f"{path}.{name}", "expected true or false")
            options[name] = value[name]
    esp: dict[str, Any] = {}
    if value.get("replay_window") is not None:
        esp["replay_window"] = _integer(
            value["replay_window"], f"{path}.replay_window", MIN_REPLAY_WINDOW, MAX_REPLAY_WINDOW
        )
    for name in _COUNTS:
        if value.get(name) is not None:
            esp[name] = _integer(value[name], f"{path}.{name}", 1, MAX_LIFETIME_COUNT)
    for soft, hard in (("rekey_bytes", "life_bytes"), ("rekey_packets", "life_packets")):
        if soft in esp and hard in esp and esp[soft] > esp[hard]:
            raise _fail(f"{path}.{soft}", f"must not exceed {hard}")
    try:
        options["esp"] = EspPolicy(**{"replay_window": DEFAULT_REPLAY_WINDOW, **esp})
    except SiteConfigError as e:
        raise _fail(path, str(e)) from None
    return DataplaneSettings(**options)


def parse_site_config(text: str, *, base: Path) -> SiteConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"the configuration: expected a mapping, got {type(document).__name__}")
    own = {key: document.pop(key) for key in SITE_SECTIONS if key in document}
    dataplane = parse_dataplane(own.get("dataplane"))
    state_dir = None
    if own.get("state_dir") is not None:
        if not isinstance(own["state_dir"], str):
            raise _fail("state_dir", "expected a directory name")
        state_dir = Path(own["state_dir"])
        state_dir = state_dir if state_dir.is_absolute() else base / state_dir
    policy_view = None
    if own.get("policy_view") is not None:
        if not isinstance(own["policy_view"], str) or not own["policy_view"]:
            raise _fail("policy_view", "expected a file name")
        policy_view = Path(own["policy_view"])
        policy_view = policy_view if policy_view.is_absolute() else base / policy_view
    ike = parse_static_config(yaml.safe_dump(document, sort_keys=False), base=base)
    config = SiteConfig(ike=ike, dataplane=dataplane, state_dir=state_dir, policy_view=policy_view)
    return with_backend(config, dataplane.backend)


def with_backend(config: SiteConfig, backend: Backend) -> SiteConfig:
    """``config`` with another data-plane backend (``trellis-agent run --dataplane``), checked."""
    if backend is Backend.USERSPACE:
        for index, peer in enumerate(config.ike.peers):
            if not peer.force_encapsulation:
                raise _fail(
                    f"peers[{index}].encapsulation",
                    "the userspace data plane carries ESP in UDP only: "
                    "use 'forced' (or dataplane.backend: none)",
                )
    return replace(config, dataplane=replace(config.dataplane, backend=backend))


def load_site_config(path: Path) -> SiteConfig:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse_site_config(text, base=path.parent)


def pinned_routes(peers: tuple[PeerConfig, ...]) -> list[IPNetwork]:
    """The configured remote selectors of every peer with a known address, as prefixes, leaving
    out any prefix that holds a peer's own address (its tunnel would carry itself)."""
    hosts = [ipaddress.ip_address(p.remote_host) for p in peers if p.remote_host is not None]
    routes: list[IPNetwork] = []
    for peer in peers:
        if peer.remote_host is None:
            continue
        for child in peer.children:
            for prefix in selector_networks(child.remote_ts):
                if prefix not in routes and not any(host in prefix for host in hosts):
                    routes.append(prefix)
    return routes
