"""Realistic synthetic data, to try chatdb's reports and exports without a production database.

:func:`generate` writes users (with scrypt password hashes of random, discarded passwords), API
keys (some revoked), chats and messages shaped like a real Claude chat application's: a mix of
Claude models with their typical token counts and latencies, conversations whose input grows turn
by turn, prompt caching in some chats (``cacheCreationInputTokens``/``cacheReadInputTokens`` kept
as extra metadata keys), a share of assistant messages without metadata or without
``totalCostUsd`` (so cost estimation matters), a self-hosted model without a price, and a few
image parts. Reported costs are the bundled price table's, at the price of the message's day.

Rows are built in the stored format and written with the repository's bulk path
(``import_rows``), lazily: a million messages never sit in memory. From ``_CHILD_FROM`` messages
on, a child process (:mod:`chatdb._demo_rows`) makes the chats and messages while this process
writes them, so the two halves of the work run on two cores. The same ``seed`` and ``end``
(a fixed date by default, :data:`DEFAULT_END`) give the same ids, texts and timestamps, so running
it twice inserts nothing the second time, and a run killed midway is completed by running it again.
Each chat draws its messages from its own seeded stream, which lets the chats be written before
their messages (whose times set the chats' ``updated_at``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import pickle
import random
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from operator import itemgetter
from typing import Any, cast

from . import _codec, _demo_rows
from ._base import IMPORT_COLUMNS, RepositoryBase
from ._batches import child_env, widen_pipe
from ._validate import DEFAULT_TITLE
from .analytics.pricing import Price, PriceTable, bundled_prices
from .errors import ChatDbError, ValidationError
from .repository import ChatRepository

__all__ = ["DEFAULT_END", "DemoSummary", "generate"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Where the demo history ends unless told otherwise: a fixed date, not "now", so that the same
# seed and options give the same rows on any day (``chatdb demo --end`` moves it).
DEFAULT_END = datetime(2026, 12, 1, tzinfo=UTC)
_DAY_MS = 86_400_000
# From this many messages on, the chats and messages are made by a child process while this one
# writes them (generating is about half the work of a large demo into SQLite); below it the
# process's start-up (~0.3 s) is not worth it.
_CHILD_FROM = 10_000
_CHUNK_ROWS = 10_000  # rows per chunk: a frame from the child, a transaction on SQL
# version 4, RFC 4122 variant: bits 76-79 = 0100, bits 62-63 = 10
_UUID_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_BITS = (0x4 << 76) | (0x2 << 62)


@dataclass(frozen=True)
class DemoSummary:
    """Rows inserted per table (0 for rows already present) and the time window of the data."""

    users: int
    chats: int
    messages: int
    api_keys: int
    start: datetime
    end: datetime
    seed: int
    seconds: float


@dataclass(frozen=True)
class _Model:
    name: str  # as the application stores it: a dated snapshot name
    weight: float
    output_median: int  # tokens
    first_token_ms: int
    tokens_per_second: float


# Shares of chats per model, and how the model behaves (public benchmarks, rounded).
_MODELS = (
    _Model("claude-sonnet-4-5-20250929", 0.40, 520, 1100, 70.0),
    _Model("claude-haiku-4-5-20251001", 0.22, 300, 450, 150.0),
    _Model("claude-opus-4-1-20250805", 0.08, 650, 1900, 38.0),
    _Model("claude-opus-4-5-20251101", 0.08, 600, 1500, 50.0),
    _Model("claude-sonnet-4-20250514", 0.10, 480, 1200, 65.0),
    _Model("claude-3-7-sonnet-20250219", 0.04, 450, 1200, 60.0),
    _Model("claude-3-5-haiku-20241022", 0.06, 260, 600, 110.0),
)
# A self-hosted model: tokens and latency are recorded, but there is no price for it.
_LOCAL_MODEL = _Model("llama-3.1-8b-instruct", 0.015, 220, 250, 120.0)
_LOCAL_EVERY = 50  # one chat in 50 uses it

_NO_METADATA = 0.06  # assistant messages stored without metadata (older app versions)
_NO_COST = 0.09  # assistant messages whose metadata lacks totalCostUsd
_NO_DURATION = 0.03
_CACHED_CHATS = 0.35  # chats that use prompt caching
_MAX_CONTEXT = 40_000  # the application sends at most this much history (tokens)
_IMAGE_SHARE = 0.03  # user messages with an image part
_SESSION_SHARE = 0.2
_REVOKED_KEYS = 0.3

_FIRST = [
    "ada",
    "alan",
    "barbara",
    "claude",
    "dana",
    "edsger",
    "frances",
    "grace",
    "hedy",
    "ivan",
    "joan",
    "ken",
    "linus",
    "margaret",
    "niklaus",
    "olga",
    "peter",
    "radia",
    "sophie",
    "tim",
    "ursula",
    "vint",
    "whitfield",
    "xia",
    "yukihiro",
    "zhang",
    "amara",
    "bjarne",
    "chen",
    "dmitri",
]
_LAST = [
    "lovelace",
    "turing",
    "liskov",
    "shannon",
    "scott",
    "dijkstra",
    "allen",
    "hopper",
    "lamarr",
    "sutherland",
    "clarke",
    "thompson",
    "torvalds",
    "hamilton",
    "wirth",
    "ladyzhenskaya",
    "naur",
    "perlman",
    "wilson",
    "bernerslee",
    "lehmann",
    "cerf",
    "diffie",
    "matsumoto",
    "wei",
    "okafor",
    "stroustrup",
    "rao",
    "petrov",
]
_TIMEZONES = (0, 1, 1, 2, -5, -5, -8, 9, 5, -3)  # UTC offsets (hours) of the users' working days
_TOPICS = (
    "a SQL query that is too slow",
    "unit tests for a payment service",
    "the quarterly sales report",
    "a Kubernetes deployment that keeps restarting",
    "a cover letter",
    "our onboarding documentation",
    "a React component with too many props",
    "a data pipeline in Polars",
    "the Q3 marketing plan",
    "a flaky integration test",
    "translating product copy to German",
    "a regex for log lines",
    "migrating from MySQL to PostgreSQL",
    "an API rate limiter",
    "the customer churn analysis",
    "a bash script for backups",
)
_ASKS = (
    "Can you help me with {t}?",
    "I need a second opinion on {t}.",
    "Please review {t} and suggest improvements.",
    "Explain the trade-offs in {t}, briefly.",
    "Write a first draft for {t}.",
    "What am I missing in {t}? ✨",
    "Résumé en français, s'il vous plaît: {t}.",
)
_SENTENCES = (
    "Here is a step-by-step approach.",
    "First, measure before changing anything.",
    "The main cost comes from scanning the whole table.",
    "An index on the filtered columns should help.",
    "Consider splitting this into two smaller functions.",
    "The tests cover the happy path but not the errors.",
    "This keeps memory flat because rows are streamed.",
    "You could also cache the result for a few minutes.",
    "Let me know if you want the full implementation.",
    "One caveat: timezones change the day boundaries.",
    "The numbers look plausible, but check the outliers.",
    "In short, the simplest fix is usually the right one.",
)


def _tiny_png(rgb: tuple[int, int, int], size: int = 8) -> str:
    """A valid ``size`` x ``size`` PNG of one colour, base64 (kept small on purpose)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * size
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode("ascii")


