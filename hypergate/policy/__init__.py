"""Ingress policy, per-channel shaping and `/unlimited` grants.

- `ingress`: policy documents, merging, validation, `IngressPolicy.decide`.
- `source`: `PolicySource`, the live policy with URL sources re-read (trio).
- `token_bucket`: `TokenBucket` (sans-IO), `Shaper` / `ChannelShaper` (trio).
- `unlimited`: `/unlimited` tokens and grants (sans-IO).
"""
