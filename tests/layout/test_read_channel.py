#!/usr/bin/env python3
"""Checks tests/layout/read_channel.py (a reader written from docs/LAYOUT.md
alone) against live channels published by tests/support/channel_writer.

    test_read_channel.py PATH/TO/channel_writer

Exit 0 when every case passes; the last line is
"layout reader: N passed, M failed".

channel_writer's contract (from its header comment):
    channel_writer NAME COUNT BATCH block|overwrite
    creates /dev/shm/NAME (64 KiB ring, messages up to 1024 B), prints
    "ready NAME", waits for a line; publishes COUNT messages in batches of
    BATCH, printing "batch K" after each and waiting for a line; prints
    "done", waits for a line, removes the channel and exits 0.
    Message i: b"message <i> " + (i % 300) bytes, byte k = 'a' + (i + k) % 26.

Nothing here may hang: every line from the writer is awaited with select()
and a timeout, writers are killed on failure, and every /dev/shm object and
temporary file is removed at exit (also on SIGTERM, e.g. a meson timeout).
"""

import mmap
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import read_channel as rc  # noqa: E402

LINE_TIMEOUT = 120.0         # seconds to wait for any one line from the writer (a loaded 2-vCPU machine running a sanitizer build is slow)
EXIT_TIMEOUT = 10.0
CONTRACT_CAPACITY = 64 * 1024
CONTRACT_MAX_MESSAGE = 1024

WRITER = None                # argv[1]
LIVE_WRITERS = []            # every Writer started, for cleanup
TEMP_DIR = None


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def expected_payload(i):
    """The writer's message i (its contract)."""
    return b"message %d " % i + bytes(ord("a") + (i + k) % 26 for k in range(i % 300))


def max_frame_for(count):
    """The largest frame (§6) any of messages 0..count-1 can take."""
    longest = len(b"message %d " % (count - 1)) + 299
    return rc.frame_size(longest)


# --------------------------------------------------------------------------
# The writer process
# --------------------------------------------------------------------------

