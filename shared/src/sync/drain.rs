//! `scheduled-sync`: drains what is due (queued batch items, transient failures, lost answers,
//! abandoned syncs) per connection, in order, through the same exactly-once path as the single
//! endpoints (new customers in the CRM's bulk write where it has one, each claimed and recorded
//! as its own sync), and stops starting work when its time budget runs out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use serde::Serialize;

use super::{App, AppointmentPayload, Claim, SyncResult, Target};
use crate::connection::ConnectionId;
use crate::crm::{self, BulkContact, Upserted};
use crate::domain::{Customer, Lead};
use crate::error::{Error, Result};
use crate::store::{EntityKind, SyncRecord, SyncStatus};

/// Records read per status and pass; a pass is followed by another until nothing is due.
const READ_PER_STATUS: usize = 1000;
/// Connections drained at once.
const CONNECTIONS_AT_ONCE: usize = 4;

/// When a run stops starting records: its deadline less a reserve for the records in flight.
#[derive(Debug, Clone, Copy)]
pub struct TimeBudget {
    start_by: Instant,
}

/// The time a run takes when its runtime gives no real deadline (a local run).
pub const LOCAL_RUN: Duration = Duration::from_secs(60);

impl TimeBudget {
    /// Starts records until `start_by`.
    pub fn until(start_by: Instant) -> Self {
        TimeBudget { start_by }
    }

    /// Starts records for `duration` from now.
    pub fn of(duration: Duration) -> Self {
        Self::until(Instant::now() + duration)
    }

    /// A Lambda invocation's budget: its deadline (wall clock) less `reserve`, so that a sync
    /// started just before the cut finishes before the function is stopped. The reserve takes
    /// at most half the time (a short local invocation still drains). A deadline already passed
    /// when the invocation starts is not Lambda's (Lambda stops a function at its deadline);
    /// local runtimes send the invocation's own instant, and then `LOCAL_RUN` is the budget.
    pub fn before_deadline(deadline: SystemTime, reserve: Duration) -> Self {
        let left = match deadline.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => left,
            _ => {
                tracing::warn!(
                    budget_s = LOCAL_RUN.as_secs(),
                    "the invocation's deadline has already passed (a local runtime's); running for a fixed time"
                );
                LOCAL_RUN
            }
        };
        Self::of(left.saturating_sub(reserve).max(left / 2))
    }

    fn allows_another(&self) -> bool {
        Instant::now() < self.start_by
    }
}

/// What a run did. `done` is false when the budget ran out with work still due.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainSummary {
    /// Records attempted.
    pub examined: usize,
    pub synced: usize,
    pub failed: usize,
    /// Due for a person, not for the schedule (data the CRM refused, too many attempts), or
    /// held by another sync right now.
    pub skipped: usize,
    pub done: bool,
}

