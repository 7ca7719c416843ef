"""Bounds on grammars and JSON schemas, checked before either reaches llama.cpp.

What llama.cpp does with a GBNF grammar, and what goes wrong without bounds (each measured):

- It parses by recursive descent, two C++ frames (about 450 bytes) per nested group, on the
  stack of the thread that calls ``llama_sampler_init_grammar``: 19,000 nested groups overflow
  an 8 MiB stack, 1,200 a 512 KiB one (a segfault).
- ``x{m,n}`` becomes ``m`` copies of ``x`` and ``n-m`` generated rules; with ``n < m`` the count
  underflows and rules are generated until memory runs out.
- It rejects left recursion with a depth-first walk that does not remember finished rules, and
  builds the first grammar stacks by expanding every leftmost rule reference, one stack per
  path: ``r0 ::= r1 | r1 "x"``, ``r1 ::= r2 | r2 "x"``, ... 22 levels deep takes over a minute;
  a chain of 10,000 rules takes 3.5 s (each stack copies the one before it). Left recursion
  through a rule that only indirectly derives nothing (``b ::= c``, ``c ::= ``) is missed, and
  the expansion then grows stacks until memory runs out.
- At every sampled token it checks every vocabulary token against every live stack, in the
  engine's scheduler thread while the other sequences wait: about 8 ns per token and stack,
  0.25 ms per stack for a 32,000-token vocabulary; a 10,000-value enum costs 2 s a token.

llama-cpp-python's JSON-schema converter writes ``maxLength``/``maxItems`` as that many nested
groups, a ``{m,n}`` in a pattern the same way, and converts a ``$ref`` target again at each use
when its name is a built-in rule's (``number``, ``string``, ...) or has other characters.

So, with every limit named here:

- :func:`check_gbnf` reads GBNF exactly as llama.cpp's parser does (the same tokens, spaces,
  newlines and repetition rules; what it refuses as malformed, llama.cpp refuses too), builds the
  rule structure the parser would build, and bounds its size, its group nesting, and the number
  of grammar stacks that expanding any rule or any position in it can make (which also bounds
  the stack depth and the left-recursion walk); left recursion is refused.
- :func:`check_json_schema` walks a schema (through ``$ref``, cutting cycles as the converter
  does) before it is converted: depth, size, repetition counts (``minLength``, ``maxLength``,
  ``minItems``, ``maxItems``, ``{m,n}`` in ``pattern``), enum and property counts, and an upper
  estimate of the grammar's size. The converted grammar then goes through :func:`check_gbnf`
  like any other (when its sampler is made).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

from llama_host.errors import InvalidGrammar

# --- limits -------------------------------------------------------------------------------------
# GBNF: the `grammar` field, and what a JSON schema is converted to.
MAX_GRAMMAR_BYTES = 256 * 1024  # UTF-8 text
# Groups inside groups: about 450 KB of parser stack at 1,000, and the grammar is parsed on a
# thread with GRAMMAR_STACK_BYTES of stack (in sampling.py): an 18x margin. 1,000 leaves room for
# a 500-long string or array from a schema (the converter nests a group per item).
MAX_GRAMMAR_NESTING = 1_000
# Rules: named ones, groups, and the ones repetitions generate (memory: a 250-property schema
# with a 40-character string in each makes 21,000, mostly nested groups).
MAX_GRAMMAR_RULES = 100_000
# Elements (characters, references, ...) once repetitions are expanded: memory, 8 bytes each.
MAX_GRAMMAR_ELEMENTS = 1_000_000
# Grammar stacks (alternatives, through references) that expanding one rule, or continuing from
# any position in one, can make. At each token that fails the fast check (sampling.py) llama.cpp
# matches every vocabulary token against each stack, in the scheduler thread: at this limit about
# 3 ms a token for the `tiny` test model's 593 tokens, 150 ms for a 32,000-token vocabulary.
MAX_GRAMMAR_BRANCHES = 512
# Work of building grammar stacks from one rule or position: stacks pushed × their depth. Each
# costs about 70 ns (a chain of 10,000 rules that each begin with the next and are followed by
# something: 5e7, 3.5 s); this is about 70 ms, in the request's own thread at first, then per
# token in the scheduler thread where the grammar goes on.
MAX_GRAMMAR_EXPANSION = 1_000_000
# Characters of one character class's text (an escape counts its length; a range, its ends): at
# every token that fails the fast check llama.cpp matches each vocabulary token against a class
# item by item, in the scheduler thread; a 50,000-character class took 95 s for 16 tokens and
# stalled every other sequence. At this limit: about 30 ms a token for a 32,000-token vocabulary.
MAX_GRAMMAR_CLASS_CHARS = 1024
# Element visits of llama.cpp's left-recursion walk, which visits a rule again on every path to it
# (about 2.4 ns each: 10,000 rules that each begin with one 100,000-character rule take 2.4 s).
MAX_GRAMMAR_WALK = 10_000_000
# The stack of the thread that llama.cpp parses a grammar on (sampling.py starts one per grammar,
# so that what the limits allow fits whichever thread submitted the request: Python threads get
# the platform's default, 8 MiB on Linux with glibc, but 2 MiB there under `ulimit -s unlimited`,
# and whatever threading.stack_size() a program set).
GRAMMAR_STACK_BYTES = 8 * 1024 * 1024
# llama.cpp's own MAX_REPETITION_THRESHOLD: {m,n} with m over it fails, n over it means unbounded.
LLAMA_MAX_REPETITION = 2_000

# JSON schemas: response_format json_schema / json_object (the `json-schema` metadata key).
MAX_SCHEMA_BYTES = 256 * 1024  # JSON text
MAX_SCHEMA_DEPTH = 64  # objects and arrays inside each other, counted through $ref
MAX_SCHEMA_VALUES = 20_000  # values, counting a $ref target's again where the converter converts it again
MAX_SCHEMA_REPETITION = 500  # minLength, maxLength, minItems, maxItems, {m,n} in a pattern
MAX_SCHEMA_ENUM = 500  # values of one enum (each is an alternative: MAX_GRAMMAR_BRANCHES)
MAX_SCHEMA_PROPERTIES = 256  # properties of one object (the converter is cubic in optional ones)


def limits() -> dict[str, int]:
    """Every limit by name."""
    return {k: v for k, v in globals().items()
            if k.startswith(("MAX_", "LLAMA_MAX_", "GRAMMAR_")) and isinstance(v, int)}


@dataclasses.dataclass
class GrammarStats:
    """What llama.cpp's parser would build from a grammar (upper bounds)."""

    nbytes: int = 0
    nesting: int = 0  # deepest group nesting
    rules: int = 0  # named rules and generated ones (groups, repetitions)
    elements: int = 0
    branches: int = 0  # the most grammar stacks one expansion makes (leaves)


