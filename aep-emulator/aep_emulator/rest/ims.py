"""IMS OAuth Server-to-Server token endpoint: ``POST /ims/token/v3``
(https://developer.adobe.com/developer-console/docs/guides/authentication/ServerToServerAuthentication/ims)."""

from __future__ import annotations

import hmac
import logging
from urllib.parse import parse_qs

from starlette.responses import Response

from aep_emulator.rest import errors
from aep_emulator.rest.common import Auth, Body, Call, Endpoint, ok

log = logging.getLogger("aep_emulator.ims")


def _form(call: Call) -> dict[str, str]:
    """Form fields from the body (recommended) or the query string (also accepted by IMS)."""
    fields = {
        k: v[-1] for k, v in parse_qs(call.body.decode("utf-8", "replace"), keep_blank_values=True).items()
    }
    for key, value in call.query.items():
        fields.setdefault(key, value)
    return fields


def token(call: Call) -> Response:
    settings, form = call.state.settings, _form(call)
    if form.get("grant_type") != "client_credentials":
        raise errors.ims(
            400,
            "unsupported_grant_type",
            f"grant_type must be client_credentials, got {form.get('grant_type')!r}",
        )
    client_id = form.get("client_id", "")
    if not client_id:
        raise errors.ims(400, "invalid_request", "missing client_id parameter")
    if client_id != settings.client_id:
        raise errors.ims(400, "invalid_client", "invalid client_id parameter")
    if not hmac.compare_digest(form.get("client_secret", "").encode(), settings.client_secret.encode()):
        raise errors.ims(401, "invalid_client", "invalid client_secret parameter")
    scope = ",".join(s.strip() for s in form.get("scope", "").split(",") if s.strip())
    if not scope:
        # Guess: IMS rejects a client-credentials request without the credential's scopes.
        raise errors.ims(400, "invalid_scope", "missing scope parameter")
    if settings.ims_scopes:
        # Realistic mode: the credential has the scopes Developer Console lists for it, and IMS grants
        # no other (the doc: "to see the scopes available to your credential, visit your project").
        # Guess: the status and description of the refusal (OAuth 2's invalid_scope, RFC 6749 5.2).
        unknown = [s for s in scope.split(",") if s not in settings.ims_scopes]
        if unknown:
            log.info(
                "token request of %s refused: scope(s) %s not granted to the credential", client_id, unknown
            )
            raise errors.ims(
                400,
                "invalid_scope",
                f"invalid scope(s) {','.join(unknown)}: not granted to this "
                f"credential (its scopes: {','.join(settings.ims_scopes)})",
            )
    access_token, expires_in = call.state.tokens.issue(client_id, scope, call.state.knobs.token_lifetime)
    log.info(
        "issued access token #%d to %s (expires in %ss)", call.state.tokens.issued, client_id, expires_in
    )
    return ok({"access_token": access_token, "token_type": "bearer", "expires_in": expires_in})


ENDPOINTS = [
    Endpoint("POST", "/token/v3", "ims.token", token, auth=Auth.NONE, body=Body.BYTES, locked=False),
]
