//! The invitation landing page (XEP-0401 §5.2, XEP-0379 §3.3) at `/invite/<token>` on the
//! http listeners: a plain page showing the xmpp: link, its QR code and clients to install.
//! Unknown, used-up and expired tokens get a 404 page. Everything shown is HTML-escaped.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::context::Context;

pub fn routes(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/invite/{token}", get(landing))
        .with_state(ctx)
}

/// Clients that handle invitation links, by platform.
const CLIENTS: &[(&str, &str, &str)] = &[
    ("Android", "Conversations", "https://conversations.im/"),
    ("iOS and macOS", "Monal", "https://monal-im.org/"),
    ("Windows and Linux", "Gajim", "https://gajim.org/"),
    ("Linux", "Dino", "https://dino.im/"),
];

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
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

/// The QR code of `data` as an inline SVG (the qrcode crate's renderer).
fn qr_svg(data: &str) -> Option<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .quiet_zone(true)
            .build(),
    )
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>{}</title><style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;\
         padding:0 1em;line-height:1.5}}a.button{{display:inline-block;padding:.6em 1.2em;\
         background:#2a6;color:#fff;border-radius:.3em;text-decoration:none}}\
         code{{word-break:break-all}}</style></head><body>{body}</body></html>\n",
        escape(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The token is a secret: not cached, not sent on as a referrer, no scripts at all.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Invitation not found",
        "<h1>Invitation not found</h1><p>This invitation is unknown, has expired or has \
         already been used. Ask the person who invited you for a new one.</p>",
    )
}

async fn landing(State(ctx): State<Arc<Context>>, Path(token): Path<String>) -> Response {
    if !ctx.config.invites.enabled {
        return not_found();
    }
    let Some(invite) = crate::admin::invites::valid(&ctx.storage, &token).await else {
        return not_found();
    };
    let uri = crate::admin::invites::invite_uri(&invite);
    let heading = match &invite.inviter {
        Some(inviter) => format!("{} invites you to chat on XMPP", escape(inviter.as_str())),
        None => format!("You are invited to {}", escape(&invite.domain)),
    };
    let mut body = format!("<h1>{heading}</h1>");
    body.push_str(
        "<p>XMPP is an open chat network: pick an app below, install it, then open this \
         invitation with it.</p>",
    );
    body.push_str(&format!(
        "<p><a class=\"button\" href=\"{}\">Open the invitation in your app</a></p>",
        escape(&uri)
    ));
    if let Some(svg) = qr_svg(&uri) {
        // The renderer's own output: only numbers and fixed markup, no input text.
        body.push_str("<p>Or scan this code with the app:</p><div>");
        body.push_str(&svg);
        body.push_str("</div>");
    }
    body.push_str(&format!(
        "<p>The invitation link: <code>{}</code></p>",
        escape(&uri)
    ));
    body.push_str("<h2>Apps</h2><ul>");
    for (platform, name, url) in CLIENTS {
        body.push_str(&format!(
            "<li>{}: <a href=\"{}\" rel=\"noopener noreferrer\">{}</a></li>",
            escape(platform),
            escape(url),
            escape(name)
        ));
    }
    body.push_str("</ul>");
    body.push_str(&format!(
        "<p>The invitation is valid until {} (UTC).</p>",
        escape(&crate::modules::time::stamp_from_unix(invite.expires))
    ));
    page(StatusCode::OK, "XMPP invitation", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn renders_a_qr_code() {
        let svg = qr_svg("xmpp:example.org?register;preauth=abc").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
    }
}
