"""Tests for telemetry_guard.core.redact: redaction, scrubbing and bounded serialisation."""

from __future__ import annotations

import collections
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_guard.core.redact import (
    CYCLE_MARKER,
    DEPTH_MARKER,
    MIN_RECORD_BYTES,
    MORE_KEYS_KEY,
    REDACTED,
    TRUNCATED_MARKER,
    KeyMatcher,
    Redactor,
    exception_message,
    key_words,
    safe_repr,
)
from telemetry_guard.core.redact.patterns import TEXT_RE

CANARY = "CANARY-7f3a9c51e2"
SENSITIVE_KEYS = [
    "password", "db_password", "PASSWD", "client_secret", "access_token", "X-Api-Key", "apikey",
    "api.key", "Authorization", "auth", "set-cookie", "session", "sessionid", "private_key",
    "private-key", "credit_card", "Card Number",
]  # fmt: skip
MARKER_RE = re.compile(r"…\[truncated \d+ chars\]")


class Plain:
    """An ordinary object with a repr."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Plain({self.n})"


class Hostile:
    """An object whose repr, str, equality and ordering all raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("lt")

    __hash__ = object.__hash__


class UnhashableHostile(Hostile):
    """A Hostile whose hash raises too."""

    def __hash__(self) -> int:
        raise RuntimeError("hash")


class BadStr(Exception):
    """An exception whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


# --- secret keys: matched by words ---------------------------------------------------------

#: Keys whose values are secrets: every one must be redacted.
SECRET_KEY_CORPUS = [
    *SENSITIVE_KEYS, "pwd", "PWD", "passwd", "db_pass" + "word", "dbpassword", "DB_PASSWORD",
    "new_password", "password_confirmation", "password2", "password_hash", "userPassword",
    "passphrase", "secret", "client_secret", "clientSecret", "webhook_secret", "secret_value",
    "secrets", "token", "access_token", "accessToken", "auth_token", "refresh_token",
    "id_token", "csrftoken", "X-Auth-Token", "X-Amz-Security-Token", "github_token",
    "api_tokens", "apiKey", "API_KEY", "x_api_key", "X-API-KEY", "authorization",
    "Proxy-Authorization", "HTTP_AUTHORIZATION", "auth", "http_auth", "basic_auth", "oauth",
    "authKey", "cookie", "Cookie", "cookies", "Set-Cookie", "session_cookie", "session_id",
    "sessionId", "SESSIONID", "session_key", "user_session", "private_key", "privateKey",
    "private_key_pem", "secret_key", "SECRET_KEY", "aws_secret_access_key", "access_key",
    "AccessKey", "signing_key", "signingKey", "encryption_key", "master_key", "account_key",
    "card_number", "cardNumber", "credit_card_number", "cvv", "credentials", "credential",
    "db.password", "config.DATABASES.default.PASSWORD", "signature", "X-Hub-Signature",
    "otp", "ssn", "a_key_name_longer_than_forty_characters_holding_a_password",
]  # fmt: skip
#: Keys an operator needs to read: none may be redacted.
INNOCENT_KEY_CORPUS = [
    "author_id", "author", "authority", "auth_method", "authMethod", "auth_type",
    "auth_provider", "authenticated", "max_tokens", "maxTokens", "token_count", "tokens",
    "total_tokens", "prompt_tokens", "token_type", "token_expires_at", "session_count",
    "session_timeout", "sessions", "cookie_consent", "cookie_name", "secretary_name",
    "secretary", "secret_name", "password_reset_sent", "password_reset_sent_at",
    "password_changed_at", "password_policy", "password_length", "key_id", "keys",
    "keyboard", "primary_key", "key", "code", "status_code", "passenger", "passport_country",
    "user", "task_id", "queue", "amount", "retries", "host", "signed", "cardinality",
    "card_type", "tokenizer", "access_level", "private", "public_key",
]  # fmt: skip


def test_secret_key_corpus_is_redacted_and_innocent_corpus_is_kept() -> None:
    """Both errors measured on the key corpus: no secret key kept, no innocent key redacted."""
    matcher = KeyMatcher()
    missed = [key for key in SECRET_KEY_CORPUS if not matcher(key)]
    wrongly = [key for key in INNOCENT_KEY_CORPUS if matcher(key)]
    assert (missed, wrongly) == ([], [])
    corpus = {key: CANARY for key in SECRET_KEY_CORPUS + INNOCENT_KEY_CORPUS}
    out = Redactor(max_items=len(corpus)).redact(corpus)
    assert isinstance(out, dict)
    assert [k for k, v in out.items() if v == CANARY] == INNOCENT_KEY_CORPUS


@pytest.mark.parametrize(("key", "words"), [
    ("X-Api-Key", ("x", "api", "key")), ("accessToken", ("access", "token")),
    ("APIKey", ("api", "key")), ("sessionID2", ("session", "id", "2")),
    ("db.password", ("db", "password")), ("kebab-case_snake", ("kebab", "case", "snake")),
])  # fmt: skip
def test_keys_split_into_words_in_every_case_style(key: str, words: tuple[str, ...]) -> None:
    """snake_case, camelCase, kebab-case, header names, dotted names and digits split alike."""
    assert key_words(key) == words


def test_secret_terms_come_from_a_list_or_a_comma_separated_string() -> None:
    """The setting is a list of words and word pairs, or the same as 'a, b c' text."""
    for keys in (["ssn", "tax id"], "ssn, tax_id"):
        matcher = KeyMatcher(keys)
        assert matcher("user_ssn") and matcher("taxId") and not matcher("password")


def test_a_regular_expression_is_refused_as_terms_but_accepted_compiled() -> None:
    """A regex in the terms list is an error; a compiled pattern (or 're:...') is searched."""
    with pytest.raises(ValueError):
        KeyMatcher("passw(or)?d|secret")
    assert KeyMatcher(re.compile("Secret"))("MySecretThing")
    assert KeyMatcher("re:^x_")("X_anything")


def test_query_parameters_key_sig_and_code_are_secret_only_in_query_strings() -> None:
    """``key``, ``sig`` and ``code`` are secret after ``?``/``&`` but not as dict keys."""
    matcher = KeyMatcher()
    assert all(matcher.in_query(name) for name in ("key", "sig", "code", "access_key"))
    assert not any(matcher(name) for name in ("key", "sig", "code"))
    assert Redactor().redact({"key": "k", "code": 404}) == {"key": "k", "code": 404}


# --- redact: dict keys ---------------------------------------------------------------------


def test_password_key_is_redacted_at_any_depth() -> None:
    """A sensitive key's value is replaced inside dicts inside lists inside dicts."""
    value = {"a": [{"b": {"db_password": "hunter2", "user": "bob"}}], "Authorization": "x"}
    assert Redactor().redact(value) == {
        "a": [{"b": {"db_password": REDACTED, "user": "bob"}}],
        "Authorization": REDACTED,
    }