impl DrainSummary {
    fn add(&mut self, other: &DrainSummary) {
        self.examined += other.examined;
        self.synced += other.synced;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

/// What a record asks the CRM to hold, read back from its stored payload.
pub(super) enum Work {
    Customer(Customer),
    Lead(Lead),
    Appointment(AppointmentPayload),
}

impl Work {
    pub(super) fn read(record: &SyncRecord) -> Result<Work> {
        let corrupt = |e: serde_json::Error| {
            Error::Store(format!(
                "stored payload of {} is unreadable: {e}",
                record.sync_id
            ))
        };
        let payload = record.payload.clone();
        Ok(match record.entity {
            EntityKind::Customer => {
                Work::Customer(serde_json::from_value(payload).map_err(corrupt)?)
            }
            EntityKind::Lead => Work::Lead(serde_json::from_value(payload).map_err(corrupt)?),
            EntityKind::Appointment => {
                Work::Appointment(serde_json::from_value(payload).map_err(corrupt)?)
            }
        })
    }

    /// What identifies the person the work touches: records that share one run in order, since
    /// they may reach the same CRM contact.
    fn people(&self) -> Vec<String> {
        let of = |person: &Customer| {
            let mut keys = Vec::new();
            if let Some(email) = &person.email {
                keys.push(format!("email:{}", email.as_str()));
            }
            if let Some(phone) = &person.phone {
                keys.push(format!("phone:{}", phone.as_str()));
            }
            keys
        };
        match self {
            Work::Customer(customer) => of(customer),
            Work::Lead(lead) => of(&lead.person),
            Work::Appointment(payload) => {
                let mut keys = payload.customer.as_ref().map(of).unwrap_or_default();
                if let Some(id) = &payload.customer_id {
                    keys.push(format!("contact:{id}"));
                }
                keys
            }
        }
    }
}

impl App {
    /// One run of the scheduled sync: every connection's due records, oldest first, until
    /// nothing is due or `budget` runs out. Each record is attempted at most once per run. Its
    /// CRM calls are batch work: they leave each account's live reserve to n8n's calls.
    pub async fn scheduled_sync(&self, budget: &TimeBudget) -> Result<DrainSummary> {
        crate::budget::run_as(crate::budget::Priority::Batch, self.drain_due(budget)).await
    }

    async fn drain_due(&self, budget: &TimeBudget) -> Result<DrainSummary> {
        let mut summary = DrainSummary::default();
        let mut attempted: HashSet<String> = HashSet::new();
        let mut first_pass = true;
        let started = Instant::now();
        loop {
            if !budget.allows_another() {
                tracing::info!(?summary, "scheduled sync stopped by its time budget");
                return Ok(summary);
            }
            let (due, not_for_the_schedule) = self.due_records(&attempted).await?;
            if first_pass {
                summary.skipped += not_for_the_schedule;
                first_pass = false;
            }
            if due.is_empty() {
                summary.done = true;
                return Ok(summary);
            }
            attempted.extend(due.values().flatten().map(|r| r.sync_id.clone()));
            // Boxed as `Send` here, where its lifetimes are known (rustc cannot prove it later).
            let runs: BoxFuture<'_, Vec<DrainSummary>> = Box::pin(
                stream::iter(due)
                    .map(|(connection_id, records)| {
                        self.drain_connection(connection_id, records, budget)
                    })
                    .buffer_unordered(CONNECTIONS_AT_ONCE)
                    .collect(),
            );
            let runs = runs.await;
            for run in &runs {
                summary.add(run);
            }
            tracing::info!(
                done = summary.examined,
                synced = summary.synced,
                per_second = summary.examined as f64 / started.elapsed().as_secs_f64().max(0.001),
                "scheduled sync progress"
            );
        }
    }

    /// Due records by connection, each connection's oldest first; and how many records wait
    /// for a person rather than the schedule.
    async fn due_records(
        &self,
        attempted: &HashSet<String>,
    ) -> Result<(BTreeMap<String, Vec<SyncRecord>>, usize)> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(self.config.sync_lease).unwrap_or_default();
        let settle = self.settle_time();
        let read = READ_PER_STATUS + attempted.len();
        let mut due = Vec::new();
        let mut for_a_person = 0;
        for status in [SyncStatus::Pending, SyncStatus::Unknown, SyncStatus::Failed] {
            for record in self.records.list_by_status(status, read).await? {
                if attempted.contains(&record.sync_id) {
                    continue;
                }
                let retryable = match record.status {
                    // Queued work is always due; a claimed record once its holder is gone.
                    SyncStatus::Pending => record.queued || !record.in_progress(now, lease),
                    // A request that timed out may still land: not before it settled.
                    SyncStatus::Unknown => now - record.updated_at >= settle,
                    SyncStatus::Failed => record.last_error.as_ref().is_none_or(|e| e.transient),
                    SyncStatus::Synced => false,
                };
                let exhausted = !record.queued && record.attempts >= self.config.max_sync_attempts;
                if retryable && !exhausted {
                    due.push(record);
                } else if record.status == SyncStatus::Failed || exhausted {
                    for_a_person += 1;
                }
            }
        }
        due.sort_by_key(|r| r.updated_at);
        let mut by_connection: BTreeMap<String, Vec<SyncRecord>> = BTreeMap::new();
        for record in due {
            by_connection
                .entry(record.connection_id.clone())
                .or_default()
                .push(record);
        }
        Ok((by_connection, for_a_person))
    }

    async fn drain_connection(
        &self,
        connection_id: String,
        records: Vec<SyncRecord>,
        budget: &TimeBudget,
    ) -> DrainSummary {
        match self.target_of(&connection_id).await {
            Ok(target) => self.sync_due(&target, records, budget).await,
            Err(error) => {
                // Kept for the next run: the connection may be fixed by then.
                tracing::warn!(connection_id, code = error.code(), error = %error, "cannot drain a connection");
                DrainSummary {
                    skipped: records.len(),
                    ..Default::default()
                }
            }
        }
    }

