#!/usr/bin/env python3
"""Independent consumer-side check of the fep.batch/1 message contract.

Consumes a queue with Python's `pika` (a different AMQP client from the lapin that fepd
publishes with) and re-checks every batch the way `verify_batch` (src/verify) does, in
Python, without sharing any code with fepd:

* headers: fep-schema, agent, connector, record type, first/last seq, count, prev/head
  hash, signature (base64, 64 bytes; verified with Ed25519 only with --pubkey);
* message_id is `<agent>/<connector>/<first_seq>`; the body is gzip exactly when
  content_encoding says so;
* every line: JSON object, byte-for-byte canonical (compact, sorted keys), its seq, its
  hash = SHA-256(prev hash bytes || line without "hash"), its type, its id =
  SHA-256(agent|connector|type|source_key|content hash) where the content hash is the
  SHA-256 hex of the canonical `data` (or the literal `deleted` for a delete);
* count/last seq/head hash against the headers;
* across batches of each (agent, connector), after sorting the unique batches by
  first_seq: no gap, no overlap, each batch's prev hash is the previous batch's head hash,
  and a batch starting at seq 1 follows 32 zero bytes;
* re-sends: a message_id seen before must carry a byte-identical (decompressed) body and
  the same fep-* headers; it is then counted as a duplicate batch and skipped;
* control messages (fep-schema fep.heartbeat/1, fep.rejects/1, … any `fep.*` other than a
  batch schema) are counted and skipped; any other message is an error.

Usage:
  pika_consume.py --url amqp://guest:guest@127.0.0.1:5672/%2f --queue Q \
      --expect-records N --timeout SECONDS [--idle SECONDS] [--pubkey FILE_OR_BASE64] \
      [--drain SECONDS] [--allow-later-start]

Stops when N unique records arrived and then nothing more arrived for --drain seconds
(default 0.5: trailing re-sends are checked too; --drain 0 stops at once), when nothing
arrived for --idle seconds (counted from the first message; before it only --timeout
applies) or at --timeout. Prints one JSON line:
  {"records", "batches", "duplicate_batches", "duplicate_records",
   "connectors": {name: {"first_seq", "last_seq", "batches", "records", "head_hash"}},
   "control_messages",
   "signatures": "verified" | "not checked", "error_count", "errors": [first 20],
   "elapsed_s", "check_s"}
and exits 0 iff there is no error and records == N.
"""

import argparse
import base64
import binascii
import gzip
import hashlib
import json
import re
import sys
import time
import zlib

import pika

SCHEMA = "fep.batch/1"
ZERO32 = bytes(32)
MAX_ERRORS_SHOWN = 20
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U64_MAX = 2**64 - 1
# The keys of a record line, in canonical (sorted) order. With exactly these keys the byte
# layout of a canonical line is fixed, which allows hashing slices of the raw bytes.
LINE_KEYS = frozenset(
    ["collected_at", "data", "hash", "id", "op", "seq", "source_key", "type"]
)
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
INT_TEXT = re.compile(r"[+-]?[0-9]+")
FEP_HEADERS = (
    "fep-schema",
    "fep-agent",
    "fep-connector",
    "fep-record-type",
    "fep-first-seq",
    "fep-last-seq",
    "fep-count",
    "fep-prev-hash",
    "fep-head-hash",
    "fep-signature",
)


# --- canonical JSON, as serde_json (no preserve_order) writes a parsed Value ------------


class NotCanonical(ValueError):
    pass


def _parse_float(text):
    # The contract allows only strings, integers, arrays and objects on the wire.
    raise NotCanonical(f"JSON number {text} is not an integer (the contract allows none)")


def _parse_constant(text):
    raise ValueError(f"{text} is not JSON")


def _parse_int(text):
    v = int(text)
    # serde_json keeps integers in i64/u64; anything else becomes f64 and is re-serialised
    # differently, which verify.rs reports as a non-canonical line.
    if v < I64_MIN or v > U64_MAX:
        raise NotCanonical(f"integer {text} is outside i64/u64")
    return v


_decoder = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant, strict=True
)
_scan_once = _decoder.scan_once


def _no_default(o):
    raise TypeError(f"not JSON: {type(o).__name__}")