@pytest.mark.parametrize("key", SENSITIVE_KEYS)
def test_every_sensitive_key_hides_its_whole_value(key: str) -> None:
    """Whatever sits under a sensitive key, container or scalar, becomes the REDACTED marker."""
    out = Redactor().redact({key: {"nested": [CANARY]}})
    assert out == {key: REDACTED}


def test_custom_secret_words_match_keys_in_any_case() -> None:
    """Custom secret words match keys in any case; a value suffix (hash) keeps the match."""
    assert Redactor(keys="ssn").redact({"SSN": 1, "Ssn_hash": 2, "x": 3}) == {
        "SSN": REDACTED,
        "Ssn_hash": REDACTED,
        "x": 3,
    }


def test_compiled_key_pattern_keeps_its_own_flags() -> None:
    """A compiled key pattern (the escape hatch) is searched with its own flags."""
    redactor = Redactor(keys=re.compile("Secret"))
    assert redactor.redact({"Secret": 1, "secret": 2}) == {"Secret": REDACTED, "secret": 2}


def test_non_string_keys_are_converted_and_still_matched() -> None:
    """Non-str keys become their repr, and are redacted when that repr matches."""
    out = Redactor().redact({1: "a", None: "b", ("password",): "c", b"token": "d"})
    assert out == {"1": "a", "None": "b", "('password',)": REDACTED, "b'token'": REDACTED}


def test_secrets_inside_dict_keys_are_scrubbed() -> None:
    """A key that is itself a credential is scrubbed like any other text."""
    out = Redactor().redact({"sk_live_" + "Ab1" * 8: 1})
    assert out == {REDACTED: 1}


# --- redact: scalars ---------------------------------------------------------------------


def test_string_values_are_scrubbed_like_free_text() -> None:
    """Secrets inside str values are scrubbed even under innocent keys."""
    out = Redactor().redact({"note": "connect redis://app:s3cr3t@cache:6379 failed"})
    assert out == {"note": "connect redis://app:[REDACTED]@cache:6379 failed"}


def test_long_string_value_is_truncated_with_marker() -> None:
    """A str longer than max_value_chars is cut there and followed by the marker."""
    out = Redactor(max_value_chars=10).redact("a" * 25)
    assert out == "a" * 10 + TRUNCATED_MARKER.format(n=15)


