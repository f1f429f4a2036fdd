"""Rewriting ClickHouse CREATE statements for a restore into another database (pure, no I/O).

A restore recreates tables *renamed into* the target database, so a table's definition must stop
pointing at the source anywhere: its own name, ``ON CLUSTER`` (a restore targets one server),
``UUID`` clauses (a second table with the same UUID cannot exist on one server), the names a view or
materialized view reads or writes (``FROM db.t``, ``TO db.t``), the database argument of
Distributed / Buffer / Merge engines (a restored Buffer must never flush into the source table) and
a dictionary's ``SOURCE(CLICKHOUSE(DB '..'))``. Replicated*MergeTree becomes *MergeTree: a restored
copy must never join the source's replication (same ZooKeeper path).

The statement is tokenized (strings, quoted identifiers, comments are single tokens), so nothing
inside a string literal or a quoted name is ever touched by accident.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from backup.sources.clickhouse.sql import quote_ident, quote_string

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>\d[\w.]*)
  | (?P<punct>.)
    """,
    re.X | re.S,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "a": "\a", "v": "\v"}
_ENGINE_DATABASE_ARGUMENT = {"Distributed": 1, "Buffer": 0, "Merge": 0}
_REPLICATED = "Replicated"


@dataclass
class Token:
    kind: str  # space | comment | string | quoted | word | number | punct | blank (rewritten away)
    text: str

    @property
    def significant(self) -> bool:
        return self.kind not in ("space", "comment")

    @property
    def is_name(self) -> bool:
        return self.kind in ("word", "quoted")

    @property
    def value(self) -> str:
        """The name or string this token stands for (quotes and escapes removed)."""
        if self.kind in ("quoted", "string"):
            return _unescape(self.text[1:-1], self.text[0])
        return self.text

    def keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


def tokenize(sql: str) -> list[Token]:
    """Every token of ``sql``, whitespace and comments included: joining the texts gives ``sql`` back."""
    return [Token(match.lastgroup or "punct", match.group()) for match in _TOKEN.finditer(sql)]


def _unescape(body: str, quote: str) -> str:
    def replace(match: re.Match[str]) -> str:
        text = match.group()
        if text == quote * 2:
            return quote
        char = text[1]
        if char == "x" and len(text) == 4:
            return chr(int(text[2:], 16))
        return _ESCAPES.get(char, char)

    return re.sub(r"\\x[0-9A-Fa-f]{2}|\\.|" + re.escape(quote * 2), replace, body, flags=re.S)


@dataclass(frozen=True)
class RewrittenDdl:
    sql: str
    changes: tuple[str, ...]  # what was changed, for the restore plan ("ReplicatedMergeTree -> MergeTree")


def rewrite_create(ddl: str, *, databases: Collection[str], target: str) -> RewrittenDdl:
    """``ddl`` (a CREATE statement of a table in one of ``databases``) recreated in ``target``.

    Raises ValueError when ``ddl`` is not a CREATE TABLE / VIEW / DICTIONARY statement.
    """
    tokens = tokenize(ddl)
    sig = [token for token in tokens if token.significant]
    changes: list[str] = []
    kind, name_at = _head(sig)
    table = sig[name_at + 2].value if _is_qualified(sig, name_at) else sig[name_at].value
    _rename(sig, name_at, target, table)
    _drop_head_clauses(sig, name_at + 1, kind, changes)
    _rewrite_qualified_names(sig, databases, target)
    _rewrite_engines(sig, databases, target, changes)
    if kind == "DICTIONARY":
        _rewrite_dictionary_source(sig, databases, target)
    if kind == "VIEW" and any(token.keyword("MATERIALIZED") for token in sig[:name_at]):
        _drop_populate(sig)
    return RewrittenDdl(_joined(tokens), tuple(changes))


def _joined(tokens: list[Token]) -> str:
    """The statement's text; whitespace left doubled (or after "(") by a removed token goes with it."""
    parts: list[str] = []
    removed = False
    for token in tokens:
        last = parts[-1][-1:] if parts else ""
        if removed and token.kind == "space" and (last.isspace() or last == "("):
            continue
        if token.text:
            removed = False
            parts.append(token.text)
        elif token.kind == "blank":
            removed = True
    return "".join(parts)


