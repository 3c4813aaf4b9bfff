"""Token format: every token carries a unique id; device tokens name their device; expiry is
checked against the clock passed in; any change to a token breaks its signature."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

from fieldsync.auth.tokens import issue_token, unverified_claims, verify_token
from fieldsync.errors import TokenError

SECRET = b"token-tests-" + b"s" * 20
NOW = 1_800_000_000


def _payload(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_every_token_has_its_own_id():
    ids = {verify_token(SECRET, issue_token(SECRET, "u", "admin", now=NOW), now=NOW).token_id for _ in range(200)}
    assert len(ids) == 200 and all(len(i) >= 20 for i in ids)
    # an id is typed on the command line (`fieldsync token revoke ID`): one starting with '-'
    # was read as an option (base64url ids did, one in 64)
    assert all(i[0].isalnum() and i.isascii() for i in ids)


def test_a_user_token_names_no_device_and_a_device_token_its_own():
    user = verify_token(SECRET, issue_token(SECRET, "rep-1", "field_rep", {"territory_ids": ["t"]}, now=NOW), now=NOW)
    assert (user.kind, user.device_id, user.issued_at) == ("user", None, NOW)
    device = verify_token(SECRET, issue_token(SECRET, "rep-1", "field_rep", {"territory_ids": ["t"]}, now=NOW,
                                              device_id="dev-9", token_id="abc"), now=NOW)
    assert (device.kind, device.device_id, device.token_id, device.user_id) == ("device", "dev-9", "abc", "rep-1")
    assert device.attributes == {"territory_ids": ["t"]}


def test_expiry_is_measured_with_the_clock_given():
    token = issue_token(SECRET, "u", "admin", ttl=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 59).user_id == "u"
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token, now=NOW + 60)
    assert caught.value.reason == "expired"


def test_a_token_without_an_id_is_refused_as_malformed():
    # signed correctly (as tokens were before ids existed), but with nothing to idle out or revoke
    import hmac, hashlib
    body = base64.urlsafe_b64encode(json.dumps({"sub": "u", "role": "admin", "attrs": {}, "iat": NOW,
                                                "exp": NOW + 60}).encode()).decode().rstrip("=")
    signature = base64.urlsafe_b64encode(hmac.new(SECRET, f"v1.{body}".encode(), hashlib.sha256).digest())
    token = f"v1.{body}.{signature.decode().rstrip('=')}"
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token, now=NOW)
    assert caught.value.reason == "malformed" and "token id" in str(caught.value)


def test_unverified_claims_reads_a_forged_token_but_verification_refuses_it():
    forged = issue_token(b"another-secret-entirely-0123456789", "u", "admin", now=NOW, device_id="dev-1")
    assert unverified_claims(forged)["dev"] == "dev-1"
    assert unverified_claims("not a token") == {} and unverified_claims("a.b.c") == {}
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, forged, now=NOW)
    assert caught.value.reason == "bad_signature"


@settings(max_examples=150, deadline=None)
@given(user=st.text(min_size=1, max_size=20), device=st.one_of(st.none(), st.text(min_size=1, max_size=36)),
       position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_of_a_token_is_refused(user, device, position, flip):
    """Invariant: a token verifies only as issued. Changing any character of it never yields a
    principal (the signature covers prefix, payload and device binding)."""
    token = issue_token(SECRET, user, "field_rep", {"territory_ids": []}, now=NOW, device_id=device)
    principal = verify_token(SECRET, token, now=NOW)
    assert (principal.user_id, principal.device_id) == (user, device)
    i = position % len(token)
    changed = token[:i] + chr((ord(token[i]) + flip) % 128 or 1) + token[i + 1:]
    if changed == token:
        return
    with pytest.raises(TokenError):
        verify_token(SECRET, changed, now=NOW)