def test_bytes_become_a_bounded_repr_string() -> None:
    """bytes and bytearray become the repr of at most max_value_chars bytes."""
    redactor = Redactor(max_value_chars=10)
    assert redactor.redact(b"abc") == "b'abc'"
    assert redactor.redact(bytearray(b"abc")) == "b'abc'"
    out = redactor.redact(b"a" * 100)
    assert isinstance(out, str) and out.startswith("b'aaaaaaa") and MARKER_RE.search(out)
    assert len(out) <= 10 + len(TRUNCATED_MARKER.format(n=1000))


def test_tuples_become_lists() -> None:
    """Tuples, nested or not, come out as lists."""
    assert Redactor().redact((1, ("a", None))) == [1, ["a", None]]


def test_orderable_sets_become_sorted_lists() -> None:
    """A set or frozenset of mutually orderable elements becomes a sorted list."""
    assert list({8, 1, 2}) != [1, 2, 8]  # iteration order alone would not pass
    assert Redactor().redact({8, 1, 2}) == [1, 2, 8]
    assert Redactor().redact(frozenset({33, 2, 17})) == [2, 17, 33]


def test_unorderable_sets_keep_every_element() -> None:
    """A set whose elements cannot be compared still becomes a list of all of them."""
    out = Redactor().redact({1, "a", None})
    assert isinstance(out, list)
    assert sorted(out, key=repr) == sorted([1, "a", None], key=repr)


@pytest.mark.parametrize(
    ("value", "expected"), [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")]
)
def test_non_finite_floats_become_strings(value: float, expected: str) -> None:
    """NaN and infinities become strings so the output stays strict JSON."""
    assert Redactor().redact([value]) == [expected]


def test_plain_scalars_are_kept_as_they_are() -> None:
    """ints, finite floats, bools and None come back unchanged."""
    value = [0, -7, 2**63, 1.5, True, False, None]
    assert Redactor().redact(value) == value


def test_huge_ints_become_hex_strings() -> None:
    """An int too wide for JSON consumers becomes a (bounded) hex string."""
    out = Redactor().redact(10**5000)
    assert isinstance(out, str) and out.startswith("0x")
    json.dumps(out)


def test_scalars_never_touch_the_text_regex() -> None:
    """ints, floats, bools and None skip the scrub regex entirely (the fast path)."""

    class Exploding:
        def sub(self, *args: object) -> str:
            raise AssertionError("regex used")

    redactor = Redactor()
    redactor._text_re = Exploding()  # type: ignore[assignment]
    assert redactor.redact([1, 2.5, True, None, (3,)]) == [1, 2.5, True, None, [3]]


def test_custom_objects_become_their_scrubbed_repr() -> None:
    """Objects and exceptions become their repr string, with secrets inside scrubbed."""
    redactor = Redactor()
    assert redactor.redact(Plain(3)) == "Plain(3)"
    assert redactor.redact(ValueError("token=abc123")) == "ValueError('token=[REDACTED]')"


def test_objects_whose_dunders_raise_become_markers() -> None:
    """A raising __repr__/__eq__/__lt__/__hash__ yields a marker, not an exception."""
    redactor = Redactor()
    assert redactor.redact(Hostile()) == "<unrepresentable Hostile>"
    assert redactor.redact([UnhashableHostile()]) == ["<unrepresentable UnhashableHostile>"]
    assert redactor.redact({Hostile(), Hostile()}) == ["<unrepresentable Hostile>"] * 2
    assert redactor.redact({Hostile(): 1}) == {"<unrepresentable Hostile>": 1}


def test_mapping_whose_items_raise_becomes_a_marker() -> None:
    """A dict subclass that raises while being iterated becomes a marker string."""

    class Broken(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    assert Redactor().redact({"ok": Broken(a=1)}) == {"ok": "<unrepresentable Broken>"}


# --- redact: structure bounds ---------------------------------------------------------------


def test_self_referencing_list_gives_cycle_marker() -> None:
    """A list containing itself is walked once and the back-reference becomes a marker."""
    value: list[object] = [1]
    value.append(value)
    assert Redactor().redact(value) == [1, CYCLE_MARKER]


def test_self_referencing_dict_gives_cycle_marker() -> None:
    """A dict containing itself is walked once and the back-reference becomes a marker."""
    value: dict[str, object] = {"n": 1}
    value["me"] = {"again": value}
    assert Redactor().redact(value) == {"n": 1, "me": {"again": CYCLE_MARKER}}


def test_shared_reference_that_is_not_a_cycle_is_repeated() -> None:
    """The same list appearing twice side by side is not mistaken for a cycle."""
    shared = [1, 2]
    assert Redactor().redact([shared, shared]) == [[1, 2], [1, 2]]


def test_nesting_deeper_than_max_depth_is_cut_with_marker() -> None:
    """Containers nested deeper than max_depth become the depth marker."""
    assert Redactor(max_depth=3).redact([[[[1]]]]) == [[[DEPTH_MARKER]]]
    assert Redactor(max_depth=3).redact([[[1]]]) == [[[1]]]


def test_extremely_deep_nesting_does_not_raise() -> None:
    """A 100 000-level nested list is bounded without RecursionError."""
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    redactor = Redactor()
    out = redactor.redact(value)
    json.dumps(out)
    assert json.loads(redactor.dumps({"args": value}))


@pytest.mark.parametrize("factory", [list, tuple, set, frozenset])
def test_long_sequences_end_with_a_count_of_dropped_items(factory: type) -> None:
    """A list, tuple or set past max_items keeps max_items elements and a count marker."""
    out = Redactor(max_items=100).redact(factory(range(150)))
    assert isinstance(out, list) and len(out) == 101
    assert out[-1] == "<50 more items>"


def test_long_dicts_get_a_count_of_dropped_keys() -> None:
    """A dict past max_items keeps max_items entries plus a key counting the rest."""
    out = Redactor(max_items=100).redact({f"k{i}": i for i in range(150)})
    assert isinstance(out, dict) and len(out) == 101 and out[MORE_KEYS_KEY] == 50


# --- redact_text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: [REDACTED]"),
        ("sent bearer eyJhbGciOi.x", "sent bearer [REDACTED]"),
        ("header Basic dXNlcjpwYXNz", "header Basic [REDACTED]"),
        ("redis://user:pass@host:6379/0", "redis://user:[REDACTED]@host:6379/0"),
        ("GET https://u:p@example.com/x", "GET https://u:[REDACTED]@example.com/x"),
        ("redis://:only-pass@host", "redis://:[REDACTED]@host"),
        ("login password=hunter2 denied", "login password=[REDACTED] denied"),
        ("token: abc123", "token: [REDACTED]"),
        ('{"api_key": "xyz zz", "n": 1}', '{"api_key": "[REDACTED]", "n": 1}'),
        ("{'db_password': 'hunter2'}", "{'db_password': '[REDACTED]'}"),
        ("X-Api-Key: k123", "X-Api-Key: [REDACTED]"),
        ("?session=abc&page=2", "?session=[REDACTED]&page=2"),
    ],
)
def test_redact_text_scrubs_credentials_but_keeps_context(text: str, expected: str) -> None:
    """Credentials in headers, URLs and key/value pairs are replaced; the rest is kept."""
    assert Redactor().redact_text(text) == expected


