//! How large an account's rate budget is: each CRM's documented limit per tier, the connection's
//! `rateBudget` setting, and the token bucket sized from them.
//!
//! A bucket holds `burst` tokens and refills at `per_second`. It is sized so that in any stretch
//! of the CRM's window at most the documented number of requests is sent:
//! `burst + per_second × (window + lease_ttl + SEND_SLACK) < requests + 1`. `lease_ttl` is how long
//! a token claimed in a lease may be held before it is sent (none when every lease is one token,
//! which is sent as soon as it is claimed); `SEND_SLACK` covers the time between a token's instant
//! and the request reaching the CRM. The bound is `requests + 1` because requests are whole: a
//! bucket that was full at the start of a stretch has handed out fewer than `burst + per_second ×
//! span` tokens by any instant inside it (the last one's refill is still under way), so at most
//! `requests` of them.

use std::time::Duration;

use serde_json::Value;

use crate::connection::Connection;
use crate::domain::CrmType;
use crate::error::{Error, Result};

/// A documented limit: `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    pub const fn per_seconds(requests: u32, seconds: u64) -> Self {
        RateLimit {
            requests,
            window: Duration::from_secs(seconds),
        }
    }
}

const DAY: u64 = 24 * 3600;

/// A separate, smaller limit on some requests of a CRM (its search API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Every request to the account.
    General,
    /// Search requests, which also take a general token.
    Search,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::General, Lane::Search];

    pub fn index(self) -> usize {
        match self {
            Lane::General => 0,
            Lane::Search => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::General => "general",
            Lane::Search => "search",
        }
    }
}

/// Time between a token's instant and its request reaching the CRM, allowed for in the sizing.
pub const SEND_SLACK: Duration = Duration::from_millis(100);
/// What a bucket may let through in a stretch beyond `requests - burst` at its refill rate: just
/// under one token (see the module's note).
const UNDER_ONE_TOKEN: f64 = 0.999;
/// About how long one CRM call of a live request takes, for sizing its lease.
pub const LIVE_CALL: Duration = Duration::from_millis(250);
/// Share of the burst batch work leaves for live requests unless the connection says otherwise.
pub const DEFAULT_BATCH_RESERVE: f64 = 0.25;

/// One lane's token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneSpec {
    /// The limit it was sized from (the documented one, or what the CRM's headers said).
    pub limit: RateLimit,
    /// Further limits the same requests must also keep (Freshsales' per-minute cap).
    pub also: Vec<RateLimit>,
    /// Tokens the bucket holds when full.
    pub burst: u32,
    pub per_second: f64,
    /// Tokens batch work leaves in the bucket: it takes only above this.
    pub reserve: u32,
    /// Tokens a live request claims at once (spent by the next requests of this process).
    pub live_lease: u32,
    /// Tokens batch work claims at once.
    pub batch_lease: u32,
    /// How long claimed tokens stay usable.
    pub lease_ttl: Duration,
    /// The share of the burst `reserve` was sized from, kept for resizing on a corrected limit.
    pub reserve_share: f64,
}

