"""GBNF for JSON numbers within bounds: ``minimum``, ``maximum`` and the exclusive ones.

A number is written without an exponent, as ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?``, and split into its
sign, integer part and fraction; each part is bounded digit by digit, as llama.cpp's converter
bounds integers (``_generate_min_max_int``), extended to fractions. The grammar only has to
produce valid numbers, not every valid spelling: no exponents, no ``-0``, at most
``FRACTION_DIGITS`` digits after the point (enough for a double to keep a strict bound strict)
and, without an upper bound, at most ``MAX_DIGITS`` before it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

FRACTION_DIGITS = 12
MAX_BOUND_DIGITS = 40  # digits of a bound's integer part: the grammar grows with them
MAX_DIGITS = 16  # an integer part with no upper bound: at most this many digits, as llama.cpp's converter


class RangeError(ValueError):
    """Bounds that cannot be written (too many digits) or that no number satisfies."""


@dataclass(frozen=True)
class Bound:
    """One end of a range: ``value`` itself allowed when ``inclusive``."""

    value: Decimal
    inclusive: bool


def bound(value: object, inclusive: bool, keyword: str) -> Bound:
    """A schema keyword's value as a Bound (RangeError if it is not a finite number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RangeError(f"{keyword} must be a number")
    try:
        d = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    except InvalidOperation as exc:
        raise RangeError(f"{keyword} {value!r} is not a number") from exc
    if not d.is_finite():
        raise RangeError(f"{keyword} must be finite")
    if len(str(abs(int(d)))) > MAX_BOUND_DIGITS:
        raise RangeError(f"{keyword} {value!r} has more than {MAX_BOUND_DIGITS} digits")
    return Bound(d, inclusive)


def number_rule(low: Bound | None, high: Bound | None, integer: bool) -> str:
    """A GBNF expression (no rule references) matching exactly the numbers in [low, high] that
    this module writes; RangeError if there is none."""
    if integer:
        lo: int | None = None if low is None else _ceil_int(low)
        hi = None if high is None else _floor_int(high)
        if lo is not None and hi is not None and lo > hi:
            raise RangeError(f"no integer lies between {low.value} and {high.value}")  # type: ignore[union-attr]
        alts = []
        if hi is None or hi >= 0:
            alts.append(_int_range(max(lo or 0, 0), hi))
        if lo is None or lo < 0:
            alts.append('"-" ' + _group(_int_range(max(1, -hi) if hi is not None else 1, None if lo is None else -lo)))
        return _alt(alts)
    if low is not None and high is not None and (
            low.value > high.value or (low.value == high.value and not (low.inclusive and high.inclusive))):
        raise RangeError(f"no number lies between {low.value} and {high.value}")
    zero = Bound(Decimal(0), True)
    alts = []
    if high is None or high.value > 0 or (high.value == 0 and high.inclusive):
        alts.append(_positive(low if low is not None and low.value >= 0 else zero, high))
    if low is None or low.value < 0:
        # -y with y in (max(0, -high), -low]: y > 0 always, so no "-0"
        y_low = Bound(-high.value, high.inclusive) if high is not None and high.value < 0 else Bound(Decimal(0), False)
        y_high = None if low is None else Bound(-low.value, low.inclusive)
        alts.append('"-" ' + _group(_positive(y_low, y_high)))
    return _alt(alts)


def _ceil_int(b: Bound) -> int:
    v = b.value
    n = int(v.to_integral_value(rounding="ROUND_CEILING"))
    return n + 1 if n == v and not b.inclusive else n


def _floor_int(b: Bound) -> int:
    v = b.value
    n = int(v.to_integral_value(rounding="ROUND_FLOOR"))
    return n - 1 if n == v and not b.inclusive else n


