"""Incremental detokenization: bytes from token pieces become text that is never broken UTF-8,
and stop strings are cut out even when they span several tokens."""

from __future__ import annotations

import codecs


class StopMatcher:
    """Holds back text that might be the start of a stop string until it is known not to be."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add text; return (text safe to emit, the stop string hit or None). Of two stop strings
        in the text, the one that starts first is hit (the longer one where both start there)."""
        if not self.stops:
            return text, None
        buf = self._pending + text
        hit, matched = -1, None
        for stop in self.stops:
            at = buf.find(stop)
            if at != -1 and (hit == -1 or at < hit or (at == hit and len(stop) > len(matched or ""))):
                hit, matched = at, stop
        if matched is not None:
            self._pending = ""
            return buf[:hit], matched
        keep = self._held_suffix(buf)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        """Release held-back text when generation ends without a stop string."""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best


class Detokenizer:
    """Turns a stream of token byte pieces into a stream of complete UTF-8 text."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)

    def feed(self, piece: bytes) -> tuple[str, str | None]:
        """Add one token's bytes; return (new text to emit, the stop string hit or None)."""
        return self._stops.feed(self._decoder.decode(piece))

    def flush(self) -> str:
        """End of generation: emit whatever is held back (an incomplete UTF-8 tail becomes U+FFFD)."""
        tail = self._decoder.decode(b"", final=True)
        text, hit = self._stops.feed(tail)
        return text if hit is not None else text + self._stops.flush()
