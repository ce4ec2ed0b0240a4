//! The connect page's HTML: no script, no external asset, every dynamic text escaped. The one
//! inline style is allowed by its hash in the Content-Security-Policy (`http`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::fields::{
    Field, FieldSource, InputKind, connect_method, connects_by_authorization, credential_help,
    crm_name, fields,
};
use super::flow::Connected;
use super::session::ConnectSession;
use crate::connection::ConnectionSettings;
use crate::domain::CrmType;

pub const STYLE: &str = "\
:root{color-scheme:light;--ink:#1d2433;--muted:#5b6478;--line:#d9dde6;--accent:#2456d3;--bad:#b3261e;--good:#1e7a3c}\
*{box-sizing:border-box}\
body{margin:0;background:#f4f6fa;color:var(--ink);font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}\
main{max-width:34rem;margin:3rem auto;padding:2rem 2.25rem;background:#fff;border:1px solid var(--line);border-radius:12px}\
h1{font-size:1.5rem;margin:0 0 .5rem}\
p{margin:.5rem 0 1rem}\
.muted,.help{color:var(--muted)}\
.help{font-size:.875rem;margin:.25rem 0 0}\
ul.crms{list-style:none;padding:0;margin:1.25rem 0;display:grid;gap:.5rem}\
ul.crms a{display:flex;justify-content:space-between;align-items:center;padding:.8rem 1rem;border:1px solid var(--line);border-radius:8px;color:var(--ink);text-decoration:none;font-weight:600}\
ul.crms a:hover,ul.crms a:focus{border-color:var(--accent);outline:none}\
ul.crms span{font-weight:400;color:var(--muted);font-size:.875rem}\
label{display:block;font-weight:600;margin:1rem 0 0}\
input,select{display:block;width:100%;margin-top:.35rem;padding:.55rem .7rem;border:1px solid var(--line);border-radius:6px;font:inherit}\
input[type=checkbox]{display:inline;width:auto;margin:0 .5rem 0 0}\
details{margin:1.25rem 0 0}\
summary{cursor:pointer;color:var(--accent)}\
button{margin-top:1.5rem;width:100%;padding:.75rem;border:0;border-radius:8px;background:var(--accent);color:#fff;font:inherit;font-weight:600;cursor:pointer}\
.note{background:#f4f6fa;border-radius:8px;padding:.75rem 1rem;font-size:.9rem}\
.good{color:var(--good)}.bad{color:var(--bad)}\
a.back{display:inline-block;margin-top:1rem;color:var(--accent)}\
code{background:#f4f6fa;padding:0 .25rem;border-radius:4px}";

/// `'sha256-…'`, the CSP source that allows `STYLE` and nothing else inline.
pub fn style_source() -> String {
    format!(
        "'sha256-{}'",
        STANDARD.encode(Sha256::digest(STYLE.as_bytes()))
    )
}

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"referrer\" content=\"same-origin\">\
         <title>{} · crm-sync</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        escape(title)
    )
}

fn expiry_note(session: &ConnectSession) -> String {
    format!(
        "<p class=\"help\">This link works once, until {} UTC.</p>",
        session.expires_at.format("%Y-%m-%d %H:%M")
    )
}

/// The list of CRMs to choose from.
pub fn choose_crm(session: &ConnectSession) -> String {
    let mut items = String::new();
    for crm in CrmType::ALL {
        let how = connect_method(crm);
        items.push_str(&format!(
            "<li><a href=\"?crm={}\">{}<span>{how}</span></a></li>",
            crm.as_str(),
            escape(crm_name(crm))
        ));
    }
    let body = format!(
        "<h1>Connect your CRM</h1>\
         <p>Bookings and leads from your assistant will be sent to the CRM you connect here, as the connection <code>{}</code>.</p>\
         <ul class=\"crms\">{items}</ul>{}",
        escape(session.connection_id.as_str()),
        expiry_note(session)
    );
    layout("Connect your CRM", &body)
}

/// The form for `crm`: typed credentials posted to the callback, or the settings and a
/// "Connect with …" button posted to the page, which sends the browser to the CRM.
pub fn crm_form(
    session: &ConnectSession,
    crm: CrmType,
    page_url: &str,
    callback_url: &str,
    oauth_app_ready: bool,
) -> String {
    let name = crm_name(crm);
    let by_authorization = connects_by_authorization(crm);
    let fixed = fixed_names(&session.settings);
    let mut basic = String::new();
    let mut advanced = String::new();
    let mut preset = Vec::new();
    for field in fields(crm) {
        match &field.source {
            FieldSource::Asked(input)
                if field.credential || !fixed.contains(&field.name.to_string()) =>
            {
                let html = input_html(&field, input);
                if input.advanced {
                    advanced.push_str(&html);
                } else {
                    basic.push_str(&html);
                }
            }
            FieldSource::Asked(input) => preset.push(input.label),
            FieldSource::LinkCreator if fixed.contains(&field.name.to_string()) => {
                preset.push(link_creator_label(field.name))
            }
            _ => {}
        }
    }
    if !advanced.is_empty() {
        advanced = format!("<details><summary>More settings</summary>{advanced}</details>");
    }
    let preset = if preset.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"note\">Already set for you: {}.</p>",
            escape(&preset.join(", "))
        )
    };
    let (action, button) = if by_authorization {
        (page_url, format!("Connect with {name}"))
    } else {
        (callback_url, format!("Connect {name}"))
    };
    let unavailable = if by_authorization && !oauth_app_ready {
        format!(
            "<p class=\"note bad\">{} connections are not set up on this service yet. Tell whoever sent you this link.</p>",
            escape(name)
        )
    } else {
        String::new()
    };
    let back = if session.crm_type.is_none() {
        "<a class=\"back\" href=\"?\">Choose another CRM</a>"
    } else {
        ""
    };
    let body = format!(
        "<h1>Connect {name_html}</h1>\
         <p>As the connection <code>{id}</code>. {help}</p>{unavailable}{preset}\
         <form method=\"post\" action=\"{action}\" autocomplete=\"off\">\
         <input type=\"hidden\" name=\"crm\" value=\"{crm}\">{basic}{advanced}\
         <button type=\"submit\"{disabled}>{button}</button></form>{back}{expiry}{zones}",
        name_html = escape(name),
        id = escape(session.connection_id.as_str()),
        help = escape(credential_help(crm)),
        action = escape(action),
        crm = crm.as_str(),
        disabled = if unavailable.is_empty() {
            ""
        } else {
            " disabled"
        },
        button = escape(&button),
        expiry = expiry_note(session),
        zones = zone_list(),
    );
    layout(&format!("Connect {name}"), &body)
}

