"""The child process that makes ``chatdb demo``'s chats and messages (the parent side is
:func:`chatdb.demo.generate`), so that generating them runs on one core while the parent writes
them on the other (a thread would share one core with the writer: the GIL).

The request (JSON on stdin) is :func:`chatdb.demo.generate`'s sizes, ``seed``, ``days`` and
``end`` (ISO). The answer (stdout) is frames of an 8-byte little-endian length and a pickle of
``(table, rows)``: chats first, then messages, in the order an in-process run makes them, as
tuples in ``IMPORT_COLUMNS`` order; then one ``("end", [])`` frame. Both processes draw from the
same seeded streams, so the rows are the ones an in-process run makes.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import sys
from typing import Any

FRAME_HEADER = 8  # bytes of a frame's length


def serve(request: dict[str, Any], out: Any) -> None:
    from . import demo

    for table, rows in demo.row_chunks(**request):
        data = pickle.dumps((table, rows), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(data).to_bytes(FRAME_HEADER, "little"))
        out.write(data)
    end = pickle.dumps(("end", []), protocol=pickle.HIGHEST_PROTOCOL)
    out.write(len(end).to_bytes(FRAME_HEADER, "little") + end)


def main() -> None:
    gc.disable()  # the rows hold no reference cycles: no collection pauses
    try:
        serve(json.loads(sys.stdin.buffer.read()), sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        os._exit(0)  # the parent stopped reading (it failed, or was killed): nothing more to do
    os._exit(0)  # everything is written: skip the interpreter's final collection


if __name__ == "__main__":
    main()
