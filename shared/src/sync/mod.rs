//! The operations of crm-sync: validate, record, call the CRM, record the outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Config, StoreKind};
use crate::connection::{Connection, ConnectionId};
use crate::crm::{
    self, AccountInfo, AdapterContext, ContactLookup, CrmAdapter, CrmContact, CrmHttp, NotStored,
    Outcome, Upserted, WritePlan,
};
use crate::domain::{
    self, Appointment, CrmType, Customer, E164Phone, Email, Fields, Lead, ValidationDefaults,
};
use crate::error::{Error, Result};
use crate::requests::{
    check_claim, claimed_crm_type, connection_id, inline_connection, read_appointment_request,
    read_lookup,
};
use crate::store::{
    ConnectionStore, EntityKind, RecordKey, SyncRecord, SyncRecordStore, SyncStatus, WriteOutcome,
    sha256_hex,
};

/// An error, with the sync record it was recorded in when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: Error,
    pub sync_id: Option<String>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            sync_id: None,
        }
    }
}

pub type SyncResult<T> = std::result::Result<T, Failure>;

mod batch;
mod drain;
mod records;

pub use batch::{BatchAccepted, BatchRequest, MAX_BATCH_BYTES, MAX_BATCH_ITEMS};
pub use drain::{DrainSummary, TimeBudget};
pub use records::{RecordsAnswer, ReplayAnswer};

/// Everything a function needs, built once per cold start.
pub struct App {
    pub config: Config,
    pub connections: Arc<dyn ConnectionStore>,
    pub records: Arc<dyn SyncRecordStore>,
    pub adapters: AdapterContext,
}

/// The result of syncing one entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntitySync {
    pub sync_id: Option<String>,
    pub crm_id: String,
    pub status: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    pub sync_id: Option<String>,
    pub status: Outcome,
    pub crm_type: CrmType,
    pub crm_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<EntitySync>,
    /// Fields of the request the CRM keeps nowhere (no standard field, none mapped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_stored: Vec<NotStored>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentSyncResponse {
    pub sync_id: Option<String>,
    pub status: Outcome,
    pub crm_type: CrmType,
    pub contact: EntitySync,
    pub appointment: EntitySync,
    /// Fields of the request the CRM keeps nowhere (no standard field, none mapped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_stored: Vec<NotStored>,
}

/// A contact in our normalised shape, as `get-customer` answers it: the CRM's record plus its
/// first phone number in E.164 form (as stored when it cannot be normalised).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerView {
    #[serde(flatten)]
    pub contact: CrmContact,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestConnectionResponse {
    pub ok: bool,
    pub crm_type: CrmType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Works, but needs the account admin's attention (a missing stamp field).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TestConnectionError>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestConnectionError {
    pub code: String,
    pub message: String,
}

/// The stored form of an appointment sync: all it needs to run again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentPayload {
    pub(crate) appointment: Appointment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) customer: Option<Customer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) customer_id: Option<String>,
}

/// A sync request read and checked against the connection it names, not yet run: everything
/// that can refuse it as malformed has run, nothing has been claimed or written.
pub struct Prepared<T> {
    target: Target,
    request: T,
}

impl AppointmentPayload {
    /// The booking id, else the person and the start: without a booking id, the same person
    /// at the same start is the same appointment.
    fn source_key(&self) -> String {
        match (
            &self.appointment.external_id,
            &self.customer,
            &self.customer_id,
        ) {
            (Some(external_id), _, _) => format!("external:{external_id}"),
            (None, Some(customer), _) => format!(
                "{}@{}",
                customer.source_key(),
                self.appointment.window.start()
            ),
            (None, None, id) => format!(
                "contact:{}@{}",
                id.as_deref().unwrap_or(""),
                self.appointment.window.start()
            ),
        }
    }
}

/// The customer of a `sync-customer` body (or a batch item shaped like one). Every alias given is
/// checked; the first is used.
fn parse_customer_request(fields: &Fields<'_>, defaults: &ValidationDefaults) -> Result<Customer> {
    let mut customers = fields
        .children(&["customer", "customerData"])?
        .iter()
        .map(|customer| domain::parse_customer(customer, defaults))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    customers
        .next()
        .ok_or_else(|| Error::validation(fields.path("customer"), "is required (or customerData)"))
}