    /// Syncs a connection's due records, oldest first: one person's records one after another,
    /// different people's up to `Config::drain_concurrency` at once. Each goes through the same
    /// exactly-once path as a single request. Where the CRM has a bulk contact write, the
    /// customers that lead their person's records go through it first, a bulk size a call.
    async fn sync_due(
        &self,
        target: &Target,
        records: Vec<SyncRecord>,
        budget: &TimeBudget,
    ) -> DrainSummary {
        let mut summary = DrainSummary::default();
        let mut readable = Vec::new();
        for record in records {
            match Work::read(&record) {
                Ok(work) => readable.push((record, work)),
                Err(error) => {
                    tracing::error!(sync_id = %record.sync_id, error = %error, "skipping a record");
                    summary.skipped += 1;
                }
            }
        }
        let mut lanes = lanes_by_person(readable);
        let bulk_size = target.adapter.bulk_contact_limit();
        if bulk_size > 1 {
            let heads = take_bulk_heads(&mut lanes);
            for chunk in heads.chunks(bulk_size) {
                if !budget.allows_another() {
                    break;
                }
                summary.add(&self.sync_contacts_in_bulk(target, chunk).await);
            }
        }
        let runs: BoxFuture<'_, Vec<DrainSummary>> = Box::pin(
            stream::iter(lanes)
            .map(|lane| async move {
                let mut run = DrainSummary::default();
                for (record, work) in lane {
                    if !budget.allows_another() {
                        break;
                    }
                    run.examined += 1;
                    match self.sync_work(target, &work).await {
                        Ok(()) => run.synced += 1,
                        Err(failure) if failure.error == Error::SyncInProgress => run.skipped += 1,
                        Err(failure) => {
                            run.failed += 1;
                            tracing::warn!(sync_id = %record.sync_id, code = failure.error.code(), "scheduled sync of a record failed");
                        }
                    }
                }
                run
            })
            .buffer_unordered(self.config.drain_concurrency)
            .collect(),
        );
        for run in &runs.await {
            summary.add(run);
        }
        summary
    }

    /// One bulk write of customers: each is claimed as its own sync would claim it, the claimed
    /// ones go to the CRM in one call, and each outcome is recorded as its own sync's would be.
    /// A customer the bulk call refused is synced alone under the same claim.
    async fn sync_contacts_in_bulk(
        &self,
        target: &Target,
        chunk: &[(SyncRecord, Customer)],
    ) -> DrainSummary {
        let mut run = DrainSummary {
            examined: chunk.len(),
            ..Default::default()
        };
        let concurrency = self.config.drain_concurrency.max(1);
        type Claims<'c> = Vec<(&'c SyncRecord, &'c Customer, SyncResult<Claim>)>;
        let claims: BoxFuture<'_, Claims<'_>> = Box::pin(
            stream::iter(chunk)
                .map(|(record, customer)| async move {
                    let claim = match serde_json::to_value(customer) {
                        Ok(payload) => {
                            self.claim(target, EntityKind::Customer, customer.source_key(), payload)
                                .await
                        }
                        Err(e) => Err(Error::Store(e.to_string()).into()),
                    };
                    (record, customer, claim)
                })
                .buffered(concurrency)
                .collect(),
        );
        let mut claimed = Vec::new();
        for (record, customer, claim) in claims.await {
            match claim {
                Ok(Claim::Settled(_)) => run.synced += 1,
                Ok(Claim::Claimed(claim)) => claimed.push((claim, customer)),
                Err(failure) if failure.error == Error::SyncInProgress => run.skipped += 1,
                Err(failure) => {
                    run.failed += 1;
                    tracing::warn!(sync_id = %record.sync_id, code = failure.error.code(), "scheduled sync of a record failed");
                }
            }
        }
        if claimed.is_empty() {
            return run;
        }
        let contacts: Vec<BulkContact<'_>> = claimed
            .iter()
            .map(|(claim, customer)| BulkContact {
                customer,
                plan: &claim.plan,
            })
            .collect();
        let (written, unanswered) =
            crm::http::track_unanswered_writes(target.adapter.upsert_contacts(&contacts)).await;
        let outcomes: Vec<(Result<Upserted>, bool)> = match written {
            Ok(outcomes) if outcomes.len() == claimed.len() => {
                outcomes.into_iter().map(|o| (o, false)).collect()
            }
            Ok(outcomes) => {
                let error = Error::CrmUnavailable(format!(
                    "the bulk write answered {} outcomes for {} contacts",
                    outcomes.len(),
                    claimed.len()
                ));
                vec![(Err(error), true); claimed.len()]
            }
            Err(error) => vec![(Err(error), unanswered); claimed.len()],
        };
        let country = &target.defaults.country;
        let finished: BoxFuture<'_, Vec<SyncResult<_>>> = Box::pin(
            stream::iter(claimed.into_iter().zip(outcomes))
            .map(|((claim, customer), (outcome, unanswered))| async move {
                match outcome {
                    // Refused by the bulk call alone (its data, a duplicate): synced alone.
                    Err(refused) if !unanswered && refused.is_record_refusal() => {
                        tracing::info!(sync_id = %claim.record.sync_id, code = refused.code(), "the bulk write refused a contact; syncing it alone");
                        let alone = crm::upsert_contact(
                            target.adapter.as_ref(),
                            customer,
                            &claim.plan,
                            country,
                        );
                        let (result, unanswered) = crm::http::track_unanswered_writes(alone).await;
                        self.finish(target, claim, result, unanswered).await
                    }
                    outcome => self.finish(target, claim, outcome, unanswered).await,
                }
            })
            .buffer_unordered(concurrency)
            .collect(),
        );
        for result in finished.await {
            match result {
                Ok(_) => run.synced += 1,
                Err(failure) => {
                    run.failed += 1;
                    tracing::warn!(sync_id = ?failure.sync_id, code = failure.error.code(), "scheduled sync of a record failed");
                }
            }
        }
        run
    }

    /// The connection a stored record names, resolved as a request's would be.
    async fn target_of(&self, connection_id: &str) -> Result<Target> {
        let connection_id = ConnectionId::parse(connection_id)?;
        let connection = self.connections.get(&connection_id).await?;
        let defaults = connection.settings.validation_defaults()?;
        let adapter = crm::adapter_for(&connection, &self.adapters)?;
        Ok(Target {
            connection_id,
            connection,
            adapter,
            defaults,
        })
    }

    /// Runs `work` again through the single endpoints' path.
    pub(super) async fn sync_work(&self, target: &Target, work: &Work) -> SyncResult<()> {
        match work {
            Work::Customer(customer) => self.sync_contact(target, customer).await.map(|_| ()),
            Work::Lead(lead) => self.sync_lead_entity(target, lead).await.map(|_| ()),
            Work::Appointment(payload) => self
                .sync_appointment_payload(target, payload.clone())
                .await
                .map(|_| ()),
        }
    }

    /// Runs unknown, failed and abandoned pending records again, oldest first, with no time
    /// limit (the admin CLI's `records replay`).
    pub async fn replay_failed(&self) -> Result<DrainSummary> {
        self.scheduled_sync(&TimeBudget::of(Duration::from_secs(86_400)))
            .await
    }
}