@pytest.mark.parametrize(
    "secret",
    [
        "sk_live_" + "a1B2" * 6,
        "sk_test_" + "a1B2" * 6,
        "rk_live_" + "a1B2" * 6,
        "sk-" + "proj-" + "Ab1" * 12,
        "ghp_" + "A1b" * 12,
        "xoxb-123456789012-abcdef",
        "AKIAIOSFODNN7EXAMPLE",
    ],
)
def test_redact_text_scrubs_well_known_api_key_shapes(secret: str) -> None:
    """Stripe, OpenAI, GitHub, Slack and AWS key shapes are replaced wherever they appear."""
    assert Redactor().redact_text(f"using {secret} now") == f"using {REDACTED} now"


def test_redact_text_leaves_ordinary_messages_alone() -> None:
    """Text without credentials comes back unchanged."""
    text = "Task failed after 3 retries: ConnectionError('host:6379 refused'); see https://x.io/a"
    assert Redactor().redact_text(text) == text


def test_redact_text_url_with_port_and_email_keeps_its_host() -> None:
    """An '@' in a query string is not mistaken for userinfo after a port."""
    text = "https://host:8080/x?email=a@b.c"
    assert Redactor().redact_text(text) == text


def test_redact_text_truncates_with_marker() -> None:
    """Long text is cut to max_value_chars and followed by the marker."""
    expected = "abcde" + TRUNCATED_MARKER.format(n=3)
    assert Redactor(max_value_chars=5).redact_text("abcdefgh") == expected


def test_secret_straddling_the_cut_is_not_leaked() -> None:
    """A secret that starts before the cut is scrubbed before the text is truncated."""
    redactor = Redactor(max_value_chars=50)
    assert "sk_live" not in redactor.redact_text("a" * 45 + " sk_live_" + "Z9" * 12)
    assert "hunt" not in redactor.redact_text("a" * 40 + " password=hunter2hunter2")
    url = "a" * 30 + " redis://u:" + "p" * 40 + "@host"  # the '@' lies past the cut
    assert "ppp" not in redactor.redact_text(url)
    quoted = "a" * 30 + ' "password": "' + "p" * 40 + '"'  # the closing quote lies past the cut
    assert "ppp" not in redactor.redact_text(quoted)