/// The lead of a `sync-lead` body (or a batch item shaped like one). Every alias given is
/// checked; the first is used.
fn parse_lead_request(fields: &Fields<'_>, defaults: &ValidationDefaults) -> Result<Lead> {
    let mut leads = fields
        .children(&["lead", "leadData"])?
        .iter()
        .map(|lead| domain::parse_lead(lead, defaults))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    leads
        .next()
        .ok_or_else(|| Error::validation(fields.path("lead"), "is required (or leadData)"))
}

/// The appointment and its customer of a `sync-appointment` body (or a batch item shaped like
/// one).
fn parse_appointment_request(
    fields: &Fields<'_>,
    defaults: &ValidationDefaults,
) -> Result<AppointmentPayload> {
    read_appointment_request(fields, defaults)
}

/// A connection and its adapter, resolved from a request.
struct Target {
    connection_id: ConnectionId,
    connection: Connection,
    adapter: Box<dyn CrmAdapter>,
    defaults: ValidationDefaults,
}

impl App {
    /// Builds the stores the configuration names. AWS clients come from `aws-config`, so
    /// `AWS_ENDPOINT_URL` and the usual credential chain apply.
    pub async fn from_env() -> Self {
        Self::from_config(Config::from_env()).await
    }

    /// Builds the stores `config` names. Nothing here does I/O: the AWS SDK configuration and
    /// clients are built by the first call that needs them, so `platforms` never builds one.
    /// Connections are cached in the container (`store::cached`).
    pub async fn from_config(config: Config) -> Self {
        let (connections, records) = match config.store {
            StoreKind::Aws => {
                use crate::store::aws::{
                    DynamoDbSyncRecordStore, LazySdkConfig, SecretsManagerConnectionStore,
                };
                let sdk = LazySdkConfig::default();
                let secrets =
                    SecretsManagerConnectionStore::lazy(sdk.clone(), &config.secret_prefix);
                let records = DynamoDbSyncRecordStore::lazy(sdk, &config.table_name);
                return Self::on_aws(config, secrets, records);
            }
            StoreKind::Local => crate::store::local::open(&config.data_dir),
        };
        Self::new(config, Arc::new(connections), Arc::new(records))
    }

    /// The production wiring: connections from Secrets Manager, cached in the container for
    /// `Config::connection_cache_ttl`; sync records in DynamoDB.
    pub fn on_aws(
        config: Config,
        secrets: crate::store::aws::SecretsManagerConnectionStore,
        records: crate::store::aws::DynamoDbSyncRecordStore,
    ) -> Self {
        let connections = crate::store::cached::CachedConnectionStore::new(
            Arc::new(secrets),
            config.connection_cache_ttl,
        );
        let budgets = Arc::new(records.budget_store());
        Self::new(config, Arc::new(connections), Arc::new(records)).with_budget_store(budgets)
    }

    /// The same app with the CRM accounts' rate budgets kept in `store`.
    pub fn with_budget_store(mut self, store: Arc<dyn crate::store::budget::BudgetStore>) -> Self {
        self.adapters.budgets = crate::budget::Budgets::from_config(&self.config, store);
        self
    }

    pub fn new(
        config: Config,
        connections: Arc<dyn ConnectionStore>,
        records: Arc<dyn SyncRecordStore>,
    ) -> Self {
        let adapters = AdapterContext {
            http: CrmHttp::new(&config),
            connections: connections.clone(),
            records: records.clone(),
            budgets: crate::budget::Budgets::from_config(
                &config,
                crate::budget::Budgets::default_store(&config),
            ),
        };
        App {
            config,
            connections,
            records,
            adapters,
        }
    }

