#!/usr/bin/env python3
"""Check a tandem bundle without tandem: a second, independent verifier.

    python3 verify_bundle.py BUNDLE.json --key 'tandem/0123abcd…+1a2b3c4d+AX…'

It needs the Python standard library and `cryptography` (Ed25519). It
checks what `tandem verify` checks, written again from the formats:

- the checkpoint is a C2SP signed note signed by KEY, and a C2SP
  tlog-checkpoint of the log KEY names (origin, size, root);
- each event's hash is SHA-256 of the RFC 8785 (JCS) canonical JSON of
  {actor, kind, payload, prev, seq, subject, ts}; consecutive events link;
- the events are in the log: RFC 6962 hashing (leaf = SHA-256(0x00 || the
  event's hash), node = SHA-256(0x01 || left || right)) over the batch
  proof's subtrees gives the signed root;
- the previous checkpoint, if any, is consistent with it (RFC 9162 2.1.4.2);
- every event is about the customer or a service of theirs (a service's
  customer is the first one it was delivered to).

Exit 0 if all holds, 1 naming what does not, 2 for unreadable input.
"""

import argparse
import base64
import bisect
import hashlib
import json
import math
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Bad(Exception):
    pass


# --- RFC 8785 canonical JSON -------------------------------------------------

def number(x):
    if isinstance(x, bool):
        raise Bad("not a number")
    if isinstance(x, int):
        if abs(x) <= 2**53:
            return str(x)
        x = float(x)  # RFC 8785 numbers are doubles
    if not math.isfinite(x):
        raise Bad("JSON has no NaN or infinity")
    if x == 0:
        return "0"
    # ECMAScript's Number.prototype.toString over the shortest digits that
    # round-trip (which repr gives): the value is 0.DIGITS x 10^n.
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac.rstrip("0")
    n = len(whole) + int(exp or 0)
    n -= len(digits) - len(digits.lstrip("0"))
    digits = digits.strip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))


def canonical(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(v[k]) for k in keys) + "}"
    raise Bad(f"not JSON: {type(v)}")


def event_hash(e):
    body = {k: e[k] for k in ("actor", "kind", "payload", "prev", "seq", "subject", "ts")}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


# --- RFC 6962 Merkle tree ----------------------------------------------------

def leaf(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def batch_root(size, leaves, proof):
    """leaves: sorted [(index, leaf hash)]; proof: subtree hashes, left to right."""
    indices = [i for i, _ in leaves]
    hashes = dict(leaves)
    proof = list(proof)

    def holds(lo, hi):
        j = bisect.bisect_left(indices, lo)
        return j < len(indices) and indices[j] < hi

    def rebuild(lo, hi):
        if not holds(lo, hi):
            if not proof:
                raise Bad("the batch proof is too short")
            return proof.pop(0)
        if hi - lo == 1:
            return hashes[lo]
        k = split(hi - lo)
        return node(rebuild(lo, lo + k), rebuild(lo + k, hi))

    root = rebuild(0, size)
    if proof:
        raise Bad("the batch proof is too long")
    return root


def consistent(old, new, old_root, new_root, proof):
    if old == 0 or old > new:
        return False
    if old == new:
        return not proof and old_root == new_root
    path = ([old_root] if old & (old - 1) == 0 else []) + list(proof)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# --- C2SP signed notes and checkpoints ---------------------------------------

def open_checkpoint(note, key):
    name, key_id, encoded = key.strip().split("+", 2)
    raw = base64.b64decode(encoded)
    if raw[:1] != b"\x01" or len(raw) != 33:
        raise Bad("the key is not an Ed25519 verifier key")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id:
        raise Bad("the key's id does not match its name and key")
    text, sep, sigs = note.rpartition("\n\n")
    if not sep:
        raise Bad("the checkpoint is not a signed note")
    text += "\n"
    public = Ed25519PublicKey.from_public_bytes(raw[1:])
    signed = False
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            raise Bad(f"not a signature line: {line!r}")
        who, _, sig = line[2:].rpartition(" ")
        sig = base64.b64decode(sig)
        if who == name and sig[:4].hex() == key_id:
            try:
                public.verify(sig[4:], text.encode("utf-8"))
            except InvalidSignature:
                raise Bad(f"the checkpoint's signature by {name} is not valid")
            signed = True
    if not signed:
        raise Bad(f"the checkpoint is not signed by {name}")
    origin, size, root = text.split("\n")[:3]
    if origin != name:
        raise Bad(f"the checkpoint is of the log {origin!r}, not {name!r}")
    return int(size), base64.b64decode(root)


# --- the bundle ----------------------------------------------------------------

def verify(bundle, key):
    if bundle.get("format") != "tandem-bundle/1":
        raise Bad(f"format {bundle.get('format')!r}")
    size, root = open_checkpoint(bundle["checkpoint"], key)
    leaves, last = [], None
    for e in bundle["events"]:
        seq = e["seq"]
        if not 0 < seq <= size:
            raise Bad(f"event {seq}: not in a log of {size} events")
        if last is not None and seq <= last["seq"]:
            raise Bad(f"event {seq}: out of order")
        if last is not None and seq == last["seq"] + 1 and e["prev"] != last["hash"]:
            raise Bad(f"event {seq}: its prev is not event {last['seq']}'s hash")
        if event_hash(e) != e["hash"]:
            raise Bad(f"event {seq}: content does not match its hash")
        leaves.append((seq - 1, leaf(bytes.fromhex(e["hash"]))))
        last = e
    proof = [bytes.fromhex(h) for h in bundle["proof"]]
    if batch_root(size, leaves, proof) != root:
        raise Bad(f"the events are not those of the signed log at {size} events")
    previous = bundle.get("previous")
    if previous:
        old, old_root = open_checkpoint(previous["checkpoint"], key)
        if not consistent(old, size, old_root, root, [bytes.fromhex(h) for h in previous["proof"]]):
            raise Bad(f"the log at {size} events does not extend the checkpoint at {old}")
    customer, owner = bundle["customer"], {}
    for e in bundle["events"]:
        payload, service = e["payload"], e["subject"].get("service")
        if e["kind"] in ("service.created", "service.updated") and service is not None \
                and isinstance(payload, dict) and isinstance(payload.get("customer"), str):
            owner.setdefault(service, payload["customer"])
    theirs = {s for s, c in owner.items() if c == customer}
    for e in bundle["events"]:
        if e["subject"].get("customer") != customer and e["subject"].get("service") not in theirs:
            raise Bad(f"event {e['seq']} is not about {customer} or their services")
    return size, root, len(leaves)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--key", required=True, help="the installation's verifier key (tandem keys show)")
    a = p.parse_args()
    try:
        with open(a.bundle, encoding="utf-8") as f:
            bundle = json.load(f)
    except (OSError, ValueError) as e:
        print(f"error: {a.bundle}: {e}", file=sys.stderr)
        return 2
    try:
        size, root, n = verify(bundle, a.key)
    except (Bad, KeyError, ValueError, TypeError, AttributeError) as e:
        print(f"error: {a.bundle}: {e}", file=sys.stderr)
        return 1
    print(f"{a.bundle}: {n} event(s) of {bundle['customer']}, all in the log at {size} events (root {root.hex()}), unaltered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