def test_redact_text_accepts_exceptions_and_other_objects() -> None:
    """Non-str input is turned into text (message or repr) and then scrubbed."""
    redactor = Redactor()
    assert redactor.redact_text(ValueError("password=x")) == "password=[REDACTED]"
    assert redactor.redact_text(BadStr()) == "<unprintable BadStr>"
    assert redactor.redact_text({"token": "abc"}) == "{'token': '[REDACTED]'}"
    assert redactor.redact_text(Hostile()) == "<unrepresentable Hostile>"


JWT = ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
       "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2\n"
       "q9Kd8Zq7vY2nW4\n-----END RSA PRIVATE KEY-----")


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Token abc123", "Authorization: [REDACTED]"),
    ('Authorization: Digest username="u", nonce="n", response="6629fae4"\nnext',
     "Authorization: [REDACTED]\nnext"),
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_"
     "request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba",
     "Authorization: [REDACTED]"),
    ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: [REDACTED]"),
    ("X-Api-Key: k123 sent", "X-Api-Key: [REDACTED] sent"),
    ("postgres://app:pa/ss@db/prod", "postgres://app:[REDACTED]@db/prod"),
    ("redis://:p@ss@cache:6379", "redis://:[REDACTED]@cache:6379"),
    ("GET /o?key=AIzaSyA-1234567890abcdefghijklmnopqrstu&page=2", "GET /o?key=[REDACTED]&page=2"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIDEXAMPLE%2F2015&X-Amz-Signature=fe5f80"
     "&X-Amz-Expires=60", "https://b.s3.amazonaws.com/k?X-Amz-Credential=[REDACTED]"
     "&X-Amz-Signature=[REDACTED]&X-Amz-Expires=60"),
    ("?X-Goog-Signature=ab12&sig=cd&signature=ef&access_key=gh&client_secret=ij&code=kl",
     "?X-Goog-Signature=[REDACTED]&sig=[REDACTED]&signature=[REDACTED]&access_key=[REDACTED]"
     "&client_secret=[REDACTED]&code=[REDACTED]"),
    ("?db_password=x&session_token=y&user=z",
     "?db_password=[REDACTED]&session_token=[REDACTED]&user=z"),
    (f"jwt {JWT} rejected", "jwt [REDACTED] rejected"),
    (f"key loaded: {PEM}\nnext line", "key loaded: [REDACTED]\nnext line"),
    ("connect(host='db', pwd='hunter2')", "connect(host='db', pwd='[REDACTED]')"),
    ("pwd=hunter2", "pwd=[REDACTED]"),
    ("Job(credentials={'user': 'a', 'pass': 'b'}, n=1)", "Job(credentials=[REDACTED], n=1)"),
    ("{'auth': ('user', 'hunter2')}", "{'auth': [REDACTED]}"),
    ("signing_key=abc", "signing_key=[REDACTED]"),
    ("the_configured_upstream_service_account_password=abc",
     "the_configured_upstream_service_account_password=[REDACTED]"),
    ('body={\\"password\\": \\"hunter2\\", \\"n\\": 1}',
     'body={\\"password\\": \\"[REDACTED]\\", \\"n\\": 1}'),
    ("'line one\\npwd=abc'", "'line one\\npwd=[REDACTED]'"),
    ("[('X-Api-Key', 'k1'), ('Accept', 'json')]",
     "[('X-Api-Key', '[REDACTED]'), ('Accept', 'json')]"),
    ("[(b'authorization', b'Bearer k2'), (b'host', b'h')]",
     "[(b'authorization', b'[REDACTED]'), (b'host', b'h')]"),
    ("url=postgres://u:pw@h/db", "url=postgres://u:[REDACTED]@h/db"),
    ("Cookie: sessionid=abc; csrftoken=def", "Cookie: [REDACTED]"),
    ("author_id=5 auth_method=sso max_tokens=3 token_count=9 session_count=2",
     "author_id=5 auth_method=sso max_tokens=3 token_count=9 session_count=2"),
])  # fmt: skip
def test_redact_text_scrubs_the_shapes_secret_scanners_know(text: str, expected: str) -> None:
    """Any Authorization scheme, URL passwords with / and @, query secrets, JWTs, PEM blocks,
    pwd=, long names, escaped quotes and header pairs are scrubbed; innocent pairs are kept."""
    assert Redactor().redact_text(text) == expected


def test_namedtuple_is_redacted_by_its_field_names() -> None:
    """A namedtuple becomes a dict of its fields; a secret field's value is redacted."""
    Login = collections.namedtuple("Login", "user password")
    assert Redactor().redact([Login("bob", CANARY)]) == [{"user": "bob", "password": REDACTED}]