    /// Resolves the connection a request names and reads the request (`read`) against its
    /// settings, so a malformed request is refused before anything is claimed or written. A
    /// request naming an unknown connection is read against the default settings first: a
    /// malformed one is still a 400, a well-formed one a 404.
    async fn prepare<T>(
        &self,
        body: &Fields<'_>,
        read: impl Fn(&ValidationDefaults) -> Result<T>,
    ) -> Result<Prepared<T>> {
        if body.has("credentials") {
            return Err(Error::validation(
                "credentials",
                "credentials are not accepted in sync requests; store them as a connection and send its connectionId",
            ));
        }
        let connection_id = connection_id(body)?.ok_or_else(|| {
            Error::validation(
                "connectionId",
                "is required: the id of a stored CRM connection",
            )
        })?;
        let claimed = claimed_crm_type(body)?;
        let connection = match self.connections.get(&connection_id).await {
            Err(not_found @ Error::ConnectionNotFound(_)) => {
                read(&ValidationDefaults::default())?;
                return Err(not_found);
            }
            found => found?,
        };
        check_claim(claimed, &connection_id, &connection)?;
        let defaults = connection.settings.validation_defaults()?;
        let request = read(&defaults)?;
        let adapter = crm::adapter_for(&connection, &self.adapters)?;
        Ok(Prepared {
            target: Target {
                connection_id,
                connection,
                adapter,
                defaults,
            },
            request,
        })
    }

    /// `POST sync-customer`: upsert a contact.
    pub async fn sync_customer(&self, body: &Value) -> SyncResult<SyncResponse> {
        let prepared = self.prepare_customer(body).await?;
        self.run_customer(prepared).await
    }

    pub async fn prepare_customer(&self, body: &Value) -> Result<Prepared<Customer>> {
        let fields = Fields::new("", body)?;
        self.prepare(&fields, |defaults| {
            parse_customer_request(&fields, defaults)
        })
        .await
    }

    pub async fn run_customer(&self, prepared: Prepared<Customer>) -> SyncResult<SyncResponse> {
        let Prepared {
            target,
            request: customer,
        } = prepared;
        let synced = self.sync_contact(&target, &customer).await?;
        Ok(SyncResponse {
            sync_id: synced.sync_id,
            status: synced.status,
            crm_type: target.connection.crm_type,
            crm_id: synced.crm_id,
            contact: None,
            not_stored: not_stored_of(&target, "customer", &customer),
        })
    }

    async fn sync_contact(&self, target: &Target, customer: &Customer) -> SyncResult<EntitySync> {
        let payload = serde_json::to_value(customer).map_err(|e| Error::Store(e.to_string()))?;
        let country = target.defaults.country.clone();
        self.run_synced(
            target,
            EntityKind::Customer,
            customer.source_key(),
            payload,
            |plan| async move {
                crm::upsert_contact(target.adapter.as_ref(), customer, &plan, &country).await
            },
        )
        .await
    }

    /// `POST sync-appointment`: upsert the contact, then the meeting linked to it.
    pub async fn sync_appointment(&self, body: &Value) -> SyncResult<AppointmentSyncResponse> {
        let prepared = self.prepare_appointment(body).await?;
        self.run_appointment(prepared).await
    }

    pub async fn prepare_appointment(&self, body: &Value) -> Result<Prepared<AppointmentPayload>> {
        let fields = Fields::new("", body)?;
        self.prepare(&fields, |defaults| {
            parse_appointment_request(&fields, defaults)
        })
        .await
    }

    pub async fn run_appointment(
        &self,
        prepared: Prepared<AppointmentPayload>,
    ) -> SyncResult<AppointmentSyncResponse> {
        self.sync_appointment_payload(&prepared.target, prepared.request)
            .await
    }