def _drop_populate(sig: list[Token]) -> None:
    """The backed-up rows of a materialized view are loaded; POPULATE would compute them again."""
    depth = 0
    for at, token in enumerate(sig):
        depth += token.text == "("
        depth -= token.text == ")"
        if depth == 0 and token.kind == "word" and token.text == "POPULATE":
            _blank(sig, at, 1)
        elif depth == 0 and token.keyword("SELECT"):
            return


def _head(sig: list[Token]) -> tuple[str, int]:
    """The object kind (TABLE, VIEW, MATERIALIZED VIEW, DICTIONARY...) and the index of its name."""
    if not sig or not sig[0].keyword("CREATE", "ATTACH"):
        raise ValueError("not a CREATE statement")
    at = 1
    if at + 1 < len(sig) and sig[at].keyword("OR") and sig[at + 1].keyword("REPLACE"):
        at += 2
    while at < len(sig) and sig[at].keyword("TEMPORARY", "MATERIALIZED", "LIVE", "WINDOW"):
        at += 1
    if at >= len(sig) or not sig[at].keyword("TABLE", "VIEW", "DICTIONARY"):
        raise ValueError("not a CREATE TABLE / VIEW / DICTIONARY statement")
    kind = sig[at].text.upper()
    at += 1
    if at + 2 < len(sig) and sig[at].keyword("IF") and sig[at + 1].keyword("NOT") and sig[at + 2].keyword("EXISTS"):
        at += 3
    if at >= len(sig) or not sig[at].is_name:
        raise ValueError("CREATE statement without a table name")
    return kind, at


def _is_qualified(sig: list[Token], at: int) -> bool:
    return at + 2 < len(sig) and sig[at + 1].text == "." and sig[at + 2].is_name


def _rename(sig: list[Token], at: int, target: str, table: str) -> None:
    if _is_qualified(sig, at):
        _blank(sig, at + 1, 2)
    sig[at].kind, sig[at].text = "blank", f"{quote_ident(target)}.{quote_ident(table)}"


def _drop_head_clauses(sig: list[Token], at: int, kind: str, changes: list[str]) -> None:
    """Remove ``UUID '..'``, ``ON CLUSTER c``, ``TO INNER UUID '..'`` and ``POPULATE`` after the name."""
    while at < len(sig) and sig[at].kind == "blank":
        at += 1
    while at < len(sig):
        if sig[at].keyword("UUID") and at + 1 < len(sig) and sig[at + 1].kind == "string":
            _blank(sig, at, 2)
        elif sig[at].keyword("ON") and at + 2 < len(sig) and sig[at + 1].keyword("CLUSTER"):
            changes.append(f"ON CLUSTER {sig[at + 2].value} removed: the restore creates tables on one server")
            _blank(sig, at, 3)
        elif sig[at].keyword("TO") and at + 3 < len(sig) and sig[at + 1].keyword("INNER") and sig[at + 2].keyword("UUID"):
            _blank(sig, at, 4)
        elif sig[at].text == "(" or sig[at].keyword("AS", "ENGINE", "TO", "PRIMARY", "SOURCE", "LAYOUT", "EMPTY"):
            return
        at += 1


def _blank(sig: list[Token], at: int, count: int) -> None:
    for token in sig[at : at + count]:
        token.kind, token.text = "blank", ""


def _rewrite_qualified_names(sig: list[Token], databases: Collection[str], target: str) -> None:
    """``db.name`` -> ``target.name`` wherever ``db`` is a restored database (FROM, JOIN, TO, IN...)."""
    for at in range(len(sig) - 2):
        if not sig[at].is_name or sig[at].value not in databases:
            continue
        previous = sig[at - 1].text if at else ""
        if previous == "." or sig[at + 1].text != "." or not sig[at + 2].is_name:
            continue
        sig[at].text = quote_ident(target)