def test_header_pair_lists_and_asgi_byte_pairs_are_key_value_pairs() -> None:
    """[("X-Api-Key", v)] and ASGI [(b"authorization", v)] pairs are redacted by name."""
    out = Redactor().redact({"headers": [("X-Api-Key", CANARY), ("Accept", "json")],
                             "scope": [(b"authorization", CANARY.encode()), (b"host", b"h")]})
    assert out == {"headers": [["X-Api-Key", REDACTED], ["Accept", "json"]],
                   "scope": [["b'authorization'", REDACTED], ["b'host'", "b'h'"]]}
    assert Redactor().redact([("a", 1), ("b", 2)]) == [["a", 1], ["b", 2]]


def test_a_pem_block_cut_by_the_window_is_hidden_to_its_end() -> None:
    """A private key longer than the text kept is hidden from its BEGIN line on."""
    body = "\n".join("MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2q9Kd8Zq7vY2nW4" for _ in range(200))
    text = "x" * 40 + " -----BEGIN PRIVATE KEY-----\n" + body + "\n-----END PRIVATE KEY-----"
    out = Redactor(max_value_chars=100).redact_text(text)
    assert "MIIE" not in out and "BEGIN" not in out and out.startswith("x" * 40 + " [REDACTED]")


def test_redact_tail_scrubs_before_keeping_the_end() -> None:
    """The end of a traceback is kept only after scrubbing: a URL across the cut never leaks."""
    redactor = Redactor(max_value_chars=100)
    text = "x" * 500 + "\nconnect postgres://app:" + "s3cret/" * 10 + "@db/prod failed\nEnd"
    out = redactor.redact_tail(text)
    assert "s3cret" not in out and out.endswith("@db/prod failed\nEnd")
    assert out.startswith("…[truncated ")
    plain = "y" * 150
    assert redactor.redact_tail(plain) == redactor.truncate_head(plain)


# --- the scrubber as a property: no planted secret survives --------------------------------

SECRET_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
secret_values_text = st.text(SECRET_CHARS, min_size=12, max_size=40).map(lambda s: "Q9" + s)
noise = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
SHAPES = [
    "password={s}", "pwd: {s}", "'api_key': '{s}'", '"client_secret": "{s}"',
    '{{\\"token\\": \\"{s}\\"}}', "Authorization: Token {s}", "Authorization: Bearer {s}",
    "Proxy-Authorization: Digest response={s}", "X-Api-Key: {s}", "postgres://app:{s}@db/x",
    "redis://:p@{s}/q@cache", "https://h/p?x=1&sig={s}&y=2", "?code={s}", "Bearer {s}",
    "('X-Auth-Token', '{s}')", "(b'cookie', b'{s}')", "credentials=({s!r}, 'x')",
    "access_token={s}", "sessionId={s}", "private_key = '{s}'", "signing_key={s}",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SHAPES), secret_values_text, noise, noise,
       st.integers(20, 400))
def test_no_planted_secret_survives_the_scrubber(
        shape: str, secret: str, before: str, after: str, limit: int) -> None:
    """A secret in any known shape, between any text and at any cut, never appears."""
    text = f"{before} {shape.format(s=secret)} {after}"
    redactor = Redactor(max_value_chars=limit)
    assert secret not in redactor.redact_text(text)
    assert secret[:12] not in redactor.redact_tail(text)
    assert secret not in json.dumps(redactor.redact({"note": text}))


TEXT_PIECES = [*SHAPES, "Bearer", "Basic", "(", "[", "'", '"', ",", " ", ":", "=", "\\",
               "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", "eyJhbGciOi.eyJzdWIi.x",
               "  File \"/srv/app/tasks.py\", line 12, in run", "    r = send(token=t)"]


@pytest.mark.parametrize("text", [
    "retry\nsent with Bearer\nQ9abcdefghijkmnop\nend",
    "retry\nsent with Basic\nQ9abcdefghijkmnop\nend",
    "headers [('X-Auth-Token',\n  'Q9abcdefghijkmnop')]\nend",
    "headers [('X-Auth-Token'\n, 'Q9abcdefghijkmnop')]\nend",
    "headers (\n'X-Auth-Token', 'Q9abcdefghijkmnop')\nend",
    "key:\n-----BEGIN PRIVATE KEY-----\nQ9abcdefghijkmnop\n-----END PRIVATE KEY-----\nend",
])
def test_matches_across_lines_are_scrubbed_as_whole(text: str) -> None:
    """Secrets split over lines are found as in the whole text, also once lines are known."""
    redactor = Redactor()
    for line in text.split("\n"):
        redactor.redact_text(line + "\nx")  # every line seen before
    out = redactor.redact_text(text)
    assert "Q9abcdefghijkmnop" not in out
    assert out == redactor._scrub_all(text, TEXT_RE)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TEXT_PIECES) | noise, max_size=10), secret_values_text,
       st.lists(st.integers(0, 400), max_size=6))
