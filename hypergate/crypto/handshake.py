"""Noise XX handshake with the router's pre-shared key (sans-IO).

`Noise_XXpsk3_25519_<cipher>_BLAKE2b`: both sides prove a static key, and the psk
(derived from the router secret) is mixed in at the third message, so a peer without the
secret cannot complete the handshake and never sees a transport key. The cipher is the
initiator's choice (`suites.py`): message 1's body is `suite id (1) || Noise message`.

On the byte stream each handshake message is framed as `MAGIC (4) || length:u16 || body`;
the magic lets us tell "not a hypergate peer" apart from "wrong secret" in the logs, and
an older hypergate (link protocol v1) apart from both.
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
from .suites import SUITES_BY_ID, CipherSuite, auto_suite

PROLOGUE = b"hypergate link v2"
MAGIC = b"HGL2"
_V1_MAGIC = b"HGL1"  # hypergate before cipher negotiation
_LEN = struct.Struct(">H")
FRAME_OVERHEAD = len(MAGIC) + _LEN.size


class WrongRouterSecret(HandshakeError):
    """The peer is a hypergate peer of another router (different secret)."""


@attrs.frozen(repr=False)
class HandshakeResult:
    remote_static: bytes  # the peer's X25519 static key: its identity on this link
    suite: CipherSuite
    send_key: bytes
    recv_key: bytes
    handshake_hash: bytes  # unique per link; binds anything signed to this session


def frame_message(body: bytes) -> bytes:
    return MAGIC + _LEN.pack(len(body)) + body


def parse_frame_header(header: bytes) -> int:
    """Length of the body that follows a 6-byte handshake frame header."""
    if header[: len(MAGIC)] == _V1_MAGIC:
        raise HandshakeError(
            "the peer runs an older hypergate (link protocol v1, no cipher negotiation): "
            "run the same version on both ends"
        )
    if header[: len(MAGIC)] != MAGIC:
        raise HandshakeError("not a hypergate peer (bad handshake magic)")
    (length,) = _LEN.unpack_from(header, len(MAGIC))
    if length > limits.MAX_HANDSHAKE_MESSAGE:
        raise HandshakeError(f"handshake message of {length} bytes is larger than allowed")
    return length


class NoiseHandshake:
    """Three messages: initiator writes 1, responder writes 2, initiator writes 3.

    Use `next_outgoing()` when `wants_write`, `receive(body)` otherwise, until `done`.
    The initiator offers `suite` (default: what this CPU runs fastest); the responder
    takes whichever suite message 1 names (its own `suite` is ignored).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        identity: LinkIdentity,
        router: RouterKeys,
        suite: CipherSuite | None = None,
    ) -> None:
        self.initiator = initiator
        self._router = router
        self._identity = identity
        self._noise: NoiseConnection | None = None
        self._state = None
        self.suite: CipherSuite | None = None
        if initiator:
            self._start(suite or auto_suite())
        self._step = 0  # messages processed so far
        self.result: HandshakeResult | None = None

    def _start(self, suite: CipherSuite) -> None:
        self.suite = suite
        noise = self._noise = NoiseConnection.from_name(suite.noise_name)
        if self.initiator:
            noise.set_as_initiator()
        else:
            noise.set_as_responder()
        noise.set_keypair_from_private_bytes(Keypair.STATIC, self._identity.noise_private)
        noise.set_psks(psk=self._router.link_psk)
        noise.set_prologue(PROLOGUE)
        noise.start_handshake()
        # Keep the handshake state: the library drops it once the last message is read,
        # and the responder learns the initiator's static key only in that message.
        self._state = noise.noise_protocol.handshake_state

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
        if self._step == 0:
            body = bytes([self.suite.id]) + bytes(self._noise.write_message(self._router.topic_hint))
        else:
            body = bytes(self._noise.write_message(b""))
        self._advance()
        return frame_message(body)

    def receive(self, body: bytes) -> None:
        if self.done or self.wants_write:
            raise HandshakeError("handshake: unexpected message")
        if self._step == 0:
            if not body:
                raise HandshakeError("malformed handshake message 1: empty")
            suite = SUITES_BY_ID.get(body[0])
            if suite is None:
                raise HandshakeError(
                    f"the peer chose cipher suite {body[0]}, which this hypergate does not know "
                    "(run the same version on both ends)"
                )
            self._start(suite)
            body = body[1:]
        try:
            payload = bytes(self._noise.read_message(body))
        except Exception as exc:  # noise and cryptography share no base class (InvalidTag, ...)
            if self._step == 2:
                # Message 3 is the first one keyed by the psk.
                raise WrongRouterSecret(
                    "handshake failed at message 3: the peer does not hold this router secret"
                ) from None
            if self._step == 0:
                # psk modes key message 1's payload by the protocol name (which names the
                # suite) and the ephemeral key: a changed suite byte fails right here.
                raise HandshakeError(
                    "handshake message 1 failed to authenticate: altered on the way "
                    f"(cipher suite {self.suite.name} as received), or not a hypergate peer"
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
                suite=self.suite,
                send_key=proto.cipher_state_encrypt.k,
                recv_key=proto.cipher_state_decrypt.k,
                handshake_hash=proto.handshake_hash,
            )