fn link_creator_label(name: &str) -> &'static str {
    match name {
        "fieldMappings" => "field mappings",
        "accountsUrl" => "sign-in address",
        "authorityUrl" => "sign-in address",
        _ => "API address",
    }
}

fn fixed_names(settings: &ConnectionSettings) -> Vec<String> {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn input_html(field: &Field, input: &super::fields::Input) -> String {
    let name = field.name;
    let required = if input.required { " required" } else { "" };
    let help = if input.help.is_empty() {
        String::new()
    } else {
        format!("<p class=\"help\">{}</p>", escape(input.help))
    };
    let label = escape(input.label);
    match input.kind {
        InputKind::Checkbox => format!(
            "<label><input type=\"checkbox\" name=\"{name}\" value=\"on\">{label}</label>{help}"
        ),
        InputKind::Select(options) => {
            let options: String = options
                .iter()
                .map(|(value, text)| {
                    format!(
                        "<option value=\"{}\">{}</option>",
                        escape(value),
                        escape(text)
                    )
                })
                .collect();
            format!(
                "<label>{label}<select name=\"{name}\"{required}>{options}</select></label>{help}"
            )
        }
        kind => {
            let (kind, extra) = match kind {
                InputKind::Secret => (
                    "password",
                    " autocomplete=\"new-password\" spellcheck=\"false\"".to_string(),
                ),
                InputKind::TimeZone => (
                    "text",
                    " list=\"zones\" placeholder=\"America/New_York\"".to_string(),
                ),
                InputKind::Country => ("text", " maxlength=\"2\" placeholder=\"US\"".to_string()),
                InputKind::Number { min, max } => {
                    ("number", format!(" min=\"{min}\" max=\"{max}\""))
                }
                InputKind::HttpsUrl(_) | InputKind::PublicHttpsUrl => {
                    ("url", " placeholder=\"https://\"".to_string())
                }
                _ => ("text", String::new()),
            };
            format!(
                "<label>{label}<input type=\"{kind}\" name=\"{name}\"{extra}{required}></label>{help}"
            )
        }
    }
}

/// Suggestions for the time zone field (any IANA zone may be typed).
fn zone_list() -> String {
    const ZONES: &[&str] = &[
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Phoenix",
        "America/Los_Angeles",
        "America/Anchorage",
        "Pacific/Honolulu",
        "America/Toronto",
        "America/Vancouver",
        "America/Mexico_City",
        "America/Sao_Paulo",
        "Europe/London",
        "Europe/Dublin",
        "Europe/Paris",
        "Europe/Berlin",
        "Europe/Madrid",
        "Europe/Rome",
        "Europe/Amsterdam",
        "Africa/Johannesburg",
        "Asia/Dubai",
        "Asia/Kolkata",
        "Asia/Singapore",
        "Asia/Tokyo",
        "Australia/Sydney",
        "Australia/Perth",
        "Pacific/Auckland",
        "UTC",
    ];
    let options: String = ZONES
        .iter()
        .map(|z| format!("<option value=\"{z}\">"))
        .collect();
    format!("<datalist id=\"zones\">{options}</datalist>")
}

/// The connection is stored.
pub fn connected(result: &Connected) -> String {
    let name = crm_name(result.crm_type);
    let replaced = if result.reconnected {
        " It replaces the credentials the connection had; its settings are kept."
    } else {
        ""
    };
    let warnings = if result.warnings.is_empty() {
        String::new()
    } else {
        let items: String = result
            .warnings
            .iter()
            .map(|w| format!("<li>{}</li>", escape(w)))
            .collect();
        format!("<div class=\"note\"><p>For your CRM administrator:</p><ul>{items}</ul></div>")
    };
    let body = format!(
        "<h1 class=\"good\">{name} is connected</h1>\
         <p>{account}, as the connection <code>{id}</code>.{replaced}</p>{warnings}\
         <p class=\"muted\">Your bookings and leads will now be sent there. You can close this page.</p>",
        name = escape(name),
        account = escape(&result.account),
        id = escape(result.connection_id.as_str()),
    );
    layout(&format!("{name} is connected"), &body)
}

/// Something went wrong: what happened, what to do, and a way back when the link still works.
pub fn problem(title: &str, explanation: &str, back: Option<&str>) -> String {
    let back = back
        .map(|href| {
            format!(
                "<a class=\"back\" href=\"{}\">Back to the connect page</a>",
                escape(href)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1 class=\"bad\">{}</h1><p>{}</p>{back}",
        escape(title),
        escape(explanation)
    );
    layout(title, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_style_hash_is_of_the_style_the_page_carries() {
        let html = problem("t", "e", None);
        assert!(html.contains(STYLE));
        assert!(style_source().starts_with("'sha256-") && style_source().ends_with("='"));
    }
}
