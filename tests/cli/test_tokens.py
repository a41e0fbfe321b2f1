"""``vi-flow tokens``: keys are created once, listed by name and refused once revoked."""

from __future__ import annotations

import json

from .conftest import Invoker


def test_create_list_revoke(vf: Invoker) -> None:
    created = vf("tokens", "create", "ci")
    assert created.exit_code == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("vf_") and "never shown again" in created.stderr
    listed = vf("tokens", "list")
    assert "ci" in listed.stdout and key not in listed.stdout
    rows = json.loads(vf("tokens", "list", "--json").stdout)
    assert {"name": "ci", "admin": False} in [{k: r[k] for k in ("name", "admin")} for r in rows]
    assert key not in json.dumps(rows)
    assert vf("--api-key", key, "flows", "list").exit_code == 0
    revoked = vf("tokens", "revoke", "ci", "--json")
    assert json.loads(revoked.stdout) == {"name": "ci", "revoked": 1}
    refused = vf("--api-key", key, "flows", "list")
    assert refused.exit_code == 3, refused.stderr


def test_json_create_holds_the_key_and_an_unknown_name_is_not_found(vf: Invoker) -> None:
    created = json.loads(vf("tokens", "create", "bot", "--json").stdout)
    assert created["name"] == "bot" and created["token"].startswith("vf_")
    missing = vf("tokens", "revoke", "nobody")
    assert missing.exit_code == 4 and "nobody" in missing.stderr
    assert vf("tokens", "create", "", "--json").exit_code == 2


def test_a_key_that_is_not_an_admin_key_is_refused(vf: Invoker) -> None:
    key = vf("tokens", "create", "plain").stdout.strip()
    refused = vf("--api-key", key, "tokens", "list")
    assert refused.exit_code == 3 and "admin" in refused.stderr
    # QA AS: the hint said "use a key of the right organization"; the admin key is what
    assert "hint: organizations and tokens are managed with the server's admin key" in (
        refused.stderr
    )
    assert "right organization" not in refused.stderr


def test_the_admin_token_cannot_be_revoked(vf: Invoker) -> None:
    admin = [r for r in json.loads(vf("tokens", "list", "--json").stdout) if r["admin"]]
    assert admin, "the local server's admin token is listed"
    refused = vf("tokens", "revoke", admin[0]["name"])
    assert refused.exit_code == 5 and "admin" in refused.stderr
