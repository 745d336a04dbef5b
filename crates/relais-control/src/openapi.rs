//! The OpenAPI 3.1 document served at `/api/openapi.json`, built from one table of routes.
//! A test walks this table against the router, so a documented route that does not exist fails.

use serde_json::{Map, Value, json};

use crate::error::CODES;

/// (method, path, summary, right needed)
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "post",
        "/api/v1/auth/login",
        "Sign in with e-mail, password and (when enabled) a TOTP code; returns a session token and sets the session cookie",
        "none",
    ),
    (
        "post",
        "/api/v1/auth/logout",
        "End the current session",
        "session",
    ),
    (
        "get",
        "/api/v1/auth/me",
        "The caller: user and memberships, or token",
        "any",
    ),
    (
        "get",
        "/api/v1/auth/sessions",
        "The caller's sessions",
        "session",
    ),
    (
        "delete",
        "/api/v1/auth/sessions/{id}",
        "Revoke one of the caller's sessions",
        "session",
    ),
    (
        "post",
        "/api/v1/auth/totp/setup",
        "Start TOTP enrolment: returns the secret and an otpauth:// URL",
        "session",
    ),
    (
        "post",
        "/api/v1/auth/totp/confirm",
        "Finish TOTP enrolment with a current code",
        "session",
    ),
    (
        "get",
        "/api/v1/orgs",
        "Organisations the caller can read",
        "read",
    ),
    (
        "post",
        "/api/v1/orgs",
        "Create an organisation (top level: platform staff; below another: its admin)",
        "admin",
    ),
    ("get", "/api/v1/orgs/{id}", "One organisation", "read"),
    (
        "get",
        "/api/v1/orgs/{id}/members",
        "Members and their roles",
        "admin",
    ),
    (
        "put",
        "/api/v1/orgs/{id}/members",
        "Give a person a role (creates the account if needed)",
        "admin",
    ),
    (
        "delete",
        "/api/v1/orgs/{id}/members/{user}",
        "Remove a person's role",
        "admin",
    ),
    (
        "get",
        "/api/v1/orgs/{id}/tokens",
        "API tokens (never their secret)",
        "admin",
    ),
    (
        "post",
        "/api/v1/orgs/{id}/tokens",
        "Create an API token (scope read, purge or config; optional expiry); the secret is shown once",
        "admin",
    ),
    (
        "delete",
        "/api/v1/orgs/{id}/tokens/{token}",
        "Revoke an API token",
        "admin",
    ),
    (
        "get",
        "/api/v1/orgs/{id}/sites",
        "Sites of an organisation (paginated: after, limit)",
        "read",
    ),
    (
        "post",
        "/api/v1/orgs/{id}/sites",
        "Create a site from a document (same shape as [[site]] in relais.toml); it starts as a draft",
        "config",
    ),
    (
        "get",
        "/api/v1/orgs/{id}/audit",
        "Audit journal of the organisation and those below it (format json, jsonl or csv)",
        "admin",
    ),
    (
        "get",
        "/api/v1/sites/{id}",
        "A site: draft, published version, staging host",
        "read",
    ),
    (
        "delete",
        "/api/v1/sites/{id}",
        "Delete a site (edges stop serving it)",
        "config",
    ),
    (
        "put",
        "/api/v1/sites/{id}/draft",
        "Replace the draft (validated; served at once on the staging host)",
        "config",
    ),
    (
        "put",
        "/api/v1/sites/{id}/certificate",
        "Set the site's certificate and key (PEM) in the draft",
        "config",
    ),
    (
        "post",
        "/api/v1/sites/{id}/publish",
        "Publish the draft as a new version",
        "config",
    ),
    (
        "post",
        "/api/v1/sites/{id}/rollback",
        "Publish an earlier version again",
        "config",
    ),
    (
        "get",
        "/api/v1/sites/{id}/versions",
        "Published versions with author and time",
        "read",
    ),
    (
        "get",
        "/api/v1/sites/{id}/versions/{version}",
        "One version (a number, published or draft) as JSON and TOML",
        "read",
    ),
    (
        "get",
        "/api/v1/sites/{id}/diff",
        "Line diff between two versions (from, to: number, published or draft)",
        "read",
    ),
    (
        "put",
        "/api/v1/sites/{id}/mode",
        "Switch the mode now (active, bypass, maintenance, disabled)",
        "config",
    ),
    (
        "put",
        "/api/v1/sites/{id}/schedules",
        "Replace the scheduled mode changes",
        "config",
    ),
    (
        "get",
        "/api/v1/sites/{id}/explain",
        "Which rule applies to a URL (and content type), and why",
        "read",
    ),
    (
        "get",
        "/api/v1/sites/{id}/purges",
        "Recent purges of a site with their receipts",
        "read",
    ),
    (
        "post",
        "/api/v1/sites/{id}/purges",
        "Purge by url (batch), prefix, tag or all; soft or hard; returns the receipt (wait_ms to wait for every edge)",
        "purge",
    ),
    (
        "get",
        "/api/v1/sites/{id}/definition",
        "Service definition document (format md or html)",
        "read",
    ),
    (
        "get",
        "/api/v1/purges/{id}",
        "A purge receipt: per-edge completion and latency",
        "read",
    ),
    (
        "get",
        "/api/v1/audit",
        "The whole journal (platform staff)",
        "staff",
    ),
    (
        "get",
        "/api/v1/audit/verify",
        "Recompute the journal's hash chain",
        "staff",
    ),
    (
        "get",
        "/api/v1/sites/{id}/logs",
        "The site's stored access-log days with their manifests",
        "read",
    ),
    (
        "get",
        "/api/v1/sites/{id}/logs/{date}",
        "Download one day of access logs (gzip)",
        "read",
    ),
    (
        "get",
        "/api/v1/sites/{id}/stats",
        "Traffic statistics of a site: totals and points (?from=YYYY-MM-DD&to=…&step=minute|hour|day)",
        "read",
    ),
    (
        "get",
        "/api/v1/sites/{id}/stats/export",
        "The same statistics as a spreadsheet (?format=csv|xlsx|ods&lang=fr|en)",
        "read",
    ),
    (
        "get",
        "/api/v1/orgs/{id}/stats",
        "Traffic statistics of an organisation and its sub-organisations, with totals per site",
        "read",
    ),
    (
        "get",
        "/api/v1/orgs/{id}/stats/export",
        "Totals per site as a spreadsheet (?format=csv|xlsx|ods&lang=fr|en)",
        "read",
    ),
    (
        "get",
        "/api/v1/orgs/{id}/usage",
        "Bandwidth and storage per site for a month (?month=YYYY-MM), for billing",
        "read",
    ),
    (
        "put",
        "/api/v1/orgs/{id}/settings",
        "Log retention, log and report recipients, report metrics, language",
        "admin",
    ),
    ("get", "/api/v1/edges", "Edges and their progress", "staff"),
    (
        "post",
        "/api/v1/edges",
        "Register an edge; its token is shown once",
        "platform admin",
    ),
];

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, right) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let op = json!({
            "summary": summary,
            "description": format!("Right needed: {right}."),
            "parameters": params,
            "security": if *right == "none" { json!([]) } else { json!([{"bearer": []}, {"cookie": []}]) },
            "responses": {
                "2XX": {"description": "Success", "content": {"application/json": {}}},
                "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = entry.as_object_mut() {
            m.insert(method.to_string(), op);
        }
    }
    let codes: Vec<Value> = CODES
        .iter()
        .map(|(c, s, d)| json!({"code": c, "status": s, "description": d}))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Relais API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Control plane of Relais. Authenticate with a session (POST /api/v1/auth/login) or an API token: `Authorization: Bearer …`. Objects of organisations you cannot read answer 404.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "relais_session"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": CODES.iter().map(|c| c.0).collect::<Vec<_>>()},
                        "message": {"type": "string"},
                        "field": {"type": "string"},
                        "retry_after": {"type": "integer"},
                    },
                },
            },
            "x-error-codes": codes,
        },
    })
}