def _rewrite_engines(sig: list[Token], databases: Collection[str], target: str, changes: list[str]) -> None:
    for at in range(len(sig) - 2):
        if not (sig[at].keyword("ENGINE") and sig[at + 1].text == "=" and sig[at + 2].kind == "word"):
            continue
        engine = sig[at + 2]
        args = _arguments(sig, at + 3)
        if engine.text.startswith(_REPLICATED) and engine.text.endswith("MergeTree"):
            plain = engine.text[len(_REPLICATED) :]
            changes.append(f"{engine.text} -> {plain}: the restored copy does not join the source's replication")
            engine.text = plain
            if len(args) >= 2 and sig[args[0][0]].kind == "string":
                _drop_leading_arguments(sig, args, 2)
        position = _ENGINE_DATABASE_ARGUMENT.get(engine.text)
        if position is not None and position < len(args):
            _retarget_argument(sig, args[position], databases, target)


def _arguments(sig: list[Token], open_at: int) -> list[tuple[int, int]]:
    """Top-level argument spans ``[start, end)`` of the parenthesis opening at ``open_at`` (if any)."""
    if open_at >= len(sig) or sig[open_at].text != "(":
        return []
    spans: list[tuple[int, int]] = []
    depth, start = 0, open_at + 1
    for at in range(open_at, len(sig)):
        text = sig[at].text
        if text in ("(", "["):
            depth += 1
        elif text in (")", "]"):
            depth -= 1
            if depth == 0:
                if at > start:
                    spans.append((start, at))
                return spans
        elif text == "," and depth == 1:
            spans.append((start, at))
            start = at + 1
    return spans


def _drop_leading_arguments(sig: list[Token], args: list[tuple[int, int]], count: int) -> None:
    """Blank the first ``count`` arguments and the commas after them."""
    end = args[count][0] if len(args) > count else args[count - 1][1]
    _blank(sig, args[0][0], end - args[0][0])


def _retarget_argument(sig: list[Token], span: tuple[int, int], databases: Collection[str], target: str) -> None:
    start, end = span
    if end - start != 1:
        return  # an expression (currentDatabase(), REGEXP(..)): left as written
    token = sig[start]
    if token.kind == "string" and token.value in databases:
        token.text = quote_string(target)
    elif token.is_name and token.value in databases:
        token.text = quote_ident(target)


def _rewrite_dictionary_source(sig: list[Token], databases: Collection[str], target: str) -> None:
    for at in range(len(sig) - 1):
        if sig[at].keyword("DB") and sig[at + 1].kind == "string" and sig[at + 1].value in databases:
            sig[at + 1].text = quote_string(target)


def uses_low_cardinality(ddl: str) -> bool:
    """Whether ``ddl`` declares a LowCardinality type (a name, not a string or comment mentioning it):
    servers of 18.x create it only with ``allow_experimental_low_cardinality_type``."""
    return any(token.kind == "word" and token.text == "LowCardinality" for token in tokenize(ddl))


# ---- order of creation ----------------------------------------------------------------------------


def referenced_tables(ddl: str, databases: Collection[str]) -> set[str]:
    """Names of tables in ``databases`` that ``ddl`` mentions (``db.t``, or bare after FROM/JOIN/TO),
    its own name excluded."""
    sig = [token for token in tokenize(ddl) if token.significant]
    try:
        _, name_at = _head(sig)
        sig = sig[name_at + (3 if _is_qualified(sig, name_at) else 1) :]
    except ValueError:
        pass  # not a CREATE statement we know: every name in it counts
    found: set[str] = set()
    for at in range(len(sig) - 2):
        if sig[at].is_name and sig[at].value in databases and sig[at + 1].text == "." and sig[at + 2].is_name:
            found.add(sig[at + 2].value)
    for at in range(len(sig) - 1):
        if sig[at].keyword("FROM", "JOIN", "TO") and sig[at + 1].is_name and (at + 2 >= len(sig) or sig[at + 2].text != "."):
            found.add(sig[at + 1].value)
    return found


def creation_order(definitions: Iterable[tuple[str, str]], databases: Collection[str]) -> list[str]:
    """Names of views (name, ddl) ordered so that a view comes after the views it reads.

    Views reading each other in a cycle (impossible on a real server) keep their name order."""
    pending = dict(sorted(definitions))
    needs = {name: referenced_tables(ddl, databases) & (pending.keys() - {name}) for name, ddl in pending.items()}
    ordered: list[str] = []
    while pending:
        ready = [name for name in pending if not (needs[name] & pending.keys())] or [next(iter(pending))]
        for name in ready:
            ordered.append(name)
            del pending[name]
    return ordered


