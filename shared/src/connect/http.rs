//! The HTTP edge of the three connect functions: `connect-sessions` (JSON, API key), the connect
//! page and the callback (HTML, no API key: the link's token, kept in a cookie, is the key).
//! Every page is sent with a strict Content-Security-Policy and may not be framed; every
//! `ConnectError` becomes a page here, in one place.

use std::convert::Infallible;

use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use super::ConnectService;
use super::error::ConnectError;
use super::fields::{SALESFORCE_LOGIN_HOSTS, connects_by_authorization, crm_name};
use super::flow::{Connected, Form};
use super::page;
use super::session::{ConnectSession, LinkToken};
use crate::crm::zoho;
use crate::domain::CrmType;
use crate::error::Error;

/// The cookie that carries the link's token once the link was opened.
pub const SESSION_COOKIE: &str = "crm_sync_connect";

/// Deployed routes, below the API's base path.
pub const SESSIONS_ROUTE: &str = "/connect-sessions";
pub const PAGE_ROUTE: &str = "/connect";
pub const CALLBACK_ROUTE: &str = "/connect/callback";

/// The public addresses of the page and the callback.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectUrls {
    pub page: String,
    /// The redirect URI registered with each CRM.
    pub callback: String,
}

impl ConnectUrls {
    /// From the configuration, else beside the route API Gateway says `request` came in on
    /// (`own_route`): the stack cannot hand its own API's URL to its functions.
    pub fn resolve(
        config: &super::ConnectConfig,
        request: &Request,
        own_route: &str,
    ) -> Option<Self> {
        let base = || api_base(request, own_route);
        let page = config
            .page_url
            .clone()
            .or_else(|| base().map(|b| format!("{b}{PAGE_ROUTE}")))?;
        let callback = config
            .callback_url
            .clone()
            .or_else(|| base().map(|b| format!("{b}{CALLBACK_ROUTE}")))?;
        Some(ConnectUrls { page, callback })
    }

    fn secure(&self) -> bool {
        self.page.starts_with("https://")
    }

    /// The longest path both the page and the callback are under, so the cookie goes to both
    /// and to nothing else of the API it can avoid.
    pub fn cookie_path(&self) -> String {
        let path = |url: &str| {
            url::Url::parse(url)
                .map(|u| u.path().to_string())
                .unwrap_or_default()
        };
        let (page, callback) = (path(&self.page), path(&self.callback));
        let common: Vec<&str> = page
            .split('/')
            .zip(callback.split('/'))
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .filter(|s| !s.is_empty())
            .collect();
        format!("/{}", common.join("/"))
    }
}

fn api_base(request: &Request, own_route: &str) -> Option<String> {
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV1(context) => {
            let domain = context.domain_name.as_deref()?;
            let path = context.path.as_deref()?.trim_end_matches('/');
            let base = path.strip_suffix(own_route)?;
            Some(format!("https://{domain}{base}"))
        }
        _ => None,
    }
}

fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// `POST connect-sessions`: a new link, as JSON (`{"connectUrl", "connectionId", "expiresAt"}`).
pub async fn create_session(
    service: &ConnectService,
    request: Request,
) -> Result<Response<Body>, Infallible> {
    let result = async {
        if request.method() != Method::POST && request.method() != Method::OPTIONS {
            return Err(Error::MethodNotAllowed(request.method().to_string()));
        }
        crate::http::check_api_key(&service.app.config, &request)?;
        let body = crate::http::body_json(&request)?;
        let urls =
            ConnectUrls::resolve(&service.config, &request, SESSIONS_ROUTE).ok_or_else(|| {
                Error::Store(
                    "the connect page's address is unknown: set CRM_SYNC_CONNECT_PAGE_URL".into(),
                )
            })?;
        service.create_link(&body, &urls.page).await
    }
    .await;
    Ok(match result {
        Ok(link) => crate::http::json_response(StatusCode::CREATED, &link),
        Err(error) => crate::http::error_response(&error.into()),
    })
}

