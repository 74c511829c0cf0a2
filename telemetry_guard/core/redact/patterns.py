"""What a secret in free text looks like: the scrubber's patterns and how a hidden value is shown.

:meth:`~telemetry_guard.core.redact.Redactor.redact_text` scrubs free text: PEM private-key blocks
(whole), JWTs, well-known API key shapes, ``Bearer``/``Basic`` credentials, URL passwords (the
userinfo ends at the last ``@`` before the host, so passwords may hold ``/`` and ``@``), and
``name=value``, ``name: value``, ``"name": "value"`` (also with escaped quotes) and
``("name", "value")`` or ``["name", "value"]`` pairs whose name is a secret key; after
``Authorization``, ``Proxy-Authorization``, ``auth`` and ``Cookie`` the rest of the line is
the value (any scheme: ``Token``, ``Digest``, ``AWS4-HMAC-SHA256 ...``). Text is scrubbed
before it is cut, never the other way round.
"""

from __future__ import annotations

import re

from .markers import REDACTED

#: Keys whose value runs to the end of the line in free text (``Authorization: Digest a, b``).
LINE_VALUE_WORDS = frozenset({"authorization", "auth", "cookie"})

_TOKENS = (
    r"[sr]k_(?:live|test)_[0-9A-Za-z]{8,}"  # Stripe
    r"|sk-[0-9A-Za-z_-]{20,}"  # OpenAI and alike
    r"|gh[pousr]_[0-9A-Za-z]{20,}|github_pat_\w{20,}"  # GitHub
    r"|glpat-[0-9A-Za-z_-]{20,}"  # GitLab
    r"|xox[baprs]-[0-9A-Za-z-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|SG\.[\w-]{16,}\.[\w-]{16,}"  # SendGrid
    r"|npm_[0-9A-Za-z]{36}|pypi-[\w-]{50,}"  # npm, PyPI
)
_PEM = r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_QUOTED = r"""b?"(?:[^"\\\n]|\\.)*"?|b?'(?:[^'\\\n]|\\.)*'?"""
_TEXT_SOURCE = (
    rf"(?P<pem>(?s:{_PEM}.*?(?:{_PEM_END}|\Z)))"
    r"|(?P<jwt>(?<![\w-])eyJ[\w-]{4,}\.[\w-]{4,}(?:\.[\w-]*)?)"
    rf"|(?P<token>(?<![0-9A-Za-z])(?:{_TOKENS})(?![0-9A-Za-z]))"
    r"|(?P<scheme>\b(?i:bearer)\s+|\bBasic\s+(?=[A-Za-z0-9+/]{6}))[\w.~+/-]+=*"
    r"|(?P<url>\b[A-Za-z][\w+.-]{0,30}://[^\s:/?#]*:)[^\s?#]+(?=@{url_end})"
    rf"|(?P<tuple>[(\[]\s*b?(?P<tq>[\"'])(?P<tname>[\w.-]+)(?P=tq)\s*,\s*)(?P<tvalue>{_QUOTED})"
    r"|(?P<pair>(?:\\[nrt]|(?<![\w.\\-]))(?P<nq>\\*[\"'])?(?P<name>[A-Za-z_][\w.-]*)"
    r"(?(nq)(?P=nq))[ \t]*[:=][ \t]*)"
    r"(?P<value>(?P<esc>\\+)(?P<eq>[\"'])(?:(?!(?P=esc)(?P=eq)).)*(?:(?P=esc)(?P=eq))?"
    rf"|{_QUOTED}"
    r"|\([^()\n]*\)?|\[[^\[\]\n]*\]?|\{[^{}\n]*\}?"
    r"|[^\s\"',;&)}\]]+)"
)
#: The rest of a private-key block whose start was cut off.
PEM_TAIL = re.compile(rf"(?s:\A(?:(?!-----BEGIN).)*?{_PEM_END})")


def _compile_text(url_end: str) -> re.Pattern[str]:
    return re.compile(_TEXT_SOURCE.replace("{url_end}", url_end))


#: The scrubber; the second form is for text cut at its end (a password's ``@`` may be gone).
TEXT_RE = _compile_text("")
TEXT_CUT_RE = _compile_text(r"|\Z")


def hidden(value: str) -> str:
    """``[REDACTED]`` in the quotes ``value`` had (``'x'``, ``b"x"``, ``\\"x\\"``)."""
    if value[0] == "\\":
        quote = value[: len(value) - len(value.lstrip("\\")) + 1]
        return quote + REDACTED + quote
    if value[0] in "\"'":
        return value[0] + REDACTED + value[0]
    if value[:2] in ('b"', "b'"):
        return value[:2] + REDACTED + value[1]
    return REDACTED


def is_bare(value: str) -> bool:
    """Whether a text value is unquoted and unbracketed (a header value, a word)."""
    return value[0] not in "\"'\\([{" and value[:2] not in ('b"', "b'")

#: Where a match of ``TEXT_RE`` could span a line break: a private-key block, ``Bearer`` or
#: ``Basic`` at a line's end, or a ``("name", "value")`` pair broken over lines. Text without
#: any is scrubbed the same line by line as whole (every other part stops at a newline).
CROSS_LINE_RE = re.compile(r"-----BEGIN|(?i:bearer)\s*\n|Basic\s*\n|[(\[]\s*\n|[\"']\s*\n|,\s*\n")