try:
    import _json

    _c_encoder = _json.make_encoder(
        None, _no_default, _json.encode_basestring, None, ":", ",", True, False, False
    )

    def canonical(obj):
        return "".join(_c_encoder(obj, 0))

except Exception:  # pragma: no cover - interpreters without the C accelerator
    _py_encoder = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )
    canonical = _py_encoder.encode


def parse_line(text):
    """Parses one line (str) into a value; raises ValueError with a message."""
    try:
        obj, end = _scan_once(text, 0)
    except StopIteration:
        raise ValueError("line is not JSON") from None
    if end != len(text):
        raise ValueError("line is not JSON: trailing characters")
    return obj


# --- headers -----------------------------------------------------------------------------


def _norm_header(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return v


def header_str(h, k):
    v = h.get(k)
    if not isinstance(v, str):
        raise BatchError(None, f"header {k} missing or not a string")
    return v


def header_i64(h, k):
    v = h.get(k)
    if isinstance(v, bool) or v is None:
        raise BatchError(None, f"header {k} missing")
    if isinstance(v, int):
        if not (I64_MIN <= v <= I64_MAX):
            raise BatchError(None, f"header {k} is not an integer")
        return v
    if isinstance(v, str):
        if INT_TEXT.fullmatch(v) and I64_MIN <= int(v) <= I64_MAX:
            return int(v)
        raise BatchError(None, f"header {k} is not an integer")
    raise BatchError(None, f"header {k} missing")


class BatchError(Exception):
    def __init__(self, seq, message):
        super().__init__(message)
        self.seq = seq
        self.message = message


# --- one batch ---------------------------------------------------------------------------


class Batch:
    """What the cross-batch checks need of one unique batch."""

    __slots__ = (
        "message_id",
        "agent",
        "connector",
        "first",
        "last",
        "prev",
        "head",
        "records",
        "ok",
        "digest",
        "fep_headers",
    )


def load_verifier(arg):
    """Returns a verify(signature_bytes, payload_bytes) -> bool, from a base64 Ed25519
    public key or a file holding one (like `fepd verify --pubkey`)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        with open(arg, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = arg
    raw = base64.b64decode(text.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("the public key is not 32 bytes")
    key = Ed25519PublicKey.from_public_bytes(raw)

    def verify(sig, payload):
        try:
            key.verify(sig, payload)
            return True
        except InvalidSignature:
            return False

    return verify


def check_lines(plain, first, prev, agent, connector, record_type):
    """Checks every line of a decompressed body. Returns (lines, head bytes) or raises
    BatchError at the first bad line (after counting all lines)."""
    head = prev
    seq = first
    id_prefix = f"{agent}|{connector}|{record_type}|".encode("utf-8")
    sha256 = hashlib.sha256
    lines = [l for l in plain.split(b"\n") if l]
    for lb in lines:
        try:
            ls = lb.decode("utf-8")
        except UnicodeDecodeError:
            raise BatchError(seq, "line is not JSON: invalid UTF-8") from None
        try:
            obj = parse_line(ls)
        except NotCanonical as e:
            raise BatchError(seq, f"line is not in canonical form: {e}") from None
        except ValueError as e:
            raise BatchError(seq, f"line is not JSON: {e}") from None
        try:
            canon = canonical(obj)
        except (TypeError, ValueError) as e:
            raise BatchError(seq, f"line cannot be serialised: {e}") from None
        if canon != ls:
            raise BatchError(seq, "line is not in canonical form (altered?)")
        if type(obj) is not dict:
            raise BatchError(seq, "line is not a JSON object")
        stated = obj.get("hash")
        if type(stated) is not str:
            raise BatchError(seq, "no hash")
        s = obj.get("seq")
        if type(s) is not int or s != seq:
            raise BatchError(seq, f"expected seq {seq}, found {json.dumps(s) if 'seq' in obj else ''}")
        collected_at = obj.get("collected_at")
        data = obj.get("data")
        fast = (
            obj.keys() == LINE_KEYS
            and type(collected_at) is str
            and type(obj["id"]) is str
            and type(obj["op"]) is str
            and type(obj["source_key"]) is str
            and type(obj["type"]) is str
        )
        if fast:
            # Canonical with exactly the 8 keys: `{"collected_at":"…","data":DATA,"hash":"…",
            # "id":"…","op":"…","seq":N,"source_key":"…","type":"…"}`. No string value can
            # hold `,"hash":"` (quotes are escaped), so the last one is the top-level hash.
            pos = lb.rfind(b',"hash":"')
            if pos < 0 or lb[pos + 73 : pos + 74] != b'"':
                raise BatchError(seq, "hash does not match the record (record altered, or chain broken)")
            pre = lb[:pos] + lb[pos + 74 :]
            data_start = lb.find(b',"data":') + 8
            data_bytes = lb[data_start:pos]
        else:
            rest = dict(obj)
            del rest["hash"]
            pre = canonical(rest).encode("utf-8")
            data_bytes = None
        computed = sha256(head + pre).digest()
        if computed.hex() != stated:
            raise BatchError(seq, "hash does not match the record (record altered, or chain broken)")
        if obj.get("type") != record_type:
            raise BatchError(seq, f"type differs from the batch's record type {record_type}")
        source_key = obj.get("source_key")
        if type(source_key) is not str:
            raise BatchError(seq, "no source_key")
        op = obj.get("op")
        if op == "upsert" and type(data) is dict:
            if data_bytes is None:
                data_bytes = canonical(data).encode("utf-8")
            content = sha256(data_bytes).hexdigest()
        elif op == "delete" and "data" in obj and data is None:
            content = "deleted"
        else:
            raise BatchError(seq, "op/data inconsistent (upsert needs an object, delete needs null)")
        rid = sha256(
            id_prefix + source_key.encode("utf-8") + b"|" + content.encode("ascii")
        ).hexdigest()
        if obj.get("id") != rid:
            raise BatchError(seq, "id does not match agent|connector|type|source_key|content hash")
        head = computed
        seq += 1
    return lines, head


def decode_body(body, encoding):
    if encoding == "gzip":
        try:
            return gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as e:
            raise BatchError(None, f"body does not decompress (content_encoding gzip): {e}") from None
    if encoding in (None, "", "identity"):
        if body[:2] == b"\x1f\x8b":
            raise BatchError(None, "body is gzip but content_encoding does not say so")
        return body
    raise BatchError(None, f"unknown content_encoding {encoding!r}")


# --- the consumer ------------------------------------------------------------------------


class Checker:
    def __init__(self, verifier):
        self.verifier = verifier
        self.errors = []
        self.by_message_id = {}
        self.records = 0
        self.batches = 0
        self.duplicate_batches = 0
        self.duplicate_records = 0
        self.anonymous = 0
        self.control_messages = 0

    def error(self, text):
        self.errors.append(text)

    def message(self, props, body):
        headers = {k: _norm_header(v) for k, v in (props.headers or {}).items()}
        schema = headers.get("fep-schema")
        if schema != SCHEMA:
            if isinstance(schema, str) and schema.startswith("fep.") and not schema.startswith("fep.batch/"):
                # fep.heartbeat/1, fep.rejects/1, …: control messages, not batches.
                self.control_messages += 1
                return
            self.error(
                f"{props.message_id or '<no message_id>'}: neither a {SCHEMA} batch nor a control message "
                f"(fep-schema {schema!r})"
            )
            return
        fep_headers = tuple(headers.get(k) for k in FEP_HEADERS)
        mid = props.message_id
        label = mid or "<no message_id>"
        try:
            plain = decode_body(body, props.content_encoding)
        except BatchError as e:
            plain = None
            decode_error = e.message
        else:
            decode_error = None
        digest = hashlib.sha256(plain if plain is not None else body).digest()

        if mid is None:
            self.error(f"message without message_id (headers {headers.get('fep-connector')}/{headers.get('fep-first-seq')})")
            self.anonymous += 1
            mid = f"\0anonymous-{self.anonymous}"
        seen = self.by_message_id.get(mid)
        if seen is not None:
            if seen.digest != digest:
                self.error(f"{label}: re-sent with a different body")
            elif seen.fep_headers != fep_headers:
                self.error(f"{label}: re-sent with different fep-* headers")
            else:
                self.duplicate_batches += 1
                self.duplicate_records += seen.records
            return

        b = Batch()
        b.message_id = mid
        b.digest = digest
        b.fep_headers = fep_headers
        b.agent = headers.get("fep-agent")
        b.connector = headers.get("fep-connector")
        b.first = b.last = None
        b.prev = b.head = None
        b.records = 0
        b.ok = False
        self.by_message_id[mid] = b
        self.batches += 1
        try:
            self._verify(b, headers, plain, decode_error, mid, label)
            b.ok = True
        except BatchError as e:
            where = f", seq {e.seq}" if e.seq is not None else ""
            self.error(f"{label}: connector {b.connector}{where}: {e.message}")
        if not b.ok and b.records == 0:
            # Failed before its lines were counted: count them anyway, so that "records"
            # still says what arrived.
            if plain is not None:
                b.records = sum(1 for l in plain.split(b"\n") if l)
            elif b.first is not None and b.last is not None:
                b.records = max(0, b.last - b.first + 1)
        self.records += b.records

    def _verify(self, b, h, plain, decode_error, mid, label):
        if header_str(h, "fep-schema") != SCHEMA:
            raise BatchError(None, f"fep-schema is not {SCHEMA}")
        agent = header_str(h, "fep-agent")
        connector = header_str(h, "fep-connector")
        record_type = header_str(h, "fep-record-type")
        first = header_i64(h, "fep-first-seq")
        last = header_i64(h, "fep-last-seq")
        count = header_i64(h, "fep-count")
        prev_hex = header_str(h, "fep-prev-hash")
        head_hex = header_str(h, "fep-head-hash")
        sig_b64 = header_str(h, "fep-signature")
        b.first, b.last = first, last
        # For the cross-batch checks, even if this batch fails below.
        if HEX64.fullmatch(prev_hex):
            b.prev = bytes.fromhex(prev_hex)
        if HEX64.fullmatch(head_hex):
            b.head = bytes.fromhex(head_hex)
        if not mid.startswith("\0") and mid != f"{agent}/{connector}/{first}":
            raise BatchError(first, f"message_id is not {agent}/{connector}/{first}")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BatchError(first, "signature is not base64") from None
        if len(sig) != 64:
            raise BatchError(first, "signature has the wrong length")
        if self.verifier is not None:
            payload = f"{agent}|{connector}|{first}|{last}|{prev_hex}|{head_hex}".encode("utf-8")
            if not self.verifier(sig, payload):
                raise BatchError(
                    first,
                    "batch signature does not verify with this public key (headers altered, or another agent's key)",
                )
        if not HEX64.fullmatch(prev_hex):
            raise BatchError(first, "fep-prev-hash is not 32 bytes of hex")
        prev = b.prev
        if first == 1 and prev != ZERO32:
            raise BatchError(1, "seq 1 must follow 32 zero bytes")
        if decode_error is not None:
            raise BatchError(first, decode_error)
        try:
            lines, head = check_lines(plain, first, prev, agent, connector, record_type)
        except BatchError:
            b.records = sum(1 for l in plain.split(b"\n") if l)
            raise
        n = len(lines)
        b.records = n
        seq = first + n
        if n != count or seq - 1 != last:
            raise BatchError(
                seq,
                f"batch holds {n} records (seq {first}..{seq - 1}), headers say {count} (..{last})",
            )
        if head.hex() != head_hex:
            raise BatchError(last, "head hash differs from fep-head-hash")

    def chains(self, allow_later_start):
        """Cross-batch checks over the unique batches; returns the connectors summary."""
        groups = {}
        for b in self.by_message_id.values():
            if b.first is None or b.last is None or b.connector is None:
                continue
            groups.setdefault((b.agent, b.connector), []).append(b)
        agents = {a for a, _ in groups}
        out = {}
        for (agent, connector), batches in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
            name = connector if len(agents) == 1 else f"{agent}/{connector}"
            batches.sort(key=lambda b: (b.first, b.last))
            first = batches[0]
            if first.first != 1 and not allow_later_start:
                self.error(
                    f"connector {name}: seq 1 .. {first.first - 1} never arrived (first batch {first.message_id})"
                )
            prev = None
            for b in batches:
                if prev is not None:
                    if b.first == prev.last + 1:
                        if b.prev is not None and prev.head is not None and b.prev != prev.head:
                            self.error(
                                f"connector {name}, seq {b.first}: {b.message_id} does not continue the previous batch's chain "
                                f"({prev.message_id}): prev hash differs"
                            )
                    elif b.first > prev.last + 1:
                        self.error(f"connector {name}: gap: seq {prev.last + 1} .. {b.first - 1} missing")
                    else:
                        self.error(
                            f"connector {name}: seq {b.first} .. {min(b.last, prev.last)} in both {prev.message_id} "
                            f"and {b.message_id} (overlap under a different message_id)"
                        )
                if prev is None or b.last >= prev.last:
                    prev = b
            out[name] = {
                "first_seq": batches[0].first,
                "last_seq": max(b.last for b in batches),
                "batches": len(batches),
                "records": sum(b.records for b in batches),
                "head_hash": prev.head.hex() if prev.head is not None else None,
            }
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--expect-records", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60.0, help="overall limit, seconds (default 60)")
    ap.add_argument("--idle", type=float, default=10.0, help="stop after this long without a message, once one arrived (default 10)")
    ap.add_argument(
        "--drain",
        type=float,
        default=0.5,
        help="once the expected records arrived, keep consuming until nothing arrived for this long, so trailing "
        "re-sends and surplus batches are checked too (default 0.5; 0 stops at once)",
    )
    ap.add_argument("--prefetch", type=int, default=50)
    ap.add_argument("--pubkey", help="base64 Ed25519 public key, or a file holding it: verify every batch signature")
    ap.add_argument(
        "--allow-later-start",
        action="store_true",
        help="accept chains whose first batch starts after seq 1 (consumer bound mid-stream)",
    )
    args = ap.parse_args(argv)

    started = time.monotonic()
    setup_errors = []
    verifier = None
    signatures = "not checked"
    if args.pubkey:
        try:
            verifier = load_verifier(args.pubkey)
            signatures = "verified"
        except ImportError:
            setup_errors.append("--pubkey given but the Python package cryptography is not installed")
        except Exception as e:  # noqa: BLE001 - report, don't crash
            setup_errors.append(f"--pubkey: {e}")
    checker = Checker(verifier)
    checker.errors.extend(setup_errors)

    stop_reason = None
    busy = 0.0
    connection = None
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=args.prefetch)
        last_arrival = None
        for method, props, body in channel.consume(args.queue, auto_ack=False, inactivity_timeout=0.25):
            now = time.monotonic()
            if method is not None:
                last_arrival = now
                t0 = time.perf_counter()
                try:
                    checker.message(props, body)
                except Exception as e:  # noqa: BLE001 - a checker bug must not hang the test
                    checker.error(f"{props.message_id}: checker failed: {e!r}")
                busy += time.perf_counter() - t0
                channel.basic_ack(method.delivery_tag)
                if checker.records >= args.expect_records and args.drain <= 0:
                    stop_reason = "expected records reached"
                    break
            if (
                checker.records >= args.expect_records
                and last_arrival is not None
                and now - last_arrival >= args.drain
            ):
                stop_reason = "expected records reached, queue drained"
                break
            if now - started >= args.timeout:
                stop_reason = f"timeout after {args.timeout:g} s"
                break
            if last_arrival is not None and now - last_arrival >= args.idle:
                stop_reason = f"nothing arrived for {args.idle:g} s"
                break
        try:
            channel.cancel()
        except Exception:  # noqa: BLE001
            pass
    except pika.exceptions.AMQPError as e:
        checker.error(f"broker: {e!r}")
        stop_reason = "broker error"
    finally:
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass

    connectors = checker.chains(args.allow_later_start)
    if checker.records < args.expect_records:
        checker.error(f"only {checker.records} of {args.expect_records} expected records arrived ({stop_reason})")
    elif checker.records > args.expect_records:
        checker.error(f"{checker.records} records arrived, more than the {args.expect_records} expected")
    errors = checker.errors
    result = {
        "records": checker.records,
        "batches": checker.batches,
        "duplicate_batches": checker.duplicate_batches,
        "duplicate_records": checker.duplicate_records,
        "connectors": connectors,
        "control_messages": checker.control_messages,
        "signatures": signatures,
        "error_count": len(errors),
        "errors": errors[:MAX_ERRORS_SHOWN],
        "elapsed_s": round(time.monotonic() - started, 3),
        "check_s": round(busy, 3),
    }
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0 if not errors and checker.records == args.expect_records else 1


if __name__ == "__main__":
    sys.exit(main())