def test_a_text_scrubbed_line_by_line_is_scrubbed_as_whole(
        pieces: list[str], secret: str, breaks: list[int]) -> None:
    """Lines remembered from earlier texts change no answer: newlines anywhere, twice over."""
    text = "".join(p.format(s=secret) if "{s" in p else p for p in pieces)
    for at in sorted(breaks, reverse=True):
        text = text[:at] + "\n" + text[at:]
    redactor = Redactor(max_value_chars=100_000)
    whole = redactor._scrub_all(text, TEXT_RE)
    assert redactor.redact_text(text) == whole
    assert redactor.redact_text(text) == whole  # the second time from remembered lines
    assert redactor.redact_tail(text) == whole


# --- safe_repr / exception_message ---------------------------------------------------------


def test_safe_repr_of_raising_repr_names_the_type() -> None:
    """A __repr__ that raises gives '<unrepresentable TypeName>'."""
    assert safe_repr(Hostile()) == "<unrepresentable Hostile>"


def test_safe_repr_of_non_string_repr_names_the_type() -> None:
    """A __repr__ returning a non-str gives the same marker instead of a TypeError."""

    class NotStr:
        def __repr__(self):  # type: ignore[no-untyped-def]
            return 42

    assert safe_repr(NotStr()) == "<unrepresentable NotStr>"


def test_safe_repr_is_bounded() -> None:
    """safe_repr cuts long reprs at the limit and appends the marker."""
    assert safe_repr("x" * 100, limit=10) == "'xxxxxxxxx" + TRUNCATED_MARKER.format(n=92)


def test_exception_message_of_broken_str_names_the_type() -> None:
    """An exception whose __str__ raises gives '<unprintable TypeName>'."""
    assert exception_message(BadStr()) == "<unprintable BadStr>"


def test_exception_message_is_str_of_exception_bounded() -> None:
    """exception_message is str(exc), cut at the limit with the marker."""
    assert exception_message(KeyError("k")) == "'k'"
    expected = "y" * 20 + TRUNCATED_MARKER.format(n=10)
    assert exception_message(ValueError("y" * 30), limit=20) == expected


# --- bound_record / dumps -------------------------------------------------------------------


def test_record_within_bound_is_returned_unchanged() -> None:
    """A record that already fits comes back as is, with no truncation flag."""
    record = {"task": "t", "args": [1, 2]}
    assert Redactor().bound_record(record) is record


def test_oversized_record_cuts_longest_strings_first() -> None:
    """The longest strings are cut; shorter fields survive intact; the record is flagged."""
    record = {"short": "keep me", "mid": "y" * 300, "long": "x" * 5000}
    out = Redactor(max_record_bytes=1024).bound_record(record)
    assert len(json.dumps(out)) <= 1024
    assert out["_truncated"] is True
    assert out["short"] == "keep me" and out["mid"] == "y" * 300
    assert isinstance(out["long"], str) and MARKER_RE.search(out["long"])
    assert record["long"] == "x" * 5000  # the input is not modified


def test_oversized_record_of_small_values_replaces_a_sub_structure() -> None:
    """When strings cannot help, the smallest sufficient sub-structure becomes a marker."""
    record = {"task": "t", "kwargs": {"a": list(range(50))}, "args": list(range(1000))}
    out = Redactor(max_record_bytes=1024).bound_record(record)  # type: ignore[arg-type]
    assert len(json.dumps(out)) <= 1024 and out["_truncated"] is True
    assert out["task"] == "t" and out["kwargs"] == {"a": list(range(50))}
    assert re.fullmatch(r"<\d+ bytes omitted>", out["args"])  # type: ignore[arg-type]


def test_only_the_smallest_sufficient_sub_structure_is_replaced() -> None:
    """A larger sub-structure survives when dropping a smaller one is enough."""
    record = {"big": list(range(1000)), "medium": list(range(300))}
    out = Redactor(max_record_bytes=5200).bound_record(record)  # type: ignore[arg-type]
    assert len(json.dumps(out)) <= 5200
    assert out["big"] == list(range(1000))
    assert re.fullmatch(r"<\d+ bytes omitted>", out["medium"])  # type: ignore[arg-type]


def test_record_with_too_many_fields_drops_fields() -> None:
    """A record of many top-level scalars loses fields until it fits."""
    record = {f"k{i}": i for i in range(1000)}
    out = Redactor(max_record_bytes=256).bound_record(record)  # type: ignore[arg-type]
    assert len(json.dumps(out)) <= 256 and out["_truncated"] is True


