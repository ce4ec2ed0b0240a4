//! The HTTP client every adapter shares: timeouts, retries that honour `Retry-After`, and the
//! mapping of common HTTP statuses to our errors.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, RequestBuilder};
use serde_json::Value;

use crate::budget::RateBudget;
use crate::config::Config;
use crate::error::{Error, Result};

tokio::task_local! {
    /// Set when a write sent inside `track_unanswered_writes` ended without a clear answer.
    static UNANSWERED_WRITE: Cell<bool>;
}

/// Runs `work` and says whether a write it sent to a CRM may have been applied although no
/// answer said so (a timeout or reset after the request was sent, or a 5xx): the sync's outcome
/// is then unknown rather than failed. Nested calls track their own writes only.
pub async fn track_unanswered_writes<F: Future>(work: F) -> (F::Output, bool) {
    UNANSWERED_WRITE
        .scope(Cell::new(false), async move {
            let output = work.await;
            (output, UNANSWERED_WRITE.with(Cell::get))
        })
        .await
}

fn note_unanswered_write(idempotency: Idempotency) {
    if idempotency == Idempotency::NotIdempotent {
        let _ = UNANSWERED_WRITE.try_with(|flag| flag.set(true));
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries per call, the first included.
    pub attempts: u32,
    /// A `Retry-After` longer than this is not waited for; the caller gets `RateLimited`.
    pub max_wait: Duration,
    /// First backoff when the CRM gives no wait; doubled on each retry.
    pub base_backoff: Duration,
}

/// How long a 429 asks us to wait, read from the answer's headers; `None` leaves the wait to the
/// backoff. A wait longer than the policy's `max_wait` is not waited for.
pub type RateLimitWait = fn(&HeaderMap) -> Option<Duration>;

/// CRM calls with their retry policy and timeout, over the process's one HTTP client
/// (`transport::http_client`, built on first use: an operation that calls out to nobody,
/// `platforms`, never builds it). A clone given a connection's `RateBudget` takes a token from
/// it before every request.
#[derive(Debug, Clone)]
pub struct CrmHttp {
    policy: RetryPolicy,
    timeout: Duration,
    rate_limit_wait: RateLimitWait,
    budget: Option<RateBudget>,
}

/// A CRM's answer, body already read.
#[derive(Debug, Clone)]
pub struct CrmResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as JSON, or `Value::Null` when empty or not JSON.
    pub body: Value,
    pub text: String,
}

impl CrmResponse {
    /// An answer with a JSON body and no headers, for the adapters' unit tests.
    #[cfg(test)]
    pub(crate) fn json(status: u16, body: Value) -> Self {
        CrmResponse {
            status,
            headers: HeaderMap::new(),
            text: body.to_string(),
            body,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }

    /// The CRM's own error message, found under `key` in its JSON body, or else the status and
    /// the start of whatever it answered.
    pub fn error_message(&self, key: &str) -> String {
        match self.body.get(key).and_then(Value::as_str) {
            Some(message) => message.to_string(),
            None => format!(
                "HTTP {} {}",
                self.status,
                self.text.chars().take(200).collect::<String>()
            ),
        }
    }
}

/// Whether repeating a request is harmless. Creates are not: a timeout may hide a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    Idempotent,
    NotIdempotent,
}

impl CrmHttp {
    pub fn new(config: &Config) -> Self {
        let policy = RetryPolicy {
            attempts: config.crm_attempts,
            max_wait: config.max_retry_wait,
            base_backoff: Duration::from_millis(200),
        };
        Self::with_policy(config.crm_timeout, policy)
    }

    pub fn with_policy(timeout: Duration, policy: RetryPolicy) -> Self {
        CrmHttp {
            policy,
            timeout,
            rate_limit_wait: retry_after,
            budget: None,
        }
    }

