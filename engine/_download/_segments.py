"""The segment table of a download over several connections (SPEC 6.2).

The file ``[0, total)`` is cut into disjoint segments that cover it whole.
Each segment knows three offsets:

``pos``      bytes written so far (``start <= pos <= end``), in the page cache;
``durable``  bytes covered by the last ``fsync`` that finished: the resume point;
``end``      where it stops (moves down when another connection takes its tail).

Only ``[start, durable)`` of each segment is recorded in the snapshot
(``state["segments"]`` as ``[start, end, durable]`` triples), so after a crash
every segment continues at its durable end and nothing unsynced is trusted.

Splitting never touches written bytes: the new segment starts at or after
the owner's ``pos``, and the owner stops writing at its new ``end``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import attrs

__all__ = ["Segment", "SegmentTable"]


@attrs.define(eq=False)
class Segment:
    """One range of the file and how far it got (see the module docstring)."""

    start: int
    end: int
    pos: int
    durable: int
    #: the connection writing it now (an opaque token), or None
    owner: object | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos)

    @property
    def done(self) -> bool:
        return self.pos >= self.end

    def __lt__(self, other: "Segment") -> bool:
        return self.start < other.start


@attrs.define(eq=False)
class SegmentTable:
    """Segments sorted by ``start``, covering ``[0, total)``."""

    total: int
    segments: list[Segment]

    @classmethod
    def whole(cls, total: int, done: int = 0) -> "SegmentTable":
        """One segment for the whole file, of which ``[0, done)`` is already durable."""
        return cls(total, [Segment(0, total, done, done)])

    @classmethod
    def from_state(cls, value: Any, total: int) -> "SegmentTable | None":
        """The table recorded in a snapshot; None when it is not a valid cover of ``[0, total)``."""
        if not isinstance(value, list) or not value:
            return None
        segments: list[Segment] = []
        expected = 0
        for item in value:
            if (not isinstance(item, (list, tuple)) or len(item) != 3
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)):
                return None
            start, end, durable = item
            if start != expected or not start <= durable <= end or end <= start:
                return None
            segments.append(Segment(start, end, durable, durable))
            expected = end
        if expected != total:
            return None
        return cls(total, segments)

    def to_state(self) -> list[list[int]]:
        """``[start, end, durable]`` per segment, finished neighbours merged."""
        out: list[list[int]] = []
        for seg in self.segments:
            if out and out[-1][2] == out[-1][1] and seg.durable == seg.end:
                out[-1][1] = seg.end
                out[-1][2] = seg.end
            else:
                out.append([seg.start, seg.end, seg.durable])
        return out

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def done(self) -> bool:
        return all(seg.done for seg in self.segments)

    @property
    def written(self) -> int:
        """Bytes written, all segments together."""
        return sum(seg.pos - seg.start for seg in self.segments)

    @property
    def durable(self) -> int:
        return sum(seg.durable - seg.start for seg in self.segments)

    def prefix(self, attr: str = "pos") -> int:
        """Length of the contiguous prefix from 0 that is written (or ``"durable"``)."""
        upto = 0
        for seg in self.segments:
            reached = getattr(seg, attr)
            if reached < seg.end:
                return reached
            upto = seg.end
        return upto

    def unowned(self) -> Segment | None:
        """The first segment with work left that no connection writes."""
        return next((seg for seg in self.segments if seg.owner is None and not seg.done), None)

    def largest_owned(self) -> Segment | None:
        """The owned segment with the most bytes left (the one to split)."""
        best: Segment | None = None
        for seg in self.segments:
            if seg.owner is not None and seg.remaining > 0 and (best is None or seg.remaining > best.remaining):
                best = seg
        return best

    def split(self, seg: Segment, at: int) -> Segment:
        """Cut ``seg`` at ``at`` (``pos <= at < end``): it keeps the head, the tail is returned, unowned."""
        if not seg.pos <= at < seg.end:
            raise ValueError(f"cannot split [{seg.start}, {seg.end}) at {at} (written to {seg.pos})")
        tail = Segment(at, seg.end, at, at)
        seg.end = at
        bisect.insort(self.segments, tail)
        return tail

    def reset_to_durable(self) -> None:
        """Forget everything written past the durable ends (a resume of this table)."""
        for seg in self.segments:
            seg.pos = seg.durable
            seg.owner = None