impl LaneSpec {
    /// The bucket for `limit`, keeping `also`, leaving `reserve_share` of the burst to live work.
    pub fn sized(limit: RateLimit, also: &[RateLimit], reserve_share: f64) -> Self {
        let requests = limit.requests.max(1);
        let window = limit.window.max(Duration::from_millis(100));
        // Leases and the burst are small beside the window, so that the sustained rate stays
        // close to the limit (95% of it where the window is long beside the lease life). The
        // lease life is sized from the shortest window the requests must keep (Freshsales'
        // minute, not its hour).
        let shortest = also
            .iter()
            .map(|l| l.window.max(Duration::from_millis(100)))
            .fold(window, Duration::min);
        let lease_ttl = (shortest / 40).clamp(Duration::from_millis(100), Duration::from_secs(60));
        // A live request's CRM calls come one after another, about one per LIVE_CALL: a live
        // lease holds what it spends within the lease life, so few of its tokens lapse.
        let live_lease = ((lease_ttl.as_secs_f64() / LIVE_CALL.as_secs_f64()) as u32)
            .min(requests / 10)
            .clamp(1, 4);
        let batch_lease = (requests / 40).clamp(1, 10);
        // A twentieth of the limit at once, and at least a live and a batch lease.
        let mut burst = requests
            .div_ceil(20)
            .max(live_lease + batch_lease)
            .min(requests);
        let held = held_for(lease_ttl, live_lease.max(batch_lease));
        let span = |w: Duration| (w + held + SEND_SLACK).as_secs_f64();
        let rate_under = |requests: u32, burst: u32, w: Duration| {
            (f64::from(requests.saturating_sub(burst)) + UNDER_ONE_TOKEN) / span(w)
        };
        let mut per_second = rate_under(requests, burst, window);
        // A shorter limit on the same requests: fit the burst (then the rate) under it too.
        for other in also {
            let room =
                f64::from(other.requests) + UNDER_ONE_TOKEN - per_second * span(other.window);
            if room < f64::from(burst) {
                burst = room.floor().max(1.0) as u32;
                per_second = per_second.min(rate_under(other.requests, burst, other.window));
            }
        }
        let reserve = live_lease
            .max((f64::from(burst) * reserve_share).ceil() as u32)
            .min(burst.saturating_sub(1));
        LaneSpec {
            limit,
            also: also.to_vec(),
            burst,
            per_second: per_second.max(1e-6),
            reserve,
            live_lease: live_lease.min(burst),
            batch_lease: batch_lease.min(burst.saturating_sub(reserve).max(1)),
            lease_ttl,
            reserve_share,
        }
    }

    /// Microseconds one token takes to refill, whole: the store counts whole microseconds, and a
    /// token rounded down would come a little early, so the fraction is rounded up.
    pub fn token_us(&self) -> f64 {
        (1e6 / self.per_second).ceil()
    }

    /// Microseconds a full bucket represents.
    pub fn tau_us(&self) -> i64 {
        (f64::from(self.burst) * self.token_us()).round() as i64
    }
}

/// How long a claimed token may wait before it is sent, with leases of at most `largest_lease`
/// tokens: a token claimed alone is sent at once; only the further tokens of a larger lease can be
/// held for up to the lease life.
fn held_for(lease_ttl: Duration, largest_lease: u32) -> Duration {
    if largest_lease > 1 {
        lease_ttl
    } else {
        Duration::ZERO
    }
}

/// The buckets of one CRM account: the general lane and, where the CRM has one, the search lane.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPlan {
    pub general: LaneSpec,
    pub search: Option<LaneSpec>,
    /// Names the account when the API host alone does not (`rateBudget.account`).
    pub account: Option<String>,
}

impl BudgetPlan {
    pub fn lane(&self, lane: Lane) -> Option<&LaneSpec> {
        match lane {
            Lane::General => Some(&self.general),
            Lane::Search => self.search.as_ref(),
        }
    }
}

/// What a CRM documents for one tier: the general limits and its search API's own limit.
#[derive(Debug, Clone, Copy)]
struct Documented {
    general: RateLimit,
    also: &'static [RateLimit],
    search: Option<RateLimit>,
}

/// HubSpot: per account (portal), shared by all its apps. Free/Starter 100 requests per 10 s;
/// Professional and Enterprise 190 per 10 s; with the API capacity pack 250 per 10 s. The CRM
/// search API has its own limit of 4 requests per second (a newer page says 5; 4 is kept).
/// Sources: developers.hubspot.com/changelog/increasing-our-api-limits,
/// developers.hubspot.com/changelog/crm-search-api-rate-limit-increase (crm-api-notes §2.8).
const HUBSPOT_SEARCH: RateLimit = RateLimit::per_seconds(4, 1);

fn hubspot(tier: &str) -> Option<Documented> {
    let requests = match tier {
        "free" | "starter" => 100,
        "professional" | "enterprise" => 190,
        "capacity-pack" | "api-add-on" => 250,
        _ => return None,
    };
    Some(Documented {
        general: RateLimit::per_seconds(requests, 10),
        also: &[],
        search: Some(HUBSPOT_SEARCH),
    })
}