/// Takes the customers that lead their lane and a bulk write can take (an email, no CRM id
/// yet: the bulk write matches by email, and a known contact is updated by its id): the rest of
/// each lane runs after them, in order.
fn take_bulk_heads(lanes: &mut Vec<Vec<(SyncRecord, Work)>>) -> Vec<(SyncRecord, Customer)> {
    let mut heads = Vec::new();
    let mut emails = HashSet::new();
    for lane in lanes.iter_mut() {
        let takes = match lane.first() {
            Some((record, Work::Customer(customer))) => {
                record.crm_id.is_none()
                    && customer
                        .email
                        .as_ref()
                        .is_some_and(|email| emails.insert(email.as_str().to_lowercase()))
            }
            _ => false,
        };
        if takes && let (record, Work::Customer(customer)) = lane.remove(0) {
            heads.push((record, customer));
        }
    }
    lanes.retain(|lane| !lane.is_empty());
    heads
}

/// Groups records (in order) into lanes: records that share a person (an email, a phone, a CRM
/// contact id) land in one lane, in their order; lanes are ordered by their first record.
fn lanes_by_person(records: Vec<(SyncRecord, Work)>) -> Vec<Vec<(SyncRecord, Work)>> {
    let mut parent: Vec<usize> = (0..records.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_with: HashMap<String, usize> = HashMap::new();
    for (i, (_, work)) in records.iter().enumerate() {
        for person in work.people() {
            match first_with.get(&person) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    // The earlier record stays the root, so lanes keep their first record's place.
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    first_with.insert(person, i);
                }
            }
        }
    }
    let mut lanes: BTreeMap<usize, Vec<(SyncRecord, Work)>> = BTreeMap::new();
    for (i, entry) in records.into_iter().enumerate() {
        let lane = root(&mut parent, i);
        lanes.entry(lane).or_default().push(entry);
    }
    lanes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_already_passed_is_a_local_runtimes_and_gets_a_fixed_run() {
        let past = SystemTime::now() - Duration::from_secs(5);
        let budget = TimeBudget::before_deadline(past, Duration::from_secs(30));
        assert!(budget.allows_another());
        let left = budget.start_by - Instant::now();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
    }

    #[test]
    fn a_lambda_deadline_keeps_the_reserve() {
        let deadline = SystemTime::now() + Duration::from_secs(100);
        let budget = TimeBudget::before_deadline(deadline, Duration::from_secs(30));
        let left = budget.start_by - Instant::now();
        assert!(left > Duration::from_secs(69) && left <= Duration::from_secs(70));
    }
}
