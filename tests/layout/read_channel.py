#!/usr/bin/env python3
"""A passive reader for a live shmbus channel, written from docs/LAYOUT.md alone.

Everything here follows "Channel layout, version 2" (docs/LAYOUT.md); the
comments cite its sections as "LAYOUT §N".  It uses only the standard
library: the region is mapped read-only with mmap and every shared word is
read with one struct.unpack_from('<Q', ...) call, which on CPython for a
little-endian 64-bit host is one aligned 8-byte load, made in program order
and never cached (LAYOUT §8, "What a reader needs from the machine").  This
is only valid on x86-64: on a weakly ordered CPU plain loads are not enough
(LAYOUT §8), and this module refuses to run there.

The reader is *passive* (LAYOUT §12): it writes nothing to the region, has
no subscriber slot and cannot CAS, so it cannot hold block-policy publishers
back, cannot be woken (it polls) and cannot repair a dead publisher's claim
(LAYOUT §14).  It may therefore lag under either policy; it is then told
exactly how many messages it missed.

Library use:

    ch = Channel.open("name-or-/path")          # validates (LAYOUT §15)
    rd = Reader(ch, start="oldest")              # or "newest" (LAYOUT §11)
    r = rd.try_read()                            # OK / EMPTY / CORRUPT
    if r.status == OK: use(r.payload, r.sequence, r.missed)

CLI:  read_channel.py [--newest] [--follow] [--idle S] [--max N] [--header]
                      [--quiet] NAME|PATH
(NAME means /dev/shm/NAME.)
"""

import mmap
import os
import struct
import sys
import time

# --------------------------------------------------------------------------
# Constants (LAYOUT §1, §3, §7)
# --------------------------------------------------------------------------

MAGIC = 0x48435355424D4853          # bytes "SHMBUSCH" in memory order (§3)
LAYOUT_VERSION = 2                  # the only version this reader implements (§15)
KIND_CHANNEL = 1                    # §3
NONE = 0xFFFF_FFFF_FFFF_FFFF        # 2^64 - 1 (§1)
U64 = 0xFFFF_FFFF_FFFF_FFFF

HEADER_SIZE = 4096                  # the header page (§2, §3)
PUBLISHER_SLOT_SIZE = 64            # §4
SUBSCRIBER_SLOT_SIZE = 128          # §5
FRAME_HEADER_SIZE = 32              # §7
FRAME_ALIGN = 32                    # §6

# PAGE is "the creator's page size"; an opener cannot learn it from the
# header, so we use our own (4096 on x86-64 Linux, like the creator's).
# See the report: this is one of the documentation gaps.
PAGE = mmap.PAGESIZE

MIN_CAPACITY = 4096                 # §3, §15 check 5
MAX_CAPACITY = 1 << 40
MAX_SLOTS = 64                      # §3, §15 check 6

POLICY_BLOCK = 0                    # §3
POLICY_OVERWRITE = 1
POLICY_NAMES = {POLICY_BLOCK: "block", POLICY_OVERWRITE: "overwrite"}

# Frame types (§7)
FRAME_DATA = 1
FRAME_PADDING = 2
FRAME_ABORTED = 3

# Header-page offsets of the shared words (§3)
OFF_MAGIC = 0
OFF_TAIL_POSITION = 256             # the claim word, low half (§9)
OFF_TAIL_SEQUENCE = 264             # the claim word, high half (§9)
OFF_PARKED_SUBSCRIBERS = 384
OFF_UNFENCED_PUBLISHERS = 392
OFF_ACTIVE_SUBSCRIBERS = 512
OFF_ACTIVE_PUBLISHERS = 520
OFF_WAITING_PUBLISHERS = 640
OFF_RESYNC_HINTS = 1024             # u64[256] (§11 "Resync hints")