/// Pipedrive, per API token in a 2-second window: Essential 20, Advanced 40, Professional 80,
/// Power 100, Enterprise 120; search endpoints 10 per 2 s on every plan. (Token-based daily
/// budgets are answered with `x-daily-ratelimit-token-remaining`, read by the adapter.)
/// Source: pipedrive.readme.io/docs/core-api-concepts-rate-limiting (crm-api-notes §3.8).
fn pipedrive(tier: &str) -> Option<Documented> {
    let requests = match tier {
        "essential" | "lite" => 20,
        "advanced" | "growth" => 40,
        "professional" | "premium" => 80,
        "power" => 100,
        "enterprise" | "ultimate" => 120,
        _ => return None,
    };
    Some(Documented {
        general: RateLimit::per_seconds(requests, 2),
        also: &[],
        search: Some(RateLimit::per_seconds(10, 2)),
    })
}

/// Salesforce: a rolling 24-hour org allocation; Enterprise and Professional 100,000 + 1,000 per
/// licence, Unlimited and Performance 100,000 + 5,000 per licence (`licenses` setting).
/// Source: Salesforce app limits cheat sheet (crm-api-notes §1.8).
fn salesforce(tier: &str, licenses: u32) -> Option<Documented> {
    let per_licence = match tier {
        "enterprise" | "professional" => 1_000,
        "unlimited" | "performance" => 5_000,
        _ => return None,
    };
    Some(Documented {
        general: RateLimit::per_seconds(100_000 + per_licence * licenses, DAY),
        also: &[],
        search: None,
    })
}

/// Zoho CRM: API credits per org in a rolling 24 hours (most calls cost one). Free 5,000;
/// Standard 50,000 + 250 per licence (at most 100,000); Professional 50,000 + 500 per licence
/// (at most 3,000,000); Enterprise 50,000 + 1,000 per licence (at most 5,000,000); Ultimate
/// 50,000 + 2,000 per licence. Source: zoho.com/crm/developer/docs/api/v4/api-limits.html
/// (crm-api-notes §4.8). The per-app concurrency caps are not a rate and are not budgeted.
fn zoho(tier: &str, licenses: u32) -> Option<Documented> {
    let credits = match tier {
        "free" => 5_000,
        "standard" | "starter" => (50_000 + 250 * licenses).min(100_000),
        "professional" => (50_000 + 500 * licenses).min(3_000_000),
        "enterprise" | "zoho-one" => (50_000 + 1_000 * licenses).min(5_000_000),
        "ultimate" | "crm-plus" => 50_000 + 2_000 * licenses,
        _ => return None,
    };
    Some(Documented {
        general: RateLimit::per_seconds(credits, DAY),
        also: &[],
        search: None,
    })
}

/// Freshsales: per account, all users together. Blossom and Garden (earlier Growth) 1,000 per
/// hour, Estate (Pro) 2,000, Forest (Enterprise) 5,000; paid plans also 400 per minute.
/// Sources: crmsupport.freshworks.com/en/support/solutions/articles/50000005599,
/// support.freshsales.io/support/solutions/articles/50000010026 (crm-api-notes §5.8).
const FRESHSALES_MINUTE: &[RateLimit] = &[RateLimit::per_seconds(400, 60)];

fn freshsales(tier: &str) -> Option<Documented> {
    let requests = match tier {
        "blossom" | "garden" | "growth" | "free" => 1_000,
        "estate" | "pro" => 2_000,
        "forest" | "enterprise" => 5_000,
        _ => return None,
    };
    Some(Documented {
        general: RateLimit::per_seconds(requests, 3600),
        also: FRESHSALES_MINUTE,
        search: None,
    })
}

/// Dynamics 365 (Dataverse) service protection: 6,000 requests per user (application user) in a
/// 5-minute sliding window, per web server. Source: learn.microsoft.com/power-apps/developer/
/// data-platform/api-limits (crm-notes/dynamics365.md §8). Execution-time and concurrency limits
/// are not budgeted.
fn dynamics() -> Documented {
    Documented {
        general: RateLimit::per_seconds(6_000, 300),
        also: &[],
        search: None,
    }
}

