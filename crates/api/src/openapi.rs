//! `GET /api/v1/openapi.json`: the API as OpenAPI 3.1, generated from one table so it lists
//! exactly the routes `router` serves (a test checks the two agree).

use axum::Json;
use serde_json::{json, Map, Value};

/// (method, path, summary, request body content type or "", success status).
pub const OPERATIONS: &[(&str, &str, &str, &str, u16)] = &[
    ("get", "/api/v1/health", "Liveness (no token needed)", "", 200),
    ("get", "/api/v1/apps", "List apps", "", 200),
    ("post", "/api/v1/apps", "Create an app: {\"name\"}", "application/json", 201),
    ("get", "/api/v1/apps/{app}", "An app", "", 200),
    ("delete", "/api/v1/apps/{app}", "Destroy an app: stop instances, remove releases, routes, env and named volumes (?keep_volumes=true keeps the volumes)", "", 204),
    ("get", "/api/v1/apps/{app}/deploys", "Deploys, newest first", "", 200),
    ("post", "/api/v1/apps/{app}/deploys", "Deploy a .tar.gz source bundle (streamed)", "application/gzip", 202),
    ("get", "/api/v1/apps/{app}/deploys/{id}", "A deploy", "", 200),
    ("get", "/api/v1/apps/{app}/deploys/{id}/log", "The deploy's log; ?follow=true streams it as SSE (log…, end)", "", 200),
    ("get", "/api/v1/apps/{app}/releases", "Releases, newest first", "", 200),
    ("post", "/api/v1/apps/{app}/rollback", "Roll back: {\"version\"} or {} for the previous good release", "application/json", 202),
    ("get", "/api/v1/apps/{app}/env", "Env vars as the processes get them (set ones over app.json defaults), masked unless ?reveal=true", "", 200),
    ("patch", "/api/v1/apps/{app}/env", "Set and unset env vars: {\"set\":{},\"unset\":[]}; a live app restarts", "application/json", 200),
    ("put", "/api/v1/apps/{app}/formation", "Scale: {\"web\":3}; instances are added or removed in place", "application/json", 200),
    ("post", "/api/v1/apps/{app}/restart", "Restart the app's instances (zero downtime)", "", 202),
    ("get", "/api/v1/apps/{app}/domains", "Custom domains", "", 200),
    ("post", "/api/v1/apps/{app}/domains", "Add a domain: {\"host\"}", "application/json", 201),
    ("delete", "/api/v1/apps/{app}/domains/{host}", "Remove a domain", "", 204),
    ("get", "/api/v1/apps/{app}/instances", "Instances and their state", "", 200),
    ("put", "/api/v1/apps/{app}/repo", "Connect a repository for push webhooks: {\"url\",\"branch\",\"secret\"}; the secret is shown once", "application/json", 200),
    ("get", "/api/v1/apps/{app}/repo", "The connected repository and webhook URLs (no secret)", "", 200),
    ("delete", "/api/v1/apps/{app}/repo", "Disconnect the repository", "", 204),
    ("get", "/api/v1/apps/{app}/logs", "Logs of all instances in time order: ?lines=N, ?since=, ?until= (RFC 3339 or 10m), ?type=, ?instance=, ?source=app|berth|router|all, ?follow=true (SSE)", "", 200),
    ("get", "/api/v1/apps/{app}/services", "The app's accessory services (compose): name, state, health", "", 200),
    ("get", "/api/v1/apps/{app}/volumes", "The app's named volumes (its services' data), which destroying the app deletes", "", 200),
    ("patch", "/api/v1/apps/{app}/settings", "Git settings: {\"deploy_branch\",\"cancel_running\",\"previews\",\"preview_max\",\"preview_env\"}", "application/json", 200),
    ("delete", "/api/v1/apps/{app}/branches/{branch}", "A pushed branch was deleted: its preview is destroyed (409 for the deploy branch)", "", 204),
    ("get", "/api/v1/builds", "Builds and deploys of all apps, newest first: ?app=NAME, ?active=true (queued and running), ?limit=N", "", 200),
    ("get", "/api/v1/builds/{id}", "A build: trigger, commit, steps, status", "", 200),
    ("get", "/api/v1/builds/{id}/log", "A build's log; ?follow=true streams it as SSE (log…, end)", "", 200),
    ("post", "/api/v1/builds/{id}/cancel", "Cancel a queued or running build (409 once it is live)", "", 200),
    ("get", "/api/v1/tokens", "API tokens (admin)", "", 200),
    ("post", "/api/v1/tokens", "Create a token: {\"name\",\"scope\":\"admin\"|\"deploy\",\"apps\":[]}; the secret is shown once", "application/json", 201),
    ("delete", "/api/v1/tokens/{id}", "Revoke a token", "", 204),
    ("get", "/api/v1/audit", "Audit log: who changed what, when (admin)", "", 200),
    ("get", "/api/v1/notifications", "Outgoing webhook targets, without secrets (admin; ?app=NAME: those that get the app's events)", "", 200),
    ("post", "/api/v1/notifications", "Add a webhook target for build/deploy events: {\"url\",\"app\"?}; the signing secret is shown once", "application/json", 201),
    ("delete", "/api/v1/notifications/{id}", "Remove a webhook target", "", 204),
    ("get", "/api/v1/routes", "The operator's routes (?all=true: the whole live table)", "", 200),
    ("put", "/api/v1/routes", "Replace the operator's routes", "application/json", 200),
    ("get", "/api/v1/certs", "Each routed host's certificate: source (file, acme, local), issuer, expiry, ACME status (admin)", "", 200),
    ("get", "/api/v1/nodes", "The Docker Swarm's nodes: role, state, availability, address, berth's tasks (admin)", "", 200),
    ("get", "/api/v1/openapi.json", "This document", "", 200),
    ("get", "/metrics", "Prometheus metrics (admin)", "", 200),
];

pub async fn document() -> Json<Value> {
    Json(build())
}

pub fn build() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, body, status) in OPERATIONS {
        let mut op = json!({
            "summary": summary,
            "responses": {
                status.to_string(): { "description": "success" },
                "default": {
                    "description": "error",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            }
        });
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op["parameters"] = params.into();
        }
        if !body.is_empty() {
            op["requestBody"] = json!({ "required": true, "content": { *body: {} } });
        }
        if *path != "/api/v1/health" {
            op["security"] = json!([{ "bearer": [] }]);
        }
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "berth control-plane API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "string" }, "hint": { "type": "string" } }
                }
            }
        }
    })
}