# struct formats given by the document
HEADER_ONCE = struct.Struct('<QIIQQQIIIIIIIIQ64sQQII')   # bytes 0..167 (§3)
PUBLISHER_SLOT = struct.Struct('<IIiIQQQQQQ')            # §4
SUBSCRIBER_SLOT = struct.Struct('<IIiIQQQQ16xQQ48x')     # §5
FRAME_HEADER = struct.Struct('<IHHQQQ')                  # §7
_U64 = struct.Struct('<Q')          # one aligned 8-byte load per call (§8)
_FRAME_FIELDS = struct.Struct('<IHHQ')   # length, type, publisher, sequence (§7)

assert HEADER_ONCE.size == 168 and PUBLISHER_SLOT.size == 64
assert SUBSCRIBER_SLOT.size == 128 and FRAME_HEADER.size == 32

# try_read results (§11)
OK = "OK"
EMPTY = "EMPTY"
CORRUPT = "CORRUPT"

# Error codes, as the C++ library names them (§15)
REGION_CORRUPT = "region_corrupt"
VERSION_MISMATCH = "version_mismatch"
TYPE_MISMATCH = "type_mismatch"


# --------------------------------------------------------------------------
# Arithmetic helpers (§2, §6, §16)
# --------------------------------------------------------------------------

def frame_size(length):
    """§6: a 32-byte header, the payload, padding to the next multiple of 32."""
    return (FRAME_HEADER_SIZE + length + 31) & ~31


def resync_segment_shift(capacity):
    """§11: log2 of a resync segment's size (1/256 of the ring, >= 64 B)."""
    ring_shift = capacity.bit_length() - 1
    return ring_shift - 8 if ring_shift > 14 else 6


