//! The one HTTP client of a process. CRM calls and the AWS SDK both go through it, so a cold
//! start sets up one connection pool and one TLS configuration, and loads the root certificates
//! once (on the first HTTPS connection), not once per client.

use std::sync::OnceLock;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;

/// How long a connection may take to open, for AWS and CRMs alike; each request sets its own
/// overall timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The process's HTTP client, built on first use.
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // The process's one TLS crypto provider; a second install (another client first) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("crm-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises")
    })
}

/// The AWS SDK's HTTP client: its requests sent with `http_client()`. The SDK keeps its own
/// retries, signing and operation timeouts; this only carries bytes.
pub fn aws_http_client() -> SharedHttpClient {
    http_client_fn(|settings, _components| {
        SharedHttpConnector::new(SharedClientConnector {
            read_timeout: settings.read_timeout(),
        })
    })
}

#[derive(Debug)]
struct SharedClientConnector {
    read_timeout: Option<Duration>,
}

impl HttpConnector for SharedClientConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            // AWS requests of this project (DynamoDB, Secrets Manager) are small JSON bodies.
            let body = body
                .bytes()
                .map(bytes::Bytes::copy_from_slice)
                .ok_or_else(|| ConnectorError::user("a streaming request body".into()))?;
            let mut outgoing = http_client()
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body);
            if let Some(timeout) = read_timeout {
                outgoing = outgoing.timeout(timeout);
            }
            let response = outgoing.send().await.map_err(connector_error)?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            let bytes = response.bytes().await.map_err(connector_error)?;
            let answer = answer
                .body(SdkBody::from(bytes))
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            HttpResponse::try_from(answer).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Timeouts and I/O failures as the SDK's retry logic reads them (both are retried as transient).
fn connector_error(error: reqwest::Error) -> ConnectorError {
    if error.is_timeout() {
        ConnectorError::timeout(error.into())
    } else if error.is_connect() || error.is_request() || error.is_body() {
        ConnectorError::io(error.into())
    } else {
        ConnectorError::other(error.into(), None)
    }
}
