"""Unit tests for the pure mapping core: claims -> identity, access gate, role (design 2.2)."""

from __future__ import annotations

import pytest

from token_service.errors import AccessDenied, InvalidIdentity
from token_service.mapping import (
    RESERVED_CHARACTERS,
    IdentityPolicy,
    RolePolicy,
    check_access,
    choose_role,
    claim_value,
    derive_identity,
    map_claims,
)
from token_service.settings import ClaimCondition, RoleRule

pytestmark = pytest.mark.unit

RL_USER = "RL" + "1" * 32
RL_ADMIN = "RL" + "2" * 32
EMAIL = IdentityPolicy(sources=("{email}",), reserved="allow", allowed_reserved=frozenset("@"))


def cond(claim: str, **kw: object) -> ClaimCondition:
    return ClaimCondition(claim=claim, **kw)


def test_identity_from_verified_email() -> None:
    claims = {"sub": "u1", "email": "Alice@Example.com", "email_verified": True}
    assert derive_identity(claims, EMAIL) == "Alice@Example.com"


def test_identity_is_case_sensitive_unless_lowercasing_is_on() -> None:
    claims = {"email": "Alice@Example.com", "email_verified": True}
    lower = IdentityPolicy(**{**EMAIL.__dict__, "lowercase": True})
    assert derive_identity(claims, lower) == "alice@example.com"


@pytest.mark.parametrize("verified", [False, None, "false", 1])
def test_email_identity_needs_email_verified(verified: object) -> None:
    claims = {"email": "a@example.com", "email_verified": verified}
    with pytest.raises(InvalidIdentity, match="not verified"):
        derive_identity(claims, EMAIL)


def test_email_verified_as_string_true_is_accepted_and_check_can_be_turned_off() -> None:
    assert derive_identity({"email": "a@x.io", "email_verified": "true"}, EMAIL) == "a@x.io"
    relaxed = IdentityPolicy(**{**EMAIL.__dict__, "require_email_verified": False})
    assert derive_identity({"email": "a@x.io"}, relaxed) == "a@x.io"


def test_template_and_prefix_and_nested_claims() -> None:
    policy = IdentityPolicy(sources=("{tenant.id}-{sub}",), prefix="corp.")
    claims = {"sub": "1234", "tenant": {"id": "eu"}}
    assert derive_identity(claims, policy) == "corp.eu-1234"


def test_literal_claim_names_with_dots_win_over_paths() -> None:
    claims = {"https://ns.example/groups": ["a"], "https://ns": {"example/groups": ["b"]}}
    assert claim_value(claims, "https://ns.example/groups") == ["a"]


@pytest.mark.parametrize("claims", [{}, {"sub": ""}, {"sub": None}, {"sub": ["x"]}, {"sub": True}])
def test_missing_or_non_string_identity_claim(claims: dict) -> None:
    with pytest.raises(InvalidIdentity):
        derive_identity(claims, IdentityPolicy(sources=("{sub}",)))


@pytest.mark.parametrize("ch", list(RESERVED_CHARACTERS))
def test_each_reserved_character_is_rejected_by_default(ch: str) -> None:
    with pytest.raises(InvalidIdentity, match="reserved character"):
        derive_identity({"sub": f"a{ch}b"}, IdentityPolicy(sources=("{sub}",)))


def test_allow_policy_allows_only_the_listed_characters() -> None:
    assert derive_identity({"email": "a@b", "email_verified": True}, EMAIL) == "a@b"
    with pytest.raises(InvalidIdentity, match="'/'"):
        derive_identity({"email": "a/b@c", "email_verified": True}, EMAIL)


def test_percent_encode_policy_is_deterministic_and_injective() -> None:
    policy = IdentityPolicy(sources=("{sub}",), reserved="percent-encode")
    assert derive_identity({"sub": "a:b%c"}, policy) == "a%3Ab%25c"
    assert derive_identity({"sub": "a:b%c"}, policy) == derive_identity({"sub": "a:b%c"}, policy)
    assert derive_identity({"sub": "a%3Ab"}, policy) != derive_identity({"sub": "a:b"}, policy)


@pytest.mark.parametrize("value", ["a b", "a\tb", "a\nb", "a\x00b", "a\u200bb", "a\u2028b", "\u00a0"])
def test_whitespace_and_control_characters_are_rejected(value: str) -> None:
    with pytest.raises(InvalidIdentity, match="whitespace or a control"):
        derive_identity({"sub": value}, IdentityPolicy(sources=("{sub}",)))


