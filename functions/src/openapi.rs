//! The OpenAPI 3.0 document of the API (`GET /api/openapi.json`), generated
//! from the code: [`ROUTES`] is the registry of every route that
//! [`crate::routes::router`] serves, with its auth, summary, parameters,
//! request body and main answers; request bodies are the JSON schemas of
//! the handlers' own request types (schemars), so the document cannot drift
//! from what the handlers parse. A test fails when the router has a route
//! that the registry lacks, or the other way round.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use schemars::Schema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::auth::{Need, QUEUE_TOKEN_HEADER, SESSION_COOKIE};
use crate::error::ApiResult;
use crate::routes;
use crate::{Ctx, SharedState};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials.
    Public,
    /// viewer, ops or admin (bearer token or session cookie).
    Viewer,
    /// `mode: plan` for viewers; the other modes need ops.
    ViewerPlanOps,
    Ops,
    Admin,
    /// A viewer, or the worker queue token.
    ViewerOrQueue,
    /// An ops token, or the worker queue token.
    OpsOrQueue,
}

impl Access {
    fn queue_token(self) -> bool {
        matches!(self, Access::ViewerOrQueue | Access::OpsOrQueue)
    }

    /// The role the route asks for, as `auth::Need`; `None` when public.
    pub fn need(self) -> Option<Need> {
        match self {
            Access::Public => None,
            Access::Viewer | Access::ViewerPlanOps => Some(Need::VIEWER),
            Access::Ops => Some(Need::OPS),
            Access::Admin => Some(Need::ADMIN),
            Access::ViewerOrQueue => Some(Need::VIEWER_OR_QUEUE),
            Access::OpsOrQueue => Some(Need::OPS_OR_QUEUE),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Access::Public => "No credentials needed.",
            Access::Viewer => "Role: viewer or above.",
            Access::ViewerPlanOps => "Role: viewer for `mode: plan`, ops for every other mode.",
            Access::Ops => "Role: ops or admin.",
            Access::Admin => "Role: admin.",
            Access::ViewerOrQueue => "Role: viewer or above, or the worker queue token.",
            Access::OpsOrQueue => "Role: ops or admin, or the worker queue token.",
        }
    }

    fn security(self) -> Value {
        match self {
            Access::Public => json!([]),
            a if a.queue_token() => {
                json!([{ "bearerAuth": [] }, { "sessionCookie": [] }, { "queueToken": [] }])
            }
            _ => json!([{ "bearerAuth": [] }, { "sessionCookie": [] }]),
        }
    }
}

/// A path or query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// "path" or "query".
    pub location: &'static str,
    pub required: bool,
    pub description: &'static str,
    pub schema: fn() -> Value,
}

/// A JSON request body: the schema of the handler's request type.
#[derive(Debug, Clone, Copy)]
pub struct Body {
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Whether an empty body is refused (it reads as `{}` otherwise).
    pub required: bool,
}

/// One route of the router.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Lower-case HTTP method.
    pub method: &'static str,
    /// The path as the router spells it (`{host_id}`).
    pub path: &'static str,
    pub operation_id: &'static str,
    pub tag: &'static str,
    pub access: Access,
    pub summary: &'static str,
    pub params: &'static [Param],
    pub body: Option<Body>,
    /// Main answers: status and what it means. 2xx answers are JSON objects
    /// with `ok: true` (text for `/metrics`); the others are [`error`]
    /// bodies (`ok: false`, `error`, `code`).
    pub responses: &'static [(u16, &'static str)],
}

const HOST_ID: Param = Param {
    name: "host_id",
    location: "path",
    required: true,
    description: "The host: 1-128 of A-Z a-z 0-9 - _ . : @, not starting with a dot.",
    schema: || {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "pattern": "^[A-Za-z0-9_:@-][A-Za-z0-9_.:@-]*$",
            "example": "fuzz-host",
        })
    },
};

const RUN_ID: Param = Param {
    name: "run_id",
    location: "path",
    required: true,
    description: "The run id, as the queue snapshot lists it (same characters as a host id).",
    schema: || {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "pattern": "^[A-Za-z0-9_:@-][A-Za-z0-9_.:@-]*$",
        })
    },
};

const AUTH_ERRORS: [(u16, &str); 2] = [
    (401, "No or wrong credentials"),
    (403, "Role too low, or a token limited to other hosts"),
];

macro_rules! body {
    ($t:ty, $required:expr) => {
        Some(Body {
            schema: |g| g.subschema_for::<$t>(),
            required: $required,
        })
    };
}

