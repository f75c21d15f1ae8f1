//! The operator console at `/admin`: server-rendered pages, one stylesheet
//! and one small script, all embedded in the binary, served by the same
//! router as the API (so it works locally and under Lambda). The pages need
//! the session (or any credential the API accepts); without it they redirect
//! to the login page. The script only calls the JSON API, so every action
//! goes through the API's own auth and CSRF checks.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::auth::{Need, Principal};
use crate::routes::queue::run_for;
use crate::{Ctx, SharedState};

const LOGIN_HTML: &str = include_str!("login.html");
const QUEUE_HTML: &str = include_str!("queue.html");
const RUN_HTML: &str = include_str!("run.html");
const HOST_HTML: &str = include_str!("host.html");
const ERROR_HTML: &str = include_str!("error.html");
const CONSOLE_CSS: &str = include_str!("console.css");
const CONSOLE_JS: &str = include_str!("console.js");

/// Scripts and styles come from this origin only, never inline: a value
/// that slipped through escaping still cannot run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// The console's pages and assets.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/admin", get(queue_page))
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route("/admin/login", get(login_page))
        .route("/admin/runs/{run_id}", get(run_page))
        .route("/admin/hosts/{host_id}", get(host_page))
        .route("/admin/assets/console.css", get(css))
        .route("/admin/assets/console.js", get(js))
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The signed-in principal; `None` means: redirect to the login page.
fn signed_in(st: &SharedState, ctx: &Ctx) -> Option<Principal> {
    ctx.auth(st, Need::VIEWER).ok()
}

fn to_login() -> Response {
    Redirect::to("/admin/login").into_response()
}

/// Fills the page frame's placeholders: who is signed in (name and role,
/// never a credential).
fn page(template: &str, who: &Principal) -> String {
    template
        .replace("{{user}}", &esc(&who.name))
        .replace("{{role}}", &esc(&format!("{:?}", who.role).to_lowercase()))
}

async fn login_page(State(st): State<SharedState>, ctx: Ctx) -> Response {
    if signed_in(&st, &ctx).is_some() {
        return Redirect::to("/admin").into_response();
    }
    html(StatusCode::OK, LOGIN_HTML.to_string())
}

async fn queue_page(State(st): State<SharedState>, ctx: Ctx) -> Response {
    match signed_in(&st, &ctx) {
        Some(who) => html(StatusCode::OK, page(QUEUE_HTML, &who)),
        None => to_login(),
    }
}

async fn run_page(State(st): State<SharedState>, ctx: Ctx, Path(run_id): Path<String>) -> Response {
    let Some(who) = signed_in(&st, &ctx) else {
        return to_login();
    };
    match run_for(&st, &who, &run_id).await {
        Ok(rec) => {
            let body = page(RUN_HTML, &who)
                .replace("{{run_id}}", &esc(rec.run_id.as_str()))
                .replace("{{host_id}}", &esc(rec.host_id.as_str()))
                .replace("{{action}}", &esc(&rec.action_key));
            html(StatusCode::OK, body)
        }
        Err(e) => {
            let body = page(ERROR_HTML, &who)
                .replace("{{title}}", "Cannot show this run")
                .replace("{{status}}", e.status.as_str())
                .replace("{{message}}", &esc(&e.message));
            html(e.status, body)
        }
    }
}

async fn host_page(
    State(st): State<SharedState>,
    ctx: Ctx,
    Path(host_id): Path<String>,
) -> Response {
    let Some(who) = signed_in(&st, &ctx) else {
        return to_login();
    };
    let problem = match remediate_spool::HostId::parse(&host_id) {
        Err(e) => Some((StatusCode::BAD_REQUEST, e.to_string())),
        Ok(h) if !who.may_touch(h.as_str()) => Some((
            StatusCode::FORBIDDEN,
            format!("token {:?} may not act on host {h}", who.name),
        )),
        Ok(_) => None,
    };
    match problem {
        None => html(
            StatusCode::OK,
            page(HOST_HTML, &who).replace("{{host_id}}", &esc(&host_id)),
        ),
        Some((status, message)) => {
            let body = page(ERROR_HTML, &who)
                .replace("{{title}}", "Cannot show this host")
                .replace("{{status}}", status.as_str())
                .replace("{{message}}", &esc(&message));
            html(status, body)
        }
    }
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn pages_load_only_their_own_assets() {
        for p in [LOGIN_HTML, QUEUE_HTML, RUN_HTML, HOST_HTML, ERROR_HTML] {
            assert!(!p.contains("<script>"), "no inline script");
            assert!(!p.contains(" style=\""), "no inline style");
            assert!(p.contains("/admin/assets/console.js"));
        }
    }
}