def test_every_ascii_character_is_judged_as_the_unicode_rule_judges_it() -> None:
    """ASCII identities take a one-regex shortcut; it must refuse exactly what the per-character
    rule (whitespace, or category Cc, Cf, Cs, Zl, Zp, Zs) refuses."""
    import unicodedata

    policy = IdentityPolicy(sources=("{sub}",), reserved="percent-encode")
    for code in range(128):
        ch = chr(code)
        refused = ch.isspace() or unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"}
        try:
            derive_identity({"sub": f"a{ch}b"}, policy)
        except InvalidIdentity as exc:
            assert refused and "whitespace or a control" in str(exc), repr(ch)
        else:
            assert not refused, repr(ch)


def test_templates_with_several_claims_and_literals() -> None:
    policy = IdentityPolicy(sources=("tenant-{org.id}:{sub}!",), reserved="allow", allowed_reserved=frozenset(":!"))
    assert derive_identity({"org": {"id": "7"}, "sub": "u1"}, policy) == "tenant-7:u1!"
    with pytest.raises(InvalidIdentity, match="'org.id'"):
        derive_identity({"sub": "u1"}, policy)


def test_every_reserved_character_allowed() -> None:
    policy = IdentityPolicy(sources=("{sub}",), reserved="allow", allowed_reserved=frozenset(RESERVED_CHARACTERS))
    assert derive_identity({"sub": RESERVED_CHARACTERS}, policy) == RESERVED_CHARACTERS


def test_length_limit_counts_prefix_and_encoding() -> None:
    policy = IdentityPolicy(sources=("{sub}",), prefix="p-", max_length=10)
    assert derive_identity({"sub": "x" * 8}, policy) == "p-" + "x" * 8
    with pytest.raises(InvalidIdentity, match="11 characters long; the limit is 10"):
        derive_identity({"sub": "x" * 9}, policy)


def test_access_gate_with_equals_one_of_glob_and_lists() -> None:
    claims = {"email_verified": True, "groups": ["staff", "chat-users"], "org": {"dept": "eng-core"}}
    check_access(claims, [cond("email_verified", equals=True)])
    check_access(claims, [cond("groups", one_of=["chat-users", "chat-admins"])])
    check_access(claims, [cond("org.dept", glob="eng-*")])
    with pytest.raises(AccessDenied, match="'groups'"):
        check_access(claims, [cond("groups", equals="chat-admins")])
    with pytest.raises(AccessDenied):
        check_access(claims, [cond("missing.path", equals="x")])


def test_equals_is_type_strict() -> None:
    with pytest.raises(AccessDenied):
        check_access({"email_verified": "true"}, [cond("email_verified", equals=True)])
    with pytest.raises(AccessDenied):
        check_access({"level": 1}, [cond("level", equals=True)])


def test_roles_first_match_wins_then_default_then_403() -> None:
    rules = [
        RoleRule(claim="groups", equals="chat-admins", role="admin"),
        RoleRule(claim="groups", glob="chat-*", role="user"),
    ]
    policy = RolePolicy(rules=rules, sids={"admin": RL_ADMIN, "user": RL_USER})
    assert choose_role({"groups": ["chat-users", "chat-admins"]}, policy) == ("admin", RL_ADMIN)
    assert choose_role({"groups": ["chat-users"]}, policy) == ("user", RL_USER)
    with pytest.raises(AccessDenied, match="no role rule matches"):
        choose_role({"groups": []}, policy)
    with_default = RolePolicy(rules=rules, sids=policy.sids, default="user")
    assert choose_role({}, with_default) == ("user", RL_USER)


def test_map_claims_runs_gate_identity_and_role() -> None:
    policy = RolePolicy(rules=[], sids={"user": RL_USER}, default="user")
    mapped = map_claims({"sub": "s1"}, IdentityPolicy(sources=("{sub}",)), [], policy)
    assert (mapped.identity, mapped.role, mapped.role_sid) == ("s1", "user", RL_USER)
    with pytest.raises(AccessDenied):
        map_claims({"sub": "s1"}, IdentityPolicy(sources=("{sub}",)), [cond("x", equals=1)], policy)