class Writer:
    serial = 0

    def __init__(self, count, batch, policy):
        Writer.serial += 1
        self.name = "shmbus_layout_py_%d_%d" % (os.getpid(), Writer.serial)
        self.path = "/dev/shm/" + self.name
        self.count, self.batch, self.policy = count, batch, policy
        self.buf = b""
        LIVE_WRITERS.append(self)
        self.proc = subprocess.Popen(
            [WRITER, self.name, str(count), str(batch), policy],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            start_new_session=True)     # its own process group, killed as one

    def line(self, timeout=LINE_TIMEOUT):
        """The next line of the writer's stdout; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("writer %s: no line within %g s (partial %r)"
                              % (self.name, timeout, self.buf))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise Failure("writer %s ended its output (exit status %s); partial %r"
                                  % (self.name, self.proc.poll(), self.buf))
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("ascii", "replace").strip()

    def line_ready(self):
        """True if a whole line can be read without waiting."""
        if b"\n" in self.buf:
            return True
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], 0)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise Failure("writer %s ended its output (exit status %s)"
                              % (self.name, self.proc.poll()))
            self.buf += chunk
        return b"\n" in self.buf

    def expect(self, want):
        got = self.line()
        check(got == want, "writer %s: expected %r, got %r" % (self.name, want, got))

    def go(self):
        try:
            os.write(self.proc.stdin.fileno(), b"\n")
        except BrokenPipeError:
            raise Failure("writer %s is gone (exit status %s)" % (self.name, self.proc.poll()))

    def finish(self):
        """After "done": let it remove the channel and exit; check status 0."""
        self.go()
        try:
            rc_ = self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failure("writer %s did not exit within %g s" % (self.name, EXIT_TIMEOUT))
        check(rc_ == 0, "writer %s exited with status %d" % (self.name, rc_))
        check(not os.path.exists(self.path), "writer left %s behind" % self.path)

    def cleanup(self):
        # The writer leads its own process group (start_new_session): kill
        # the group, whatever is left of it, then reap the writer.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def cleanup_all():
    while LIVE_WRITERS:
        LIVE_WRITERS.pop().cleanup()


def start(count, batch, policy):
    """Start a writer and wait for "ready NAME"."""
    w = Writer(count, batch, policy)
    w.expect("ready " + w.name)
    return w


# --------------------------------------------------------------------------
# Checking a reader's stream
# --------------------------------------------------------------------------

class Stream:
    """Checks what one reader delivers: every payload matches the formula,
    and sequence numbers are consecutive once `missed` is accounted for."""

    def __init__(self, label, next_seq, allow_missed):
        self.label = label
        self.next_seq = next_seq            # None when the reader starts with seq NONE
        self.allow_missed = allow_missed
        self.received = 0
        self.missed = 0
        self.first = None
        self.last = None

    def feed(self, results):
        for r in results:
            check(r.status == rc.OK, "%s: %r" % (self.label, r))
            if r.payload != expected_payload(r.sequence):
                raise Failure("%s: message %d has a wrong payload: %r..."
                              % (self.label, r.sequence, bytes(r.payload[:40])))
            if self.next_seq is None:
                # A reader that starts with seq NONE learns it from the first
                # frame, and reports nothing missed (§11 "Missed").
                check(r.missed == 0, "%s: first message reports missed %d" % (self.label, r.missed))
            else:
                check(r.sequence == self.next_seq + r.missed,
                      "%s: got sequence %d with missed %d, expected %d + missed"
                      % (self.label, r.sequence, r.missed, self.next_seq))
            if not self.allow_missed:
                check(r.missed == 0, "%s: message %d reports %d missed"
                      % (self.label, r.sequence, r.missed))
            if self.first is None:
                self.first = r.sequence
            self.last = r.sequence
            self.next_seq = r.sequence + 1
            self.received += 1
            self.missed += r.missed

    def drain(self, reader, limit=None):
        out, last = reader.read_available(limit)
        if limit is None or len(out) < limit:
            check(last is not None and last.status == rc.EMPTY,
                  "%s: reading stopped with %r after %d messages" % (self.label, last, len(out)))
        self.feed(out)
        return out


def check_at_tail(ch, reader, label):
    """With the writer paused, a reader that read everything sits at the
    claim word: its position is the tail, its next sequence the tail sequence."""
    tail, tseq = ch.read_claim_word()
    check((reader.pos, reader.seq) == (tail, tseq),
          "%s: reader at (%d, %d) after draining, claim word is (%d, %d)"
          % (label, reader.pos, reader.seq, tail, tseq))
    return tail, tseq


def check_contract_header(ch, w):
    check(ch.version == rc.LAYOUT_VERSION and ch.kind == 1, "version/kind %d/%d" % (ch.version, ch.kind))
    check(ch.capacity == CONTRACT_CAPACITY, "ring capacity %d, contract says 64 KiB" % ch.capacity)
    check(ch.max_message == CONTRACT_MAX_MESSAGE, "max message %d, contract says 1024" % ch.max_message)
    want_policy = rc.POLICY_BLOCK if w.policy == "block" else rc.POLICY_OVERWRITE
    check(ch.policy == want_policy, "policy %d for a %s writer" % (ch.policy, w.policy))
    # creator_pid is information only (§3); the writer itself creates the
    # channel, unless it runs under a wrapper that forks.
    check(ch.creator_pid != 0, "creator_pid is 0")
    if ch.creator_pid != w.proc.pid:
        print("    note: creator_pid %d, writer pid %d" % (ch.creator_pid, w.proc.pid))
    check(ch.type_size == 0 and ch.type_align == 0 and ch.type_hash == 0,
          "a byte channel should have type size/align/hash 0, got %d/%d/%#x"
          % (ch.type_size, ch.type_align, ch.type_hash))


def publisher_totals(ch):
    """(sum of `published` over all publisher slots, claims in progress) (§4)."""
    total, in_progress = 0, 0
    for i in range(ch.publishers):
        s = ch.publisher_slot(i)
        total += s["published"]
        if s["intent_position"] != rc.NONE:
            in_progress += 1
    return total, in_progress


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

SNAPSHOT = {}   # bytes of a paused live channel (ensure_snapshot)


def ensure_snapshot():
    """Copy the object of a live, paused channel that has wrapped its ring a
    few times (1500 messages, about 300 KB), once; later cases mutate copies."""
    if "bytes" in SNAPSHOT:
        return
    w = start(1500, 1500, "block")
    w.go()
    w.expect("batch 1")
    with open(w.path, "rb") as f:
        data = f.read()
    with rc.Channel.open(w.name) as ch:
        claim = ch.read_claim_word()
    check(claim[1] == 1500 and claim[0] > 3 * CONTRACT_CAPACITY, "snapshot claim word %r" % (claim,))
    w.go()
    w.expect("done")
    w.finish()
    SNAPSHOT["bytes"], SNAPSHOT["claim"] = data, claim


def case_document_vectors():
    """The worked examples and test vectors printed in LAYOUT.md."""
    # §2 geometry examples
    check(rc.geometry(1 << 20, 16, 16, 4096) == (4096, 5120, 8192, 1056768), "§2 default example")
    check(rc.geometry(8192, 3, 5, 4096) == (4096, 4288, 8192, 16384), "§2 second example")
    # §6 frame sizes
    for length, size in ((0, 32), (1, 64), (32, 64), (100, 160), (224, 256), (225, 288)):
        check(rc.frame_size(length) == size, "frame_size(%d)" % length)
    # §11 resync example: CAP 4096, tail 64,000 resumes at 61,440
    check(rc.round_up(64000 - 4096, 4096) == 61440, "§11 resync example")
    # §16 FNV-1a vectors
    for text, h in (("", 0xCBF29CE484222325), ("a", 0xAF63DC4C8601EC8C),
                    ("tick", 0x1E7683EF2EBC7684), ("order", 0x6BE60D7281A829F7)):
        check(rc.fnv1a_64(text) == h, "fnv1a_64(%r)" % text)
    # §3 magic spells SHMBUSCH in memory order
    check(struct.pack("<Q", rc.MAGIC) == b"SHMBUSCH", "magic bytes")


def case_block_lossless():
    """Block policy, batches that fit in the ring: everything published is
    readable by a passive reader while the writer is paused."""
    count = 20000
    # A passive reader does not hold block-policy publishers back (§12), so
    # a batch must fit in the ring from the reader's (drained) position.
    # 150 * 352 + 352 (one padding) = 53,152 < 65,536.
    batch = 150
    check(batch * max_frame_for(count) + max_frame_for(count) <= CONTRACT_CAPACITY,
          "test setup: batch does not fit in the ring")
    w = start(count, batch, "block")
    with rc.Channel.open(w.name) as ch:
        check_contract_header(ch, w)
        check(ch.read_claim_word() == (0, 0), "fresh claim word %r" % (ch.read_claim_word(),))
        oldest = rc.Reader(ch, "oldest")
        check((oldest.pos, oldest.seq) == (0, 0), "oldest start on an empty channel")
        r = oldest.try_read()
        check(r.status == rc.EMPTY, "empty channel gave %r" % r)
        s_old = Stream("oldest", 0, allow_missed=False)
        newest = late = None
        s_new = s_late = None
        w.go()
        k = 0
        while True:
            line = w.line()
            if line == "done":
                break
            k += 1
            check(line == "batch %d" % k, "expected 'batch %d', got %r" % (k, line))
            published = min(k * batch, count)
            s_old.drain(oldest)
            check(s_old.received == published,
                  "batch %d: read %d, published %d" % (k, s_old.received, published))
            tail, tseq = check_at_tail(ch, oldest, "oldest")
            check(tseq == published, "tail sequence %d, published %d" % (tseq, published))
            check(oldest.lags == 0 and oldest.missed == 0, "oldest lagged under block")
            total, in_progress = publisher_totals(ch)
            check(total == published and in_progress == 0,
                  "publisher slots: published %d, claims in progress %d" % (total, in_progress))
            if newest is not None:
                s_new.drain(newest)
                check_at_tail(ch, newest, "newest")
            if late is not None:
                s_late.drain(late)
                check_at_tail(ch, late, "late oldest")
            if k == 3:
                # A reader starting at the newest position sees only what follows.
                newest = rc.Reader(ch, "newest")
                check((newest.pos, newest.seq) == (tail, tseq), "newest start")
                r = newest.try_read()
                check(r.status == rc.EMPTY, "newest reader at the tail gave %r" % r)
                s_new = Stream("newest", tseq, allow_missed=False)
            if late is None and tail > 2 * ch.capacity:
                # An oldest reader that attaches after the ring wrapped starts
                # at the oldest frame start it can find, seq unknown.
                late = rc.Reader(ch, "oldest")
                # A hinted frame start from the oldest byte still in the ring
                # on, or at the latest the first lap boundary (§11).
                lap = rc.round_up(tail - ch.capacity, ch.capacity)
                check(tail - ch.capacity <= late.pos <= lap and late.seq == rc.NONE,
                      "late oldest start (%d, %d), expected in [%d, %d], NONE"
                      % (late.pos, late.seq, tail - ch.capacity, lap))
                s_late = Stream("late oldest", None, allow_missed=False)
                s_late.drain(late)
                check_at_tail(ch, late, "late oldest")
                check(s_late.received > 0 and s_late.first > 0,
                      "late reader got %d messages from %r" % (s_late.received, s_late.first))
            w.go()
        check(s_old.received == count, "read %d of %d" % (s_old.received, count))
        check(s_old.last == count - 1, "last sequence %r" % s_old.last)
        check(s_new is not None and s_new.received == count - s_new.first and s_new.last == count - 1,
              "newest reader got %s" % (s_new and s_new.received))
        check(s_late is not None and s_late.last == count - 1, "late oldest reader did not finish")
        for rd in (oldest, newest, late):
            r = rd.try_read()
            check(r.status == rc.EMPTY, "after done: %r" % r)
        print("    block: %d messages in %d batches; %d padding frames; newest reader from seq %d; "
              "late oldest reader from seq %d; masks %s"
              % (s_old.received, k, oldest.paddings, s_new.first, s_late.first, ch.masks()))
    w.finish()


def run_lapped(count, batch, policy):
    """The writer publishes `batch` messages while the reader waits, so it
    laps the 64 KiB ring: the reader must lag, and received + missed == published."""
    w = start(count, batch, policy)
    with rc.Channel.open(w.name) as ch:
        check_contract_header(ch, w)
        check(ch.masks()["active_subscribers"] == 0, "a subscriber is registered")
        rd = rc.Reader(ch, "oldest")
        s = Stream("lapped %s" % policy, 0, allow_missed=True)
        w.go()
        k = 0
        while True:
            line = w.line()
            if line == "done":
                break
            k += 1
            check(line == "batch %d" % k, "expected 'batch %d', got %r" % (k, line))
            published = min(k * batch, count)
            lags_before = rd.lags
            s.drain(rd)
            check_at_tail(ch, rd, "lapped")
            check(rd.lags > lags_before, "batch %d: no lag reported" % k)
            check(s.received + s.missed == published,
                  "batch %d: received %d + missed %d != published %d"
                  % (k, s.received, s.missed, published))
            check(s.last == published - 1, "last sequence %r, published %d" % (s.last, published))
            w.go()
        check(s.received + s.missed == count, "received %d + missed %d != %d"
              % (s.received, s.missed, count))
        check(s.missed > 0 and s.received > 0, "received %d, missed %d" % (s.received, s.missed))
        print("    %s, %d x %d: received %d, missed %d, lags %d"
              % (policy, k, batch, s.received, s.missed, rd.lags))
    w.finish()


def case_overwrite_lapped():
    run_lapped(5000, 5000, "overwrite")


def case_overwrite_lapped_batches():
    run_lapped(6000, 1500, "overwrite")


def case_block_passive_lapped():
    # §12: block-policy publishers wait only for registered subscribers; a
    # passive reader is overwritten as under the overwrite policy.
    run_lapped(2000, 1000, "block")


def run_concurrent(count, policy):
    """The reader polls while the writer publishes: the re-checks of §11 must
    keep every accepted payload intact; nothing is double-counted."""
    w = start(count, count, policy)
    with rc.Channel.open(w.name) as ch:
        rd = rc.Reader(ch, "oldest")
        s = Stream("concurrent %s" % policy, 0, allow_missed=True)
        w.go()
        during = 0
        deadline = time.monotonic() + LINE_TIMEOUT
        while not w.line_ready():
            check(time.monotonic() < deadline, "no 'batch 1' within %g s" % LINE_TIMEOUT)
            out, last = rd.read_available(limit=256)
            check(last is None or last.status == rc.EMPTY, "concurrent read: %r" % last)
            s.feed(out)
            during += len(out)
        w.expect("batch 1")
        s.drain(rd)
        check_at_tail(ch, rd, "concurrent")
        check(s.received + s.missed == count, "received %d + missed %d != %d"
              % (s.received, s.missed, count))
        check(s.last == count - 1, "last sequence %r" % s.last)
        w.go()
        w.expect("done")
        print("    %s: %d published; %d read while publishing, %d after; missed %d; lags %d; "
              "discarded by re-checks %d"
              % (policy, count, during, s.received - during, s.missed, rd.lags, rd.discarded))
    w.finish()


def case_overwrite_concurrent():
    run_concurrent(400000, "overwrite")


def case_block_concurrent():
    run_concurrent(200000, "block")


# ---- opening and frame checks on copies of a live channel -----------------

def snapshot_file(data, label):
    path = os.path.join(TEMP_DIR, label)
    with open(path, "wb") as f:
        f.write(data)
    return path


def mutated(fields):
    """A copy of the snapshot with (offset, struct format, value) changes."""
    data = bytearray(SNAPSHOT["bytes"])
    for offset, fmt, value in fields:
        struct.pack_into(fmt, data, offset, value)
    return data


def expect_refused(data, label, check_no, code, detail, **kw):
    path = snapshot_file(data, label)
    try:
        ch = rc.Channel.open(path, **kw)
    except rc.ChannelError as e:
        check(e.check == check_no and e.code == code and detail in str(e),
              "%s: refused with check %d %s %r; expected check %d %s %r"
              % (label, e.check, e.code, str(e), check_no, code, detail))
        check(str(e).startswith("open channel '%s': " % path), "%s: message %r" % (label, str(e)))
        return
    ch.close()
    raise Failure("%s: opened; expected check %d (%s)" % (label, check_no, detail))


def expect_opens(data, label, **kw):
    path = snapshot_file(data, label)
    try:
        ch = rc.Channel.open(path, **kw)
    except rc.ChannelError as e:
        raise Failure("%s: refused: %s" % (label, e))
    ch.close()


def case_opener_rejects():
    ensure_snapshot()
    good = SNAPSHOT["bytes"]
    region = len(good)
    expect_opens(good, "intact")
    expect_opens(good + bytes(4096), "larger-object")     # §2: the object may be larger
    Q, I = "<Q", "<I"
    cases = [
        # label, mutations, check, code, detail
        ("magic-flipped", [(0, Q, rc.MAGIC ^ 1)], 2, rc.REGION_CORRUPT, "not a shmbus channel"),
        ("version-1", [(8, I, 1)], 3, rc.VERSION_MISMATCH, "layout version 1, this library reads 2"),
        ("version-3", [(8, I, 3)], 3, rc.VERSION_MISMATCH, "layout version 3, this library reads 2"),
        ("version-0", [(8, I, 0)], 3, rc.VERSION_MISMATCH, "layout version 0"),
        ("version-and-kind", [(8, I, 3), (12, I, 2)], 3, rc.VERSION_MISMATCH, "layout version 3"),
        ("kind-2", [(12, I, 2)], 4, rc.REGION_CORRUPT, "region kind 2 is not a channel"),
        ("capacity-not-pow2", [(32, Q, 65535)], 5, rc.REGION_CORRUPT, "ring capacity 65535"),
        ("capacity-small", [(32, Q, 2048)], 5, rc.REGION_CORRUPT, "ring capacity 2048"),
        ("capacity-huge", [(32, Q, 1 << 41)], 5, rc.REGION_CORRUPT, "ring capacity %d" % (1 << 41)),
        ("capacity-half", [(32, Q, 32768)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("capacity-double", [(32, Q, 131072)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("capacity-double-consistent", [(32, Q, 131072), (16, Q, 8192 + 131072)], 10,
         rc.REGION_CORRUPT, "header says %d B, the object has %d B (truncated?)" % (8192 + 131072, region)),
        ("publishers-0", [(48, I, 0)], 6, rc.REGION_CORRUPT, "slot counts 0 / "),
        ("subscribers-65", [(52, I, 65)], 6, rc.REGION_CORRUPT, "/ 65"),
        ("publishers-3", [(48, I, 3)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("max-message-0", [(40, I, 0)], 7, rc.REGION_CORRUPT, "max message 0 for a ring of 65536"),
        ("max-message-big", [(40, I, 16353)], 7, rc.REGION_CORRUPT, "max message 16353"),
        ("policy-2", [(44, I, 2)], 8, rc.REGION_CORRUPT, "policy 2"),
        ("publisher-offset", [(56, I, 4160)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("subscriber-offset", [(60, I, 4096)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("ring-offset", [(24, Q, 12288)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("region-size", [(16, Q, region + 4096)], 9, rc.REGION_CORRUPT, "offsets disagree"),
        ("salt-0", [(144, Q, 0)], 11, rc.REGION_CORRUPT, "commit salt is zero"),
    ]
    for label, fields, check_no, code, detail in cases:
        expect_refused(mutated(fields), label, check_no, code, detail)
    # check 7's boundary: frame_size(16352) == 16384 == CAP / 4 is allowed
    expect_opens(mutated([(40, I, 16352)]), "max-message-boundary")
    # check 1 and check 10 from the object's size
    expect_refused(good[:100], "tiny", 1, rc.REGION_CORRUPT, "100 B is smaller than a channel header")
    expect_refused(b"", "empty", 1, rc.REGION_CORRUPT, "0 B is smaller than a channel header")
    expect_refused(good[:region - 4096], "truncated", 10, rc.REGION_CORRUPT,
                   "header says %d B, the object has %d B (truncated?)" % (region, region - 4096))
    # magic 0: "not initialised", after retrying for a while
    t0 = time.monotonic()
    expect_refused(mutated([(0, Q, 0)]), "magic-0", 0, rc.REGION_CORRUPT, "not initialised",
                   init_timeout=0.05)
    check(time.monotonic() - t0 >= 0.05, "magic 0 was not retried")
    # check 12: only for an opener that expects a type
    expect_refused(good, "typed-opener", 12, rc.TYPE_MISMATCH,
                   "expected 'tick' (size 8, align 8)", expect_type=("tick", 8, 8))
    tick = [(64, I, 8), (68, I, 8), (72, Q, rc.fnv1a_64("tick")),
            (80, "64s", b"tick")]
    expect_opens(mutated(tick), "typed-channel", expect_type=("tick", 8, 8))
    expect_refused(mutated(tick), "typed-wrong-align", 12, rc.TYPE_MISMATCH,
                   "channel carries 'tick' (size 8, align 8), expected 'tick' (size 8, align 4)",
                   expect_type=("tick", 8, 4))
    expect_refused(mutated(tick), "typed-wrong-name", 12, rc.TYPE_MISMATCH,
                   "expected 'order'", expect_type=("order", 8, 8))


def walk_frames(ch, start, stop):
    """An independent walk of committed frames [start, stop) of a paused copy:
    a list of (position, type, length, sequence)."""
    frames, p = [], start
    while p < stop:
        h = ch.ring_offset + (p & ch.mask)
        length, ftype, _pub, fseq, _res, commit = rc.FRAME_HEADER.unpack(ch.copy(h, h + 32))
        check(commit == p ^ ch.salt, "walk: frame at %d not committed" % p)
        frames.append((p, ftype, length, fseq))
        p += (32 + length) if ftype == rc.FRAME_PADDING else rc.frame_size(length)
    check(p == stop, "walk: ended at %d, tail %d" % (p, stop))
    return frames


def open_copy(data, label):
    return rc.Channel.open(snapshot_file(data, label))


def case_frames_on_a_copy():
    ensure_snapshot()
    tail, tseq = SNAPSHOT["claim"]
    good = SNAPSHOT["bytes"]
    with open_copy(good, "frames-intact") as ch:
        CAP, RING, SALT = ch.capacity, ch.ring_offset, ch.salt
        check(ch.read_claim_word() == (tail, tseq), "copy's claim word")
        rd = rc.Reader(ch, "oldest")
        p0 = rd.pos
        # A frame start no earlier than the oldest byte still in the ring, and
        # no later than the first lap boundary (where hints alone can't help).
        check(tail - CAP <= p0 <= rc.round_up(tail - CAP, CAP) and rd.seq == rc.NONE,
              "oldest start on the copy: %d (tail %d)" % (p0, tail))
        s = Stream("copy", None, allow_missed=False)
        s.drain(rd)
        check_at_tail(ch, rd, "copy")
        check(s.last == tseq - 1, "copy: last sequence %r, tail sequence %d" % (s.last, tseq))
        frames = walk_frames(ch, p0, tail)
    data_frames = [f for f in frames if f[1] == rc.FRAME_DATA]
    check(len(data_frames) == s.received, "walk found %d data frames, reader %d"
          % (len(data_frames), s.received))
    check(frames[0][1] == rc.FRAME_DATA, "the lap boundary holds a %d frame" % frames[0][1])
    first_pos, _, first_len, first_seq = frames[0]

    def hdr(p):
        return RING + (p & (CAP - 1))

    def crafted(pos, length, ftype, seq, tail_to):
        data = bytearray(good)
        struct.pack_into("<IHHQQQ", data, hdr(pos), length, ftype, 0, seq, 0, pos ^ SALT)
        struct.pack_into("<Q", data, 256, tail_to)
        return data

    def read_at(data, label, pos, seq):
        ch = open_copy(data, label)
        rd = rc.Reader(ch, "oldest")
        rd.pos, rd.seq = pos, seq          # place the cursor: it is the reader's own memory
        return ch, rd, rd.try_read()

    def expect_corrupt(data, label, pos, seq, detail):
        ch, rd, r = read_at(data, label, pos, seq)
        with ch:
            check(r.status == rc.CORRUPT and detail in r.detail,
                  "%s: got %r, expected CORRUPT (%s)" % (label, r, detail))
            check(rd.pos == pos, "%s: CORRUPT moved the cursor" % label)

    h0 = hdr(first_pos)
    expect_corrupt(mutated([(h0 + 4, "<H", 7)]), "type-7", first_pos, first_seq, "type 7")
    expect_corrupt(mutated([(h0 + 4, "<H", 0)]), "type-0", first_pos, first_seq, "type 0")
    expect_corrupt(mutated([(h0, "<I", 1025)]), "length-too-big", first_pos, first_seq,
                   "length 1025 > max message 1024")
    expect_corrupt(good, "misaligned", first_pos + 8, first_seq, "not a multiple of 32")

    # Frames near the end of the lap (crafted: a padding frame needs a
    # position whose frame reaches the ring's end).  q is 96 bytes before the
    # next lap boundary `end`, past the real tail; the claim word is moved to
    # `end` so that the copy is consistent.
    end = (tail | (CAP - 1)) + 1
    q = end - 96
    # a proper padding frame (length 64 = the rest of the ring after its header)
    ch, rd, r = read_at(crafted(q, 64, rc.FRAME_PADDING, tseq, end), "padding", q, tseq)
    with ch:
        check(r.status == rc.EMPTY and rd.pos == end and rd.paddings == 1 and rd.seq == tseq,
              "padding: %r, cursor (%d, %d), paddings %d" % (r, rd.pos, rd.seq, rd.paddings))
    expect_corrupt(crafted(q, 96, rc.FRAME_PADDING, tseq, end), "padding-long", q, tseq,
                   "does not end at the end of the ring")
    expect_corrupt(crafted(q, 32, rc.FRAME_PADDING, tseq, end), "padding-short", q, tseq,
                   "does not end at the end of the ring")
    # a data frame that just fits (frame_size(64) == 96) and one that does not
    ch, rd, r = read_at(crafted(q, 64, rc.FRAME_DATA, tseq, end), "data-fits", q, tseq)
    with ch:
        check(r.status == rc.OK and r.sequence == tseq and len(r.payload) == 64 and rd.pos == end,
              "data frame ending at the ring's end: %r" % r)
    expect_corrupt(crafted(q, 65, rc.FRAME_DATA, tseq, end), "data-past-end", q, tseq,
                   "runs past the end of the ring")
    expect_corrupt(crafted(q, 65, rc.FRAME_ABORTED, tseq, end), "aborted-past-end", q, tseq,
                   "runs past the end of the ring")

    # An aborted frame (§14) is skipped and not counted as missed.
    second = data_frames[1]
    aborted = mutated([(h0 + 4, "<H", rc.FRAME_ABORTED), (h0, "<I", rc.frame_size(first_len) - 32)])
    ch, rd, r = read_at(aborted, "aborted", first_pos, first_seq)
    with ch:
        check(r.status == rc.OK and r.sequence == second[3] == first_seq + 1 and r.missed == 0
              and rd.aborted == 1, "aborted frame: got %r (aborted %d)" % (r, rd.aborted))
        check(r.payload == expected_payload(r.sequence), "after aborted: payload")

    # A stale commit word (the previous lap's) with the tail less than a ring
    # ahead: claimed, not committed yet -> EMPTY, and the reader stays put.
    stale = mutated([(h0 + 24, "<Q", (first_pos - CAP) ^ SALT)])
    ch, rd, r = read_at(stale, "stale-commit", first_pos, first_seq)
    with ch:
        check(r.status == rc.EMPTY and rd.pos == first_pos and rd.lags == 0,
              "stale commit: %r at %d" % (r, rd.pos))

    # The same with the tail more than a ring ahead: lagged -> resync to
    # round_up(tail - CAP, CAP), sequence kept.
    far = first_pos + 3 * CAP + 64
    lagged = mutated([(h0 + 24, "<Q", (first_pos - CAP) ^ SALT), (256, "<Q", far)])
    ch, rd, r = read_at(lagged, "lagged", first_pos, first_seq)
    with ch:
        check(rd.lags == 1 and rd.pos == rc.round_up(far - CAP, CAP) and rd.seq == first_seq,
              "lagged: %r, lags %d, cursor (%d, %d)" % (r, rd.lags, rd.pos, rd.seq))
        check(r.status == rc.EMPTY, "lagged: then %r" % r)

    # A committed frame but a tail past p + CAP: the tail re-check discards
    # the header read and resyncs (§11 "Re-checks"): to a frame the copy's
    # resync hints name after p + 32, which reads as the next message, or
    # else to the lap boundary p + CAP, where nothing is committed.
    moved = mutated([(256, "<Q", first_pos + CAP + 32)])
    ch, rd, r = read_at(moved, "tail-moved", first_pos, first_seq)
    with ch:
        check(rd.lags == 1 and rd.discarded == 1,
              "tail re-check: %r, lags %d, discarded %d, pos %d" % (r, rd.lags, rd.discarded, rd.pos))
        check((r.status == rc.OK and r.sequence > first_seq and r.missed == r.sequence - first_seq)
              or (r.status == rc.EMPTY and rd.pos == first_pos + CAP),
              "tail re-check: then %r at %d" % (r, rd.pos))


class Interleaved:
    """A reader on a private copy of the snapshot, plus a writable mapping of
    the same file through which hooks play "another process" at an exact
    point of try_read: before the n-th load of a given word, or during the
    payload copy.  Makes the races of §11 "Re-checks" deterministic."""

    def __init__(self, label, pos, seq):
        path = snapshot_file(SNAPSHOT["bytes"], label)
        self.f = open(path, "r+b")
        self.mm = mmap.mmap(self.f.fileno(), 0)       # MAP_SHARED, writable
        self.ch = rc.Channel.open(path)
        self.rd = rc.Reader(self.ch, "oldest")
        self.rd.pos, self.rd.seq = pos, seq
        self.load_hooks = []                            # (offset, n, action)
        self.copy_hooks = []
        self.loads = {}
        self.copies = 0
        real_load, real_copy = self.ch.load_u64, self.ch.copy

        def load(offset):
            n = self.loads[offset] = self.loads.get(offset, 0) + 1
            for off, nth, action in self.load_hooks:
                if off == offset and nth == n:
                    action()
            return real_load(offset)

        def copy(a, b):
            self.copies += 1
            for action in self.copy_hooks:
                action()
            return real_copy(a, b)

        self.ch.load_u64 = load       # the reader looks these up on the channel
        self.ch.copy = copy

    def put(self, offset, fmt, value):
        struct.pack_into(fmt, self.mm, offset, value)

    def close(self):
        self.ch.close()
        self.mm.close()
        self.f.close()


def case_rechecks_interleaved():
    ensure_snapshot()
    with open_copy(SNAPSHOT["bytes"], "interleaved-probe") as ch:
        CAP, RING, SALT = ch.capacity, ch.ring_offset, ch.salt
        # The first lap boundary still in the ring: p0 + CAP is the next one.
        p0 = rc.round_up(ch.read_claim_word()[0] - CAP, CAP)
        length = struct.unpack_from("<I", SNAPSHOT["bytes"], RING + (p0 & (CAP - 1)))[0]
        seq0 = struct.unpack_from("<Q", SNAPSHOT["bytes"], RING + (p0 & (CAP - 1)) + 8)[0]
    h = RING + (p0 & (CAP - 1))
    newer_commit = (p0 + CAP) ^ SALT
    overtaken = p0 + CAP + 32          # a claim that reaches past p0 + CAP

    def run(label, setup, want_lags, want_copies, want_pos):
        t = Interleaved(label, p0, seq0)
        try:
            # Without resync hints a resync lands on the lap boundary p0 + CAP,
            # where nothing is committed: these cases are about the re-checks.
            for k in range(256):
                t.put(rc.OFF_RESYNC_HINTS + 8 * k, "<Q", 0)
            setup(t)
            r = t.rd.try_read()
            check(r.status == rc.EMPTY,
                  "%s: got %r, expected the read to be discarded" % (label, r))
            check(t.rd.discarded == 1 and t.rd.lags == want_lags and t.copies == want_copies
                  and t.rd.pos == want_pos and t.rd.seq == seq0,
                  "%s: discarded %d, lags %d, copies %d, cursor (%d, %d)"
                  % (label, t.rd.discarded, t.rd.lags, t.copies, t.rd.pos, t.rd.seq))
        finally:
            t.close()

    # 1. A newer frame is committed between the first and the second load of
    #    the commit word: the header read is discarded before the copy.
    run("commit-after-header",
        lambda t: t.load_hooks.append((h + 24, 2, lambda: t.put(h + 24, "<Q", newer_commit))),
        want_lags=0, want_copies=0, want_pos=p0)
    # 2. A writer claims past p + CAP after the header was read, its commit not
    #    stored yet (commit word unchanged): the tail check after the header
    #    catches it and resyncs.
    run("tail-after-header",
        lambda t: t.load_hooks.append((rc.OFF_TAIL_POSITION, 1,
                                       lambda: t.put(256, "<Q", overtaken))),
        want_lags=1, want_copies=0, want_pos=p0 + CAP)

    # 3. A newer frame is committed while the payload is being copied.
    def during_copy_commit(t):
        t.copy_hooks.append(lambda: (t.put(h + 32, "<8s", b"XXXXXXXX"),
                                     t.put(h + 24, "<Q", newer_commit)))
    run("commit-during-copy", during_copy_commit, want_lags=0, want_copies=1, want_pos=p0)

    # 4. A writer that claimed past p + CAP scribbles the payload during the
    #    copy and has not committed: only the tail check after the copy sees it.
    def during_copy_tail(t):
        t.copy_hooks.append(lambda: (t.put(h + 32, "<8s", b"XXXXXXXX"),
                                     t.put(256, "<Q", overtaken)))
    run("tail-during-copy", during_copy_tail, want_lags=1, want_copies=1, want_pos=p0 + CAP)

    # 5. Header fields are used only after the re-checks: a torn header
    #    (type 7) read while the frame was being overwritten is not "corrupt".
    def torn_type(t):
        t.load_hooks.append((rc.OFF_TAIL_POSITION, 1, lambda: t.put(256, "<Q", overtaken)))
        t.put(h + 4, "<H", 7)
    run("torn-header", torn_type, want_lags=1, want_copies=0, want_pos=p0 + CAP)
    check(length <= CONTRACT_MAX_MESSAGE, "probe frame length %d" % length)


def case_cli():
    ensure_snapshot()
    me = os.path.join(HERE, "read_channel.py")
    path = snapshot_file(SNAPSHOT["bytes"], "cli-good")
    p = subprocess.run([sys.executable, me, "--quiet", "--header", path],
                       capture_output=True, timeout=60, text=True)
    check(p.returncode == 0, "CLI on a good copy: status %d, %s" % (p.returncode, p.stderr))
    check("policy block" in p.stdout and "received " in p.stderr, "CLI output %r %r"
          % (p.stdout[:200], p.stderr))
    bad = snapshot_file(mutated([(8, "<I", 9)]), "cli-bad")
    p = subprocess.run([sys.executable, me, bad], capture_output=True, timeout=60, text=True)
    check(p.returncode == 1 and "layout version 9, this library reads 2" in p.stderr,
          "CLI on a bad copy: status %d, %r" % (p.returncode, p.stderr))


CASES = [
    ("document vectors", case_document_vectors),
    ("block, batches fit in the ring: nothing missed", case_block_lossless),
    ("overwrite, one batch laps the ring", case_overwrite_lapped),
    ("overwrite, several lapping batches", case_overwrite_lapped_batches),
    ("block, passive reader lapped (no registered subscriber)", case_block_passive_lapped),
    ("overwrite, reading while publishing", case_overwrite_concurrent),
    ("block, reading while publishing", case_block_concurrent),
    ("opener rejects bad headers", case_opener_rejects),
    ("frame checks on a copy", case_frames_on_a_copy),
    ("re-checks against interleaved writes", case_rechecks_interleaved),
    ("command line", case_cli),
]


def main():
    global WRITER, TEMP_DIR
    if len(sys.argv) != 2:
        print("usage: test_read_channel.py PATH/TO/channel_writer", file=sys.stderr)
        return 2
    WRITER = sys.argv[1]
    if not os.access(WRITER, os.X_OK):
        print("not an executable: %s" % WRITER, file=sys.stderr)
        return 2
    if sys.byteorder != "little" or os.uname().machine != "x86_64":
        print("layout reader: needs x86-64 (LAYOUT §8); skipped")
        return 77
    # A meson timeout sends SIGTERM: turn it into SystemExit so that the
    # finally blocks kill the writers and remove /dev/shm objects.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    TEMP_DIR = tempfile.mkdtemp(prefix="shmbus_layout_py_")
    passed = failed = 0
    try:
        for name, fn in CASES:
            t0 = time.monotonic()
            try:
                fn()
            except Failure as e:
                failed += 1
                print("FAIL %s: %s" % (name, e))
            except Exception:
                failed += 1
                print("FAIL %s: unexpected error" % name)
                traceback.print_exc(file=sys.stdout)
            else:
                passed += 1
                print("ok   %s (%.2f s)" % (name, time.monotonic() - t0))
            finally:
                cleanup_all()
            sys.stdout.flush()
    finally:
        cleanup_all()
        shutil.rmtree(TEMP_DIR, ignore_errors=True)
    print("layout reader: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