    async fn sync_appointment_payload(
        &self,
        target: &Target,
        payload: AppointmentPayload,
    ) -> SyncResult<AppointmentSyncResponse> {
        let source_key = payload.source_key();
        let stored = serde_json::to_value(&payload).map_err(|e| Error::Store(e.to_string()))?;
        let contact = std::sync::Mutex::new(None::<EntitySync>);
        let appointment = self
            .run_synced(
                target,
                EntityKind::Appointment,
                source_key,
                stored,
                |plan| {
                    let (payload, contact) = (&payload, &contact);
                    async move {
                        let linked = self
                            .contact_for_appointment(target, payload)
                            .await
                            .map_err(|f| f.error)?;
                        let contact_id = linked.crm_id.clone();
                        *contact.lock().expect("not poisoned") = Some(linked);
                        crm::upsert_appointment(
                            target.adapter.as_ref(),
                            &payload.appointment,
                            &plan,
                            &contact_id,
                        )
                        .await
                    }
                },
            )
            .await?;
        let contact = match contact.into_inner().expect("not poisoned") {
            Some(contact) => contact,
            // Unchanged: the contact was synced along with it before.
            None => self.contact_for_appointment(target, &payload).await?,
        };
        let mut appointment = appointment;
        // A cancel that changed the CRM says so, rather than looking like a reschedule.
        if payload.appointment.status == domain::AppointmentStatus::Cancelled
            && appointment.status != Outcome::Unchanged
        {
            appointment.status = Outcome::Cancelled;
        }
        Ok(AppointmentSyncResponse {
            sync_id: appointment.sync_id.clone(),
            status: appointment.status,
            crm_type: target.connection.crm_type,
            contact,
            appointment,
            not_stored: payload
                .customer
                .as_ref()
                .map(|c| not_stored_of(target, "customer", c))
                .unwrap_or_default(),
        })
    }

    async fn contact_for_appointment(
        &self,
        target: &Target,
        payload: &AppointmentPayload,
    ) -> SyncResult<EntitySync> {
        match (&payload.customer, &payload.customer_id) {
            (Some(customer), _) => self.sync_contact(target, customer).await,
            (None, Some(id)) => Ok(EntitySync {
                sync_id: None,
                crm_id: self.contact_named_by(target, id).await?,
                status: Outcome::Unchanged,
            }),
            (None, None) => Err(Error::validation("customer", "is required").into()),
        }
    }