/// The connect page: `GET ?session=…` keeps the link's token in a cookie and reloads without it;
/// `GET` lists the CRMs or shows one's form (`?crm=`); `POST` starts a CRM's authorization.
pub async fn page(
    service: &ConnectService,
    request: Request,
) -> Result<Response<Body>, Infallible> {
    let Some(urls) = ConnectUrls::resolve(&service.config, &request, PAGE_ROUTE) else {
        return Ok(unknown_address());
    };
    let result = match request.method().clone() {
        Method::GET => show(service, &request, &urls).await,
        Method::POST => start(service, &request, &urls).await,
        other => Err(ConnectError::MethodNotAllowed(other.to_string())),
    };
    Ok(result.unwrap_or_else(|error| failure(&error, &urls)))
}

/// The callback: `GET` is the CRM's redirect after its consent page, `POST` the page's credentials
/// form. Either tests the connection and stores it.
pub async fn callback(
    service: &ConnectService,
    request: Request,
) -> Result<Response<Body>, Infallible> {
    let Some(urls) = ConnectUrls::resolve(&service.config, &request, CALLBACK_ROUTE) else {
        return Ok(unknown_address());
    };
    let result = match request.method().clone() {
        Method::GET => {
            let finish = async {
                let session = session_from_cookie(service, &request).await?;
                service
                    .finish_authorization(session, &query_form(&request))
                    .await
            };
            finish.await
        }
        Method::POST => {
            let connect = async {
                check_origin(&request, &urls)?;
                form_crm(&body_form(&request))?;
                let session = session_from_cookie(service, &request).await?;
                service
                    .connect_with_credentials(session, &body_form(&request))
                    .await
            };
            connect.await
        }
        other => Err(ConnectError::MethodNotAllowed(other.to_string())),
    };
    Ok(match result {
        Ok(connected) => success(&connected, &urls),
        Err(error) => failure(&error, &urls),
    })
}

async fn show(
    service: &ConnectService,
    request: &Request,
    urls: &ConnectUrls,
) -> Result<Response<Body>, ConnectError> {
    let query = query_form(request);
    // A malformed request is refused as such before the link is looked up.
    let named = match query.get("crm") {
        Some(raw) => Some(
            raw.parse::<CrmType>()
                .map_err(|m| ConnectError::invalid("CRM", m))?,
        ),
        None => None,
    };
    if let Some(raw) = query.get("session") {
        let token = LinkToken::parse(raw).ok_or(ConnectError::LinkUnknown)?;
        let session = service.open(&token).await?;
        // The token leaves the address bar for a cookie: not in the history, a bookmark or a
        // Referer from here on.
        let mut response = redirect(&urls.page);
        set_cookie(&mut response, &session_cookie(urls, &token, &session));
        return Ok(response);
    }
    let session = session_from_cookie(service, request).await?;
    let crm = named.or(session.crm_type);
    let Some(crm) = crm else {
        return Ok(html_response(
            StatusCode::OK,
            page::choose_crm(&session),
            &[],
        ));
    };
    if let Some(fixed) = session.crm_type.filter(|fixed| *fixed != crm) {
        return Err(ConnectError::WrongCrm(format!(
            "this link connects {}, not {}",
            crm_name(fixed),
            crm_name(crm)
        )));
    }
    let ready = !connects_by_authorization(crm)
        || service
            .oauth_apps
            .client(crm)
            .await
            .map_err(ConnectError::Store)?
            .is_some();
    let html = page::crm_form(&session, crm, &urls.page, &urls.callback, ready);
    Ok(html_response(
        StatusCode::OK,
        html,
        &authorization_origins(crm, &session),
    ))
}

async fn start(
    service: &ConnectService,
    request: &Request,
    urls: &ConnectUrls,
) -> Result<Response<Body>, ConnectError> {
    check_origin(request, urls)?;
    form_crm(&body_form(request))?;
    let session = session_from_cookie(service, request).await?;
    let location = service
        .start_authorization(session, &body_form(request), &urls.callback)
        .await?;
    Ok(redirect(&location))
}