# --- GBNF ---------------------------------------------------------------------------------------

# One character as llama.cpp's parse_char reads it: an escape, or any other (UTF-8) character.
# The patterns are unambiguous (each text matches one way), so a failing match is linear.
_CHAR = r'(?:\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[trn\\"\[\]-])|[^\\])'
_LITERAL = re.compile(r'"((?:(?!")' + _CHAR + r')*)"', re.S)
# [...]: a character, then a range when '-' follows and is not the closing ']' (parse_sequence's
# pos[1] != ']'); the range's upper end is any character but an unescaped ']'.
_CLASS = re.compile(r"\[\^?((?:(?!\])" + _CHAR + r"(?:-(?!\])" + _CHAR + r"|(?!-(?!\]))))*)\]", re.S)
_TOKEN = re.compile(r"!?<(?:\[[0-9]+\]>|[^>]*>)", re.S)
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_DIGITS = frozenset("0123456789")

# The rule structure: a rule is a list of alternatives, an alternative a list of items, an item
# _T (anything that matches one character or token: a literal, a class, a token, '.') or the
# index of a rule it references. An empty literal or class is no item, as in llama.cpp.
_T = -1


def check_gbnf(text: str, what: str = "the grammar") -> GrammarStats:
    """Raise InvalidGrammar if llama.cpp would fail on ``text`` (or hang, or crash), or if what it
    would build is past a limit; otherwise return the counts. ``what`` starts the messages."""
    if not text:  # llama.cpp: no grammar
        return GrammarStats()
    if "\0" in text:
        raise InvalidGrammar(f"{what} contains a NUL character")
    try:
        nbytes = len(text.encode())
    except UnicodeEncodeError as e:
        raise InvalidGrammar(f"{what} is not valid Unicode: {e.reason}") from None
    if nbytes > MAX_GRAMMAR_BYTES:
        raise InvalidGrammar(f"{what} is {nbytes} bytes, over the limit of {MAX_GRAMMAR_BYTES}")
    return _analyse(text, what, nbytes)