# ---- comparing definitions --------------------------------------------------------------------------

_SIMPLE_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS_BEFORE_PARENTHESIS = frozenset(
    {"AS", "BY", "IN", "AND", "OR", "NOT", "FROM", "JOIN", "ON", "USING", "WHERE", "SELECT", "WITH", "TO", "KEY"}
    | {"VALUES", "WHEN", "THEN", "ELSE", "HAVING", "PREWHERE", "ARRAY", "INTERVAL", "ALL", "ANY", "UNION", "EXISTS"}
)


def canonical(text: str) -> str:
    """``text`` (a clause of a definition) in one spelling: comments dropped, names unquoted where they
    need no quotes, spaces only where SQL is usually written with them (``f(a, b)``, ``ORDER BY (a, b)``).
    Two spellings of one definition agree."""
    words: list[str] = []
    previous: Token | None = None
    for token in tokenize(text):
        if not token.significant:
            continue
        if token.kind == "quoted":
            name = token.value
            word = name if _SIMPLE_IDENT.match(name) else quote_ident(name)
        else:
            word = token.text
        if previous is not None and _spaced(previous, token):
            words.append(" ")
        words.append(word)
        previous = token
    return "".join(words)


def _spaced(previous: Token, token: Token) -> bool:
    if token.text in (")", "]", ",", ".") or previous.text in ("(", "[", "."):
        return False
    if token.text == "(" and previous.is_name:
        return previous.kind == "word" and previous.text.upper() in _KEYWORDS_BEFORE_PARENTHESIS
    return True


def canonical_engine(text: str) -> str:
    """An ``engine_full`` in one spelling; ``MergeTree()`` and ``MergeTree`` are one engine."""
    spelled = canonical(text)
    head, _, rest = spelled.partition("()")
    return f"{head}{rest}" if head and _SIMPLE_IDENT.match(head) else spelled


def rewrite_fragment(text: str, *, databases: Collection[str], target: str, engine: bool = False) -> str:
    """A clause of a definition (an ``engine_full``, a view's query, a default expression) as a
    restore into ``target`` writes it: names of ``databases`` retargeted, and for an engine, the
    engine rewritten as ``rewrite_create`` does (Replicated -> plain, Buffer/Distributed/Merge databases)."""
    prefix = "ENGINE = " if engine else ""
    tokens = tokenize(prefix + text)
    sig = [token for token in tokens if token.significant]
    _rewrite_qualified_names(sig, databases, target)
    if engine:
        _rewrite_engines(sig, databases, target, [])
    _rewrite_dictionary_source(sig, databases, target)
    return _joined(tokens)[len(prefix) :]


def view_query(ddl: str) -> str:
    """What defines a view beyond its columns, from its CREATE statement: ``[TO t] AS SELECT ..`` of a
    (materialized) view, everything after the name of a dictionary; "" when ``ddl`` is not one."""
    sig = [token for token in tokenize(ddl) if token.significant]
    try:
        kind, name_at = _head(sig)
    except ValueError:
        return ""
    body = sig[name_at + (3 if _is_qualified(sig, name_at) else 1) :]
    if kind == "DICTIONARY":
        return canonical(" ".join(token.text for token in body))
    depth, to = 0, ""
    for at, token in enumerate(body):
        depth += token.text == "("
        depth -= token.text == ")"
        if depth or at + 1 >= len(body):
            continue
        if token.keyword("TO") and body[at + 1].is_name and not body[at + 1].keyword("INNER") and not to:
            end = at + 4 if at + 3 < len(body) and body[at + 2].text == "." else at + 2
            to = " ".join(item.text for item in body[at:end]) + " "
        elif token.keyword("AS") and (body[at + 1].keyword("SELECT", "WITH") or body[at + 1].text == "("):
            return canonical(to + " ".join(item.text for item in body[at:]))
    return ""
