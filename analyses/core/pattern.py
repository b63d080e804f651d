"""User regular expressions matched in linear time: layer-name filters that cannot freeze a server.

Python's ``re`` is a backtracking matcher: a pattern such as ``(a+)+$`` or ``(.*a){25}`` takes
exponential time on some names, and ``re`` holds the GIL for the whole match, so one such
pattern typed into the web app stops every session of the server. A user's pattern is
therefore never run by ``re``. This module:

1. parses the pattern with Python's own regular-expression parser (``re._parser``), so the
   syntax, escapes and errors are exactly Python's;
2. refuses what is not a regular language (backreferences, conditionals, lookarounds, atomic
   groups, possessive quantifiers) and patterns longer than :data:`MAX_PATTERN_CHARS` or
   expanding past :data:`MAX_NFA_STATES` (bounded repeats ``{m,n}`` copy their body);
3. builds a Thompson NFA (Thompson, "Regular expression search algorithm", CACM 1968) and
   answers ``search`` by simulating it on the input, one character at a time, with the sets
   of NFA states cached as the states of a lazily built DFA (as RE2 does: R. Cox, "Regular
   Expression Matching can be Simple and Fast", 2007). Time is linear in the length of the
   name: at most :data:`MAX_NFA_STATES` steps per character, and one dictionary look-up per
   character once the DFA states are cached (at most :data:`MAX_DFA_STATES` of them; past
   that the cache is dropped and rebuilt).

Semantics are those of ``re.search(pattern, name) is not None`` (a match anywhere): greedy
and lazy quantifiers are the same thing here, and capture groups only group. Supported:
literals and escapes, ``.``, character classes (ranges, negation, ``\\d \\w \\s \\D \\W \\S``),
groups ``( )`` ``(?: )`` ``(?P<name> )``, alternation, ``* + ?`` (and lazy forms), bounded
repeats ``{m}`` ``{m,}`` ``{m,n}``, anchors ``^ $ \\A \\Z \\b \\B`` and the flags ``(?i) (?s)
(?m) (?x) (?a)``, global or scoped. Which characters one class or literal matches is decided
by ``re`` itself on that single character (a one-character match cannot backtrack), so case
folding and Unicode categories are exactly Python's. (One known difference: CPython's
``re.search`` builds its first-character prefilter from the pattern's global flags, so it
misses ``re.search(r"(?a:\\W)", "\\u212a")``, which ``re.match`` and this matcher find.)

>>> compile_pattern(r"^(encoder|decoder)\\.layers\\.\\d+\\.fc").search("encoder.layers.3.fc1.weight")
True
"""

from __future__ import annotations

import functools
import re
import threading
from re import _constants as C  # noqa: N812  (Python's own parser: re._parser, re._constants)
from re import _parser as P  # noqa: N812
from typing import Any

import param

from .errors import NNVitalsError

#: longest pattern text accepted
MAX_PATTERN_CHARS = 1000
#: most NFA states a pattern may expand to (bounded repeats copy their body)
MAX_NFA_STATES = 2000
#: most DFA states cached per pattern, and most NFA state entries in them, before the cache is
#: dropped and rebuilt (bounds a pattern's memory)
MAX_DFA_STATES = 2048
MAX_DFA_ENTRIES = 100_000
#: most construction steps (empty bodies repeated {m,n} times add no state but take time)
MAX_BUILD_STEPS = 100_000

SUPPORTED = r"literals, ., [classes], \d \w \s, groups, |, * + ?, {m,n}, ^ $ \A \Z \b \B, (?i) (?s) (?m) (?x)"

# NFA state kinds
_CHAR, _SPLIT, _JUMP, _ASSERT, _MATCH = range(5)
# assertion kinds
_BOS, _BOL, _EOS, _EOL, _EOL_M, _WORD_B, _WORD_NB, _WORD_B_A, _WORD_NB_A = range(9)
#: does \B match the empty string? (Python 3.14 changed it; follow the running Python)
_NB_ON_EMPTY = re.search(r"\B", "") is not None
_WORD_U = re.compile(r"\w")
_WORD_A = re.compile(r"\w", re.ASCII)
#: flags that change what a single character matches
_ATOM_FLAGS = re.IGNORECASE | re.DOTALL | re.ASCII | re.UNICODE
#: the previous-character context at the start of the text
_START = (True, False, False, False)