def _hash_password(password: str, salt: bytes) -> str:
    """scrypt in ``chatdb.admin.hash_password``'s format (its ``verify_password`` accepts it), with
    a salt from the seeded stream so the demo is reproducible; never the password itself."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii").rstrip("=")

    return f"scrypt$n=16384,r=8,p=1${b64(salt)}${b64(digest)}"


class _Generator:
    """All random choices, in one seeded stream per purpose so the output is reproducible."""

    def __init__(self, seed: int, end: datetime, days: int, prices: PriceTable) -> None:
        self.rng = random.Random(seed)
        self.end_ms = int((end - _EPOCH).total_seconds() * 1000)
        self.start_ms = self.end_ms - days * _DAY_MS
        self.prices = prices
        self.images = [_tiny_png((r, g, 180)) for r, g in ((200, 40), (30, 160), (90, 90))]
        self.user_contents = [
            _codec.dump_json([{"type": "text", "text": ask.format(t=topic)}], "content")
            for ask in _ASKS
            for topic in _TOPICS
        ]
        self.assistant_contents = [self._assistant_text() for _ in range(400)]
        self._days: dict[int, str] = {}
        self._prices: dict[tuple[str, int], Price | None] = {}

    def _assistant_text(self) -> str:
        count = max(1, int(self.rng.lognormvariate(1.2, 0.6)))
        text = " ".join(self.rng.choice(_SENTENCES) for _ in range(count))
        return _codec.dump_json([{"type": "text", "text": text}], "content")

    def uid(self, rng: random.Random | None = None) -> str:
        """A random (version 4) UUID from ``rng`` (default: the main seeded stream);
        ``uuid.UUID`` is 3x slower."""
        h = f"{(rng or self.rng).getrandbits(128) & _UUID_MASK | _UUID_BITS:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def ts(self, ms: int) -> str:
        """``_codec.format_ts`` of epoch milliseconds, with the date part cached per day (hot path)."""
        day, rest = divmod(ms, _DAY_MS)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = self._days[day] = _codec.format_ts(_EPOCH + timedelta(days=day))[:11]
        seconds, millis = divmod(rest, 1000)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        return f"{prefix}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"

    def price(self, model: str, ms: int) -> Price | None:
        """The model's price on the day of ``ms``, cached per (model, day)."""
        key = (model, ms // _DAY_MS)
        if key not in self._prices:
            self._prices[key] = self.prices.price_for(model, _EPOCH + timedelta(days=key[1]))
        return self._prices[key]


def _available_models(gen: _Generator, at_ms: int) -> tuple[list[_Model], list[float]]:
    """Models already released (priced) at ``at_ms``; all of them if the window predates every one."""
    day = (_EPOCH + timedelta(milliseconds=at_ms)).date()
    models = [m for m in _MODELS if gen.prices.price_for(m.name, day) is not None] or list(_MODELS)
    return models, [m.weight for m in models]


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """``total`` spread over ``parts`` with a long tail (a few long chats, many short ones)."""
    if parts == 0:
        return []
    weights = [rng.lognormvariate(0.0, 0.9) for _ in range(parts)]
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    for index in rng.sample(range(parts), total - sum(counts)) if total > sum(counts) else ():
        counts[index] += 1
    return counts


def generate(
    repo: ChatRepository,
    *,
    users: int = 20,
    chats: int = 500,
    messages: int = 20_000,
    days: int = 90,
    seed: int = 42,
    end: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> DemoSummary:
    """Fill ``repo`` with demo data ending at ``end`` (default: :data:`DEFAULT_END`, a fixed
    date, so the same arguments give the same rows whenever they run) and spanning ``days``.

    Tables are written parents first (users, chats, messages, API keys): a reader never sees a
    message without its chat, and a run killed midway and run again ends with exactly the rows
    of an uninterrupted run. ``progress`` is called with the number of messages written since
    its last call. Returns how many rows each table gained (rows whose ids already exist are
    skipped, so a rerun inserts nothing; concurrent writers would be counted too). Raises
    ValidationError for negative sizes or chats without users, and the repository's errors
    (BackendError, ...) when writing fails.
    """
    if min(users, chats, messages) < 0 or days < 1:
        raise ValidationError("users, chats and messages must be >= 0 and days >= 1")
    if chats and not users:
        raise ValidationError("chats need at least one user")
    bulk = cast(RepositoryBase, repo)  # every backend is one; the bulk path is not in the protocol
    started = time.perf_counter()
    end = _codec.parse_ts(_codec.format_ts(DEFAULT_END if end is None else end))
    gen = _Generator(seed, end, days, bundled_prices())
    people, keys, plans = _setup(gen, users, chats, messages, days)
    request = {"users": users, "chats": chats, "messages": messages, "days": days, "seed": seed,
               "end": _codec.format_ts(end)}  # fmt: skip
    # Inserted rows are counted from the tables: driver row counts of bulk inserts are unreliable.
    before = bulk.count_rows()
    with _row_source(gen, plans, request) as chunks_of:
        bulk.import_rows("users", people)
        bulk.import_values("chats", chunks_of("chats"))
        chunks = chunks_of("messages")
        if progress is not None:
            chunks = _report_progress(chunks, progress)
        bulk.import_values("messages", chunks)
    bulk.import_rows("api_keys", keys)
    after = bulk.count_rows()
    added = {table: after[table] - before.get(table, 0) for table in after}
    return DemoSummary(
        users=added["users"],
        chats=added["chats"],
        messages=added["messages"],
        api_keys=added["api_keys"],
        start=_EPOCH + timedelta(milliseconds=gen.start_ms),
        end=end,
        seed=seed,
        seconds=time.perf_counter() - started,
    )


def _setup(
    gen: _Generator, users: int, chats: int, messages: int, days: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[_ChatPlan]]:
    """Users, API keys and chat plans, drawn from ``gen``'s main stream in this order (which
    the child process, :mod:`chatdb._demo_rows`, repeats to make the same chats and messages)."""
    people = _make_users(gen, users)
    keys = list(_make_keys(gen, people))
    return people, keys, _plan_chats(gen, people, chats, messages, days)


def row_chunks(
    *, users: int, chats: int, messages: int, days: int, seed: int, end: str
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """The chats, then the messages, :func:`generate` writes for these arguments, as
    ``(table, rows)`` (what the child process sends)."""
    gen = _Generator(seed, _codec.parse_ts(end), days, bundled_prices())
    _people, _keys, plans = _setup(gen, users, chats, messages, days)
    for table in ("chats", "messages"):
        for chunk in _chunks(table, gen, plans):
            yield table, chunk


def _chunks(table: str, gen: _Generator, plans: list[_ChatPlan]) -> Iterator[list[tuple[Any, ...]]]:
    """``table``'s rows ("chats" or "messages") as value tuples in ``IMPORT_COLUMNS`` order,
    _CHUNK_ROWS at a time."""
    rows = _make_chats(gen, plans) if table == "chats" else _make_messages(gen, plans)
    values = map(itemgetter(*IMPORT_COLUMNS[table]), rows)
    while chunk := list(islice(values, _CHUNK_ROWS)):
        yield chunk


class _ChildRows:
    """Rows from the child process (:mod:`chatdb._demo_rows`), table after table."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        self.pending: tuple[str, list[tuple[Any, ...]]] | None = None

    def _frame(self) -> tuple[str, list[tuple[Any, ...]]]:
        assert self.child.stdout is not None
        header = self.child.stdout.read(_demo_rows.FRAME_HEADER)
        data = self.child.stdout.read(int.from_bytes(header, "little")) if header else b""
        if len(header) < _demo_rows.FRAME_HEADER or not data:
            self.child.wait()
            message = (self.child.stderr.read() if self.child.stderr else b"").decode("utf-8", "replace")
            last = message.strip().splitlines()[-1:] or [f"exit status {self.child.returncode}"]
            raise ChatDbError(f"the demo data process failed: {last[0]}")
        table, rows = pickle.loads(data)
        return str(table), rows

    def __call__(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        """``table``'s rows in chunks, as import_values takes them; stops at the next table's
        first frame."""
        while True:
            frame, self.pending = self.pending or self._frame(), None
            if frame[0] != table:
                self.pending = frame
                return
            yield frame[1]


@contextmanager
def _row_source(
    gen: _Generator, plans: list[_ChatPlan], request: dict[str, Any]
) -> Iterator[Callable[[str], Iterator[list[tuple[Any, ...]]]]]:
    """A function giving the chats', then the messages' rows in chunks: from a child process
    that makes them while this one writes, for _CHILD_FROM messages or more; else made here,
    lazily."""
    if request["messages"] < _CHILD_FROM or not sys.executable:
        yield lambda table: _chunks(table, gen, plans)
        return
    child = subprocess.Popen(
        # -P: the working directory is not on the child's path (see _batches.child_env).
        [sys.executable, "-P", "-m", "chatdb._demo_rows"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert child.stdin is not None
    widen_pipe(child.stdout)
    try:
        child.stdin.write(json.dumps(request).encode())
        child.stdin.close()
        yield _ChildRows(child)
    finally:
        child.kill()  # (done already, unless this process stopped reading early)
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class _ChatPlan:
    """What a chat's row and its messages are made from; ``seed`` seeds the chat's own random
    stream, so its messages can be made again (the same) after its row was written."""

    id: str
    owner: str
    start: int  # ms, before the chat is moved back to end inside the window
    size: int
    cached: bool
    seed: int
    lead: int  # ms between the chat's creation and its first message
    title: str
    session_id: str | None


def _plan_chats(
    gen: _Generator, people: list[dict[str, Any]], chats: int, messages: int, days: int
) -> list[_ChatPlan]:
    """Owner (a few heavy users), start time in the owner's working hours and size per chat."""
    rng = gen.rng
    users = len(people)
    owner_weights = [1.0 / (rank + 1) ** 0.9 for rank in range(users)]
    owners = rng.choices(range(users), owner_weights, k=chats) if chats else []
    sizes = _split(messages, chats, rng)
    plans = []
    for index in range(chats):
        owner = people[owners[index]]
        day = rng.randrange(days)
        hour = min(23, max(0, int(rng.gauss(14, 3.2)))) - owner["_utc_offset"]
        start = gen.start_ms + day * _DAY_MS + hour * 3_600_000 + rng.randrange(3_600_000)
        plans.append(
            _ChatPlan(
                id=gen.uid(),
                owner=owner["id"],
                start=start,
                size=sizes[index],
                cached=rng.random() < _CACHED_CHATS,
                seed=rng.getrandbits(64),
                lead=rng.randrange(100, 2_000),
                title=rng.choice(_TOPICS).capitalize() if rng.random() < 0.85 else DEFAULT_TITLE,
                session_id=gen.uid() if rng.random() < _SESSION_SHARE else None,
            )
        )
    return plans


def _make_users(gen: _Generator, count: int) -> list[dict[str, Any]]:
    rng, taken, people = gen.rng, set(), []
    # Demo users share one random password that is never stored or shown: one scrypt per run,
    # not one per user (each costs ~40 ms, which dominated large demos).
    secret = rng.getrandbits(128).to_bytes(16, "big").hex()
    shared_hash = _hash_password(secret, rng.getrandbits(128).to_bytes(16, "big"))
    for _ in range(count):
        name = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}"
        while name in taken:
            name = f"{name}{rng.randrange(10)}"
        taken.add(name)
        created = gen.start_ms - rng.randrange(1, 200) * _DAY_MS - rng.randrange(_DAY_MS)
        stamp = gen.ts(created)
        people.append(
            {
                "id": gen.uid(),
                "username": name,
                "password_hash": shared_hash,
                "created_at": stamp,
                "updated_at": stamp,
                "_utc_offset": rng.choice(_TIMEZONES),
            }
        )
    return people


def _make_keys(gen: _Generator, people: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    rng = gen.rng
    for person in people:
        for label in ("laptop", "ci", "notebook")[: rng.randint(1, 3)]:
            raw = f"cck_{rng.getrandbits(128):032x}"  # the shape chatdb.admin.generate_api_key makes
            created = gen.start_ms + rng.randrange(gen.end_ms - gen.start_ms)
            used = created + rng.randrange(max(1, gen.end_ms - created)) if rng.random() < 0.6 else None
            revoked = rng.random() < _REVOKED_KEYS
            yield {
                "id": gen.uid(),
                "user_id": person["id"],
                "key_hash": hashlib.sha256(raw.encode()).hexdigest(),
                "key_prefix": raw[:12],
                "name": label,
                "created_at": gen.ts(created),
                "last_used_at": None if used is None else gen.ts(used),
                "revoked_at": gen.ts(max(created, used or created) + 60_000) if revoked else None,
            }


def _report_progress(
    chunks: Iterator[list[tuple[Any, ...]]], progress: Callable[[int], None]
) -> Iterator[list[tuple[Any, ...]]]:
    for chunk in chunks:
        yield chunk
        progress(len(chunk))


class _Timeline:
    """A chat's model and the times of its messages, drawn from the chat's own random stream
    (``rng``, which then goes on to draw its messages): the same whenever it is made again."""

    __slots__ = ("durations", "model", "offsets", "outputs", "rng", "start")

    def __init__(self, gen: _Generator, plan: _ChatPlan, index: int) -> None:
        rng = self.rng = random.Random(plan.seed)
        lognorm, rand = rng.lognormvariate, rng.random
        models, weights = _available_models(gen, plan.start)
        model = rng.choices(models, weights)[0]
        if index % _LOCAL_EVERY == _LOCAL_EVERY // 7:  # a fixed share, so even small demos have one
            model = _LOCAL_MODEL
        self.model = model
        # Offsets first: the chat is moved back if it would run past the end of the window.
        offsets: list[int] = []
        durations: list[int] = []
        outputs: list[int] = []
        clock = rng.randrange(200, 3_000)
        for i in range(plan.size):
            if i % 2 == 0:
                pause = lognorm(10.5, 1.0) if i and rand() < 0.05 else lognorm(10.3, 0.8)
                clock += int(pause) + 1 if i else 0
                durations.append(0)
                outputs.append(0)
            else:
                out = min(8_192, max(1, int(lognorm(math.log(model.output_median), 0.8))))
                took = int(
                    lognorm(math.log(model.first_token_ms), 0.35) + out / model.tokens_per_second * 1000
                )
                clock += took + rng.randrange(20, 300)
                durations.append(took)
                outputs.append(out)
            offsets.append(clock)
        self.offsets, self.durations, self.outputs = offsets, durations, outputs
        self.start = max(gen.start_ms, min(plan.start, gen.end_ms - (offsets[-1] if offsets else 0) - 1))


def _make_messages(gen: _Generator, plans: list[_ChatPlan]) -> Iterator[dict[str, Any]]:
    """Each chat's messages in order (their times are the ones ``_make_chats`` saw)."""
    for index, plan in enumerate(plans):
        if plan.size == 0:
            continue
        timeline = _Timeline(gen, plan, index)
        rng, model, start, cached = timeline.rng, timeline.model, timeline.start, plan.cached
        offsets, durations, outputs = timeline.offsets, timeline.durations, timeline.outputs
        lognorm, rand = rng.lognormvariate, rng.random
        context = int(lognorm(6.5, 0.7))  # system prompt and first question, in tokens
        for i in range(plan.size):
            created = start + offsets[i]
            if i % 2 == 0:
                role = "user"
                if rand() < _IMAGE_SHARE:
                    parts = [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image", "imageData": rng.choice(gen.images), "mimeType": "image/png"},
                    ]
                    content = _codec.dump_json(parts, "content")
                    context += 1_600
                else:
                    content = rng.choice(gen.user_contents)
                    context += int(lognorm(4.5, 0.9))
                metadata = None
            else:
                role = "assistant"
                content = rng.choice(gen.assistant_contents)
                metadata = _assistant_metadata(
                    gen, rng, model, created, min(context, _MAX_CONTEXT), outputs[i], durations[i], cached, i
                )
                context += outputs[i]
            yield {
                "id": gen.uid(rng),
                "chat_id": plan.id,
                "role": role,
                "content": content,
                "created_at": gen.ts(created),
                "metadata": metadata,
            }


def _assistant_metadata(
    gen: _Generator,
    rng: random.Random,
    model: _Model,
    created_ms: int,
    context: int,
    output_tokens: int,
    duration_ms: int,
    cached: bool,
    index: int,
) -> str | None:
    if rng.random() < _NO_METADATA:
        return None
    if cached:
        # The conversation so far is read from the cache; only the new turn is written to it.
        cache_read = 0 if index == 1 else int(context * 0.9)
        cache_write = context - cache_read - 3
        input_tokens = 3
    else:
        cache_read = cache_write = 0
        input_tokens = context
    # Built as text in the stored key order (what dump_json(metadata_to_dict(...)) writes, which
    # the tests check): json.dumps per message would be a fifth of the time for a million rows.
    meta = f'{{"model":"{model.name}","inputTokens":{input_tokens},"outputTokens":{output_tokens}'
    if rng.random() >= _NO_COST:
        price = gen.price(model.name, created_ms)
        if price is not None:
            cost = round(price.cost(input_tokens, output_tokens, cache_write, cache_read), 8)
            meta += f',"totalCostUsd":{_codec.js_number(cost)}'
    if rng.random() >= _NO_DURATION:
        meta += f',"durationMs":{duration_ms}'
    if cached:
        meta += f',"cacheCreationInputTokens":{cache_write},"cacheReadInputTokens":{cache_read}'
    return meta + "}"


def _make_chats(gen: _Generator, plans: list[_ChatPlan]) -> Iterator[dict[str, Any]]:
    for index, plan in enumerate(plans):
        if plan.size:
            timeline = _Timeline(gen, plan, index)
            first, last = timeline.start + timeline.offsets[0], timeline.start + timeline.offsets[-1]
        else:
            first = last = min(plan.start, gen.end_ms)
        created = max(gen.start_ms, first - plan.lead)
        yield {
            "id": plan.id,
            "title": plan.title,
            "session_id": plan.session_id,
            "user_id": plan.owner,
            "created_at": gen.ts(created),
            "updated_at": gen.ts(max(created, last)),
        }
