"""Claims -> Conversations identity, access gate and role (design 2.2). Pure: no Flask, no I/O.

The identity rules come from Twilio's pages (seeds 000/001/004): one identity per person on every
device, case-sensitive, no reserved URI characters unless the operator allows them, bounded
length. Twilio bills per active identity, so the mapping is deterministic: the same claims always
give the same identity.

Claims are addressed by name, by dotted path, or by RFC 6901 JSON Pointer (a path starting with
``/``, for names holding dots, slashes or colons such as Auth0's namespaced claims). The identity
comes from an ordered list of sources, the first one present wins. Each issuer has its own
policies; this module only applies the ones it is given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Protocol

import jsonpointer

from token_service.errors import AccessDenied, GroupOverage, InvalidIdentity

RESERVED_CHARACTERS = "!*'();:@&=+$,/?%#[]"
ReservedPolicy = Literal["reject", "allow", "percent-encode"]

_MISSING = object()
TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


class Condition(Protocol):
    """What a claim test needs (``settings.ClaimCondition`` satisfies it)."""

    claim: str
    equals: Any
    one_of: Sequence[Any] | None
    glob: str | None


class Rule(Condition, Protocol):
    role: str


@dataclass(frozen=True)
class IdentityPolicy:
    """One issuer's identity rules: its ordered sources, prefix and email rule, plus the global ones."""

    sources: tuple[str, ...]  # templates such as "{email}" or "{tid}.{oid}"; the first present wins
    prefix: str = ""
    require_email_verified: bool = True
    email_verified_claim: str = "email_verified"
    max_length: int = 256
    reserved: ReservedPolicy = "reject"
    allowed_reserved: frozenset[str] = frozenset()
    lowercase: bool = False


@dataclass(frozen=True)
class RolePolicy:
    rules: Sequence[Rule]
    sids: Mapping[str, str]
    default: str | None = None


class Mapped(NamedTuple):
    identity: str
    role: str
    role_sid: str


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``, or ``_MISSING``.

    A path starting with ``/`` is an RFC 6901 JSON Pointer (``/resource_access/chat.example.com/roles``);
    otherwise a literal name first (``https://ns/groups``), else a dotted path (``realm_access.roles``).
    """
    if path.startswith("/"):
        try:
            found = jsonpointer.resolve_pointer(claims, path, _MISSING)
        except jsonpointer.JsonPointerException:
            return _MISSING
        return _MISSING if isinstance(found, jsonpointer.EndOfList) else found
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same(actual: Any, expected: Any) -> bool:
    """Equality that does not let ``True == 1`` or ``"1" == 1`` through."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return actual == expected
    return type(actual) is type(expected) and actual == expected


def _scalar_matches(value: Any, cond: Condition) -> bool:
    if cond.equals is not None:
        return _same(value, cond.equals)
    if cond.one_of is not None:
        return any(_same(value, option) for option in cond.one_of)
    if cond.glob is not None:
        return isinstance(value, str) and fnmatchcase(value, cond.glob)
    return False


def condition_holds(claims: Mapping[str, Any], cond: Condition) -> bool:
    """True when the claim exists and it (or, for a list, any element) satisfies ``cond``."""
    value = claim_value(claims, cond.claim)
    if value is _MISSING:
        return False
    if isinstance(value, list):
        return any(_scalar_matches(item, cond) for item in value)
    return _scalar_matches(value, cond)


def claim_roots(path: str) -> frozenset[str]:
    """The top-level claim names ``path`` may read: what an IdP's overage marker would name."""
    if path.startswith("/"):
        first = path[1:].split("/", 1)[0]
        return frozenset({first.replace("~1", "/").replace("~0", "~")})
    return frozenset({path, path.split(".", 1)[0]})


def check_overage(claims: Mapping[str, Any], conditions: Sequence[Condition]) -> None:
    """Refuse a token whose rules read a claim the IdP left out for size (group overage).

    Microsoft Entra ID replaces ``groups`` by ``_claim_names``/``_claim_sources`` (a Graph query)
    when a user is in too many groups, or sets ``hasgroups`` in the implicit flow. A role rule or
    access gate on ``groups`` would then silently see no groups: refuse instead, saying how to fix it.
    """
    names = claims.get("_claim_names")
    omitted = set(names) if isinstance(names, Mapping) else set()
    if claims.get("hasgroups") is True:
        omitted.add("groups")
    if not omitted:
        return
    for cond in conditions:
        for root in claim_roots(cond.claim) & omitted:
            if root not in claims:
                raise GroupOverage(
                    f"the identity provider left the {root!r} claim out of the token because the user "
                    "is in too many groups (group overage), so the role rules cannot be applied; at the "
                    "identity provider, assign app roles and match on 'roles', or emit only the groups "
                    "assigned to this application (a group filter)"
                )


def check_access(claims: Mapping[str, Any], requirements: Sequence[Condition]) -> None:
    """Raise ``AccessDenied`` naming the first requirement the caller does not meet."""
    for cond in requirements:
        if not condition_holds(claims, cond):
            raise AccessDenied(
                f"the claim {cond.claim!r} does not meet this service's access requirements"
            )


def choose_role(claims: Mapping[str, Any], policy: RolePolicy) -> tuple[str, str]:
    """The first matching rule's role, else the default; ``AccessDenied`` when neither exists."""
    for rule in policy.rules:
        if condition_holds(claims, rule):
            return rule.role, policy.sids[rule.role]
    if policy.default is not None:
        return policy.default, policy.sids[policy.default]
    raise AccessDenied("no role rule matches this user and no default role is configured")


def _is_true(value: Any) -> bool:
    # Some IdPs (Amazon Cognito, older Keycloak mappers) send the boolean as a string.
    return value is True or (isinstance(value, str) and value.lower() == "true")


@lru_cache(maxsize=64)
def _reserved_pattern(allowed: frozenset[str]) -> re.Pattern[str]:
    """One character class of the reserved characters not allowed: a C-speed scan per identity."""
    refused = "".join(sorted(set(RESERVED_CHARACTERS) - allowed))
    return re.compile(f"[{re.escape(refused)}]" if refused else "(?!)")  # (?!) never matches


def _encode_reserved(value: str, policy: IdentityPolicy) -> str:
    """``value`` with each reserved character not allowed refused, or percent-encoded (UTF-8)."""
    pattern = _reserved_pattern(policy.allowed_reserved)
    if policy.reserved != "percent-encode":
        found = pattern.search(value)
        if found:
            raise InvalidIdentity(
                f"the identity contains the reserved character {found.group()!r}; Twilio recommends "
                "against it (configure identity.reserved_characters to allow or encode it)"
            )
        return value
    return pattern.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), value)