def test_json_pointer_reaches_names_with_dots_slashes_and_colons() -> None:
    claims = {"resource_access": {"chat.example.com": {"roles": ["admin"]}},
              "https://chat.example.com/app_metadata": {"team:id": "t1"}, "list": [{"a": 1}]}
    assert claim_value(claims, "/resource_access/chat.example.com/roles") == ["admin"]
    assert claim_value(claims, "/https:~1~1chat.example.com~1app_metadata/team:id") == "t1"
    assert claim_value(claims, "/list/0/a") == 1
    for missing in ("/list/1", "/list/-", "/resource_access/chat", "/nope/deeper"):
        with pytest.raises(AccessDenied):
            check_access(claims, [cond(missing, glob="*")])
    # The dotted form cannot say it: it splits at every dot.
    with pytest.raises(AccessDenied):
        check_access(claims, [cond("resource_access.chat.example.com.roles", equals="admin")])
    check_access(claims, [cond("/resource_access/chat.example.com/roles", equals="admin")])


def test_first_present_identity_source_wins() -> None:
    """Okta: an access token has the user id in `uid` (and the login in `sub`); an ID token in `sub`."""
    policy = IdentityPolicy(sources=("{uid}", "{sub}"))
    assert derive_identity({"uid": "00u1", "sub": "jane.doe@example.com"}, policy) == "00u1"
    assert derive_identity({"sub": "00u1"}, policy) == "00u1"
    assert derive_identity({"uid": "", "sub": "00u1"}, policy) == "00u1"  # empty is absent
    with pytest.raises(InvalidIdentity, match="none of the claims the identity is built from \\('uid', 'sub'\\)"):
        derive_identity({"email": "x@y.z"}, policy)
    tenant = IdentityPolicy(sources=("{tid}.{oid}",))
    assert derive_identity({"tid": "t", "oid": "o"}, tenant) == "t.o"
    with pytest.raises(InvalidIdentity):
        derive_identity({"oid": "o"}, tenant)  # a template counts as present only when all of it is


@pytest.mark.parametrize("value", [12345, 1.5, True, ["a"], {"a": "b"}])
def test_non_string_identity_is_refused_not_stringified(value: object) -> None:
    """A number-valued claim once became the identity "12345"."""
    with pytest.raises(InvalidIdentity, match="'uid' claim is not a string"):
        derive_identity({"uid": value, "sub": "fallback"}, IdentityPolicy(sources=("{uid}", "{sub}")))


@pytest.mark.parametrize(
    "claims",
    [
        {"https://chat.example.com/email": "a@example.com", "email_verified": False},
        {"https://chat.example.com/email": "a@example.com"},
        {"mail": "a@example.com", "email_verified": "no"},
        {"upn": "a@example.com"},  # an address under any name
    ],
)
def test_renamed_email_claim_cannot_skip_verification(claims: dict) -> None:
    source = next(iter(claims))
    policy = IdentityPolicy(sources=("{" + source + "}",), reserved="allow", allowed_reserved=frozenset("@"))
    with pytest.raises(InvalidIdentity, match="not verified"):
        derive_identity(claims, policy)


def test_verified_claim_name_is_configurable() -> None:
    policy = IdentityPolicy(sources=("{https://ns/email}",), email_verified_claim="/https:~1~1ns~1verified",
                            reserved="allow", allowed_reserved=frozenset("@"))
    claims = {"https://ns/email": "a@example.com", "email_verified": True}
    with pytest.raises(InvalidIdentity, match="~1ns~1verified is not true"):
        derive_identity(claims, policy)  # another claim's flag does not count
    assert derive_identity({**claims, "https://ns/verified": True}, policy) == "a@example.com"


def test_group_overage_is_refused_only_where_a_rule_reads_the_missing_claim() -> None:
    from token_service.errors import GroupOverage

    overage = {"sub": "s", "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "x"}}}
    on_groups = RolePolicy(rules=[RoleRule(claim="groups", equals="g1", role="admin")], sids={"admin": RL_ADMIN,
                           "user": RL_USER}, default="user")
    with pytest.raises(GroupOverage, match="group overage"):
        map_claims(overage, IdentityPolicy(sources=("{sub}",)), [], on_groups)
    with pytest.raises(GroupOverage):  # an access gate on groups, too
        map_claims(overage, IdentityPolicy(sources=("{sub}",)), [cond("groups", equals="g1")],
                   RolePolicy(rules=[], sids={"user": RL_USER}, default="user"))
    with pytest.raises(GroupOverage):  # the implicit flow's marker
        map_claims({"sub": "s", "hasgroups": True}, IdentityPolicy(sources=("{sub}",)), [], on_groups)
    on_roles = RolePolicy(rules=[RoleRule(claim="roles", equals="Chat.Admin", role="admin")],
                          sids=on_groups.sids, default="user")
    assert map_claims(overage, IdentityPolicy(sources=("{sub}",)), [], on_roles).role == "user"