_REFUSED = {
    C.GROUPREF: r"backreferences (\1, (?P=name))",
    C.GROUPREF_EXISTS: "conditional groups (?(1)...|...)",
    C.ASSERT: "lookahead and lookbehind assertions (?=...) (?<=...)",
    C.ASSERT_NOT: "negative lookahead and lookbehind assertions (?!...) (?<!...)",
}
for _name, _what in (
    ("ATOMIC_GROUP", "atomic groups (?>...)"),
    ("POSSESSIVE_REPEAT", "possessive quantifiers *+ ++ ?+"),
):
    if hasattr(C, _name):
        _REFUSED[getattr(C, _name)] = _what
_CATEGORY_SOURCE = {
    C.CATEGORY_DIGIT: r"\d", C.CATEGORY_NOT_DIGIT: r"\D", C.CATEGORY_SPACE: r"\s",
    C.CATEGORY_NOT_SPACE: r"\S", C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_WORD: r"\W",
}  # fmt: skip


class PatternError(NNVitalsError):
    """A user pattern that is not valid or not supported; ``reason`` is the message without the
    leading ``WHERE 'PATTERN': `` (for callers that name the argument themselves, e.g. argparse)."""

    def __init__(self, where: str, text: str, reason: str):
        self.where, self.text, self.reason = where, text, reason
        super().__init__(f"{where} {shown(text)}: {reason}")


class _Refused(Exception):
    """Raised while building; turned into a :class:`PatternError` by :func:`compile_pattern`."""


