"""One peer connection: handshake, hello exchange, then a mux session until the link ends.

The role objects (provider, gateway) see a peer only once it has proven the router
secret and said what it is; before that it can neither learn a route nor open a channel.
"""

from __future__ import annotations

import itertools
import logging
from typing import Protocol

import trio

from . import limits
from .crypto.keys import LinkIdentity, RouterKeys
from .crypto.secure_link import SecureLink, establish_link
from .crypto.suites import CipherSuite
from .errors import HandshakeError
from .mux.channel import Channel
from .mux.session import MuxSession
from .wire.messages import PROTOCOL_VERSION, Hello, Message, ResetCode

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = limits.HANDSHAKE_TIMEOUT_S
MAX_EARLY_MESSAGES = 8

_peer_numbers = itertools.count(1)


class RoleHooks(Protocol):
    """What the router's roles implement to hear about peers."""

    def peer_ready(self, peer: PeerConnection) -> None: ...

    def peer_lost(self, peer: PeerConnection) -> None: ...

    def on_message(self, peer: PeerConnection, message: Message) -> None: ...

    async def handle_channel(self, peer: PeerConnection, channel: Channel) -> None: ...


# Close reasons when two links to one peer race (both sides keep the one dialled by the
# smaller key): the newer link is refused, or the older one is closed in its favour.
DUPLICATE_LINK = "duplicate link to this peer"
REPLACED_LINK = "replaced by a duplicate link"


class PeerConnection:
    """A link to one peer process, keyed by the link (not by the peer's key), so a
    reconnecting peer never disturbs its newer link."""

    def __init__(self, address: str, initiator: bool) -> None:
        self.number = next(_peer_numbers)
        self.address = address
        self.initiator = initiator
        self.remote_key: bytes = b""
        self.hello: Hello | None = None
        self.session: MuxSession | None = None
        self.ready = trio.Event()
        self.finished = trio.Event()
        self.close_reason = ""

    @property
    def name(self) -> str:
        key = self.remote_key.hex()[:8] if self.remote_key else "?"
        return f"{key}@{self.address}"

    def __repr__(self) -> str:
        return f"PeerConnection({self.name})"

    @property
    def is_provider(self) -> bool:
        return bool(self.hello and self.hello.provider)

    @property
    def is_gateway(self) -> bool:
        return bool(self.hello and self.hello.gateway)

    def close(self, reason: str) -> None:
        self.close_reason = reason
        if self.session is not None:
            self.session.abort(reason)


async def run_peer(
    peer: PeerConnection,
    stream: trio.abc.Stream,
    *,
    identity: LinkIdentity,
    router_keys: RouterKeys,
    suite: CipherSuite | None = None,
    **kwargs,
) -> None:
    """Handshake over `stream`, then serve the peer (see `run_link`)."""
    try:
        link = await establish_link(
            stream, initiator=peer.initiator, identity=identity, router=router_keys, suite=suite
        )
    except HandshakeError as exc:
        log.warning("peer=%s event=handshake_rejected reason=%r", peer.address, str(exc))
        peer.close_reason = str(exc)
        await trio.aclose_forcefully(stream)
        peer.finished.set()
        return
    await run_link(peer, link, **kwargs)


async def run_link(
    peer: PeerConnection,
    link: SecureLink,
    *,
    my_hello: Hello,
    hooks: RoleHooks,
    admit,  # Callable[[PeerConnection], str | None]: None admits, else the reason to refuse
    release,  # Callable[[PeerConnection], None]
    on_hello=None,  # Callable[[PeerConnection], None]: its hello arrived (admitted or not)
) -> None:
    """Serve one authenticated link until it ends. Never raises for peer faults."""
    peer.remote_key = link.remote_static
    hello_received = trio.Event()
    admitted = False
    # The peer may admit us, and speak, before its hello has been checked here: keep what
    # it says meanwhile (bounded) and hand it over once it is admitted.
    early: list[Message] = []

    def on_message(message: Message) -> None:
        if isinstance(message, Hello):
            if peer.hello is None:
                peer.hello = message
                hello_received.set()
                if on_hello is not None:
                    on_hello(peer)
            return
        if not admitted:
            if peer.hello is None or len(early) >= MAX_EARLY_MESSAGES:
                log.warning("peer=%s event=message_before_hello ignored", peer.name)
            else:
                early.append(message)
            return
        hooks.on_message(peer, message)

    async def on_channel(channel: Channel) -> None:
        if not admitted:
            channel.reset(ResetCode.REFUSED, "hello not completed")
            return
        await hooks.handle_channel(peer, channel)

    session = MuxSession(link, on_channel=on_channel, on_message=on_message, name=peer.name)
    peer.session = session
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            session.send_message(my_hello)
            with trio.move_on_after(HELLO_TIMEOUT_S):
                await hello_received.wait()
            refusal = _check_hello(peer, my_hello) if peer.hello else "no hello from peer"
            if refusal is None:
                refusal = admit(peer)
            if refusal is not None:
                log.info("peer=%s event=link_refused reason=%r", peer.name, refusal)
                peer.close_reason = refusal
                await session.close(grace=0)
                return
            admitted = True
            log.info(
                "peer=%s event=peer_connected provider=%s gateway=%s initiator=%s cipher=%s",
                peer.name, peer.is_provider, peer.is_gateway, peer.initiator,
                link.suite,
            )
            peer.ready.set()
            try:
                hooks.peer_ready(peer)
                for message in early:
                    hooks.on_message(peer, message)
                early.clear()
                # The session task ends when the link does; this nursery then exits.
            except Exception:
                log.exception("peer=%s event=role_hook_failed", peer.name)
                raise
    finally:
        if admitted:
            hooks.peer_lost(peer)
            release(peer)
            log.info(
                "peer=%s event=peer_disconnected reason=%r", peer.name,
                peer.close_reason or session.close_reason,
            )
        peer.finished.set()


def _check_hello(peer: PeerConnection, mine: Hello) -> str | None:
    theirs = peer.hello
    assert theirs is not None
    if theirs.version != PROTOCOL_VERSION:
        return f"peer speaks protocol version {theirs.version}, we speak {PROTOCOL_VERSION}"
    useful = (mine.provider and theirs.gateway) or (mine.gateway and theirs.provider)
    if not useful:
        return "nothing to exchange (both providers or both gateways)"
    return None