def _split(d: Decimal) -> tuple[int, str]:
    """A non-negative decimal's integer part and its fraction digits without trailing zeros."""
    text = format(d, "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    if len(frac) > FRACTION_DIGITS:
        raise RangeError(f"bound {d} has more than {FRACTION_DIGITS} digits after the point")
    return int(whole), frac


def _positive(low: Bound, high: Bound | None) -> str:
    """Non-negative numbers in [low, high] (low.value >= 0)."""
    li, lf = _split(low.value)
    alts = []
    if high is None:
        alts.append(_int_range(li, li) + " " + _fraction((lf, low.inclusive), None))
        alts.append(_int_range(li + 1, None) + " " + _fraction(None, None))
        return _alt(alts)
    hi, hf = _split(high.value)
    if li == hi:
        return _int_range(li, li) + " " + _fraction((lf, low.inclusive), (hf, high.inclusive))
    alts.append(_int_range(li, li) + " " + _fraction((lf, low.inclusive), None))
    if li + 1 <= hi - 1:
        alts.append(_int_range(li + 1, hi - 1) + " " + _fraction(None, None))
    alts.append(_int_range(hi, hi) + " " + _fraction(None, (hf, high.inclusive)))
    return _alt([a for a in alts if "[]" not in a])


_State = tuple[str, bool] | None  # remaining digits of a bound and whether equality is allowed; None: met


def _fraction(low: _State, high: _State) -> str:
    """``("." digits)?`` whose value 0.digits lies within the fraction bounds."""
    alts, empty = _digits(low, high, FRACTION_DIGITS)
    parts = []
    if alts:
        parts.append('"." ' + _group(_alt(alts)))
    if empty:
        parts.append('""')
    if not parts:
        return "[]"  # no fraction fits: the caller drops this alternative
    return _group(_alt(parts))


def _digits(low: _State, high: _State, room: int) -> tuple[list[str], bool]:
    """(alternatives of one or more digits, whether stopping here fits) for digit strings of at
    most ``room`` digits compared with the bounds as fraction digits (missing digits are 0)."""
    empty = _ends_ok_low(low) and _ends_ok_high(high)
    if room == 0:
        return [], empty
    groups: dict[tuple[_State, _State], list[int]] = {}
    for d in range(10):
        nl = _step_low(low, d)
        nh = _step_high(high, d)
        if nl == "fail" or nh == "fail":
            continue
        groups.setdefault((nl, nh), []).append(d)  # type: ignore[arg-type]
    alts = []
    for (nl, nh), ds in groups.items():
        head = _digit_class(ds)
        if nl is None and nh is None:
            alts.append(f"{head} [0-9]{{0,{room - 1}}}" if room > 1 else head)
            continue
        sub, sub_empty = _digits(nl, nh, room - 1)
        tail = _alt(sub + (['""'] if sub_empty else []))
        if tail:
            alts.append(f"{head} {_group(tail)}")
    return alts, empty


def _ends_ok_low(low: _State) -> bool:
    return low is None or (low[0].strip("0") == "" and low[1])


def _ends_ok_high(high: _State) -> bool:
    return high is None or high[0].strip("0") != "" or high[1]


def _step_low(low: _State, d: int) -> _State | str:
    if low is None or (low[0] == "" and low[1]):  # the rest of the bound is zeros, and equal is fine
        return None
    digits, inclusive = low
    b = int(digits[0]) if digits else 0
    if d > b:
        return None
    return (digits[1:], inclusive) if d == b else "fail"


def _step_high(high: _State, d: int) -> _State | str:
    if high is None:
        return None
    digits, inclusive = high
    b = int(digits[0]) if digits else 0
    if d < b:
        return None
    return (digits[1:], inclusive) if d == b else "fail"


def _int_range(lo: int, hi: int | None) -> str:
    """Non-negative integers lo..hi (hi None: unbounded), without leading zeros, as one group."""
    return _group(_int_alternatives(lo, hi))


def _int_alternatives(lo: int, hi: int | None) -> str:
    if hi is not None and lo > hi:
        return "[]"
    alts = []
    n_lo = len(str(lo))
    n_hi = len(str(hi)) if hi is not None else n_lo
    for n in range(n_lo, n_hi + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = min(hi, 10**n - 1) if hi is not None else 10**n - 1
        if a <= b:
            alts.append(_same_length(str(a), str(b)))
    if hi is None:  # longer numbers, up to MAX_DIGITS (a model left free writes digits forever)
        more = max(MAX_DIGITS - n_lo - 1, 0)
        alts.append(f"[1-9] [0-9]{{{n_lo}}}" + (f" [0-9]{{0,{more}}}" if more else ""))
    return _alt(alts)


def _same_length(a: str, b: str) -> str:
    """Digit strings of len(a) == len(b) between a and b."""
    if a == b:
        return f'"{a}"'
    i = 0
    while a[i] == b[i]:
        i += 1
    prefix = f'"{a[:i]}" ' if i else ""
    rest = len(a) - i - 1
    alts = []
    da, db = int(a[i]), int(b[i])
    if rest == 0:
        return prefix + _digit_class(list(range(da, db + 1)))
    if a[i + 1:] == "0" * rest:  # the whole lower block counts as a middle digit
        da -= 1
    else:
        alts.append(f'"{a[i]}" ' + _group(_at_least(a[i + 1:])))
    top_full = b[i + 1:] == "9" * rest
    mid = list(range(da + 1, db + (1 if top_full else 0)))
    if mid:
        alts.append(f"{_digit_class(mid)} [0-9]{{{rest}}}")
    if not top_full:
        alts.append(f'"{b[i]}" ' + _group(_at_most(b[i + 1:])))
    return prefix + _group(_alt(alts))


def _at_least(s: str) -> str:
    """Digit strings of len(s) that are >= s."""
    if not s:
        return '""'
    d, rest = int(s[0]), len(s) - 1
    alts = [f'"{s[0]}" ' + _group(_at_least(s[1:])) if rest else f'"{s[0]}"']
    if d < 9:
        alts.append(_digit_class(list(range(d + 1, 10))) + (f" [0-9]{{{rest}}}" if rest else ""))
    return _alt(alts)


def _at_most(s: str) -> str:
    """Digit strings of len(s) that are <= s."""
    if not s:
        return '""'
    d, rest = int(s[0]), len(s) - 1
    alts = [f'"{s[0]}" ' + _group(_at_most(s[1:])) if rest else f'"{s[0]}"']
    if d > 0:
        alts.append(_digit_class(list(range(d))) + (f" [0-9]{{{rest}}}" if rest else ""))
    return _alt(alts)


def _digit_class(ds: list[int]) -> str:
    if len(ds) == 1:
        return f'"{ds[0]}"'
    if ds == list(range(ds[0], ds[-1] + 1)):
        return f"[{ds[0]}-{ds[-1]}]"
    return "[" + "".join(str(d) for d in ds) + "]"


def _alt(alts: list[str]) -> str:
    alts = [a for a in alts if a]
    return " | ".join(alts)


def _group(expr: str) -> str:
    return f"({expr})"
