"""security.OAuthService/IntrospectToken: how the client checks an access token before using it as Bearer."""
from __future__ import annotations

from kagglesdk.security.types.oauth_service import IntrospectTokenRequest, IntrospectTokenResponse

from packager.localkaggle.rpc import Call, rpc


@rpc("security.OAuthService", "IntrospectToken", IntrospectTokenRequest, auth=False)
def introspect_token(req: IntrospectTokenRequest, call: Call) -> IntrospectTokenResponse:
    """An unknown token is inactive (HTTP 200): the client then ignores it and tries its other credentials."""
    response = IntrospectTokenResponse()
    user = call.store.user_by_token(req.token)
    if user:
        response.active, response.username, response.user_id = True, user["username"], user.get("id")
        response.client_id, response.scope = "kpack-local", "resources.admin:*"
    return response