/// The page's forms always name their CRM (a hidden field): a post without one, or naming no
/// CRM, is malformed and refused before the link is looked up.
fn form_crm(form: &Form) -> Result<CrmType, ConnectError> {
    match form.get("crm").filter(|c| !c.is_empty()) {
        Some(raw) => raw
            .parse::<CrmType>()
            .map_err(|m| ConnectError::invalid("CRM", m)),
        None => Err(ConnectError::invalid("CRM", "choose the CRM to connect")),
    }
}

/// Where a CRM's "Connect with …" form may lead: its sign-in hosts, which CSP's `form-action`
/// must allow since the page's answer redirects there.
fn authorization_origins(crm: CrmType, session: &ConnectSession) -> Vec<String> {
    let fixed = |name: &str| session.settings.extra_str(name).map(origin_of);
    match crm {
        CrmType::Salesforce => SALESFORCE_LOGIN_HOSTS
            .iter()
            .map(|(host, _)| host.to_string())
            .chain(fixed("loginUrl"))
            .collect(),
        CrmType::Zoho => zoho::DATA_CENTERS
            .iter()
            .map(|(_, accounts, _)| accounts.to_string())
            .chain(fixed("accountsUrl"))
            .collect(),
        _ => Vec::new(),
    }
}

async fn session_from_cookie(
    service: &ConnectService,
    request: &Request,
) -> Result<ConnectSession, ConnectError> {
    let token = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| LinkToken::parse(value.trim()))
        .ok_or(ConnectError::NoSession)?;
    service.open(&token).await
}

/// A form must come from the page's own origin (browsers send `Origin` with every POST).
fn check_origin(request: &Request, urls: &ConnectUrls) -> Result<(), ConnectError> {
    match request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(()),
        Some(origin) if origin == origin_of(&urls.page) || origin == origin_of(&urls.callback) => {
            Ok(())
        }
        Some(_) => Err(ConnectError::ForeignOrigin),
    }
}

fn first_values(pairs: impl Iterator<Item = (String, String)>) -> Form {
    let mut form = Form::new();
    for (name, value) in pairs {
        form.entry(name).or_insert(value);
    }
    form
}

