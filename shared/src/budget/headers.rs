//! What a CRM's answer says about the account's rate limit, read from the headers each CRM
//! documents (crm-api-notes §1.8, §2.8, §3.8, §4.8, §5.8; crm-notes/dynamics365.md §8).
//!
//! - HubSpot: `X-HubSpot-RateLimit-Remaining` of `X-HubSpot-RateLimit-Max` per
//!   `X-HubSpot-RateLimit-Interval-Milliseconds`, and `X-HubSpot-RateLimit-Daily-Remaining`
//!   (the older `-Secondly` pair is deprecated and not read).
//! - Pipedrive: `x-ratelimit-remaining` of `x-ratelimit-limit` per 2-second window, and
//!   `x-daily-ratelimit-token-remaining: 0` when the company's daily token budget is spent.
//! - Salesforce: `Sforce-Limit-Info: api-usage=<used>/<limit>` over the rolling 24 hours; over
//!   the limit it answers 403 `REQUEST_LIMIT_EXCEEDED`, not 429.
//! - Zoho CRM and Freshsales document no rate-limit headers, and Dataverse's
//!   `x-ms-ratelimit-*` headers are "for debugging only"; for them only a refusal (429) counts.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::spec::RateLimit;
use crate::domain::CrmType;

/// What one answer told about the account's limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitReading {
    /// Requests the CRM still allows in its window (the smallest of those it reported).
    pub remaining: Option<u64>,
    /// The limit the CRM says the account has.
    pub limit: Option<RateLimit>,
    /// The CRM refused the request for its rate limit.
    pub refused: bool,
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n as u64)
}

fn smallest(values: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    values.into_iter().flatten().min()
}

/// Reads what `crm`'s answer (status, headers, body) says about the account's limit.
pub fn read(crm: CrmType, status: u16, headers: &HeaderMap, body: &str) -> LimitReading {
    let mut reading = LimitReading {
        refused: status == 429,
        ..Default::default()
    };
    match crm {
        CrmType::Hubspot => {
            reading.remaining = smallest([
                number(headers, "x-hubspot-ratelimit-remaining"),
                number(headers, "x-hubspot-ratelimit-daily-remaining"),
            ]);
            reading.limit = match (
                number(headers, "x-hubspot-ratelimit-max"),
                number(headers, "x-hubspot-ratelimit-interval-milliseconds"),
            ) {
                (Some(max), Some(ms)) if max > 0 && ms > 0 => Some(RateLimit {
                    requests: max.min(u64::from(u32::MAX)) as u32,
                    window: Duration::from_millis(ms),
                }),
                _ => None,
            };
        }
        CrmType::Pipedrive => {
            let daily_spent = number(headers, "x-daily-ratelimit-token-remaining") == Some(0);
            reading.remaining = smallest([
                number(headers, "x-ratelimit-remaining"),
                daily_spent.then_some(0),
            ]);
            reading.limit = number(headers, "x-ratelimit-limit")
                .filter(|l| *l > 0)
                .map(|l| RateLimit {
                    requests: l.min(u64::from(u32::MAX)) as u32,
                    window: Duration::from_secs(2),
                });
        }
        CrmType::Salesforce => {
            if let Some((used, limit)) = headers
                .get("sforce-limit-info")
                .and_then(|v| v.to_str().ok())
                .and_then(salesforce_usage)
            {
                reading.remaining = Some(limit.saturating_sub(used));
                reading.limit = (limit > 0).then(|| RateLimit {
                    requests: limit.min(u64::from(u32::MAX)) as u32,
                    window: Duration::from_secs(24 * 3600),
                });
            }
            reading.refused |= status == 403 && body.contains("REQUEST_LIMIT_EXCEEDED");
        }
        CrmType::Zoho | CrmType::Freshsales | CrmType::Dynamics | CrmType::Sugarcrm => {}
    }
    reading
}

/// `api-usage=10018/100000` (possibly among other comma-separated entries) as (used, limit).
fn salesforce_usage(value: &str) -> Option<(u64, u64)> {
    let usage = value
        .split(',')
        .find_map(|part| part.trim().strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn hubspot_remaining_is_the_smaller_of_the_interval_and_the_day() {
        let reading = read(
            CrmType::Hubspot,
            200,
            &headers(&[
                ("X-HubSpot-RateLimit-Max", "190"),
                ("X-HubSpot-RateLimit-Remaining", "7"),
                ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
                ("X-HubSpot-RateLimit-Daily-Remaining", "640000"),
                ("X-HubSpot-RateLimit-Secondly-Remaining", "1"),
            ]),
            "",
        );
        assert_eq!(reading.remaining, Some(7));
        assert_eq!(reading.limit, Some(RateLimit::per_seconds(190, 10)));
        assert!(!reading.refused);
    }

    #[test]
    fn pipedrive_reads_the_window_and_a_spent_day() {
        let burst = read(
            CrmType::Pipedrive,
            200,
            &headers(&[
                ("x-ratelimit-limit", "40"),
                ("x-ratelimit-remaining", "39"),
                ("x-ratelimit-reset", "2"),
            ]),
            "",
        );
        assert_eq!(burst.remaining, Some(39));
        assert_eq!(burst.limit, Some(RateLimit::per_seconds(40, 2)));
        let spent = read(
            CrmType::Pipedrive,
            429,
            &headers(&[
                ("x-ratelimit-remaining", "39"),
                ("x-daily-ratelimit-token-remaining", "0"),
            ]),
            "",
        );
        assert_eq!((spent.remaining, spent.refused), (Some(0), true));
    }

    #[test]
    fn salesforce_reads_api_usage_and_its_403() {
        let reading = read(
            CrmType::Salesforce,
            200,
            &headers(&[("Sforce-Limit-Info", "api-usage=99990/100000")]),
            "",
        );
        assert_eq!(reading.remaining, Some(10));
        assert_eq!(
            reading.limit,
            Some(RateLimit::per_seconds(100_000, 24 * 3600))
        );
        let refused = read(
            CrmType::Salesforce,
            403,
            &HeaderMap::new(),
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
        );
        assert!(refused.refused);
        let forbidden = read(
            CrmType::Salesforce,
            403,
            &HeaderMap::new(),
            r#"[{"errorCode":"INSUFFICIENT_ACCESS"}]"#,
        );
        assert!(!forbidden.refused);
    }

    #[test]
    fn crms_without_documented_headers_count_only_refusals() {
        let undocumented = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ms-ratelimit-burst-remaining-xrm-requests", "0"),
        ]);
        for crm in [CrmType::Zoho, CrmType::Freshsales, CrmType::Dynamics] {
            assert_eq!(read(crm, 200, &undocumented, ""), LimitReading::default());
            assert!(read(crm, 429, &undocumented, "").refused);
        }
    }
}