    /// The CRM id of the contact `customerId` names. The earlier service's docs put the caller's
    /// phone there; a value that is no record id of this CRM but reads as a phone or an email is
    /// a lookup of the one contact with it.
    async fn contact_named_by(&self, target: &Target, customer_id: &str) -> Result<String> {
        let country = &target.defaults.country;
        let as_phone = || E164Phone::parse(customer_id, country).ok();
        let lookup = if customer_id.contains('@') {
            match Email::parse(customer_id) {
                Ok(email) => ContactLookup::Email(email),
                Err(_) => return Ok(customer_id.to_string()),
            }
        } else if customer_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            // Shaped like a record id. Digits that also make a phone number are asked for as
            // an id first: HubSpot, Pipedrive and Freshsales ids are numbers too.
            match as_phone().filter(|_| customer_id.chars().all(|c| c.is_ascii_digit())) {
                None => return Ok(customer_id.to_string()),
                Some(phone) => {
                    let by_id = ContactLookup::Id(customer_id.to_string());
                    if !target.adapter.find_contacts(&by_id).await?.is_empty() {
                        return Ok(customer_id.to_string());
                    }
                    ContactLookup::Phone(phone)
                }
            }
        } else {
            match as_phone() {
                Some(phone) => ContactLookup::Phone(phone),
                None => return Ok(customer_id.to_string()),
            }
        };
        Ok(self.single_contact(target, &lookup).await?.crm_id)
    }

    /// The one contact `lookup` finds (phones compared in E.164, emails exactly): `NotFound`
    /// when none, `Ambiguous` when several.
    async fn single_contact(&self, target: &Target, lookup: &ContactLookup) -> Result<CrmContact> {
        let country = &target.defaults.country;
        let found: Vec<CrmContact> = target
            .adapter
            .find_contacts(lookup)
            .await?
            .into_iter()
            .filter(|c| match lookup {
                ContactLookup::Phone(phone) => crm::has_phone(c, phone, country),
                ContactLookup::Email(email) => crm::same_email(c.email.as_deref(), email.as_str()),
                ContactLookup::Id(_) => true,
            })
            .collect();
        match found.len() {
            0 => Err(Error::NotFound(match lookup {
                ContactLookup::Id(id) => format!("CRM contact {id}"),
                ContactLookup::Email(email) => {
                    format!("a CRM contact with email {}", email.as_str())
                }
                ContactLookup::Phone(phone) => {
                    format!("a CRM contact with phone {}", phone.as_str())
                }
            })),
            1 => Ok(found.into_iter().next().expect("one")),
            n => Err(Error::Ambiguous {
                message: format!(
                    "{n} CRM contacts match this customerId; send the CRM id of the one meant"
                ),
                ids: found.into_iter().map(|c| c.crm_id).collect(),
            }),
        }
    }

    /// `POST sync-lead`: upsert a lead in the CRM's lead model.
    pub async fn sync_lead(&self, body: &Value) -> SyncResult<SyncResponse> {
        let prepared = self.prepare_lead(body).await?;
        self.run_lead(prepared).await
    }

    pub async fn prepare_lead(&self, body: &Value) -> Result<Prepared<Lead>> {
        let fields = Fields::new("", body)?;
        self.prepare(&fields, |defaults| parse_lead_request(&fields, defaults))
            .await
    }

    pub async fn run_lead(&self, prepared: Prepared<Lead>) -> SyncResult<SyncResponse> {
        self.sync_lead_entity(&prepared.target, &prepared.request)
            .await
    }

    async fn sync_lead_entity(&self, target: &Target, lead: &Lead) -> SyncResult<SyncResponse> {
        let payload = serde_json::to_value(lead).map_err(|e| Error::Store(e.to_string()))?;
        let contact = std::sync::Mutex::new(None::<EntitySync>);
        let synced = self
            .run_synced(
                target,
                EntityKind::Lead,
                lead.source_key(),
                payload,
                |plan| {
                    let contact = &contact;
                    async move {
                        let contact_id = if target.adapter.lead_needs_contact() {
                            let linked = self
                                .sync_contact(target, &lead.person)
                                .await
                                .map_err(|f| f.error)?;
                            let id = linked.crm_id.clone();
                            *contact.lock().expect("not poisoned") = Some(linked);
                            Some(id)
                        } else {
                            None
                        };
                        crm::upsert_lead(
                            target.adapter.as_ref(),
                            lead,
                            &plan,
                            contact_id.as_deref(),
                        )
                        .await
                    }
                },
            )
            .await?;
        Ok(SyncResponse {
            sync_id: synced.sync_id,
            status: synced.status,
            crm_type: target.connection.crm_type,
            crm_id: synced.crm_id,
            contact: contact.into_inner().expect("not poisoned"),
            not_stored: not_stored_of(target, "lead", &lead.person),
        })
    }

    /// `GET get-customer`: find a contact by CRM id, email or phone.
    pub async fn get_customer(&self, query: &Value) -> Result<CustomerView> {
        let fields = Fields::new("", query)?;
        let Prepared {
            target,
            request: lookup,
        } = self
            .prepare(&fields, |defaults| read_lookup(&fields, defaults))
            .await?;
        let found = match target.adapter.find_contacts(&lookup).await {
            Err(e @ Error::CrmAuth(_)) => {
                self.connections.invalidate(&target.connection_id);
                return Err(e);
            }
            found => found?,
        };
        let found: Vec<CrmContact> = match &lookup {
            ContactLookup::Phone(phone) => found
                .into_iter()
                .filter(|c| {
                    c.phones.iter().any(|p| {
                        E164Phone::parse(p, &target.defaults.country).as_ref() == Ok(phone)
                    })
                })
                .collect(),
            _ => found,
        };
        match found.len() {
            0 => Err(Error::NotFound("customer".into())),
            1 => Ok(customer_view(
                found.into_iter().next().expect("one"),
                &target.defaults.country,
            )),
            n => Err(Error::Ambiguous {
                message: format!("{n} CRM contacts match; ask by customerId"),
                ids: found.into_iter().map(|c| c.crm_id).collect(),
            }),
        }
    }

    /// `POST test-connection`: a stored connection by id, or inline credentials that are used for
    /// this one call and never stored.
    pub async fn test_connection(&self, body: &Value) -> Result<TestConnectionResponse> {
        let fields = Fields::new("", body)?;
        let claimed = claimed_crm_type(&fields)?;
        let inline = inline_connection(&fields)?;
        let (connection, connection_id) = match (connection_id(&fields)?, inline) {
            (Some(_), Some(_)) => {
                return Err(Error::validation(
                    "credentials",
                    "give connectionId or credentials, not both",
                ));
            }
            (Some(id), None) => {
                let connection = self.connections.get_fresh(&id).await?;
                check_claim(claimed, &id, &connection)?;
                (connection, Some(id.to_string()))
            }
            (None, Some((credentials, settings))) => {
                let crm_type = claimed
                    .ok_or_else(|| Error::validation("crmType", "is required with credentials"))?;
                let connection = Connection {
                    id: None,
                    crm_type,
                    credentials,
                    settings,
                };
                (connection, None)
            }
            (None, None) => {
                return Err(Error::validation(
                    "connectionId",
                    "give a connectionId, or crmType with credentials",
                ));
            }
        };
        let crm_type = connection.crm_type;
        let verdict = |result: Result<AccountInfo>| match result {
            Ok(info) => TestConnectionResponse {
                ok: true,
                crm_type,
                connection_id: connection_id.clone(),
                account: Some(info.account),
                warnings: info.warnings,
                error: None,
            },
            Err(e) => TestConnectionResponse {
                ok: false,
                crm_type,
                connection_id: connection_id.clone(),
                account: None,
                warnings: Vec::new(),
                error: Some(TestConnectionError {
                    code: e.code().into(),
                    message: e.to_string(),
                }),
            },
        };
        let adapter = match crm::adapter_for(&connection, &self.adapters) {
            Ok(adapter) => adapter,
            // Credentials to check before storing them that lack a field: that is the verdict.
            Err(e @ Error::ConnectionInvalid { .. }) if connection_id.is_none() => {
                return Ok(verdict(Err(e)));
            }
            Err(e) => return Err(e),
        };
        match adapter.test_connection().await {
            Err(e @ (Error::Validation { .. } | Error::Store(_))) => Err(e),
            result => Ok(verdict(result)),
        }
    }

    /// How long a write that timed out may still land in the CRM: two CRM timeouts. Until then an
    /// `unknown` record answers `sync_in_progress` and the replay leaves it alone.
    pub fn settle_time(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.crm_timeout * 2).unwrap_or_default()
    }

    /// Claims the record (pending), does `work` with the CRM id synced before, and records the
    /// outcome. An identical resend of a synced record answers `unchanged` without a CRM call.
    /// A record whose last attempt may have written to the CRM unheard (`unknown`, or `pending`
    /// past its lease) is reconciled: `work` looks for its stamp before creating anything.
    async fn run_synced<'a, F, Fut>(
        &'a self,
        target: &'a Target,
        entity: EntityKind,
        source_key: String,
        payload: Value,
        work: F,
    ) -> SyncResult<EntitySync>
    where
        F: FnOnce(WritePlan) -> Fut,
        Fut: Future<Output = Result<Upserted>> + 'a,
    {
        let claimed = match self.claim(target, entity, source_key, payload).await? {
            Claim::Settled(synced) => return Ok(synced),
            Claim::Claimed(claimed) => claimed,
        };
        let (result, unanswered) =
            crm::http::track_unanswered_writes(work(claimed.plan.clone())).await;
        self.finish(target, claimed, result, unanswered).await
    }

    /// Claims a record for one attempt: `Settled` when an identical resend of a synced record
    /// needs no CRM call, `SyncInProgress` when another attempt holds it (or may still land).
    async fn claim(
        &self,
        target: &Target,
        entity: EntityKind,
        source_key: String,
        payload: Value,
    ) -> SyncResult<Claim> {
        let started = Instant::now();
        let key = RecordKey::new(target.connection_id.as_str(), entity, &source_key);
        let payload_hash = sha256_hex(payload.to_string().as_bytes());
        let now = Utc::now();
        let existing = self.records.get(&key).await?;
        let lease = chrono::Duration::from_std(self.config.sync_lease).unwrap_or_default();
        if let Some(record) = &existing {
            if record.status == SyncStatus::Synced
                && record.payload_hash == payload_hash
                && let Some(crm_id) = &record.crm_id
            {
                log_sync(target, entity, "unchanged", started, Some(crm_id));
                return Ok(Claim::Settled(EntitySync {
                    sync_id: Some(record.sync_id.clone()),
                    crm_id: crm_id.clone(),
                    status: Outcome::Unchanged,
                }));
            }
            if record.in_progress(now, lease) {
                return Err(Failure {
                    error: Error::SyncInProgress,
                    sync_id: Some(record.sync_id.clone()),
                });
            }
            // A request that timed out here may still be on its way to the CRM: looking for its
            // stamp before it can have landed would miss it.
            if record.status == SyncStatus::Unknown && now - record.updated_at < self.settle_time()
            {
                return Err(Failure {
                    error: Error::SyncInProgress,
                    sync_id: Some(record.sync_id.clone()),
                });
            }
        }
        // An attempt that died mid-call (stale pending) is as unknown as one that lost its answer.
        let reconcile = existing
            .as_ref()
            .is_some_and(SyncRecord::may_have_written_unheard);
        let record = SyncRecord {
            sync_id: existing
                .as_ref()
                .map(|r| r.sync_id.clone())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            connection_id: target.connection_id.to_string(),
            crm_type: target.connection.crm_type,
            entity,
            source_key,
            crm_id: existing.as_ref().and_then(|r| r.crm_id.clone()),
            status: SyncStatus::Pending,
            attempts: existing.as_ref().map_or(0, |r| r.attempts) + 1,
            last_error: existing.as_ref().and_then(|r| r.last_error.clone()),
            payload_hash,
            payload,
            created_at: existing.as_ref().map_or(now, |r| r.created_at),
            updated_at: now,
            version: existing.as_ref().map_or(0, |r| r.version) + 1,
            batch_id: existing.as_ref().and_then(|r| r.batch_id.clone()),
            queued: false,
            expires_at: None,
        };
        if self
            .records
            .put(&record, existing.as_ref().map(|r| r.version))
            .await?
            == WriteOutcome::Conflict
        {
            return Err(Failure {
                error: Error::SyncInProgress,
                sync_id: Some(record.sync_id),
            });
        }
        let plan = WritePlan {
            known_id: record.crm_id.clone(),
            stamp: record.stamp().to_string(),
            reconcile,
        };
        Ok(Claim::Claimed(Box::new(Claimed {
            record,
            plan,
            started,
        })))
    }

    /// Records how a claimed attempt ended: synced with its CRM id, or failed (`unknown` when a
    /// write may have landed unheard and no CRM id is known).
    async fn finish(
        &self,
        target: &Target,
        claimed: Box<Claimed>,
        result: Result<Upserted>,
        unanswered: bool,
    ) -> SyncResult<EntitySync> {
        let Claimed {
            record: claimed,
            plan,
            started,
        } = *claimed;
        let entity = claimed.entity;
        let sync_id = Some(claimed.sync_id.clone());
        let mut finished = SyncRecord {
            version: claimed.version + 1,
            updated_at: Utc::now(),
            ..claimed.clone()
        };
        match &result {
            Ok(upserted) => {
                finished.status = SyncStatus::Synced;
                finished.crm_id = Some(upserted.crm_id.clone());
                finished.last_error = None;
                finished.expires_at = self
                    .config
                    .synced_retention
                    .and_then(|keep| chrono::Duration::from_std(keep).ok())
                    .map(|keep| finished.updated_at + keep);
            }
            Err(error) => {
                if matches!(error, Error::CrmAuth(_)) {
                    // Perhaps rotated since it was cached: the next request reads it again.
                    self.connections.invalidate(&target.connection_id);
                }
                // Still unknown until an attempt finds the stamp or proves there is none.
                let unknown = (unanswered || plan.reconcile) && finished.crm_id.is_none();
                finished.status = if unknown {
                    SyncStatus::Unknown
                } else {
                    SyncStatus::Failed
                };
                finished.last_error = Some(error.into());
            }
        }
        match self.records.put(&finished, Some(claimed.version)).await {
            Ok(WriteOutcome::Written) => {}
            // The CRM has the data; the record stays pending and the next attempt reconciles it.
            outcome => {
                tracing::error!(sync_id = %finished.sync_id, ?outcome, "could not record the sync outcome")
            }
        }
        match result {
            Ok(upserted) => {
                let status = match upserted.outcome {
                    Outcome::Created => "created",
                    Outcome::Updated => "updated",
                    Outcome::Unchanged => "unchanged",
                    Outcome::Cancelled => "cancelled",
                };
                log_sync(target, entity, status, started, Some(&upserted.crm_id));
                Ok(EntitySync {
                    sync_id,
                    crm_id: upserted.crm_id,
                    status: upserted.outcome,
                })
            }
            Err(error) => {
                let status = if finished.status == SyncStatus::Unknown {
                    "unknown"
                } else {
                    error.code()
                };
                log_sync(target, entity, status, started, None);
                Err(Failure { error, sync_id })
            }
        }
    }
}