def test_bound_record_makes_a_non_json_record_safe() -> None:
    """A record holding NaN or arbitrary objects still comes back strict-JSON-encodable."""
    out = Redactor().bound_record({"x": float("nan"), "o": Plain(1)})  # type: ignore[dict-item]
    assert json.loads(json.dumps(out, allow_nan=False)) == {"x": "nan", "o": "Plain(1)"}


def test_five_megabyte_string_is_truncated_under_the_bound() -> None:
    """A 5 MB message is cut with the marker and the record stays under the byte bound."""
    redactor = Redactor()
    encoded = redactor.dumps({"message": "x" * 5_000_000})
    assert len(encoded.encode()) <= 32768
    message = json.loads(encoded)["message"]
    assert message.startswith("x" * 2048) and message.endswith("[truncated 4997952 chars]")


def test_dumps_redacts_and_returns_valid_json() -> None:
    """dumps applies redaction and yields parseable JSON."""
    out = json.loads(Redactor().dumps({"kwargs": {"password": "hunter2"}, "n": float("inf")}))
    assert out == {"kwargs": {"password": REDACTED}, "n": "inf"}


def test_dumps_never_raises_on_a_non_dict_record() -> None:
    """Whatever is passed, dumps returns JSON (non-dict input is wrapped under 'value')."""
    assert json.loads(Redactor().dumps([1, Hostile()])) == {  # type: ignore[arg-type]
        "value": [1, "<unrepresentable Hostile>"]
    }


def test_limits_below_minimum_are_rejected() -> None:
    """A Redactor cannot be built with a record bound too small to hold the flag."""
    with pytest.raises(ValueError):
        Redactor(max_record_bytes=MIN_RECORD_BYTES - 1)
    with pytest.raises(ValueError):
        Redactor(max_depth=0)


# --- properties ---------------------------------------------------------------------------

hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # includes nan and ±inf
    st.text(),
    st.binary(),
    st.builds(Plain, st.integers()),
    st.builds(Hostile),
)
leaves = hashables | st.sets(hashables, max_size=4) | st.frozensets(hashables, max_size=4)
keys = (
    st.text(max_size=10)
    | st.integers()
    | st.tuples(st.integers())
    | st.sampled_from(SENSITIVE_KEYS)
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=40,
)
payloads = st.sampled_from([CANARY, [CANARY], {"inner": CANARY}, (1, CANARY), {CANARY}])
secret_values = st.recursive(
    leaves | st.builds(lambda k, v: {k: v}, st.sampled_from(SENSITIVE_KEYS), payloads),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_redact_output_is_always_strict_json(value: object) -> None:
    """For any nested value, the redacted copy encodes with allow_nan=False."""
    json.dumps(Redactor().redact(value), allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(values, st.integers(MIN_RECORD_BYTES, 4096))
def test_dumps_always_fits_the_byte_bound(value: object, bound: int) -> None:
    """For any value and bound, dumps gives parseable JSON of at most that many UTF-8 bytes."""
    encoded = Redactor(max_record_bytes=bound).dumps({"args": value})
    assert len(encoded.encode()) <= bound
    assert isinstance(json.loads(encoded), dict)


@settings(max_examples=300, deadline=None)
@given(values, st.integers(MIN_RECORD_BYTES, 4096))
def test_bound_json_is_the_bounded_record_encoded(value: object, bound: int) -> None:
    """bound_json (the error log's one encoding) gives exactly json.dumps(bound_record(r))."""
    redactor = Redactor(max_record_bytes=bound)
    record = {"args": value, "nan": float("nan")} if bound % 3 == 0 else {"args": value}
    assert redactor.bound_json(record) == json.dumps(redactor.bound_record(record))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(secret_values, st.integers(MIN_RECORD_BYTES, 4096))
def test_canary_under_a_sensitive_key_never_appears(value: object, bound: int) -> None:
    """A canary secret placed under any sensitive key is absent from every output."""
    redactor = Redactor(max_record_bytes=bound)
    assert CANARY not in json.dumps(redactor.redact(value))
    assert CANARY not in redactor.dumps({"args": value})


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text("abc", max_size=8), st.text("xyz é\n😀", max_size=3000), min_size=1, max_size=5
    ),
    st.integers(512, 8192),
)
def test_long_strings_are_cut_before_any_field_is_lost(record: dict[str, str], bound: int) -> None:
    """A record of long, partly non-ASCII strings fits by cutting strings alone: no field lost."""
    out = json.loads(Redactor(max_record_bytes=bound, max_value_chars=10_000).dumps(record))
    assert set(out) - {"_truncated"} == set(record)
    for key, text in record.items():
        assert text.startswith(MARKER_RE.split(out[key])[0])