def oldest_start(channel, tail):
    """§11 oldest_start: the first frame start at or after the oldest segment
    boundary still in the ring that a resync hint names and whose commit word
    checks; else the next lap boundary (always a frame start)."""
    cap = channel.capacity
    oldest = tail - cap
    lap = round_up(oldest, cap)
    seg = 1 << resync_segment_shift(cap)
    b = round_up(oldest, seg)
    while b < lap:
        h = channel.load_u64(OFF_RESYNC_HINTS + 8 * ((b & channel.mask) // seg))
        if b <= h < lap and h % FRAME_ALIGN == 0:
            if channel.load_u64(channel.ring_offset + (h & channel.mask) + 24) == h ^ channel.salt:
                return h
        b += seg
    return lap


def round_up(x, unit):
    """Round x up to a multiple of unit (a power of two).  §11: (x + MASK) & ~MASK."""
    return (x + unit - 1) & ~(unit - 1)


def is_power_of_two(x):
    return x != 0 and (x & (x - 1)) == 0


def geometry(capacity, publishers, subscribers, page=PAGE):
    """§2: the offsets follow from CAP, P and S alone.

    Returns (publisher_slot_offset, subscriber_slot_offset, ring_offset,
    region_size)."""
    publisher_slot_offset = HEADER_SIZE
    subscriber_slot_offset = HEADER_SIZE + PUBLISHER_SLOT_SIZE * publishers
    ring_offset = round_up(subscriber_slot_offset + SUBSCRIBER_SLOT_SIZE * subscribers, page)
    region_size = ring_offset + capacity
    return publisher_slot_offset, subscriber_slot_offset, ring_offset, region_size


def fnv1a_64(data):
    """§16: FNV-1a, 64 bits, byte by byte, no terminating NUL."""
    if isinstance(data, str):
        data = data.encode()
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x00000100000001B3) & U64
    return h


# --------------------------------------------------------------------------
# Opening (§15)
# --------------------------------------------------------------------------

class ChannelError(Exception):
    """An opener's refusal.  str() is "open channel '<object>': <detail>" (§15)."""

    def __init__(self, obj, code, detail, check):
        super().__init__("open channel '%s': %s" % (obj, detail))
        self.object = obj
        self.code = code        # region_corrupt / version_mismatch / type_mismatch
        self.detail = detail
        self.check = check      # the row of the table in §15 (1..12), 0 = "not initialised"


def object_path(name):
    """A channel is given as its object (§17, last row): NAME -> /dev/shm/NAME."""
    if "/" in name:
        return name
    return os.path.join("/dev/shm", name)


class Channel:
    """An opened channel: a read-only mapping plus the *checked copies* of the
    header fields (§15: "read each header field once, check the copy, and use
    only the copies afterwards")."""

    def __init__(self):
        raise TypeError("use Channel.open()")

    @classmethod
    def open(cls, name, expect_type=None, init_timeout=1.0):
        """Map NAME read-only and validate it as §15 says an opener must.

        expect_type: None for a byte channel / a tool (check 12 skipped), or
        (type_name, type_size, type_align): the hash compared is
        fnv1a_64(type_name) (§16).
        init_timeout: how long to retry while magic == 0 (§15: the creator
        writes the header right after creating the object)."""
        self = object.__new__(cls)
        self.name = name
        self.path = object_path(name)
        self._mm = None
        try:
            self._open(expect_type, init_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _fail(self, code, detail, check):
        raise ChannelError(self.name, code, detail, check)

    def _open(self, expect_type, init_timeout):
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            # Check 1: the mapping is at least a header page.  (mmap refuses a
            # zero-length file, so check before mapping.)
            if size < HEADER_SIZE:
                self._fail(REGION_CORRUPT, "%d B is smaller than a channel header" % size, 1)
            # Passive reader: PROT_READ, MAP_SHARED (§12).  We map the whole
            # object; it may be larger than region_size (§2).
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            self.mapping_size = size
        finally:
            os.close(fd)

        # Check 2, preceded by §15's "magic == 0 means not initialised yet:
        # retry for a short while".  The magic is stored last, with release
        # (§15 creation step 4); we load it first, as one 8-byte load, before
        # any other header read (acquire on x86-64, §8).
        deadline = time.monotonic() + init_timeout
        while True:
            magic = self.load_u64(OFF_MAGIC)
            if magic != 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        if magic == 0:
            self._fail(REGION_CORRUPT,
                       "not initialised (magic still 0 after %.3g s)" % init_timeout, 0)
        if magic != MAGIC:
            self._fail(REGION_CORRUPT,
                       "not a shmbus channel (bad magic, or not initialised yet)", 2)

        # Read the once-fields a single time (one copy of bytes 0..167, §3)
        # and from now on use only the checked copies.
        (_magic, version, kind, region_size, ring_offset, capacity, max_message,
         policy, publishers, subscribers, publisher_slot_offset,
         subscriber_slot_offset, type_size, type_align, type_hash, type_name,
         commit_salt, created_ns, creator_pid, _reserved0) = \
            HEADER_ONCE.unpack(bytes(self._mm[0:HEADER_ONCE.size]))

        # Check 3: version.  No minor-version compatibility (§15 "Versioning").
        if version != LAYOUT_VERSION:
            self._fail(VERSION_MISMATCH,
                       "layout version %d, this library reads %d" % (version, LAYOUT_VERSION), 3)
        # Check 4: kind.
        if kind != KIND_CHANNEL:
            self._fail(REGION_CORRUPT, "region kind %d is not a channel" % kind, 4)
        # Check 5: capacity a power of two in [4096, 2^40].
        if not (is_power_of_two(capacity) and MIN_CAPACITY <= capacity <= MAX_CAPACITY):
            self._fail(REGION_CORRUPT, "ring capacity %d" % capacity, 5)
        # Check 6: slot counts in 1..64.
        if not (1 <= publishers <= MAX_SLOTS and 1 <= subscribers <= MAX_SLOTS):
            self._fail(REGION_CORRUPT, "slot counts %d / %d" % (publishers, subscribers), 6)
        # Check 7: 1 <= max_message and frame_size(max_message) <= CAP / 4.
        if not (max_message >= 1 and frame_size(max_message) <= capacity // 4):
            self._fail(REGION_CORRUPT,
                       "max message %d for a ring of %d" % (max_message, capacity), 7)
        # Check 8: policy 0 or 1.
        if policy not in (POLICY_BLOCK, POLICY_OVERWRITE):
            self._fail(REGION_CORRUPT, "policy %d" % policy, 8)
        # Check 9: the stored offsets equal those recomputed from CAP, P, S (§2).
        expected = geometry(capacity, publishers, subscribers)
        if (publisher_slot_offset, subscriber_slot_offset, ring_offset, region_size) != expected:
            self._fail(REGION_CORRUPT, "offsets disagree with the slot counts and capacity", 9)
        # Check 10: the object is large enough.
        if region_size > self.mapping_size:
            self._fail(REGION_CORRUPT, "header says %d B, the object has %d B (truncated?)"
                       % (region_size, self.mapping_size), 10)
        # Check 11: the salt is never 0 (§8: otherwise position 0 of a fresh
        # all-zero ring would look committed).
        if commit_salt == 0:
            self._fail(REGION_CORRUPT, "commit salt is zero", 11)
        # type_name: "at most 63 bytes, NUL-padded (always NUL-terminated)".
        # §15 lists no check for it; it is only quoted, so cut at the first NUL.
        name = type_name.split(b"\0", 1)[0].decode("utf-8", "replace")
        # Check 12: only for an opener that expects a payload type.
        if expect_type is not None:
            want_name, want_size, want_align = expect_type
            if (type_size, type_align, type_hash) != (want_size, want_align, fnv1a_64(want_name)):
                self._fail(TYPE_MISMATCH,
                           "channel carries '%s' (size %d, align %d), expected '%s' (size %d, align %d)"
                           % (name, type_size, type_align, want_name, want_size, want_align), 12)

        # The checked copies (§1 constants).
        self.version = version
        self.kind = kind
        self.region_size = region_size
        self.ring_offset = ring_offset          # RING
        self.capacity = capacity                # CAP
        self.mask = capacity - 1                # MASK
        self.max_message = max_message
        self.policy = policy
        self.publishers = publishers            # P
        self.subscribers = subscribers          # S
        self.publisher_slot_offset = publisher_slot_offset
        self.subscriber_slot_offset = subscriber_slot_offset
        self.type_size = type_size
        self.type_align = type_align
        self.type_hash = type_hash
        self.type_name = name
        self.salt = commit_salt                 # SALT
        self.created_ns = created_ns            # information only
        self.creator_pid = creator_pid          # information only

    def close(self):
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- loads (§8) ------------------------------------------------------

    def load_u64(self, offset):
        """One aligned 8-byte load at region offset `offset` (§8 rules 1, 2).
        Every shared word is 8-aligned; refuse anything else."""
        assert offset % 8 == 0
        return _U64.unpack_from(self._mm, offset)[0]

    def copy(self, start, end):
        """A plain copy of region bytes [start, end) (no atomicity needed, §8)."""
        return self._mm[start:end]

    def read_claim_word(self):
        """§9: a consistent (tail_position, tail_sequence) pair without a CAS."""
        while True:
            s = self.load_u64(OFF_TAIL_SEQUENCE)
            p = self.load_u64(OFF_TAIL_POSITION)
            s2 = self.load_u64(OFF_TAIL_SEQUENCE)
            if s2 == s:
                return p, s

    def tail_position(self):
        return self.load_u64(OFF_TAIL_POSITION)

    # ---- diagnostics (§3 masks, §4, §5) ----------------------------------

    def masks(self):
        return {
            "parked_subscribers": self.load_u64(OFF_PARKED_SUBSCRIBERS),
            "unfenced_publishers": self.load_u64(OFF_UNFENCED_PUBLISHERS),
            "active_subscribers": self.load_u64(OFF_ACTIVE_SUBSCRIBERS),
            "active_publishers": self.load_u64(OFF_ACTIVE_PUBLISHERS),
            "waiting_publishers": self.load_u64(OFF_WAITING_PUBLISHERS),
        }

    def publisher_slot(self, i):
        """§4, a plain (non-atomic) snapshot of publisher slot i, for display."""
        assert 0 <= i < self.publishers
        (state, generation, pid, _r, start_time, intent_position, intent_length,
         published, doorbell_id, intent_sequence) = PUBLISHER_SLOT.unpack(
            self.copy(self.publisher_slot_offset + PUBLISHER_SLOT_SIZE * i,
                      self.publisher_slot_offset + PUBLISHER_SLOT_SIZE * (i + 1)))
        return dict(state=state, generation=generation, pid=pid, start_time=start_time,
                    intent_position=intent_position, intent_length=intent_length,
                    published=published, doorbell_id=doorbell_id,
                    intent_sequence=intent_sequence)

    def subscriber_slot(self, j):
        """§5, a plain snapshot of subscriber slot j, for display."""
        assert 0 <= j < self.subscribers
        (state, generation, pid, _r, start_time, doorbell_id, received, missed,
         position, sequence) = SUBSCRIBER_SLOT.unpack(
            self.copy(self.subscriber_slot_offset + SUBSCRIBER_SLOT_SIZE * j,
                      self.subscriber_slot_offset + SUBSCRIBER_SLOT_SIZE * (j + 1)))
        return dict(state=state, generation=generation, pid=pid, start_time=start_time,
                    doorbell_id=doorbell_id, received=received, missed=missed,
                    position=position, sequence=sequence)

    def describe(self):
        tail, seq = self.read_claim_word()
        lines = [
            "channel %s (%s)" % (self.name, self.path),
            "  version %d, kind %d, policy %s" % (self.version, self.kind,
                                                  POLICY_NAMES[self.policy]),
            "  ring capacity %d at offset %d, region %d B (object %d B)"
            % (self.capacity, self.ring_offset, self.region_size, self.mapping_size),
            "  max message %d, publisher slots %d, subscriber slots %d"
            % (self.max_message, self.publishers, self.subscribers),
            "  type '%s' size %d align %d hash %#018x" % (self.type_name, self.type_size,
                                                         self.type_align, self.type_hash),
            "  creator pid %d, created_ns %d" % (self.creator_pid, self.created_ns),
            "  tail position %d, tail sequence %d" % (tail, seq),
            "  masks %s" % ", ".join("%s=%#x" % kv for kv in self.masks().items()),
        ]
        for i in range(self.publishers):
            s = self.publisher_slot(i)
            if s["state"] or s["generation"]:
                lines.append("  publisher %d: %s" % (i, s))
        for j in range(self.subscribers):
            s = self.subscriber_slot(j)
            if s["state"] or s["generation"]:
                lines.append("  subscriber %d: %s" % (j, s))
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Reading (§11)
# --------------------------------------------------------------------------

class ReadResult:
    __slots__ = ("status", "payload", "sequence", "missed", "detail")

    def __init__(self, status, payload=None, sequence=None, missed=0, detail=""):
        self.status = status
        self.payload = payload      # bytes (OK only)
        self.sequence = sequence    # the data frame's sequence number (OK only)
        self.missed = missed        # messages lost just before this one (OK only)
        self.detail = detail        # why (EMPTY / CORRUPT)

    def __repr__(self):
        if self.status == OK:
            return "OK(seq=%d, missed=%d, %d B)" % (self.sequence, self.missed, len(self.payload))
        return "%s(%s)" % (self.status, self.detail)


class Reader:
    """A passive reader's cursor (pos, seq) and the read algorithm of §11."""

    MAX_STEPS = 8       # §11: "repeat at most 8 times", a bound against a hostile writer

    def __init__(self, channel, start="oldest"):
        self.ch = channel
        # §11, where a reader starts.
        if start == "newest":
            # Only messages published from now on.
            self.pos, self.seq = channel.read_claim_word()
        elif start == "oldest":
            t, _ = channel.read_claim_word()
            if t <= channel.capacity:
                self.pos, self.seq = 0, 0
            else:
                # The oldest frame start the resync hints (or the first lap
                # boundary) show.  Its sequence is unknown until read.
                self.pos, self.seq = oldest_start(channel, t), NONE
        else:
            raise ValueError("start must be 'oldest' or 'newest'")
        # Statistics kept by this reader (it cannot write them to a slot).
        self.received = 0
        self.missed = 0          # sum of the `missed` of every OK result
        self.lags = 0            # number of resyncs (state "Lagged", §11)
        self.aborted = 0         # aborted frames skipped (§14)
        self.paddings = 0        # padding frames skipped (§6)
        self.discarded = 0       # reads thrown away by a failed re-check (§11)

    def _resync(self, tail):
        """§11 resync: jump to oldest_start(tail); cursor.seq is kept, so the
        next data frame tells how many were missed."""
        self.pos = oldest_start(self.ch, tail)
        self.lags += 1

    def try_read(self):
        """One step of §11 try_read: OK(payload, sequence, missed), EMPTY or CORRUPT.

        CORRUPT leaves the cursor where it was ("stop and report; do not guess
        a way past it")."""
        ch = self.ch
        CAP, MASK, SALT, RING = ch.capacity, ch.mask, ch.salt, ch.ring_offset
        load = ch.load_u64
        for _ in range(self.MAX_STEPS):
            p = self.pos
            if p % FRAME_ALIGN != 0:
                return ReadResult(CORRUPT, detail="position %d is not a multiple of 32" % p)
            h = RING + (p & MASK)                   # region offset of the frame header
            c = load(h + 24)                        # commit word: acquire (§8)
            if c != p ^ SALT:                       # not committed for this lap
                tail = load(OFF_TAIL_POSITION)
                if p >= tail:
                    return ReadResult(EMPTY, detail="nothing new")
                if tail - p <= CAP:
                    # Claimed, not committed yet (or its writer died, §14: a
                    # passive reader cannot repair, it waits).
                    return ReadResult(EMPTY, detail="claimed at %d, not committed yet" % p)
                self._resync(tail)                  # tail - p > CAP: overwritten
                continue
            # Header fields: plain reads; they are used only after both
            # re-checks below have passed (§11 "Corrupt", last bullet).
            length, ftype, _publisher, fseq = _FRAME_FIELDS.unpack_from(ch._mm, h)
            if load(h + 24) != c:                   # a newer frame was committed here
                self.discarded += 1
                continue
            tail = load(OFF_TAIL_POSITION)          # the tail check (§11 "Re-checks")
            if tail > p + CAP:                      # being overwritten while we read
                self.discarded += 1
                self._resync(tail)
                continue
            off = p & MASK
            size = frame_size(length)
            if ftype == FRAME_PADDING:              # §6: ends exactly at the end of the ring
                if off + FRAME_HEADER_SIZE + length != CAP:
                    return ReadResult(CORRUPT, detail="padding frame at %d (ring offset %d) "
                                      "has length %d: does not end at the end of the ring"
                                      % (p, off, length))
                self.pos = p + (CAP - off)          # = the next lap boundary
                self.paddings += 1
                continue
            if ftype == FRAME_ABORTED:              # §14: skipped, not counted as missed
                if off + size > CAP:
                    return ReadResult(CORRUPT, detail="aborted frame at %d (ring offset %d) "
                                      "of length %d runs past the end of the ring"
                                      % (p, off, length))
                self.pos = p + size
                if self.seq == NONE or fseq >= self.seq:
                    self.seq = (fseq + 1) & U64
                self.aborted += 1
                continue
            if ftype != FRAME_DATA:
                return ReadResult(CORRUPT, detail="frame at %d has type %d" % (p, ftype))
            if length > ch.max_message:
                return ReadResult(CORRUPT, detail="data frame at %d has length %d > max message %d"
                                  % (p, length, ch.max_message))
            if off + size > CAP:
                return ReadResult(CORRUPT, detail="data frame at %d (ring offset %d) of length %d "
                                  "runs past the end of the ring" % (p, off, length))
            # §11 "Missed": after a lag, fseq - cursor.seq sequence numbers were lost.
            missed = fseq - self.seq if (self.seq != NONE and fseq > self.seq) else 0
            payload = ch.copy(h + FRAME_HEADER_SIZE, h + FRAME_HEADER_SIZE + length)
            # Re-checks after the copy: discard it if either fails.
            if load(h + 24) != c:
                self.discarded += 1
                continue
            tail = load(OFF_TAIL_POSITION)
            if tail > p + CAP:
                self.discarded += 1
                self._resync(tail)
                continue
            self.pos = p + size
            self.seq = (fseq + 1) & U64
            self.received += 1
            self.missed += missed
            return ReadResult(OK, payload=payload, sequence=fseq, missed=missed)
        return ReadResult(EMPTY, detail="step bound reached; try again later")

    def read_available(self, limit=None):
        """try_read until EMPTY (or CORRUPT, or `limit` messages).  Returns
        (list of OK results, the last non-OK result or None).

        EMPTY after the step bound ("try again later") is retried a bounded
        number of times: it is not "nothing there"."""
        out = []
        retries = 0
        while limit is None or len(out) < limit:
            r = self.try_read()
            if r.status == OK:
                out.append(r)
                retries = 0
                continue
            if r.status == EMPTY and r.detail.startswith("step bound") and retries < 1000:
                retries += 1
                continue
            return out, r
        return out, None


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _preview(payload, width=60):
    text = payload[:width].decode("ascii", "backslashreplace")
    return text + ("..." if len(payload) > width else "")


def main(argv=None):
    import argparse
    if sys.byteorder != "little" or os.uname().machine not in ("x86_64", "AMD64"):
        # §8: plain loads are acquire loads only on x86-64.
        print("read_channel: this passive reader relies on x86-64 load ordering (LAYOUT §8)",
              file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description="Passive reader for a shmbus channel (docs/LAYOUT.md)")
    ap.add_argument("channel", help="NAME (/dev/shm/NAME) or a path")
    ap.add_argument("--newest", action="store_true",
                    help="start at the newest position (default: oldest)")
    ap.add_argument("--follow", action="store_true", help="keep polling for new messages")
    ap.add_argument("--idle", type=float, default=None,
                    help="with --follow: stop after S seconds without a message")
    ap.add_argument("--max", type=int, default=None, help="stop after N messages")
    ap.add_argument("--header", action="store_true", help="print the header and slots first")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args(argv)

    try:
        ch = Channel.open(args.channel)
    except ChannelError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print("open channel '%s': %s" % (args.channel, e), file=sys.stderr)
        return 1
    with ch:
        if args.header:
            print(ch.describe())
        rd = Reader(ch, "newest" if args.newest else "oldest")
        last = time.monotonic()
        status = 0
        try:
            while args.max is None or rd.received < args.max:
                r = rd.try_read()
                if r.status == OK:
                    last = time.monotonic()
                    if not args.quiet:
                        print("seq %d%s len %d: %s" % (
                            r.sequence, " (missed %d)" % r.missed if r.missed else "",
                            len(r.payload), _preview(r.payload)))
                    continue
                if r.status == CORRUPT:
                    print("corrupt: %s" % r.detail, file=sys.stderr)
                    status = 2
                    break
                if r.detail.startswith("step bound"):
                    continue
                if not args.follow:
                    break
                if args.idle is not None and time.monotonic() - last > args.idle:
                    break
                time.sleep(0.001)       # a passive reader cannot be woken: it polls (§12, §13)
        except KeyboardInterrupt:
            pass
        print("received %d, missed %d, lags %d, position %d" % (
            rd.received, rd.missed, rd.lags, rd.pos), file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