/// What claiming a record found.
enum Claim {
    /// An identical resend of a synced record: its answer, no CRM call.
    Settled(EntitySync),
    Claimed(Box<Claimed>),
}

/// A record claimed (pending) for one attempt, and how the attempt writes.
struct Claimed {
    record: SyncRecord,
    plan: WritePlan,
    started: Instant,
}

fn log_sync(
    target: &Target,
    entity: EntityKind,
    status: &str,
    started: Instant,
    crm_id: Option<&String>,
) {
    tracing::info!(
        connection_id = %target.connection_id,
        crm = %target.connection.crm_type,
        entity = entity.as_str(),
        status,
        crm_id = crm_id.map(String::as_str),
        duration_ms = started.elapsed().as_millis() as u64,
        "sync finished"
    );
}

fn customer_view(contact: CrmContact, country: &str) -> CustomerView {
    let phone = contact.phones.first().map(|raw| {
        E164Phone::parse(raw, country)
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|_| raw.clone())
    });
    CustomerView { contact, phone }
}

/// What `platforms` answers: every CRM, how it authenticates and what it supports.
pub fn platforms() -> Value {
    let operations = [
        "test-connection",
        "sync-customer",
        "sync-appointment",
        "sync-lead",
        "get-customer",
    ];
    let entry = |crm: CrmType,
                 name: &str,
                 auth: &str,
                 credentials: &[&str],
                 settings: &[&str],
                 available: bool| {
        json!({
            "crmType": crm,
            "name": name,
            "authType": auth,
            "credentialFields": credentials,
            "settingFields": settings,
            "available": available,
            "operations": if available { operations.to_vec() } else { vec![] },
        })
    };
    let common = [
        "defaultTimezone",
        "defaultCountry",
        "defaultAppointmentMinutes",
        "fieldMappings",
        "rateBudget",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        extra.iter().chain(common.iter()).copied().collect()
    };
    json!({ "platforms": [
        entry(CrmType::Hubspot, "HubSpot", "private_app_token", &["accessToken"], &with(&["baseUrl", "stampProperty"]), true),
        entry(CrmType::Salesforce, "Salesforce", "oauth2", &["clientId", "clientSecret", "refreshToken"], &with(&["loginUrl", "instanceUrl", "contactExternalIdField", "defaultLeadCompany", "stampField"]), true),
        entry(CrmType::Pipedrive, "Pipedrive", "api_token", &["apiToken"], &with(&["companyDomain", "baseUrl"]), true),
        entry(CrmType::Zoho, "Zoho CRM", "oauth2", &["clientId", "clientSecret", "refreshToken"], &with(&["dataCenter", "accountsUrl", "apiDomain", "baseUrl", "defaultLeadCompany", "sendInvitations", "stampField"]), true),
        entry(CrmType::Freshsales, "Freshsales", "api_key", &["apiKey"], &with(&["bundleAlias", "baseUrl", "leadLifecycleStage", "cancelledOutcomeId", "stampField"]), true),
        entry(CrmType::Dynamics, "Microsoft Dynamics 365", "oauth2", &["clientId", "clientSecret"], &with(&["environmentUrl", "tenantId", "authorityUrl", "stampField"]), true),
        entry(CrmType::Sugarcrm, "SugarCRM", "oauth2", &["username", "password", "clientId", "clientSecret"], &with(&["instanceUrl", "platform", "stampField"]), true),
    ]})
}

/// The person's fields in the request that the target's CRM keeps nowhere.
fn not_stored_of(target: &Target, prefix: &str, person: &Customer) -> Vec<NotStored> {
    crm::not_stored(
        target.adapter.as_ref(),
        "contact",
        prefix,
        &crm::customer_fields(person),
    )
}