@functools.lru_cache(maxsize=32)  # clients send the same grammar (or schema) again and again
def _analyse(text: str, what: str, nbytes: int) -> GrammarStats:
    """The parse and the analysis: linear, but 0.45 s for a 196 KB grammar (refusals raise,
    so only grammars that pass are kept)."""
    scanner = _Scanner(text, what, nbytes)
    scanner.run()
    _Analysis(scanner).run()
    return scanner.stats


class _Seq:
    """The rule or group being read: one frame of the parser's parse_alternates."""

    __slots__ = ("rule", "nested", "items", "length", "last", "last_item", "n_prev", "n_before")

    def __init__(self, rule: int, nested: bool, n_before: int) -> None:
        self.rule = rule
        self.nested = nested  # inside a group: newlines are spaces
        self.items: list[int] = []  # of the alternative being read
        self.length = 0  # elements of this rule so far
        self.last = 0  # where the last item starts, in elements (the parser's last_sym_start)
        self.last_item = 0  # and in items
        self.n_prev = 1  # rules the last item stands for (n_prev_rules)
        self.n_before = n_before  # symbols there were before this group opened


class _Scanner:
    def __init__(self, text: str, what: str, nbytes: int) -> None:
        self.text = text
        self.what = what
        self.stats = GrammarStats(nbytes=nbytes)
        self.ids: dict[str, int] = {}  # rule name -> rule index
        self.rules: list[list[list[int]] | None] = []  # None: named but not (yet) defined
        self.sizes: list[int] = []  # elements of each rule
        self.used: dict[int, int] = {}  # rule index -> where it was first referenced

    def fail(self, pos: int, message: str) -> InvalidGrammar:
        line = self.text.count("\n", 0, pos) + 1
        return InvalidGrammar(f"{self.what}: {message} (line {line}, character {pos + 1})")

    def space(self, pos: int, newline_ok: bool) -> int:
        return (_SPACE_NL if newline_ok else _SPACE).match(self.text, pos).end()

    def rule_id(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = self.new_rule(None)
        return i

    def new_rule(self, alternatives: list[list[int]] | None, size: int = 0) -> int:
        self.rules.append(alternatives)
        self.sizes.append(size)
        if len(self.rules) > MAX_GRAMMAR_RULES:
            raise InvalidGrammar(f"{self.what} has more than the limit of {MAX_GRAMMAR_RULES} rules "
                                 "(named ones, groups, and those repetitions generate)")
        return len(self.rules) - 1

    def elements(self, pos: int, k: int) -> None:
        s = self.stats
        s.elements += k
        if s.elements > MAX_GRAMMAR_ELEMENTS:
            raise self.fail(pos, f"more than the limit of {MAX_GRAMMAR_ELEMENTS} elements once "
                                 "repetitions are expanded")

    def run(self) -> None:
        text, n = self.text, len(self.text)
        pos = self.space(0, True)
        while pos < n:
            m = _NAME.match(text, pos)
            if not m:
                raise self.fail(pos, "expecting a rule name")
            rule = self.rule_id(m.group())
            pos = self.space(m.end(), False)
            if not text.startswith("::=", pos):
                raise self.fail(pos, "expecting ::=")
            pos = self._alternates(rule, self.space(pos + 3, True))
            if pos < n:
                if text[pos] == "\r":
                    pos += 2 if text.startswith("\r\n", pos) else 1
                elif text[pos] == "\n":
                    pos += 1
                else:
                    raise self.fail(pos, f"expecting a newline or the end, not {text[pos]!r}")
            pos = self.space(pos, True)
        for name, i in self.ids.items():
            if self.rules[i] is None:
                raise self.fail(self.used.get(i, 0), f"the rule '{name}' is used but not defined")
        if "root" not in self.ids:
            raise InvalidGrammar(f"{self.what} has no 'root' rule")
        self.stats.rules = len(self.rules)

    def _item(self, seq: _Seq, pos: int, k: int, item: int | None, n_prev: int = 1) -> None:
        """An item of ``k`` elements (k may be 0: an empty literal or class is nothing)."""
        self.elements(pos, k)
        seq.last, seq.last_item = seq.length, len(seq.items)
        seq.length += k
        if k and item is not None:
            seq.items.append(item)
        seq.n_prev = n_prev

    def _alternates(self, rule: int, pos: int) -> int:
        """One rule's alternates; groups are read with a stack of frames, not Python recursion."""
        text, n = self.text, len(self.text)
        stack = [_Seq(rule, False, 0)]
        alternatives: dict[int, list[list[int]]] = {rule: []}
        while True:
            seq = stack[-1]
            c = text[pos] if pos < n else ""
            if c == '"' or c == "[":
                m = (_LITERAL if c == '"' else _CLASS).match(text, pos)
                if not m:
                    what = "string" if c == '"' else "character class"
                    raise self.fail(pos, f"an unterminated {what}, or an unknown escape in it")
                if c == "[" and len(m.group(1)) > MAX_GRAMMAR_CLASS_CHARS:
                    raise self.fail(pos, f"a character class of {len(m.group(1))} characters; the limit is "
                                         f"{MAX_GRAMMAR_CLASS_CHARS}")
                # Elements: characters (an escape counts its length: an upper bound), + ranges.
                self._item(seq, pos, len(m.group(1)), _T)
                pos = self.space(m.end(), seq.nested)
            elif c == "<" or c == "!":
                m = _TOKEN.match(text, pos)
                if not m:
                    raise self.fail(pos, "expecting a token <...>")
                self._item(seq, pos, 1, _T)
                pos = self.space(m.end(), seq.nested)
            elif c and c in _WORD:
                m = _NAME.match(text, pos)
                ref = self.rule_id(m.group())
                self.used.setdefault(ref, pos)
                self._item(seq, pos, 1, ref)
                pos = self.space(m.end(), seq.nested)
            elif c == ".":
                self._item(seq, pos, 1, _T)
                pos = self.space(pos + 1, seq.nested)
            elif c == "(":
                if len(stack) > MAX_GRAMMAR_NESTING:
                    raise self.fail(pos, f"groups nest deeper than the limit of {MAX_GRAMMAR_NESTING}")
                self.stats.nesting = max(self.stats.nesting, len(stack))
                n_before = len(self.rules)
                group = self.new_rule(None)
                alternatives[group] = []
                stack.append(_Seq(group, True, n_before))
                pos = self.space(pos + 1, True)
            elif c == "|":
                self.elements(pos, 1)  # ALT
                alternatives[seq.rule].append(seq.items)
                seq.items = []
                seq.length += 1
                seq.last, seq.last_item = seq.length, 0  # a new sequence: nothing to repeat yet
                seq.n_prev = 1
                pos = self.space(pos + 1, True)
            elif c and c in "*+?":
                start = pos
                pos = self.space(pos + 1, seq.nested)
                self._repeat(seq, start, 1 if c == "+" else 0, 1 if c == "?" else None)
            elif c == "{":
                start = pos
                lo, pos = self._int(self.space(pos + 1, seq.nested))
                pos = self.space(pos, seq.nested)
                if pos < n and text[pos] == "}":
                    hi = lo
                elif pos < n and text[pos] == ",":
                    pos = self.space(pos + 1, seq.nested)
                    hi = None
                    if pos < n and text[pos] in _DIGITS:
                        hi, pos = self._int(pos)
                        pos = self.space(pos, seq.nested)
                    if not (pos < n and text[pos] == "}"):
                        raise self.fail(pos, "expecting '}'")
                else:
                    raise self.fail(pos, "expecting ',' or '}'")
                pos = self.space(pos + 1, seq.nested)
                if lo > LLAMA_MAX_REPETITION:
                    raise self.fail(start, f"a repetition's minimum {lo} is over llama.cpp's limit of "
                                           f"{LLAMA_MAX_REPETITION}")
                if hi is not None and hi > LLAMA_MAX_REPETITION:
                    hi = None  # what llama.cpp makes of it: no maximum
                if hi is not None and hi < lo:  # llama.cpp would generate rules without end
                    raise self.fail(start, f"the repetition {{{lo},{hi}}} has its maximum under its minimum")
                self._repeat(seq, start, lo, hi)
            else:  # the end of this rule's or group's alternates
                self.elements(pos, 1)  # END
                alternatives[seq.rule].append(seq.items)
                self.rules[seq.rule] = alternatives.pop(seq.rule)  # a later definition wins
                self.sizes[seq.rule] = seq.length
                if len(stack) == 1:
                    return pos
                if c != ")":
                    raise self.fail(pos, "expecting ')'")
                stack.pop()
                parent = stack[-1]
                self._item(parent, pos, 1, seq.rule, max(1, len(self.rules) - seq.n_before))
                pos = self.space(pos + 1, parent.nested)

    def _int(self, pos: int) -> tuple[int, int]:
        m = _INT.match(self.text, pos)
        if not m:
            raise self.fail(pos, "expecting an integer")
        if len(m.group()) > 19 and int(m.group()) >= 1 << 64:
            raise self.fail(pos, "the integer is too large")
        return int(m.group()), m.end()

    def _repeat(self, seq: _Seq, pos: int, lo: int, hi: int | None) -> None:
        """What llama.cpp's handle_repetitions builds from the last item S: ``lo`` copies of S,
        then a reference to the first of ``hi - lo`` generated rules S'(k) ::= S S'(k-1) | ""
        (one recursive rule S' ::= S S' | "" when ``hi`` is None)."""
        if seq.last == seq.length:
            raise self.fail(pos, "a repetition with no item before it")
        size = seq.length - seq.last
        total = hi if hi is not None and hi > 0 else (lo if lo > 0 else 1)
        if seq.n_prev * total > LLAMA_MAX_REPETITION:
            raise self.fail(pos, f"a repetition of {total} over {seq.n_prev} rules is over llama.cpp's "
                                 f"limit of {LLAMA_MAX_REPETITION}")
        prev = seq.items[seq.last_item:]
        if prev and all(i == _T for i in prev):
            prev = [_T]  # the same to the analysis, and no copies to keep
        del seq.items[seq.last_item:]
        if lo == 0:
            seq.length = seq.last
        else:
            self.elements(pos, size * (lo - 1))
            seq.length += size * (lo - 1)
            seq.items += prev if prev == [_T] else prev * lo
        n_opt = 1 if hi is None else hi - lo
        self.elements(pos, n_opt * (size + 3))
        last = None
        for _ in range(n_opt):
            rule = self.new_rule(None, size + 3)
            if hi is None:
                first = prev + [rule]  # S' ::= S S' | ""
            else:
                first = prev + [last] if last is not None else list(prev)  # S'(k) ::= S S'(k-1) | ""
            self.rules[rule] = [first, []]
            last = rule
        if last is not None:
            self.elements(pos, 1)
            seq.length += 1
            seq.items.append(last)
        seq.n_prev *= total


class _Analysis:
    """Which rules can derive nothing; the leftmost-reference graph, where a cycle is left
    recursion; and, per rule and per position inside one, what llama.cpp's advance_stack does
    there: ``leaves`` (the grammar stacks it makes, each matched against the vocabulary at every
    token), ``pushes`` and ``depth`` (its work is about pushes × depth: each pushed stack is a
    copy), from which all three limits follow; and the left-recursion walk's visits."""

    def __init__(self, scanner: _Scanner) -> None:
        self.s = scanner
        self.rules: list[list[list[int]]] = scanner.rules  # every rule is defined by now
        self.names = {i: name for name, i in scanner.ids.items()}

    def name(self, rule: int) -> str:
        return f"the rule '{self.names[rule]}'" if rule in self.names else "a group or repetition"

    def run(self) -> None:
        self.nullable = self._nullable()
        self._expansions()

    def _nullable(self) -> list[bool]:
        """Rules that derive the empty string (a fixpoint, linear: a count of the references
        still unknown per alternative)."""
        rules = self.rules
        nullable = [False] * len(rules)
        waiting: list[list[tuple[int, int]]] = [[] for _ in rules]  # rule -> (rule, alt) using it
        missing: dict[tuple[int, int], int] = {}
        todo = []
        for r, alts in enumerate(rules):
            for a, items in enumerate(alts):
                if _T in items:
                    continue
                if not items:
                    if not nullable[r]:
                        nullable[r] = True
                        todo.append(r)
                    continue
                missing[r, a] = len(items)
                for ref in items:
                    waiting[ref].append((r, a))
        while todo:
            ref = todo.pop()
            for key in waiting[ref]:
                missing[key] -= 1
                if missing[key] == 0 and not nullable[key[0]]:
                    nullable[key[0]] = True
                    todo.append(key[0])
        return nullable

    def _edges(self, r: int) -> list[tuple[int, bool]]:
        """The references an alternative of ``r`` can begin with (its first item, and the next
        while those before can derive nothing), each with whether something follows it in the
        alternative (llama.cpp then pushes that onto the stack before expanding the reference)."""
        nullable, edges = self.nullable, []
        for items in self.rules[r]:
            for i, ref in enumerate(items):
                if ref == _T:
                    break
                edges.append((ref, i + 1 < len(items)))
                if not nullable[ref]:
                    break
        return edges

    def _components(self, edges: list[list[tuple[int, bool]]]) -> list[list[int]]:
        """Strongly connected components of the leftmost-reference graph (Tarjan's algorithm,
        iterative), each after every component it reaches."""
        n = len(edges)
        index, low, on_stack = [-1] * n, [0] * n, [False] * n
        stack: list[int] = []
        components: list[list[int]] = []
        counter = 0
        for start in range(n):
            if index[start] >= 0:
                continue
            index[start] = low[start] = counter
            counter += 1
            stack.append(start)
            on_stack[start] = True
            work = [(start, 0)]
            while work:
                v, i = work[-1]
                if i < len(edges[v]):
                    work[-1] = (v, i + 1)
                    w = edges[v][i][0]
                    if index[w] < 0:
                        index[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack[w] = True
                        work.append((w, 0))
                    elif on_stack[w]:
                        low[v] = min(low[v], index[w])
                    continue
                work.pop()
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
                if low[v] == index[v]:
                    members = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        members.append(w)
                        if w == v:
                            break
                    components.append(members)
        return components

    def _check(self, where: str, leaves: int, pushes: int, depth: int) -> None:
        if leaves > MAX_GRAMMAR_BRANCHES:
            raise InvalidGrammar(
                f"{self.s.what}: {where} makes more than the limit of {MAX_GRAMMAR_BRANCHES} grammar stacks "
                "(alternatives, through the rules they begin with), each matched against the vocabulary "
                "at every token")
        if pushes * (depth + 1) > MAX_GRAMMAR_EXPANSION:
            raise InvalidGrammar(
                f"{self.s.what}: {where} takes more than the limit of {MAX_GRAMMAR_EXPANSION} steps "
                "(chains of rules that each begin with the next)")

    def _expansions(self) -> None:
        """Left recursion: a cycle of leftmost references is harmless to llama.cpp when nothing
        follows any of them (expanding it comes back to a stack already seen: ``x ::= y? x |``
        with y nullable), and endless when something does (each lap grows the stack until memory
        runs out): that is refused. Then the counts, per component of the graph, sinks first."""
        rules, nullable, sizes = self.rules, self.nullable, self.s.sizes
        edges = [self._edges(r) for r in range(len(rules))]
        components = self._components(edges)
        component = [0] * len(rules)
        for c, members in enumerate(components):
            for r in members:
                component[r] = c
        for r, out in enumerate(edges):
            for child, followed in out:
                if followed and component[child] == component[r]:
                    named = [m for m in components[component[r]] if m in self.names] or [child]
                    raise InvalidGrammar(f"{self.s.what}: {self.name(named[0])} is left-recursive (it can "
                                         "begin with itself), which llama.cpp does not support")
        cap = MAX_GRAMMAR_EXPANSION + 1
        leaves = [0] * len(rules)
        pushes = [0] * len(rules)
        depth = [0] * len(rules)
        walk = [0] * len(rules)  # elements llama.cpp's left-recursion walk visits from each rule
        walked = 0
        for c, members in enumerate(components):
            n_leaves = n_pushes = n_depth = 0
            n_walk = 0
            for r in members:
                n_walk += sizes[r]
                for items in rules[r]:  # expanding r: a stack per alternative, then its first items
                    n_pushes += 1
                    for i, ref in enumerate(items):
                        if ref == _T:
                            n_leaves += 1
                            break
                        if component[ref] != c:  # inside the component: stacks already seen
                            n_leaves += leaves[ref]
                            n_pushes += pushes[ref]
                            d = depth[ref] + (i + 1 < len(items))
                            if d > n_depth:
                                n_depth = d
                            n_walk += walk[ref]
                        if not nullable[ref]:
                            break
            if n_leaves > MAX_GRAMMAR_BRANCHES or n_pushes * (n_depth + 1) > MAX_GRAMMAR_EXPANSION:
                named = [m for m in members if m in self.names] or members
                self._check(f"expanding {self.name(named[0])}", n_leaves, n_pushes, n_depth)
            n_walk = min(MAX_GRAMMAR_WALK + 1, n_walk)
            for r in members:
                leaves[r], pushes[r], depth[r], walk[r] = n_leaves, n_pushes, n_depth, n_walk
            walked += n_walk * len(members)
            if walked > MAX_GRAMMAR_WALK:
                raise InvalidGrammar(
                    f"{self.s.what}: checking it for left recursion would visit more than the limit of "
                    f"{MAX_GRAMMAR_WALK} elements (rules that begin with large rules, many times)")
        # Every position inside every alternative: where llama.cpp goes on after a character.
        most = max(leaves, default=0)
        max_leaves, max_work = MAX_GRAMMAR_BRANCHES, MAX_GRAMMAR_EXPANSION
        for r, alts in enumerate(rules):
            for items in alts:
                a_leaves = a_pushes = a_depth = 0  # what continuing past position i makes
                followed = False
                for i in range(len(items) - 1, -1, -1):
                    ref = items[i]
                    if ref == _T:
                        a_leaves, a_pushes, a_depth = 1, 0, 0
                    else:
                        d = depth[ref] + followed
                        if nullable[ref]:
                            a_leaves = min(cap, leaves[ref] + a_leaves)
                            a_pushes = min(cap, pushes[ref] + a_pushes)
                            a_depth = d if d > a_depth else a_depth
                        else:
                            a_leaves, a_pushes, a_depth = leaves[ref], pushes[ref], d
                        if a_leaves > max_leaves or a_pushes * (a_depth + 1) > max_work:
                            self._check(f"continuing inside {self.name(r)}", a_leaves, a_pushes, a_depth)
                        if a_leaves > most:
                            most = a_leaves
                    followed = True
        self.s.stats.branches = most


# --- JSON schemas -------------------------------------------------------------------------------

# The converter's RESERVED_NAMES (its built-in rules) and rule-name characters.
_CONVERTER_NAMES = frozenset({
    "array", "boolean", "char", "date", "date-string", "date-time", "date-time-string", "decimal-part", "dot",
    "integer", "integral-part", "null", "number", "object", "root", "string", "time", "time-string", "uuid",
    "value",
})
_RULE_NAME = re.compile(r"[a-zA-Z0-9-]+")
_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas
_REPETITION_KEYS = ("minLength", "maxLength", "minItems", "maxItems")


def check_json_schema_text(text: str) -> Any:
    """Parse and check a schema given as JSON text; returns the parsed schema."""
    nbytes = len(text.encode("utf-8", "surrogatepass"))
    if nbytes > MAX_SCHEMA_BYTES:
        raise InvalidGrammar(f"the JSON schema is {nbytes} bytes, over the limit of {MAX_SCHEMA_BYTES}")
    try:
        schema = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InvalidGrammar(f"the JSON schema is not valid JSON: {e}") from e
    check_json_schema(schema)
    return schema


def check_json_schema(schema: Any) -> None:
    """Raise InvalidGrammar if converting ``schema`` would build past a limit."""
    _SchemaWalk(schema).walk(schema, "#", 0, 4)


class _SchemaWalk:
    """Visits what the converter visits, a $ref target again at each use (cycles cut where the
    converter cuts them), and adds up an estimate of the grammar it writes."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.values = 0
        self.estimate = 0  # bytes of grammar, from above (up to about twice the real size)
        self.resolving: set[str] = set()
        self.converted: set[str] = set()  # $refs the converter turns into a rule once, then reuses
        self.sizes: dict[int, int] = {}  # id(an enum or const value) -> its size in the grammar

    def fail(self, where: str, message: str) -> InvalidGrammar:
        if len(where) > 120:
            where = where[:60] + "..." + where[-57:]
        return InvalidGrammar(f"the JSON schema: {message} (at {where})")

    def grow(self, where: str, nbytes: int) -> None:
        self.estimate += nbytes
        if self.estimate > 2 * MAX_GRAMMAR_BYTES:  # the grammar itself is checked after conversion
            raise self.fail(where, f"its grammar would be over the limit of {MAX_GRAMMAR_BYTES} bytes")

    def walk(self, node: Any, where: str, depth: int, name: int) -> None:
        """``name``: about the length of the rule name the converter gives ``node``."""
        if not isinstance(node, (dict, list)):
            return
        if depth > MAX_SCHEMA_DEPTH:
            raise self.fail(where, f"it nests deeper than the limit of {MAX_SCHEMA_DEPTH} objects and arrays")
        self.values += 1 + len(node)
        if self.values > MAX_SCHEMA_VALUES:
            raise self.fail(where, f"it has more than the limit of {MAX_SCHEMA_VALUES} values (a $ref "
                                   "the converter converts again at each use counts its target's again)")
        self.grow(where, name + 32)
        if isinstance(node, list):
            for i, item in enumerate(node):
                self.walk(item, f"{where}/{i}", depth + 1, name + len(str(i)) + 1)
            return
        self._keywords(node, where, name)
        for key, value in node.items():
            if key in _DATA_KEYS or not isinstance(value, (dict, list)):
                continue
            if key == "properties" and isinstance(value, dict):
                if len(value) > MAX_SCHEMA_PROPERTIES:
                    raise self.fail(where, f"an object has {len(value)} properties, over the limit of "
                                           f"{MAX_SCHEMA_PROPERTIES}")
                self.values += 1 + len(value)
                for prop, sub in value.items():
                    self.grow(where, 2 * (name + len(prop)) + 48)  # the value's rule and the key-value one
                    self.walk(sub, f"{where}/properties/{prop}", depth + 2, name + len(prop) + 1)
                continue
            self.walk(value, f"{where}/{key}", depth + 1, name + len(key) + 1)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in self.resolving and ref not in self.converted:
            target = self._resolve(ref)
            if target is not None:
                self.resolving.add(ref)
                self.walk(target, ref, depth + 1, len(ref.split("/")[-1]) + 1)
                self.resolving.discard(ref)
                # The converter keeps the target's rule under the ref's last name, and reuses it,
                # unless that name is a built-in rule's or has other characters: then it converts
                # the target again at each use (so a chain of those doubles at each step).
                name = ref.split("/")[-1]
                if _RULE_NAME.fullmatch(name) and name not in _CONVERTER_NAMES:
                    self.converted.add(ref)

    def _resolve(self, ref: str) -> Any:
        """The converter's lookup of a local $ref (no JSON-pointer unescaping); None where it
        fails (the converter then says why)."""
        if not ref.startswith("#/"):
            return None
        target = self.root
        for sel in ref.split("#")[-1].split("/")[1:]:
            if not isinstance(target, dict) or sel not in target:
                return None
            target = target[sel]
        return target

    def _keywords(self, node: dict, where: str, name: int) -> None:
        counts = []
        for key in _REPETITION_KEYS:
            value = node.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value > MAX_SCHEMA_REPETITION:
                    raise self.fail(where, f"'{key}' is {value}, over the limit of {MAX_SCHEMA_REPETITION}")
                counts.append(int(value) if value >= 0 else 0)
        if counts:
            item = 4 if node.get("type") == "string" else name + 6  # "char", or the items' rule name
            self.grow(where, max(counts) * (item + 16))
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for quantifier, value in _pattern_counts(pattern):
                if value > MAX_SCHEMA_REPETITION:
                    raise self.fail(where, f"the pattern's {quantifier} repeats {value} times, over the "
                                           f"limit of {MAX_SCHEMA_REPETITION}")
                self.grow(where, max(value, 0) * (name + 16))
            self.grow(where, 2 * len(pattern))
        for key in ("enum", "const"):
            if key not in node:
                continue
            value = node[key]
            if key == "enum" and isinstance(value, list) and len(value) > MAX_SCHEMA_ENUM:
                raise self.fail(where, f"an enum has {len(value)} values, over the limit of "
                                       f"{MAX_SCHEMA_ENUM}")
            size = self.sizes.get(id(value))
            if size is None:
                try:
                    size = 2 * len(json.dumps(value)) + 16  # quoted and escaped in the grammar
                except (RecursionError, TypeError, ValueError):
                    raise self.fail(where, f"its '{key}' cannot be written as JSON") from None
                self.sizes[id(value)] = size
            self.grow(where, size)
        parts = node.get("allOf")
        if isinstance(parts, list):  # the converter merges the parts' properties into one object
            total = 0
            for part in parts:
                alternatives = part.get("anyOf") if isinstance(part, dict) else None
                for sub in alternatives if isinstance(alternatives, list) else [part]:
                    if isinstance(sub, dict) and isinstance(sub.get("$ref"), str):
                        sub = self._resolve(sub["$ref"])
                    if isinstance(sub, dict) and isinstance(sub.get("properties"), dict):
                        total += len(sub["properties"])
            if total > MAX_SCHEMA_PROPERTIES:
                raise self.fail(where, f"an allOf has {total} properties, over the limit of "
                                       f"{MAX_SCHEMA_PROPERTIES}")


def _pattern_counts(pattern: str) -> list[tuple[str, int]]:
    """The {m}, {m,}, {m,n} quantifiers of a regular expression and their numbers, found and read
    the way the converter does (after escapes and [...] classes; numbers through int())."""
    counts = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
        elif c == "{":
            end = pattern.find("}", i)
            if end < 0:
                break
            for part in pattern[i + 1 : end].split(","):
                try:
                    counts.append((pattern[i : end + 1], int(part.strip())))
                except ValueError:
                    pass  # not a number: the converter fails on it
            i = end + 1
        else:
            i += 1
    return counts
