"""Noise XX handshake with the router's pre-shared key (sans-IO).

`Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b`: both sides prove a static key, and the psk
(derived from the router secret) is mixed in at the third message, so a peer without the
secret cannot complete the handshake and never sees a transport key.

On the byte stream each handshake message is framed as `MAGIC (4) || length:u16 || body`;
the magic lets us tell "not a hypergate peer" apart from "wrong secret" in the logs.
The first message's payload carries the topic hint (public), so a responder can say
"different router secret" before spending a Diffie-Hellman on the peer.
"""

from __future__ import annotations

import struct

import attrs
from noise.connection import Keypair, NoiseConnection

from .. import limits
from ..errors import HandshakeError
from .keys import LinkIdentity, RouterKeys

PROTOCOL_NAME = b"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"hypergate link v1"
MAGIC = b"HGL1"
_LEN = struct.Struct(">H")
FRAME_OVERHEAD = len(MAGIC) + _LEN.size


class WrongRouterSecret(HandshakeError):
    """The peer is a hypergate peer of another router (different secret)."""


@attrs.frozen(repr=False)
class HandshakeResult:
    remote_static: bytes  # the peer's X25519 static key: its identity on this link
    send_key: bytes
    recv_key: bytes
    handshake_hash: bytes  # unique per link; binds anything signed to this session


def frame_message(body: bytes) -> bytes:
    return MAGIC + _LEN.pack(len(body)) + body


def parse_frame_header(header: bytes) -> int:
    """Length of the body that follows a 6-byte handshake frame header."""
    if header[: len(MAGIC)] != MAGIC:
        raise HandshakeError("not a hypergate peer (bad handshake magic)")
    (length,) = _LEN.unpack_from(header, len(MAGIC))
    if length > limits.MAX_HANDSHAKE_MESSAGE:
        raise HandshakeError(f"handshake message of {length} bytes is larger than allowed")
    return length


class NoiseHandshake:
    """Three messages: initiator writes 1, responder writes 2, initiator writes 3.

    Use `next_outgoing()` when `wants_write`, `receive(body)` otherwise, until `done`.
    """

    def __init__(self, *, initiator: bool, identity: LinkIdentity, router: RouterKeys) -> None:
        self.initiator = initiator
        self._router = router
        self._noise = NoiseConnection.from_name(PROTOCOL_NAME)
        if initiator:
            self._noise.set_as_initiator()
        else:
            self._noise.set_as_responder()
        self._noise.set_keypair_from_private_bytes(Keypair.STATIC, identity.noise_private)
        self._noise.set_psks(psk=router.link_psk)
        self._noise.set_prologue(PROLOGUE)
        self._noise.start_handshake()
        # Keep the handshake state: the library drops it once the last message is read,
        # and the responder learns the initiator's static key only in that message.
        self._state = self._noise.noise_protocol.handshake_state
        self._step = 0  # messages processed so far
        self.result: HandshakeResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def wants_write(self) -> bool:
        # Initiator writes messages 0 and 2; responder writes message 1.
        return not self.done and (self._step % 2 == 0) == self.initiator

    def next_outgoing(self) -> bytes:
        if not self.wants_write:
            raise HandshakeError("handshake: not our turn to write")
        payload = self._router.topic_hint if self._step == 0 else b""
        body = bytes(self._noise.write_message(payload))
        self._advance()
        return frame_message(body)

    def receive(self, body: bytes) -> None:
        if self.done or self.wants_write:
            raise HandshakeError("handshake: unexpected message")
        try:
            payload = bytes(self._noise.read_message(body))
        except Exception as exc:  # noise and cryptography share no base class (InvalidTag, ...)
            if self._step == 2:
                # Message 3 is the first one keyed by the psk.
                raise WrongRouterSecret(
                    "handshake failed at message 3: the peer does not hold this router secret"
                ) from None
            raise HandshakeError(
                f"malformed handshake message {self._step + 1}: {type(exc).__name__} {exc}"
            ) from None
        if self._step == 0 and payload != self._router.topic_hint:
            raise WrongRouterSecret("the peer uses a different router secret (topic mismatch)")
        self._advance()

    def _advance(self) -> None:
        self._step += 1
        if self._noise.handshake_finished:
            proto = self._noise.noise_protocol
            self.result = HandshakeResult(
                remote_static=self._state.rs.public_bytes,
                send_key=proto.cipher_state_encrypt.k,
                recv_key=proto.cipher_state_decrypt.k,
                handshake_hash=proto.handshake_hash,
            )