def shown(text: str, limit: int = 60) -> str:
    """``repr`` of a user pattern, cut to ``limit`` characters (always one line)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _char(code: int) -> str:
    return f"\\U{code:08x}"


class _Builder:
    """Thompson construction, backwards: ``build(items, flags, nxt)`` returns the entry state of
    a fragment that continues to state ``nxt``."""

    def __init__(self) -> None:
        self.op: list[int] = []
        self.arg: list[int] = []
        self.x: list[int] = []
        self.y: list[int] = []
        self.atoms: list[re.Pattern[str]] = []
        self._atom_ids: dict[tuple[str, int], int] = {}
        self.word_kinds: set[int] = set()
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_BUILD_STEPS:
            raise _Refused(
                f"too complex: more than {MAX_BUILD_STEPS} construction steps (nested bounded repeats "
                "multiply); use a shorter pattern, or * and + instead of large repeats"
            )

    def state(self, op: int, arg: int = -1, x: int = -1, y: int = -1) -> int:
        if len(self.op) >= MAX_NFA_STATES:
            raise _Refused(
                f"too complex: expands to more than {MAX_NFA_STATES} states (a bounded repeat {{m,n}} "
                "copies its body n times); use a shorter pattern, or * and + instead of large repeats"
            )
        self.op.append(op)
        self.arg.append(arg)
        self.x.append(x)
        self.y.append(y)
        return len(self.op) - 1

    def atom(self, source: str, flags: int) -> int:
        flags &= _ATOM_FLAGS
        if flags & re.ASCII:  # (?a:...) inside a str pattern, which is UNICODE by default
            flags &= ~re.UNICODE
        key = (source, flags)
        i = self._atom_ids.get(key)
        if i is None:
            i = self._atom_ids[key] = len(self.atoms)
            self.atoms.append(re.compile(source, key[1]))
        return i

    def char(self, source: str, flags: int, nxt: int) -> int:
        return self.state(_CHAR, self.atom(source, flags), nxt)

    def build(self, items: Any, flags: int, nxt: int) -> int:
        for op, av in reversed(list(items)):
            nxt = self.item(op, av, flags, nxt)
        return nxt

    def item(self, op: Any, av: Any, flags: int, nxt: int) -> int:
        self.tick()
        if op in _REFUSED:
            raise _Refused(f"not supported: {_REFUSED[op]}; layer patterns allow {SUPPORTED}")
        if op is C.LITERAL:
            return self.char(_char(av), flags, nxt)
        if op is C.NOT_LITERAL:
            return self.char(f"[^{_char(av)}]", flags, nxt)
        if op is C.ANY:
            return self.char(".", flags, nxt)
        if op is C.IN:
            return self.char(_class_source(av), flags, nxt)
        if op is C.SUBPATTERN:
            _group, add, remove, body = av
            return self.build(body, (flags | add) & ~remove, nxt)
        if op is C.BRANCH:
            entries = [self.build(alt, flags, nxt) for alt in av[1]]
            entry = entries[-1]
            for e in reversed(entries[:-1]):
                entry = self.state(_SPLIT, x=e, y=entry)
            return entry
        if op is C.MAX_REPEAT or op is C.MIN_REPEAT:  # lazy or greedy: the same set of matches
            lo, hi, body = av
            return self.repeat(body, lo, hi, flags, nxt)
        if op is C.AT:
            return self.state(_ASSERT, self.anchor(av, flags), nxt)
        raise _Refused(f"not supported: {str(op).lower()}; layer patterns allow {SUPPORTED}")

    def repeat(self, body: Any, lo: int, hi: int, flags: int, nxt: int) -> int:
        if hi is C.MAXREPEAT or hi == C.MAXREPEAT:  # body{lo,}: lo copies, then body*
            loop = self.state(_SPLIT)
            self.x[loop] = self.build(body, flags, loop)
            self.y[loop] = nxt
            cur = loop
        else:  # (body(body(...)?)?)? for the hi - lo optional copies
            cur = nxt
            for _ in range(hi - lo):
                self.tick()
                cur = self.state(_SPLIT, x=self.build(body, flags, cur), y=nxt)
        for _ in range(lo):
            self.tick()
            cur = self.build(body, flags, cur)
        return cur

    def anchor(self, at: Any, flags: int) -> int:
        multiline = bool(flags & re.MULTILINE)
        ascii_ = bool(flags & re.ASCII)
        if at is C.AT_BEGINNING:
            return _BOL if multiline else _BOS
        if at is C.AT_BEGINNING_STRING:
            return _BOS
        if at is C.AT_END:
            return _EOL_M if multiline else _EOL
        if at is C.AT_END_STRING:
            return _EOS
        if at is C.AT_BOUNDARY or at is C.AT_NON_BOUNDARY:
            kind = {
                (True, False): _WORD_B, (False, False): _WORD_NB, (True, True): _WORD_B_A, (False, True): _WORD_NB_A,
            }[(at is C.AT_BOUNDARY, ascii_)]  # fmt: skip
            self.word_kinds.add(kind)
            return kind
        raise _Refused(f"not supported: the anchor {str(at).lower()}; layer patterns allow {SUPPORTED}")


def _class_source(items: list) -> str:
    """A one-character ``[...]`` pattern for the parsed class ``items``."""
    parts = []
    for op, av in items:
        if op is C.NEGATE:
            parts.insert(0, "^")
        elif op is C.LITERAL:
            parts.append(_char(av))
        elif op is C.RANGE:
            parts.append(f"{_char(av[0])}-{_char(av[1])}")
        elif op is C.CATEGORY and av in _CATEGORY_SOURCE:
            parts.append(_CATEGORY_SOURCE[av])
        else:
            raise _Refused(f"not supported: {str(op).lower()} in a character class")
    return "[" + "".join(parts) + "]"


class _DState(dict):
    """One DFA state: the NFA states reached (before their epsilon closure) and the context of
    the character just read; as a dict, its cached transitions for a next character."""

    __slots__ = ("nfa", "prev", "last", "final")

    def __init__(self, nfa: frozenset[int], prev: tuple) -> None:
        super().__init__()
        self.nfa, self.prev = nfa, prev
        self.last: dict[str, Any] = {}  # transitions on the text's last character
        self.final: bool | None = None  # a match at the end of the text?


#: transition target meaning "a match ends here"
_FOUND = _DState(frozenset(), _START)


class LayerPattern:
    """A compiled user pattern: :meth:`search` answers ``re.search(pattern, name) is not None`` in
    time linear in ``len(name)``. Thread-safe; build one with :func:`compile_pattern`."""

    def __init__(self, text: str, b: _Builder, start: int) -> None:
        self.text = text
        self._op, self._arg, self._x, self._y = b.op, b.arg, b.x, b.y
        self._atoms = b.atoms
        self._atom_states: list[list[int]] = [[] for _ in b.atoms]
        for s, k in enumerate(b.op):
            if k == _CHAR:
                self._atom_states[b.arg[s]].append(s)
        self._start = start
        #: assertion kinds present: the context of a position is which of them hold there
        self._kinds = sorted({b.arg[s] for s, k in enumerate(b.op) if k == _ASSERT})
        self._words = frozenset(b.word_kinds)
        self._lock = threading.Lock()
        self._closures: dict[int, dict[int, tuple[frozenset[int], bool]]] = {}
        self._accepting: dict[str, frozenset[int]] = {}
        self._states: dict[tuple, _DState] = {}
        self._entries = 0
        self._initial = self._intern(frozenset(), _START)

    @property
    def num_states(self) -> int:
        """Size of the NFA (what :data:`MAX_NFA_STATES` caps)."""
        return len(self._op)

    def __repr__(self) -> str:
        return f"LayerPattern({self.text!r})"

    # ------------------------------------------------------------------ matching
    def search(self, name: str) -> bool:
        """Whether the pattern matches anywhere in ``name`` (as ``re.search``)."""
        st = self._initial
        if name:
            for c in name[:-1]:
                nxt = st.get(c)
                if nxt is None:
                    nxt = self._step(st, c, False)
                if nxt is _FOUND:
                    return True
                st = nxt
            c = name[-1]
            nxt = st.last.get(c)
            if nxt is None:
                nxt = self._step(st, c, True)
            if nxt is _FOUND:
                return True
            st = nxt
        if st.final is None:
            with self._lock:
                st.final = self._closure(st, self._mask(st.prev, None, True))[1]
        return st.final

    def filter(self, names: list[str]) -> list[str]:
        """The names the pattern matches, in order."""
        return [n for n in names if self.search(n)]

    # ------------------------------------------------------------------ DFA construction
    def _prev_class(self, c: str) -> tuple:
        """What the assertions need to know of the character before a position."""
        if not self._kinds:
            return ()
        word_u = _WORD_U.fullmatch(c) is not None if (self._words & {_WORD_B, _WORD_NB}) else False
        word_a = _WORD_A.fullmatch(c) is not None if (self._words & {_WORD_B_A, _WORD_NB_A}) else False
        return (False, c == "\n", word_u, word_a)

    def _intern(self, nfa: frozenset[int], prev: tuple) -> _DState:
        key = (nfa, prev)
        st = self._states.get(key)
        if st is None:
            if len(self._states) >= MAX_DFA_STATES or self._entries > MAX_DFA_ENTRIES:
                for old in self._states.values():  # drop the cache (states in use stay valid)
                    old.clear()
                    old.last.clear()
                self._states.clear()
                self._accepting.clear()
                self._entries = 0
            st = self._states[key] = _DState(nfa, prev)
            self._entries += len(nfa) + 1
        return st

    @staticmethod
    def _holds(kind: int, prev: tuple, nxt: str | None, is_last: bool) -> bool:
        """Whether the assertion ``kind`` holds between the character described by ``prev`` and ``nxt``
        (None at the end; ``is_last``: ``nxt`` is the text's last character)."""
        at_start = prev[0]
        if kind == _BOS:
            return at_start
        if kind == _BOL:
            return at_start or prev[1]
        if kind == _EOS:
            return nxt is None
        if kind == _EOL:
            return nxt is None or (nxt == "\n" and is_last)
        if kind == _EOL_M:
            return nxt is None or nxt == "\n"
        ascii_ = kind in (_WORD_B_A, _WORD_NB_A)
        if at_start and nxt is None:  # the empty text
            return _NB_ON_EMPTY and kind in (_WORD_NB, _WORD_NB_A)
        before = False if at_start else prev[3 if ascii_ else 2]
        after = nxt is not None and (_WORD_A if ascii_ else _WORD_U).fullmatch(nxt) is not None
        return (before != after) == (kind in (_WORD_B, _WORD_B_A))

    def _mask(self, prev: tuple, nxt: str | None, is_last: bool) -> int:
        """The context of a position: a bit per assertion kind that holds there."""
        mask = 0
        for k in self._kinds:
            if self._holds(k, prev, nxt, is_last):
                mask |= 1 << k
        return mask

    def _closures_in(self, mask: int, states: frozenset[int]) -> tuple[dict[int, frozenset[int]], set[int]]:
        """Per context ``mask``: for each NFA state, the character-consuming states reachable from it
        without input, and the set of states from which the match state is reachable (cached;
        computed here for those of ``states`` not seen yet)."""
        entry = self._closures.get(mask)
        if entry is None:
            entry = self._closures[mask] = ({}, set())
        table, finders = entry
        op, arg, xs, ys = self._op, self._arg, self._x, self._y
        for s in states - table.keys():
            stack, seen, chars, found = [s], set(), [], False
            while stack:
                t = stack.pop()
                if t in seen:
                    continue
                seen.add(t)
                k = op[t]
                if k == _CHAR:
                    chars.append(t)
                elif k == _SPLIT:
                    stack.append(ys[t])
                    stack.append(xs[t])
                elif k == _JUMP:
                    stack.append(xs[t])
                elif k == _ASSERT:
                    if mask >> arg[t] & 1:
                        stack.append(xs[t])
                else:
                    found = True
            table[s] = frozenset(chars)
            if found:
                finders.add(s)
        return entry

    def _closure(self, st: _DState, mask: int) -> tuple[frozenset[int], bool]:
        """The closure of ``st``'s NFA states plus the start state (a match may begin anywhere):
        the character-consuming states in it, and whether the match state is in it."""
        states = st.nfa | {self._start}
        table, finders = self._closures_in(mask, states)
        if not finders.isdisjoint(states):
            return frozenset(), True
        return frozenset().union(*map(table.__getitem__, states)), False

    def _accepting_states(self, c: str) -> frozenset[int]:
        """The character-consuming states whose class or literal matches ``c``."""
        acc = self._accepting.get(c)
        if acc is None:
            acc = frozenset(
                s
                for a, rx in enumerate(self._atoms)
                if rx.fullmatch(c) is not None
                for s in self._atom_states[a]
            )
            self._accepting[c] = acc
        return acc

    def _step(self, st: _DState, c: str, is_last: bool) -> _DState:
        with self._lock:
            chars, found = self._closure(st, self._mask(st.prev, c, is_last) if self._kinds else 0)
            if found:
                target = _FOUND
            else:
                nfa = frozenset(map(self._x.__getitem__, chars & self._accepting_states(c)))
                target = self._intern(nfa, self._prev_class(c))
            (st.last if is_last else st)[c] = target
            return target


@functools.lru_cache(maxsize=32)
def _compile(text: str) -> LayerPattern | tuple[str]:
    """The compiled pattern, or ``(reason,)`` when it is refused (errors are cached too)."""
    if len(text) > MAX_PATTERN_CHARS:
        return (f"too long: {len(text)} characters, at most {MAX_PATTERN_CHARS}",)
    try:
        parsed = P.parse(text, 0)
    except re.error as e:
        return (f"not a valid regular expression ({e})",)
    except (RecursionError, OverflowError, ValueError) as e:  # absurd nesting or repeat counts
        return (f"not a valid regular expression ({type(e).__name__})",)
    b = _Builder()
    try:
        match = b.state(_MATCH)
        start = b.build(parsed, parsed.state.flags, match)
    except _Refused as e:
        return (str(e),)
    except re.error as e:  # an atom Python's compiler refuses
        return (f"not a valid regular expression ({e})",)
    except RecursionError:
        return ("too complex: nested too deeply",)
    return LayerPattern(text, b, start)


def compile_pattern(text: str, where: str = "layers") -> LayerPattern:
    """Compile a user's pattern for :meth:`LayerPattern.search`; ``where`` names the argument in
    errors. Raises :class:`PatternError` (an :class:`NNVitalsError`) for a pattern that is not a
    string, not valid, not supported (not a regular language) or too large."""
    if not isinstance(text, str):
        raise NNVitalsError(f"{where}: expected a regular expression string, got {type(text).__name__}")
    out = _compile(text)
    if isinstance(out, tuple):
        raise PatternError(where, text, out[0])
    return out


class PatternParameter(param.String):
    """A ``param.String`` holding a user pattern; a value :func:`compile_pattern` refuses is
    refused on assignment, with its one-line message."""

    def _validate_value(self, value: Any, allow_None: bool) -> None:
        super()._validate_value(value, allow_None)
        if value:
            compile_pattern(value, self.name or "pattern")