fn query_form(request: &Request) -> Form {
    let params = request.query_string_parameters();
    first_values(params.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn body_form(request: &Request) -> Form {
    first_values(url::form_urlencoded::parse(request.body().as_ref()).into_owned())
}

fn session_cookie(urls: &ConnectUrls, token: &LinkToken, session: &ConnectSession) -> String {
    let seconds = (session.expires_at - chrono::Utc::now())
        .num_seconds()
        .max(0);
    format!(
        "{SESSION_COOKIE}={}; Path={}; Max-Age={seconds}; HttpOnly; SameSite=Lax{}",
        token.expose(),
        urls.cookie_path(),
        if urls.secure() { "; Secure" } else { "" }
    )
}

fn cleared_cookie(urls: &ConnectUrls) -> String {
    format!(
        "{SESSION_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Lax{}",
        urls.cookie_path(),
        if urls.secure() { "; Secure" } else { "" }
    )
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn common_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        // Nothing to the CRMs or elsewhere; same-origin, so the page's own forms carry an
        // `Origin` to check (`no-referrer` would make it "null").
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A page: no script, the inline style by its hash, forms only to this service (and, for a
/// "Connect with …" form, the CRM's sign-in hosts it redirects to), never in a frame.
fn html_response(status: StatusCode, html: String, form_targets: &[String]) -> Response<Body> {
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = status;
    let targets: String = form_targets.iter().map(|t| format!(" {t}")).collect();
    let policy = format!(
        "default-src 'none'; style-src {}; img-src 'none'; form-action 'self'{targets}; \
         frame-ancestors 'none'; base-uri 'none'",
        page::style_source()
    );
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    common_headers(&mut response);
    response
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    common_headers(&mut response);
    response
}

fn success(connected: &Connected, urls: &ConnectUrls) -> Response<Body> {
    let mut response = html_response(StatusCode::OK, page::connected(connected), &[]);
    set_cookie(&mut response, &cleared_cookie(urls));
    response
}

fn unknown_address() -> Response<Body> {
    tracing::error!(
        "the connect page's address is unknown: set CRM_SYNC_CONNECT_PAGE_URL and CRM_SYNC_CONNECT_CALLBACK_URL"
    );
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        page::problem(
            "This connect page is not set up",
            "The service does not know its own address. Tell whoever sent you the link.",
            None,
        ),
        &[],
    )
}

/// Every connect error as a page: what happened, what to do, and the way back while the link
/// still works. Nothing the person typed and no token is ever shown.
fn failure(error: &ConnectError, urls: &ConnectUrls) -> Response<Body> {
    let back_to = |crm: Option<CrmType>| {
        Some(match crm {
            Some(crm) => format!("{}?crm={}", urls.page, crm.as_str()),
            None => urls.page.clone(),
        })
    };
    let nothing = "Nothing was stored.";
    let (status, title, text, back, spent): (StatusCode, String, String, Option<String>, bool) =
        match error {
            ConnectError::LinkUnknown => (
                StatusCode::NOT_FOUND,
                "This link doesn't work".into(),
                "It may be incomplete or mistyped. Ask whoever sent it for a new link.".into(),
                None,
                true,
            ),
            ConnectError::LinkExpired => (
                StatusCode::GONE,
                "This link has expired".into(),
                "Connect links work for a limited time. Ask whoever sent it for a new link.".into(),
                None,
                true,
            ),
            ConnectError::LinkUsed => (
                StatusCode::GONE,
                "This link was already used".into(),
                "A CRM was connected with it, and a link works once. To connect again, ask for a new link.".into(),
                None,
                true,
            ),
            ConnectError::NoSession => (
                StatusCode::BAD_REQUEST,
                "Open your link again".into(),
                "This browser has no connect link open: open the link you were sent in this browser (with cookies allowed).".into(),
                None,
                false,
            ),
            ConnectError::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                "This form didn't come from the connect page".into(),
                format!("{nothing} Use the form on the connect page."),
                back_to(None),
                false,
            ),
            ConnectError::StateMismatch => (
                StatusCode::BAD_REQUEST,
                "This sign-in doesn't belong to your link".into(),
                format!("{nothing} The answer did not match the sign-in started from your connect page. Start again from there."),
                back_to(None),
                false,
            ),
            ConnectError::AuthorizationExpired => (
                StatusCode::BAD_REQUEST,
                "The sign-in took too long".into(),
                format!("{nothing} Start the sign-in again from the connect page."),
                back_to(None),
                false,
            ),
            ConnectError::ConsentRefused {
                crm,
                error,
                description,
            } => {
                let name = crm_name(*crm);
                let title = if error == "access_denied" {
                    format!("You didn't allow access in {name}")
                } else {
                    format!("{name} didn't complete the sign-in")
                };
                let said = if description.is_empty() {
                    error.clone()
                } else {
                    format!("{error}: {description}")
                };
                (
                    StatusCode::FORBIDDEN,
                    title,
                    format!("{name} answered \"{said}\". {nothing} To connect, choose Connect with {name} again and allow access."),
                    back_to(Some(*crm)),
                    false,
                )
            }
            ConnectError::TamperedCallback(what) => (
                StatusCode::BAD_REQUEST,
                "The sign-in answer was incomplete or altered".into(),
                format!("{nothing} The answer that came back to crm-sync was not one the CRM sends: {what}. Start again from the connect page."),
                back_to(None),
                false,
            ),
            ConnectError::WrongCrm(message) => (
                StatusCode::BAD_REQUEST,
                "That CRM can't be connected this way".into(),
                format!("{nothing} {}", capitalised(message)),
                back_to(None),
                false,
            ),
            ConnectError::NotConfigured(crm) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} connections aren't set up yet", crm_name(*crm)),
                format!("{nothing} This service has no {} app registered. Tell whoever sent you the link.", crm_name(*crm)),
                back_to(None),
                false,
            ),
            ConnectError::Invalid { label, message } => (
                StatusCode::BAD_REQUEST,
                format!("Please check \"{label}\""),
                format!("{label} {message}. {nothing}"),
                back_to(None),
                false,
            ),
            ConnectError::Crm { crm, error } => {
                let name = crm_name(*crm);
                let (status, title, advice) = match error {
                    Error::CrmAuth(_) => (
                        StatusCode::BAD_REQUEST,
                        format!("{name} didn't accept the connection"),
                        "Check what you entered (or sign in again) and try once more.",
                    ),
                    Error::RateLimited { .. } => (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("{name} is busy"),
                        "Try again in a minute.",
                    ),
                    Error::CrmUnavailable(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{name} could not be reached"),
                        "Try again in a minute.",
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        format!("{name} didn't accept the connection"),
                        "Check the settings and try once more.",
                    ),
                };
                (
                    status,
                    title,
                    format!("{name} answered: {error}. {nothing} {advice}"),
                    back_to(Some(*crm)),
                    false,
                )
            }
            ConnectError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Something went wrong on our side".into(),
                "The connection could not be saved. Try again in a minute.".into(),
                back_to(None),
                false,
            ),
            ConnectError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "This address only opens pages".into(),
                "Open your connect link instead.".into(),
                None,
                false,
            ),
        };
    if matches!(error, ConnectError::Store(_)) {
        tracing::warn!(code = error.code(), error = %error, "connect step failed");
    } else {
        tracing::info!(code = error.code(), "connect step refused");
    }
    let mut response = html_response(status, page::problem(&title, &text, back.as_deref()), &[]);
    if spent {
        set_cookie(&mut response, &cleared_cookie(urls));
    }
    response
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect::<String>() + ".",
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_covers_the_page_and_the_callback_only() {
        let deployed = ConnectUrls {
            page: "https://abc.execute-api.us-east-1.amazonaws.com/dev/api/v1/integrations/crm/connect".into(),
            callback: "https://abc.execute-api.us-east-1.amazonaws.com/dev/api/v1/integrations/crm/connect/callback".into(),
        };
        assert_eq!(
            deployed.cookie_path(),
            "/dev/api/v1/integrations/crm/connect"
        );
        let local = ConnectUrls {
            page: "http://127.0.0.1:9000/lambda-url/connect-page".into(),
            callback: "http://127.0.0.1:9000/lambda-url/connect-callback".into(),
        };
        assert_eq!(local.cookie_path(), "/lambda-url");
    }

    #[test]
    fn deployed_the_addresses_come_from_the_route_api_gateway_names() {
        use lambda_http::aws_lambda_events::apigw::ApiGatewayProxyRequestContext;
        let request = |path: &str| {
            let mut context = ApiGatewayProxyRequestContext::default();
            context.domain_name = Some("abc.execute-api.us-east-1.amazonaws.com".into());
            context.path = Some(path.into());
            lambda_http::http::Request::builder()
                .uri("https://abc.execute-api.us-east-1.amazonaws.com/")
                .body(Body::Empty)
                .unwrap()
                .with_request_context(RequestContext::ApiGatewayV1(context))
        };
        let config = super::super::ConnectConfig::from_lookup(|_| None);
        let base = "https://abc.execute-api.us-east-1.amazonaws.com/prod/api/v1/integrations/crm";
        let expected = ConnectUrls {
            page: format!("{base}/connect"),
            callback: format!("{base}/connect/callback"),
        };
        for (path, route) in [
            (
                "/prod/api/v1/integrations/crm/connect-sessions",
                SESSIONS_ROUTE,
            ),
            ("/prod/api/v1/integrations/crm/connect", PAGE_ROUTE),
            (
                "/prod/api/v1/integrations/crm/connect/callback/",
                CALLBACK_ROUTE,
            ),
        ] {
            assert_eq!(
                ConnectUrls::resolve(&config, &request(path), route),
                Some(expected.clone())
            );
        }
        // Without API Gateway's context, only the configuration can say.
        let bare = lambda_http::http::Request::builder()
            .body(Body::Empty)
            .unwrap();
        assert_eq!(ConnectUrls::resolve(&config, &bare, PAGE_ROUTE), None);
    }
}
