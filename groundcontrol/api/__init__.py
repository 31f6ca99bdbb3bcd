"""The JSON API under /api/v1: one module per resource (groups, satellites, tokens,
credentials, agent: what satellites call), their shared vocabulary (base) and one
table of endpoints (table), each with the credential it needs.

``ENDPOINTS`` is the single source for routing, for the authentication check done before
any handler runs, and for the OpenAPI document; the test matrix walks it to prove that no
route answers without the right credential. Kinds of access:

- ``public``: health and the OpenAPI document;
- ``join``: registration, authenticated by the one-time join token in the body;
- ``operator``: an operator API token;
- ``satellite``: the satellite named in the path, or an operator;
- ``self``: only the satellite named in the path (its own check-ins and credentials);
- ``any``: any valid credential (the public trust-root chain);
- ``dashboard``: the dashboard's HTML, for an operator's browser session (or an operator
  token on GET);
- ``login``: the dashboard's login form.

Every state-changing request with a body must say ``Content-Type: application/json``
(:func:`require_json_body`): a browser form can only send ``text/plain``,
``application/x-www-form-urlencoded`` or ``multipart/form-data`` across sites.
"""