# In ASCII, whitespace and control characters are exactly these (space is the one Zs): one scan.
_ASCII_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"})


def validate_identity(identity: str, policy: IdentityPolicy) -> None:
    """Conversations rules on a finished identity: non-empty, printable, no spaces, bounded."""
    if not identity:
        raise InvalidIdentity("the identity is empty")
    if identity.isascii():
        refused = _ASCII_SPACE_OR_CONTROL.search(identity) is not None
    else:
        refused = any(ch.isspace() or unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in identity)
    if refused:
        raise InvalidIdentity("the identity contains whitespace or a control character")
    if len(identity) > policy.max_length:
        raise InvalidIdentity(
            f"the identity is {len(identity)} characters long; the limit is {policy.max_length}"
        )


def check_named_identity(identity: str, policy: IdentityPolicy) -> None:
    """An identity given whole (a trusted client names it): the same rules as a derived one.

    Nothing is encoded or lowercased: the caller names the final identity, so a reserved character
    the policy does not allow is refused (under ``percent-encode``, ``%`` is the encoding's own).
    """
    allowed = policy.allowed_reserved | ({"%"} if policy.reserved == "percent-encode" else set())
    found = _reserved_pattern(frozenset(allowed)).search(identity)
    if found:
        raise InvalidIdentity(f"the identity contains the reserved character {found.group()!r}, which "
                              "identity.reserved_characters does not allow")
    validate_identity(identity, policy)


@lru_cache(maxsize=64)
def _template(source: str) -> tuple[tuple[str, str | None], ...]:
    """``"{a}-{b}"`` as (literal, claim) pieces, parsed once per template rather than per request."""
    pieces: list[tuple[str, str | None]] = []
    end = 0
    for match in TEMPLATE_FIELD.finditer(source):
        pieces.append((source[end:match.start()], match.group(1)))
        end = match.end()
    if end < len(source):
        pieces.append((source[end:], None))
    return tuple(pieces)


def _present(value: Any) -> bool:
    return value is not _MISSING and value is not None and value != ""


_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _is_email(name: str, value: str) -> bool:
    """An address, whatever the claim is called: renaming the claim cannot skip verification."""
    return "mail" in name.lower() or _ADDRESS.fullmatch(value) is not None


def _render_source(claims: Mapping[str, Any], source: str, policy: IdentityPolicy) -> str:
    out = []
    for literal, name in _template(source):
        out.append(literal)
        if name is None:
            continue
        value = claim_value(claims, name)
        if not isinstance(value, str):
            raise InvalidIdentity(
                f"the {name!r} claim is not a string, so it cannot be a Conversations identity"
            )
        if policy.require_email_verified and _is_email(name, value):
            if not _is_true(claim_value(claims, policy.email_verified_claim)):
                raise InvalidIdentity(
                    f"the email address in {name!r} is not verified "
                    f"({policy.email_verified_claim} is not true)"
                )
        out.append(value)
    return "".join(out)


def _chosen_source(claims: Mapping[str, Any], policy: IdentityPolicy) -> str:
    """The first source whose every claim is present."""
    for source in policy.sources:
        if all(_present(claim_value(claims, name)) for _, name in _template(source) if name is not None):
            return source
    wanted = ", ".join(repr(name) for source in policy.sources for _, name in _template(source) if name)
    raise InvalidIdentity(f"the token has none of the claims the identity is built from ({wanted})")


def derive_identity(claims: Mapping[str, Any], policy: IdentityPolicy) -> str:
    """Build, check and return the Conversations identity for these (verified) claims."""
    value = _render_source(claims, _chosen_source(claims, policy), policy)
    if policy.lowercase:
        value = value.lower()
    identity = policy.prefix + _encode_reserved(value, policy)
    validate_identity(identity, policy)
    return identity


def map_claims(
    claims: Mapping[str, Any],
    identity_policy: IdentityPolicy,
    requirements: Sequence[Condition],
    role_policy: RolePolicy,
) -> Mapped:
    """The whole mapping step: overage, access gate, then identity, then role."""
    check_overage(claims, [*requirements, *role_policy.rules])
    check_access(claims, requirements)
    identity = derive_identity(claims, identity_policy)
    role, role_sid = choose_role(claims, role_policy)
    return Mapped(identity=identity, role=role, role_sid=role_sid)
