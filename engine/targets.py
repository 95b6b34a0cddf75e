"""Where calls to URLs given by customers and rule authors may go: public addresses, plus what the operator allows.

A URL's host is resolved here, only the addresses the policy permits are kept, the transport is pinned to
them (so a second lookup cannot answer differently: DNS rebinding), and every socket the transport opens
is checked against that pin, so whatever host the transport itself reads from the URL, it connects to an
address that was checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pycurl

from providers.base import TransportError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Forms inet_aton reads as an IPv4 address besides the dotted quad: 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(TransportError):
    """The URL's host is, or resolves to, an address outbound calls may not reach; nothing was sent."""


def is_public(ip: Address) -> bool:
    """Whether `ip` is a globally routable unicast address, and not an IPv6 form carrying an inside IPv4 one.

    Refused: loopback, private, link-local (169.254.169.254), CGNAT 100.64/10, unique-local fc00::/7,
    multicast, unspecified, reserved and documentation ranges; IPv4-mapped and IPv4-compatible IPv6
    outright; 6to4, Teredo and NAT64 when the IPv4 address they carry is not public.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None or (ip in _IPV4_COMPATIBLE):
            return False
        carried = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is None and ip in _NAT64:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None and not is_public(carried):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def literal_address(host: str) -> Address | None:
    """The address a host names literally, in any form a resolver accepts (`2130706433` is 127.0.0.1)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """Public addresses, plus the operator's allowlist: networks (CIDRs or addresses) and exact host names."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> TargetPolicy:
        """From the `outbound_allow` setting: comma- or space-separated CIDRs, addresses and host names."""
        networks, hosts = [], set()
        for item in re.split(r"[\s,]+", text.strip()):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", item) or _NUMERIC_HOST.match(item):
                    raise ValueError(f"outbound allowlist entry {item!r} is neither a CIDR nor a host name") from None
                hosts.add(item.lower())
        return cls(tuple(networks), frozenset(hosts))

    def permits(self, host: str, ip: Address) -> bool:
        """Whether a call to `host` may connect to `ip`."""
        return host.lower().rstrip(".") in self.hosts or any(ip in net for net in self.networks) or is_public(ip)

    def check_url(self, url: str) -> None:
        """Refuse, when it is set, a URL whose host is obviously inside: a non-public literal address or a
        localhost name. Names are not resolved here; `pin` checks what they resolve to at each call."""
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        if host in self.hosts:
            return
        ip = literal_address(host)
        inside = (host == "localhost" or host.endswith(".localhost")) if ip is None else not self.permits(host, ip)
        if inside:
            raise ValueError("the URL must point at a public address (or one the operator allows)")

    def pin(self, url: str) -> Pin:
        """Resolve the URL's host and keep the addresses it may connect to; TargetRefused when none is left."""
        parts = urlsplit(url)
        host, scheme = parts.hostname or "", parts.scheme.lower()
        try:
            port = parts.port or DEFAULT_PORTS.get(scheme, 0)
        except ValueError:
            raise TargetRefused(f"refused target {url!r}: bad port") from None
        if scheme not in DEFAULT_PORTS or not host:
            raise TargetRefused(f"refused target {url!r}: not an http(s) URL with a host")
        try:
            found = {ipaddress.ip_address(info[4][0].split("%")[0])
                     for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        except (OSError, UnicodeError) as exc:
            raise TransportError(f"cannot resolve {host!r}: {exc}") from None
        allowed = frozenset(ip for ip in found if self.permits(host, ip))
        if not allowed:
            raise TargetRefused(f"refused target {host!r}: resolves to {', '.join(sorted(map(str, found)))}")
        return Pin(host, port, allowed)


@dataclass(slots=True)
class Pin:
    """The addresses one call may connect to; `refused` names any other the transport tried to open."""

    host: str
    port: int
    addresses: frozenset[Address]
    refused: list[str] = field(default_factory=list)

    def resolve_entries(self) -> list[str]:
        """For CURLOPT_RESOLVE: the transport takes these addresses for the host instead of looking it up again."""
        if literal_address(self.host) is not None:
            return []
        return [f"{self.host}:{self.port}:{','.join(_bracketed(ip) for ip in sorted(self.addresses, key=str))}"]

    def open_socket(self, purpose: int, address: pycurl.CurlSockAddr) -> socket.socket | int:
        """CURLOPT_OPENSOCKETFUNCTION: a socket only for a pinned address."""
        ip = ipaddress.ip_address(address.addr[0])
        if ip not in self.addresses:
            self.refused.append(str(ip))
            return pycurl.SOCKET_BAD
        return socket.socket(address.family, address.socktype, address.protocol)


def _bracketed(ip: Address) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)