/// The tier a connection is assumed to be on when it names none: the lowest paid tier with API
/// access, so an unset connection never sends more than its CRM allows.
pub fn default_tier(crm: CrmType) -> Option<&'static str> {
    match crm {
        CrmType::Hubspot => Some("starter"),
        CrmType::Pipedrive => Some("essential"),
        CrmType::Salesforce => Some("enterprise"),
        CrmType::Zoho => Some("standard"),
        CrmType::Freshsales => Some("blossom"),
        CrmType::Dynamics => Some("default"),
        // Sugar documents no limit (crm-notes/sugarcrm.md §6): no budget unless one is set.
        CrmType::Sugarcrm => None,
    }
}

fn documented(crm: CrmType, tier: &str, licenses: u32) -> Option<Documented> {
    match crm {
        CrmType::Hubspot => hubspot(tier),
        CrmType::Pipedrive => pipedrive(tier),
        CrmType::Salesforce => salesforce(tier, licenses),
        CrmType::Zoho => zoho(tier, licenses),
        CrmType::Freshsales => freshsales(tier),
        CrmType::Dynamics => (tier == "default").then(dynamics),
        CrmType::Sugarcrm => None,
    }
}

/// The connection setting that sizes the budget.
const SETTING: &str = "rateBudget";

/// The budget plan of a connection from its `rateBudget` setting (`tier`, or `requests` and
/// `windowSeconds`; `searchRequests` and `searchWindowSeconds` for a CRM with a search limit;
/// `licenses`, `account`, `batchReserve`, `enabled`), else the CRM's default tier.
/// `None`: no budget (turned off, or a CRM without a documented limit and no numbers given).
pub fn plan_for(connection: &Connection) -> Result<Option<BudgetPlan>> {
    let invalid = |message: String| Error::ConnectionInvalid {
        id: connection.id_str().to_string(),
        message: format!("setting '{SETTING}': {message}"),
    };
    let crm = connection.crm_type;
    let empty = serde_json::Map::new();
    let setting = match connection.settings.extra.get(SETTING) {
        None | Some(Value::Null) => &empty,
        Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(invalid("must be an object or false".into())),
    };
    if setting.get("enabled") == Some(&Value::Bool(false)) {
        return Ok(None);
    }
    let number = |name: &str| -> Result<Option<f64>> {
        match setting.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(Some)
                .ok_or_else(|| invalid(format!("'{name}' must be a number"))),
        }
    };
    let text = |name: &str| -> Result<Option<String>> {
        match setting.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(invalid(format!("'{name}' must be a non-empty text"))),
        }
    };
    let licenses = number("licenses")?.unwrap_or(0.0).min(1e6) as u32;
    let reserve_share = number("batchReserve")?
        .unwrap_or(DEFAULT_BATCH_RESERVE)
        .clamp(0.0, 0.9);
    let tier = text("tier")?.map(|t| t.to_ascii_lowercase());
    let base = match tier.as_deref().or(default_tier(crm)) {
        Some(tier) => Some(
            documented(crm, tier, licenses)
                .ok_or_else(|| invalid(format!("'{tier}' is not a {crm} tier crm-sync knows")))?,
        ),
        None => None,
    };
    let explicit = match (number("requests")?, number("windowSeconds")?) {
        (Some(requests), window) => {
            let window = window.unwrap_or(1.0);
            if requests < 1.0 || window <= 0.0 {
                return Err(invalid(
                    "'requests' must be at least 1 and 'windowSeconds' positive".into(),
                ));
            }
            Some(RateLimit {
                requests: requests.min(f64::from(u32::MAX)) as u32,
                window: Duration::from_secs_f64(window.min(7.0 * DAY as f64)),
            })
        }
        (None, Some(_)) => return Err(invalid("'windowSeconds' needs 'requests'".into())),
        (None, None) => None,
    };
    let (general, also, search) = match (explicit, base) {
        // Numbers the operator gives replace the tier's general limit; other documented
        // limits (a search API's) still apply.
        (Some(limit), base) => (limit, &[][..], base.and_then(|b| b.search)),
        (None, Some(base)) => (base.general, base.also, base.search),
        (None, None) => return Ok(None),
    };
    // The search API's limit, where the CRM has one, may be given too.
    let search = match (search, number("searchRequests")?) {
        (Some(documented), Some(requests)) if requests >= 1.0 => Some(RateLimit {
            requests: requests.min(f64::from(u32::MAX)) as u32,
            window: match number("searchWindowSeconds")? {
                Some(seconds) if seconds > 0.0 => {
                    Duration::from_secs_f64(seconds.min(7.0 * DAY as f64))
                }
                _ => documented.window,
            },
        }),
        (Some(_), Some(_)) => return Err(invalid("'searchRequests' must be at least 1".into())),
        // A CRM without a separate search limit has nothing for it to replace.
        (search, _) => search,
    };
    Ok(Some(BudgetPlan {
        general: LaneSpec::sized(general, also, reserve_share),
        search: search.map(|limit| LaneSpec::sized(limit, &[], reserve_share)),
        account: text("account")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ConnectionSettings;
    use serde_json::json;

    fn connection(crm: CrmType, setting: Option<Value>) -> Connection {
        let mut settings = ConnectionSettings::default();
        if let Some(setting) = setting {
            settings.extra.insert(SETTING.into(), setting);
        }
        Connection {
            id: None,
            crm_type: crm,
            credentials: Default::default(),
            settings,
        }
    }

    /// In any stretch of the window (plus what a lease and the network add) the bucket lets at
    /// most the documented number of requests through.
    fn keeps_its_limits(spec: &LaneSpec) {
        for limit in std::iter::once(&spec.limit).chain(&spec.also) {
            let held = held_for(spec.lease_ttl, spec.live_lease.max(spec.batch_lease));
            let span = (limit.window + held + SEND_SLACK).as_secs_f64();
            let most = f64::from(spec.burst) + spec.per_second * span;
            assert!(
                most < f64::from(limit.requests) + 1.0,
                "{spec:?} lets {most} through"
            );
            assert!(
                most_in_a_stretch(spec, span) <= limit.requests,
                "{spec:?} sends {} in {span} s",
                most_in_a_stretch(spec, span)
            );
        }
        assert!(spec.reserve < spec.burst, "{spec:?}");
        assert!(spec.reserve + spec.batch_lease <= spec.burst, "{spec:?}");
        assert!(spec.live_lease >= 1 && spec.live_lease <= spec.burst);
    }

    /// The most tokens the bucket grants within `span_s` seconds of a grant when every take
    /// comes at the earliest instant the store allows it (a full bucket at the start, as
    /// the store computes it: whole microseconds, a take fits when `max(full_at, now) + cost`
    /// is within the bucket's room of now).
    fn most_in_a_stretch(spec: &LaneSpec, span_s: f64) -> u32 {
        let cost = spec.token_us() as i64;
        let tau = spec.tau_us();
        let span = (span_s * 1e6).round() as i64;
        let mut full_at = 0i64;
        let mut now = 0i64;
        let mut grants = Vec::new();
        while grants.len() < 3 * spec.limit.requests as usize + 3 * spec.burst as usize {
            now = now.max(full_at + cost - tau);
            full_at = full_at.max(now) + cost;
            grants.push(now);
        }
        let mut most = 0;
        let mut end = 0;
        for (start, at) in grants.iter().enumerate() {
            while end < grants.len() && grants[end] < at + span {
                end += 1;
            }
            if end == grants.len() {
                break;
            }
            most = most.max(end - start);
        }
        most as u32
    }

    #[test]
    fn every_default_tier_is_sized_under_its_documented_limit() {
        for crm in CrmType::ALL {
            let Some(plan) = plan_for(&connection(crm, None)).unwrap() else {
                assert_eq!(crm, CrmType::Sugarcrm, "only Sugar documents no limit");
                continue;
            };
            keeps_its_limits(&plan.general);
            if let Some(search) = &plan.search {
                keeps_its_limits(search);
            }
        }
    }

    #[test]
    fn hubspot_starter_is_100_per_10_seconds_with_a_search_lane_of_4_per_second() {
        let plan = plan_for(&connection(CrmType::Hubspot, None))
            .unwrap()
            .unwrap();
        assert_eq!(plan.general.limit, RateLimit::per_seconds(100, 10));
        assert_eq!(plan.general.burst, 5);
        assert_eq!(plan.general.reserve, 2);
        assert_eq!(plan.general.live_lease, 1);
        assert_eq!(plan.general.batch_lease, 2);
        assert_eq!(plan.general.lease_ttl, Duration::from_millis(250));
        // 92.8% of the limit: just under 96 of 100 requests spread over 10 s + 0.25 s + 0.1 s.
        assert!((plan.general.per_second - 95.999 / 10.35).abs() < 1e-9);
        assert_eq!(plan.search.unwrap().limit, HUBSPOT_SEARCH);
    }

    #[test]
    fn pipedrive_essential_leases_one_token_so_no_lease_life_is_allowed_for() {
        let plan = plan_for(&connection(CrmType::Pipedrive, None))
            .unwrap()
            .unwrap();
        assert_eq!(plan.general.limit, RateLimit::per_seconds(20, 2));
        assert_eq!(
            (plan.general.burst, plan.general.reserve),
            (2, 1),
            "a live lease and a batch lease"
        );
        assert_eq!((plan.general.live_lease, plan.general.batch_lease), (1, 1));
        // 90.4% of the limit: just under 19 of 20 requests spread over 2 s + 0.1 s of send
        // slack; a token claimed alone is sent at once, so the 0.1 s lease life adds nothing.
        assert!((plan.general.per_second - 18.999 / 2.1).abs() < 1e-9);
        assert_eq!(most_in_a_stretch(&plan.general, 2.1), 20);
        keeps_its_limits(&plan.general);
    }

    #[test]
    fn freshsales_keeps_the_per_minute_cap_too() {
        let plan = plan_for(&connection(
            CrmType::Freshsales,
            Some(json!({"tier": "forest"})),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(plan.general.limit, RateLimit::per_seconds(5_000, 3600));
        keeps_its_limits(&plan.general);
        assert!(plan.general.burst < 400);
    }

    #[test]
    fn tiers_licences_numbers_and_off_are_read_from_the_setting() {
        let salesforce = plan_for(&connection(
            CrmType::Salesforce,
            Some(json!({"tier": "unlimited", "licenses": 10})),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(salesforce.general.limit.requests, 150_000);
        let explicit = plan_for(&connection(
            CrmType::Sugarcrm,
            Some(json!({"requests": 500, "windowSeconds": 60, "account": "acme"})),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(explicit.general.limit, RateLimit::per_seconds(500, 60));
        assert_eq!(explicit.account.as_deref(), Some("acme"));
        let search = plan_for(&connection(
            CrmType::Hubspot,
            Some(json!({"tier": "enterprise", "searchRequests": 5})),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(search.general.limit, RateLimit::per_seconds(190, 10));
        assert_eq!(
            search.search.unwrap().limit,
            RateLimit::per_seconds(5, 1),
            "HubSpot's newer page says 5 searches a second"
        );
        let no_lane = plan_for(&connection(
            CrmType::Salesforce,
            Some(json!({"searchRequests": 5})),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(no_lane.search, None, "Salesforce has no search lane");
        assert_eq!(
            plan_for(&connection(CrmType::Sugarcrm, None)).unwrap(),
            None
        );
        assert_eq!(
            plan_for(&connection(CrmType::Hubspot, Some(json!(false)))).unwrap(),
            None
        );
        assert_eq!(
            plan_for(&connection(
                CrmType::Hubspot,
                Some(json!({"enabled": false}))
            ))
            .unwrap(),
            None
        );
    }

    #[test]
    fn an_unknown_tier_or_a_bad_number_is_a_typed_connection_error() {
        for setting in [
            json!({"tier": "platinum"}),
            json!({"requests": "many"}),
            json!({"windowSeconds": 10}),
            json!("fast"),
        ] {
            let error = plan_for(&connection(CrmType::Hubspot, Some(setting.clone()))).unwrap_err();
            assert!(
                matches!(&error, Error::ConnectionInvalid { message, .. } if message.contains("rateBudget")),
                "{setting}: {error:?}"
            );
        }
    }
}
