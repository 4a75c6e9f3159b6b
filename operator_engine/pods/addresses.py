"""Which network addresses the configure pod may fetch from.

A Workflow names the URLs that configure downloads, and the algorithm can
copy whatever configure wrote into the data volume out to the consumer. So a
URL that points inside the provider's network (cloud metadata at
169.254.169.254, the Kubernetes API, an internal database's HTTP port) would
hand its answer to a stranger. This module is the rule: an address is
refused when it belongs to one of :data:`FORBIDDEN_NETWORKS`, unless the
provider's allow-list (``CONFIGURE_ALLOWED_NETWORKS``) names its network or
the host name it was reached through.

The rule is applied to *resolved* addresses (what DNS answered, or the
literal in the URL after the resolver parsed it), so every spelling of an
address (``2852039166``, ``0xa9.254.169.254``, ``[::ffff:169.254.169.254]``)
ends up checked in the same canonical form. IPv6 forms that carry an IPv4
address (IPv4-mapped, NAT64, 6to4) are judged by that IPv4 address too.

Pure functions, no I/O and no internal imports: ``config`` uses
:func:`parse_allow_list` to check the variable at the operator's start, and
the configure pod uses the same function on the value it is given.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The environment variable (operator setting, passed on to the configure pod).
ALLOWED_NETWORKS_VARIABLE = "CONFIGURE_ALLOWED_NETWORKS"

#: Refused by default: every range that is not ordinary public unicast.
FORBIDDEN_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address 255.255.255.255
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "reserved"),  # deprecated IPv4-compatible addresses
        ("64:ff9b:1::/48", "private"),
        ("100::/64", "reserved"),
        ("2001::/23", "reserved"),
        ("2001:db8::/32", "reserved"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)

# IPv6 ranges whose addresses carry an IPv4 address that is reached in the end.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")

_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, NAT64, 6to4), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default (``"loopback"``, ...), or ``None`` for public unicast."""
    for candidate in (address, embedded_ipv4(address)):
        if candidate is None:
            continue
        for network, reason in FORBIDDEN_NETWORKS:
            if candidate.version == network.version and candidate in network:
                return reason
    return None


def parse_address(text: str) -> IPAddress:
    """An address as a resolver returns it (an IPv6 one may carry a ``%scope``)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


@dataclass(frozen=True)
class AllowList:
    """Networks and host names the provider allows although the default rule refuses them.

    A host name entry allows that exact host (``minio.storage.svc``), or with
    a leading ``*.`` every host under a domain (``*.internal.example``);
    either way the connection still goes to the address resolved once and
    checked for that host.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()

    def allows_host(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        for entry in self.hosts:
            if entry.startswith("*."):
                if name.endswith(entry[1:]) and len(name) > len(entry) - 1:
                    return True
            elif name == entry:
                return True
        return False

    def allows_address(self, address: IPAddress) -> bool:
        candidates = [address]
        mapped = embedded_ipv4(address)
        if mapped is not None:
            candidates.append(mapped)
        return any(c.version == n.version and c in n for c in candidates for n in self.networks)

    def describe(self) -> str:
        entries = [str(n) for n in self.networks] + list(self.hosts)
        return ", ".join(entries) if entries else "nothing"


def parse_allow_list(text: str | None) -> AllowList:
    """Parse ``CONFIGURE_ALLOWED_NETWORKS``: CIDRs, addresses and host names, comma or space separated.

    Raises ``ValueError`` naming the first entry that is none of these.
    """
    networks: list[IPNetwork] = []
    hosts: list[str] = []
    for entry in re.split(r"[,\s]+", (text or "").strip()):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if len(name) > 253 or not _HOSTNAME.match(name):
            raise ValueError(
                f"{entry!r} is neither a network (CIDR such as 10.0.0.0/8 or an address) "
                "nor a host name (such as minio.storage.svc or *.internal.example)"
            )
        hosts.append(name)
    return AllowList(tuple(networks), tuple(hosts))