    /// The same client, taking every request's tokens from `budget` (the connection's account)
    /// and correcting it from the CRM's answers.
    pub fn with_budget(mut self, budget: Option<RateBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The same client without a budget: for calls the CRM's API limit does not count (OAuth
    /// token endpoints).
    pub fn without_budget(&self) -> Self {
        CrmHttp {
            budget: None,
            ..self.clone()
        }
    }

    /// The same client, reading a 429's wait with `wait` instead of `Retry-After` alone (for
    /// CRMs that say it in their own headers).
    pub fn with_rate_limit_wait(mut self, wait: RateLimitWait) -> Self {
        self.rate_limit_wait = wait;
        self
    }

    fn client(&self) -> &Client {
        crate::transport::http_client()
    }

    /// Sends the request `build` makes, again if the CRM is rate limiting (within the policy's
    /// wait) or, for idempotent requests, failing with 5xx or timing out.
    pub async fn send(
        &self,
        idempotency: Idempotency,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<CrmResponse> {
        let mut backoff = self.policy.base_backoff;
        let mut attempt = 1;
        loop {
            let last = attempt >= self.policy.attempts;
            let (client, request) = build(self.client()).timeout(self.timeout).build_split();
            let request = request.map_err(|e| Error::CrmUnavailable(self.describe(&e)))?;
            let url = request.url().clone();
            if let Some(budget) = &self.budget {
                budget.acquire(&url).await?;
            }
            let wait = match client.execute(request).await {
                Err(e) => {
                    // A refused connection sent nothing, so it is always safe to try again.
                    let retryable = e.is_connect()
                        || (idempotency == Idempotency::Idempotent && e.is_timeout());
                    if !e.is_connect() {
                        note_unanswered_write(idempotency);
                    }
                    if last || !retryable {
                        return Err(Error::CrmUnavailable(self.describe(&e)));
                    }
                    tracing::warn!(attempt, error = %self.describe(&e), "CRM request failed; retrying");
                    backoff
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    let text = match response.text().await {
                        Ok(text) => text,
                        // The status came, the body (and the new record's id) did not.
                        Err(e) => {
                            note_unanswered_write(idempotency);
                            return Err(Error::CrmUnavailable(self.describe(&e)));
                        }
                    };
                    if (500..=599).contains(&status) {
                        note_unanswered_write(idempotency);
                    }
                    if let Some(budget) = &self.budget {
                        budget.observe(&url, status, &headers, &text).await;
                    }
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let response = CrmResponse {
                        status,
                        headers,
                        body,
                        text,
                    };
                    let wait = match status {
                        // Up to half as long again, so that callers refused together (a
                        // concurrency limit) do not all come back at the same instant.
                        429 => match (self.rate_limit_wait)(&response.headers) {
                            Some(asked) if asked > self.policy.max_wait => return Ok(response),
                            Some(asked) => asked + jitter(asked / 2),
                            None => backoff + jitter(backoff / 2),
                        },
                        500..=599 if idempotency == Idempotency::Idempotent => backoff,
                        _ => return Ok(response),
                    };
                    if last {
                        return Ok(response);
                    }
                    tracing::warn!(
                        attempt,
                        status,
                        wait_ms = wait.as_millis() as u64,
                        "CRM asked us to back off; retrying"
                    );
                    wait
                }
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.policy.max_wait);
            attempt += 1;
        }
    }

    /// A transport error in words, without the URL (some CRMs put tokens in query strings).
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else if e.is_connect() {
            "could not connect to the CRM".into()
        } else {
            let mut message = "the request to the CRM failed".to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        }
    }
}

/// A random wait of at most `most` (spreads callers refused together: CRM retries, rate-budget
/// waits).
pub(crate) fn jitter(most: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    most.mul_f64(f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX))
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Maps a non-success answer to our error, with the CRM's own `message`.
pub fn status_error(response: &CrmResponse, message: String) -> Error {
    match response.status {
        401 | 403 => Error::CrmAuth(message),
        404 | 410 => Error::NotFound(message),
        409 => Error::CrmDuplicate {
            existing_id: None,
            message,
        },
        429 => Error::RateLimited {
            retry_after: response.retry_after(),
        },
        500..=599 => Error::CrmUnavailable(format!("HTTP {}: {message}", response.status)),
        _ => Error::CrmRejected { message },
    }
}