/// Every route of [`crate::routes::router`].
pub static ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/healthz",
        operation_id: "healthz",
        tag: "service",
        access: Access::Public,
        summary: "Liveness: answers while the process serves",
        params: &[],
        body: None,
        responses: &[(200, "Alive")],
    },
    Route {
        method: "get",
        path: "/metrics",
        operation_id: "metrics",
        tag: "service",
        access: Access::Viewer,
        summary: "Prometheus metrics: runs by host and state, enqueues",
        params: &[],
        body: None,
        responses: &[
            (200, "Prometheus text format"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "get",
        path: "/api/openapi.json",
        operation_id: "openapi",
        tag: "service",
        access: Access::Viewer,
        summary: "This document",
        params: &[],
        body: None,
        responses: &[
            (200, "The OpenAPI document"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "post",
        path: "/api/remediate",
        operation_id: "remediate",
        tag: "remediate",
        access: Access::ViewerPlanOps,
        summary: "Plan, dry-run, execute (queue a run) or drain-queue, as the original system",
        params: &[],
        body: body!(routes::remediate::Remediate, false),
        responses: &[
            (
                200,
                "The plan, the dry-run's rendered commands, the queued run, or the drained runs",
            ),
            (
                400,
                "Bad input: hostId or actionId missing, bad params, confirm phrase mismatch (`expected`), guard block (`profile`, `issues`)",
            ),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
            (404, "Host or action unknown"),
            (
                409,
                "A run of this action is active (`runningRunId`), no fresh dry-run, host disabled",
            ),
            (
                429,
                "Hourly limit, cooldown, host or global backlog (`retryAfterSeconds`)",
            ),
        ],
    },
    Route {
        method: "get",
        path: "/api/hosts/{host_id}",
        operation_id: "getHost",
        tag: "hosts",
        access: Access::Viewer,
        summary: "A host's stored policy document and effective policy, with the layer of each value",
        params: &[HOST_ID],
        body: None,
        responses: &[
            (200, "Raw and effective policy"),
            (400, "Bad host id"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "put",
        path: "/api/hosts/{host_id}",
        operation_id: "putHost",
        tag: "hosts",
        access: Access::Admin,
        summary: "Register a host or replace its policy document (profile, overrides, guard overrides, enabled)",
        params: &[HOST_ID],
        body: Some(Body {
            schema: host_policy_doc,
            required: false,
        }),
        responses: &[
            (200, "Stored; raw and effective policy"),
            (400, "Every invalid field, in `issues`"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "post",
        path: "/api/hosts/{host_id}/signals",
        operation_id: "hostSignals",
        tag: "hosts",
        access: Access::Ops,
        summary: "A host reports signal codes; the autonomous planner queues what its gates allow and names each skip reason",
        params: &[HOST_ID],
        body: body!(routes::signals::SignalReport, true),
        responses: &[
            (
                200,
                "One result per signal: the queued run, or the skip reason (`skip.code`)",
            ),
            (400, "Bad input"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
            (404, "Host not registered"),
            (409, "Host disabled, or its stored policy is invalid"),
        ],
    },
    Route {
        method: "post",
        path: "/api/auth/login",
        operation_id: "login",
        tag: "auth",
        access: Access::Public,
        summary: "Exchange an admin API token for the session cookie",
        params: &[],
        body: body!(routes::session::Login, true),
        responses: &[
            (200, "Logged in; Set-Cookie"),
            (400, "Bad input"),
            (401, "Unknown token"),
            (403, "Not an admin token"),
        ],
    },
    Route {
        method: "post",
        path: "/api/auth/logout",
        operation_id: "logout",
        tag: "auth",
        access: Access::Public,
        summary: "End the session (clears the cookie)",
        params: &[],
        body: None,
        responses: &[(200, "Logged out")],
    },
    Route {
        method: "get",
        path: "/api/ops/remediate-queue",
        operation_id: "queueSnapshot",
        tag: "queue",
        access: Access::ViewerOrQueue,
        summary: "Queue snapshot: counts and the oldest items",
        params: &[
            Param {
                name: "limit",
                location: "query",
                required: false,
                description: "Items to list, clamped to 1..=100 (default 25)",
                schema: || json!({ "type": "integer" }),
            },
            Param {
                name: "dlq",
                location: "query",
                required: false,
                description: "`1` (or true/yes/on) lists the DLQ only",
                schema: || json!({ "type": "string" }),
            },
        ],
        body: None,
        responses: &[
            (200, "`{ok, authMode, snapshot}`"),
            (400, "A query value is not an integer"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "post",
        path: "/api/ops/remediate-queue",
        operation_id: "queueDecide",
        tag: "queue",
        access: Access::Ops,
        summary: "Approve or reject a run that waits for approval",
        params: &[],
        body: body!(routes::queue::Decide, true),
        responses: &[
            (200, "`{ok, result: {ok, runId, state, approvalStatus}}`"),
            (400, "Bad input: unknown mode, reason over 280 characters"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
            (404, "Unknown run"),
            (409, "The run is not pending"),
        ],
    },
    Route {
        method: "get",
        path: "/api/ops/runs/{run_id}",
        operation_id: "getRun",
        tag: "queue",
        access: Access::Viewer,
        summary: "One run with its attempt history, captured command output, canary and rollback",
        params: &[RUN_ID],
        body: None,
        responses: &[
            (200, "`{ok, run}`"),
            (400, "Not a run id"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
            (404, "Unknown run"),
        ],
    },
    Route {
        method: "post",
        path: "/api/ops/remediate-replay",
        operation_id: "replay",
        tag: "queue",
        access: Access::OpsOrQueue,
        summary: "Replay one run (`single`) or the oldest DLQ runs (`dlq-batch`) with a fresh attempt budget",
        params: &[],
        body: body!(routes::replay::Replay, false),
        responses: &[
            (200, "`{ok, mode, replayed}` or `{ok, mode, summary}`"),
            (400, "Bad input"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
            (404, "Unknown run"),
            (409, "The run is queued or running"),
        ],
    },
    Route {
        method: "post",
        path: "/api/ops/remediate-drain",
        operation_id: "drain",
        tag: "queue",
        access: Access::OpsOrQueue,
        summary: "Ask the executors to take up to `limit` due runs now and wait, bounded, for their outcomes",
        params: &[],
        body: body!(routes::drain::Drain, false),
        responses: &[
            (200, "`{ok, authMode, drained}`"),
            (400, "Bad input"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "post",
        path: "/api/ops/remediate-hygiene",
        operation_id: "hygiene",
        tag: "queue",
        access: Access::Ops,
        summary: "Drain, replay the DLQ, drain again; counts before and after",
        params: &[],
        body: body!(routes::hygiene::Hygiene, false),
        responses: &[
            (200, "Before and after counts"),
            (400, "Bad input"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
    Route {
        method: "get",
        path: "/api/ops/incident-workflow",
        operation_id: "listWorkflows",
        tag: "incident",
        access: Access::Ops,
        summary: "The incident workflows and their steps",
        params: &[],
        body: None,
        responses: &[(200, "Workflows"), AUTH_ERRORS[0], AUTH_ERRORS[1]],
    },
    Route {
        method: "post",
        path: "/api/ops/incident-workflow",
        operation_id: "runWorkflowStep",
        tag: "incident",
        access: Access::Ops,
        summary: "Run one step of an incident workflow",
        params: &[],
        body: body!(routes::workflow::RunStep, true),
        responses: &[
            (200, "The step's result"),
            (400, "Bad input"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
            (404, "Unknown workflow or step"),
        ],
    },
    Route {
        method: "post",
        path: "/api/notify/test",
        operation_id: "notifyTest",
        tag: "incident",
        access: Access::Ops,
        summary: "Send a test notification; reports the delivery attempts",
        params: &[],
        body: body!(routes::notify::NotifyTest, false),
        responses: &[
            (200, "Delivery attempts"),
            (400, "Bad input"),
            AUTH_ERRORS[0],
            AUTH_ERRORS[1],
        ],
    },
];

/// Enumerations the handlers check by hand, added to their request schemas
/// so clients (and the fuzzer) see the allowed words: (schema, field, words).
fn enum_fields() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let wf = routes::workflow::workflows();
    let steps = wf
        .iter()
        .flat_map(|w| w.steps.iter().map(|s| s.id))
        .collect();
    vec![
        (
            "Remediate",
            "mode",
            vec!["plan", "dry-run", "execute", "drain-queue"],
        ),
        ("Decide", "mode", vec!["approve", "reject"]),
        ("Replay", "mode", vec!["single", "dlq-batch"]),
        ("NotifyTest", "target", vec!["webhook"]),
        ("RunStep", "workflowId", wf.iter().map(|w| w.id).collect()),
        ("RunStep", "stepId", steps),
    ]
}

/// The body of `PUT /api/hosts/{hostId}`, from the knob table: every policy
/// and guard knob a host may override, with its type and range.
fn host_policy_doc(_: &mut SchemaGenerator) -> Schema {
    use remediate_config::knobs::{Group, KNOBS, Kind};
    let mut policy = Map::new();
    let mut guard = Map::new();
    for k in KNOBS {
        let mut s = match k.kind {
            Kind::Int { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Choice(words) => json!({ "type": "string", "enum": words }),
            Kind::Regex => json!({ "type": "string", "maxLength": 1000 }),
            _ => json!({ "type": "string" }),
        };
        if let Value::Object(m) = &mut s {
            m.insert("description".into(), json!(k.doc));
            m.insert("nullable".into(), json!(true));
        }
        match k.group {
            Group::Policy => policy.insert(k.camel.into(), s),
            Group::Guard => guard.insert(k.camel.into(), s),
            _ => None,
        };
    }
    let v = json!({
        "type": "object",
        "description": "A host's remediation policy; missing fields take their defaults, `null` removes an override.",
        "additionalProperties": false,
        "properties": {
            "remediationPolicyProfile": {
                "type": "string",
                "enum": ["strict", "balanced", "rapid"],
                "nullable": true,
            },
            "remediationPolicyOverrides": {
                "type": "object",
                "additionalProperties": false,
                "properties": policy,
                "nullable": true,
            },
            "remediationGuardOverrides": {
                "type": "object",
                "additionalProperties": false,
                "properties": guard,
                "nullable": true,
            },
            "enabled": { "type": "boolean" },
        },
    });
    Schema::try_from(v).unwrap_or_default()
}

/// The router's `{host_id}` as OpenAPI's `{hostId}`.
pub fn openapi_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            '_' if inside => {
                upper = true;
                continue;
            }
            _ => {}
        }
        if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn response(status: u16, description: &str, route: &Route) -> Value {
    let content = if status >= 300 {
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } })
    } else if route.path == "/metrics" {
        json!({ "text/plain": { "schema": { "type": "string" } } })
    } else {
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Ok" } } })
    };
    json!({ "description": description, "content": content })
}

/// Builds the document.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = Vec::new();
        for p in r.params {
            let name = if p.location == "path" {
                openapi_path(&format!("{{{}}}", p.name))
                    .trim_matches(|c| c == '{' || c == '}')
                    .to_string()
            } else {
                p.name.to_string()
            };
            params.push(json!({
                "name": name,
                "in": p.location,
                "required": p.required,
                "description": p.description,
                "schema": (p.schema)(),
            }));
        }
        let mut responses = Map::new();
        for (status, desc) in r.responses {
            responses.insert(status.to_string(), response(*status, desc, r));
        }
        let mut op = json!({
            "operationId": r.operation_id,
            "tags": [r.tag],
            "summary": r.summary,
            "description": r.access.describe(),
            "security": r.access.security(),
            "responses": responses,
        });
        if let Value::Object(m) = &mut op {
            if !params.is_empty() {
                m.insert("parameters".into(), Value::Array(params));
            }
            if let Some(b) = r.body {
                let schema = (b.schema)(&mut g);
                m.insert(
                    "requestBody".into(),
                    json!({
                        "required": b.required,
                        "content": { "application/json": { "schema": schema } },
                    }),
                );
            }
        }
        let entry = paths
            .entry(openapi_path(r.path))
            .or_insert_with(|| json!({}));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_string(), op);
        }
    }
    let mut schemas = g.take_definitions(true);
    for (schema, field, words) in enum_fields() {
        if let Some(Value::Object(prop)) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
        {
            prop.insert("enum".into(), json!(words));
        }
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["ok", "error", "code"],
            "properties": {
                "ok": { "type": "boolean", "enum": [false] },
                "error": { "type": "string", "description": "What went wrong, for people" },
                "code": { "type": "string", "description": "Stable machine code" },
            },
            "additionalProperties": true,
        }),
    );
    schemas.insert(
        "Ok".into(),
        json!({
            "type": "object",
            "required": ["ok"],
            "properties": { "ok": { "type": "boolean" } },
            "additionalProperties": true,
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "vps-remediate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Remediation runner: operators and the autonomous planner queue guarded remediation actions for hosts; an executor on each host runs them. Paths, bodies and field names keep the original system's.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "description": "An API token (viewer, ops or admin)" },
                "sessionCookie": { "type": "apiKey", "in": "cookie", "name": SESSION_COOKIE, "description": "The admin session from POST /api/auth/login" },
                "queueToken": { "type": "apiKey", "in": "header", "name": QUEUE_TOKEN_HEADER, "description": "The worker queue token (drain, snapshot, replay only)" },
            },
        },
    })
}

/// `GET /api/openapi.json` (viewer).
pub async fn serve(State(st): State<SharedState>, ctx: Ctx) -> ApiResult<Json<Value>> {
    ctx.auth(&st, Need::VIEWER)?;
    static DOC: OnceLock<Value> = OnceLock::new();
    Ok(Json(DOC.get_or_init(document).clone()))
}
