"""Provider and gateway roles; a process may run either or both."""

from __future__ import annotations

from ..mux.channel import Channel
from ..peer import PeerConnection
from ..wire.messages import Message, ResetCode
from .gateway import Gateway
from .provider import Provider


class Roles:
    """Fans the router's peer events out to the roles this process runs."""

    def __init__(self, provider: Provider | None, gateway: Gateway | None) -> None:
        self.provider = provider
        self.gateway = gateway

    def _active(self):
        return [role for role in (self.provider, self.gateway) if role is not None]

    def peer_ready(self, peer: PeerConnection) -> None:
        for role in self._active():
            role.peer_ready(peer)

    def peer_lost(self, peer: PeerConnection) -> None:
        for role in self._active():
            role.peer_lost(peer)

    def on_message(self, peer: PeerConnection, message: Message) -> None:
        for role in self._active():
            role.on_message(peer, message)

    async def handle_channel(self, peer: PeerConnection, channel: Channel) -> None:
        if self.provider is None or not peer.is_gateway:
            channel.reset(ResetCode.REFUSED, "this peer provides no services")
            return
        await self.provider.handle_channel(peer, channel)
