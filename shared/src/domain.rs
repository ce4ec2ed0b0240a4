//! The normalised customer, lead and appointment model, and its validation from request JSON.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The CRMs crm-sync talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmType {
    Hubspot,
    Salesforce,
    Pipedrive,
    Zoho,
    Freshsales,
    Dynamics,
    Sugarcrm,
}

impl CrmType {
    pub const ALL: [CrmType; 7] = [
        CrmType::Hubspot,
        CrmType::Salesforce,
        CrmType::Pipedrive,
        CrmType::Zoho,
        CrmType::Freshsales,
        CrmType::Dynamics,
        CrmType::Sugarcrm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CrmType::Hubspot => "hubspot",
            CrmType::Salesforce => "salesforce",
            CrmType::Pipedrive => "pipedrive",
            CrmType::Zoho => "zoho",
            CrmType::Freshsales => "freshsales",
            CrmType::Dynamics => "dynamics",
            CrmType::Sugarcrm => "sugarcrm",
        }
    }
}

impl fmt::Display for CrmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CrmType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let wanted = s.trim().to_ascii_lowercase().replace([' ', '-', '_'], "");
        let aliases = [
            ("zohocrm", CrmType::Zoho),
            ("freshworks", CrmType::Freshsales),
            ("dynamics365", CrmType::Dynamics),
            ("microsoftdynamics", CrmType::Dynamics),
            ("dataverse", CrmType::Dynamics),
            ("sugar", CrmType::Sugarcrm),
        ];
        CrmType::ALL
            .into_iter()
            .find(|t| t.as_str() == wanted)
            .or_else(|| aliases.iter().find(|(a, _)| *a == wanted).map(|(_, t)| *t))
            .ok_or_else(|| {
                let known: Vec<_> = CrmType::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown CRM '{s}'; expected one of {}", known.join(", "))
            })
    }
}

/// A syntactically valid, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let email = raw.trim().to_ascii_lowercase();
        let invalid = || format!("'{}' is not a valid email address", raw.trim());
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && domain.len() <= 253
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
        if local_ok && domain_ok {
            Ok(Email(email))
        } else {
            Err(invalid())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form (`+14155550100`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct E164Phone(String);

impl E164Phone {
    /// Parses any common notation; numbers without a country code are read in `default_country`
    /// (an ISO 3166 alpha-2 code such as `US`).
    pub fn parse(raw: &str, default_country: &str) -> std::result::Result<Self, String> {
        let region = phonenumber::country::Id::from_str(&default_country.to_ascii_uppercase()).ok();
        let invalid = || {
            format!(
                "'{}' cannot be read as a phone number in E.164 form",
                raw.trim()
            )
        };
        let number = phonenumber::parse(region, raw.trim()).map_err(|_| invalid())?;
        if !phonenumber::is_valid(&number) {
            return Err(invalid());
        }
        Ok(E164Phone(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits only, country code included (`14155550100`).
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The national significant number (`4155550100` for `+14155550100`).
    pub fn national_number(&self) -> String {
        phonenumber::parse(None, &self.0)
            .map(|n| n.national().value().to_string())
            .unwrap_or_else(|_| self.digits().to_string())
    }
}

/// A person as the voice assistant learned them on the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<Email>,
    pub phone: Option<E164Phone>,
    pub address: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip_code: Option<String>,
    pub country: Option<String>,
}

impl Customer {
    /// The key that identifies this person across resends: email first, then phone.
    pub fn source_key(&self) -> String {
        match (&self.email, &self.phone) {
            (Some(email), _) => format!("email:{}", email.as_str()),
            (None, Some(phone)) => format!("phone:{}", phone.as_str()),
            (None, None) => String::new(),
        }
    }

    pub fn full_name(&self) -> String {
        [&self.first_name, &self.last_name]
            .iter()
            .filter_map(|p| p.as_deref())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A lead: a person who may buy, possibly with their company.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lead {
    pub external_id: Option<String>,
    pub person: Customer,
    pub company: Option<String>,
    pub notes: Option<String>,
    pub source: Option<String>,
}

impl Lead {
    pub fn source_key(&self) -> String {
        match &self.external_id {
            Some(id) => format!("external:{id}"),
            None => self.person.source_key(),
        }
    }

    /// A readable title for CRMs whose lead needs one.
    pub fn title(&self) -> String {
        let name = self.person.full_name();
        match (&self.company, name.is_empty()) {
            (Some(company), false) => format!("{name} ({company})"),
            (Some(company), true) => company.clone(),
            (None, false) => name,
            (None, true) => self
                .person
                .source_key()
                .split_once(':')
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppointmentStatus {
    #[default]
    Scheduled,
    Cancelled,
}

/// Start and end of an appointment; the end is always after the start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AppointmentWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl AppointmentWindow {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> std::result::Result<Self, String> {
        if end <= start {
            return Err("the appointment must end after it starts".into());
        }
        if end - start > chrono::Duration::days(14) {
            return Err("an appointment cannot last longer than 14 days".into());
        }
        Ok(AppointmentWindow { start, end })
    }
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }
    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }
    pub fn duration_minutes(&self) -> i64 {
        (self.end - self.start).num_minutes()
    }
}

/// A booked appointment: an instant range plus the IANA zone it was booked in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    pub external_id: Option<String>,
    pub title: String,
    pub window: AppointmentWindow,
    pub timezone: Tz,
    pub notes: Option<String>,
    pub location: Option<String>,
    pub status: AppointmentStatus,
}

impl Appointment {
    pub fn start_local(&self) -> DateTime<Tz> {
        self.window.start().with_timezone(&self.timezone)
    }
    pub fn end_local(&self) -> DateTime<Tz> {
        self.window.end().with_timezone(&self.timezone)
    }
}

/// Connection settings the validation depends on.
#[derive(Debug, Clone)]
pub struct ValidationDefaults {
    pub country: String,
    pub timezone: Tz,
    pub appointment_minutes: i64,
}

impl Default for ValidationDefaults {
    fn default() -> Self {
        ValidationDefaults {
            country: "US".into(),
            timezone: Tz::UTC,
            appointment_minutes: 30,
        }
    }
}

/// The surrounding white space a text field ignores: ASCII's (space, tab, line breaks, form
/// feed), which a JSON Schema pattern can name exactly.
fn trim_text(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// A JSON object read field by field, so each error names the field as the caller spelled it.
pub struct Fields<'a> {
    prefix: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(prefix: impl Into<String>, value: &'a Value) -> Result<Self> {
        let prefix = prefix.into();
        match value.as_object() {
            Some(map) => Ok(Fields { prefix, map }),
            None => Err(Error::validation(
                if prefix.is_empty() {
                    "body".into()
                } else {
                    prefix
                },
                "must be a JSON object",
            )),
        }
    }

    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// The value of `key` as sent, `null` included.
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The value of `key`, `null` counting as absent.
    pub fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Every one of `keys` that is present (not null), in order, with the key it was found under.
    pub fn present(&self, keys: &[&'static str]) -> Vec<(&'static str, &'a Value)> {
        keys.iter()
            .filter_map(|k| self.value(k).map(|v| (*k, v)))
            .collect()
    }

    /// The first of `keys` holding text, trimmed; every one of them is checked. Empty strings
    /// count as absent, and so do the texts `undefined` and `null`, which n8n's string
    /// interpolation (`"{{ $json.email }}"`) makes of a missing value. Numbers are accepted as
    /// their text.
    pub fn text(&self, keys: &[&'static str]) -> Result<Option<(&'static str, String)>> {
        Ok(self.texts(keys)?.into_iter().next())
    }

    /// Every one of `keys` holding text, as `text` reads each, in order.
    pub fn texts(&self, keys: &[&'static str]) -> Result<Vec<(&'static str, String)>> {
        self.read_texts(keys, true)
    }

    /// As `texts`, but a number is refused: for values a number cannot carry (a phone's `+`
    /// and leading zeros).
    pub fn strings(&self, keys: &[&'static str]) -> Result<Vec<(&'static str, String)>> {
        self.read_texts(keys, false)
    }

    fn read_texts(
        &self,
        keys: &[&'static str],
        numbers: bool,
    ) -> Result<Vec<(&'static str, String)>> {
        let mut found = Vec::new();
        for (key, value) in self.present(keys) {
            match value {
                Value::String(s) => {
                    let s = trim_text(s);
                    if !(s.is_empty() || s == "undefined" || s == "null") {
                        found.push((key, s.to_string()));
                    }
                }
                Value::Number(n) if numbers => found.push((key, n.to_string())),
                _ => {
                    let message = if numbers {
                        "must be a string (or a number)"
                    } else {
                        "must be a string"
                    };
                    return Err(Error::validation(self.path(key), message));
                }
            }
        }
        Ok(found)
    }

    pub fn string(&self, keys: &[&'static str]) -> Result<Option<String>> {
        Ok(self.text(keys)?.map(|(_, v)| v))
    }

    /// The object under the first of `keys` that is present.
    pub fn child(&self, keys: &[&'static str]) -> Result<Option<Fields<'a>>> {
        Ok(self.children(keys)?.into_iter().next())
    }

    /// The object under each of `keys` that is present, in order; each must be an object.
    pub fn children(&self, keys: &[&'static str]) -> Result<Vec<Fields<'a>>> {
        self.present(keys)
            .into_iter()
            .map(|(key, value)| Fields::new(self.path(key), value))
            .collect()
    }
}

/// Reads a customer from `customer`/`customerData`-shaped JSON. The earlier service's workflows
/// also name the person `name`/`customerName` (split into first and last name) and send
/// `customerEmail`/`customerPhone`.
pub fn parse_customer(fields: &Fields<'_>, defaults: &ValidationDefaults) -> Result<Customer> {
    let customer = read_customer(fields, defaults)?;
    require_contact(fields, &customer)?;
    Ok(customer)
}

/// A customer must be findable in the CRM: an email or a phone.
fn require_contact(fields: &Fields<'_>, customer: &Customer) -> Result<()> {
    if customer.email.is_none() && customer.phone.is_none() {
        // Name the field in the caller's own vocabulary.
        let key = if fields.has("customerName") || fields.has("customerPhone") {
            "customerPhone"
        } else {
            "email"
        };
        return Err(Error::validation(
            fields.path(key),
            "an email or a phone is required to match the customer in the CRM",
        ));
    }
    Ok(())
}

/// Every field checked (each alias too), the first given of each kind used; an email or a phone
/// is not required here.
fn read_customer(fields: &Fields<'_>, defaults: &ValidationDefaults) -> Result<Customer> {
    let mut email = None;
    for (key, raw) in fields.texts(&["email", "customerEmail"])? {
        let parsed = Email::parse(&raw).map_err(|m| Error::validation(fields.path(key), m))?;
        email.get_or_insert(parsed);
    }
    let mut phone = None;
    for (key, raw) in fields.strings(&["phone", "phoneNumber", "mobile", "customerPhone"])? {
        let parsed = E164Phone::parse(&raw, &defaults.country)
            .map_err(|m| Error::validation(fields.path(key), m))?;
        phone.get_or_insert(parsed);
    }
    let (mut first_name, mut last_name) = (
        fields.string(&["firstName"])?,
        fields.string(&["lastName"])?,
    );
    let full_name = fields.string(&["name", "fullName", "customerName"])?;
    if first_name.is_none() && last_name.is_none() {
        (first_name, last_name) = match full_name {
            Some(full) => split_name(&full),
            None => (None, None),
        };
    }
    Ok(Customer {
        first_name,
        last_name,
        email,
        phone,
        address: fields.string(&["address"])?,
        city: fields.string(&["city"])?,
        state: fields.string(&["state"])?,
        zip_code: fields.string(&["zipCode", "postalCode"])?,
        country: fields.string(&["country"])?,
    })
}

/// The customer the earlier service's n8n workflow sends inside its appointment
/// (`customerName`, `customerPhone`, `customerEmail`), checked whenever given. `None` when the
/// appointment names none; `needed` says whether it is the appointment's only customer, which
/// must then have an email or a phone.
pub fn parse_appointment_customer(
    fields: &Fields<'_>,
    defaults: &ValidationDefaults,
    needed: bool,
) -> Result<Option<Customer>> {
    const FLAT: [&str; 3] = ["customerName", "customerPhone", "customerEmail"];
    // Only these three: the appointment's other fields (its `notes`, `location`…) are not the
    // customer's.
    let picked: Map<String, Value> = fields
        .map
        .iter()
        .filter(|(k, _)| FLAT.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let flat = Fields {
        prefix: fields.prefix.clone(),
        map: &picked,
    };
    if flat.text(&FLAT)?.is_none() {
        return Ok(None);
    }
    let customer = read_customer(&flat, defaults)?;
    if needed {
        require_contact(&flat, &customer)?;
    }
    Ok(Some(customer))
}

/// "John Doe" is first name John, last name Doe; "Juan de la Cruz" is Juan and "de la Cruz"; a
/// single word is a first name.
fn split_name(full: &str) -> (Option<String>, Option<String>) {
    let full = full.split_whitespace().collect::<Vec<_>>().join(" ");
    match full.split_once(' ') {
        Some((first, last)) => (Some(first.to_string()), Some(last.to_string())),
        None => ((!full.is_empty()).then_some(full), None),
    }
}

pub fn parse_lead(fields: &Fields<'_>, defaults: &ValidationDefaults) -> Result<Lead> {
    Ok(Lead {
        external_id: fields.string(&["externalId", "leadId"])?,
        person: parse_customer(fields, defaults)?,
        company: fields.string(&["company", "companyName"])?,
        notes: fields.string(&["notes"])?,
        source: fields.string(&["source"])?,
    })
}

/// The longest appointment, in minutes: 14 days.
const MAX_APPOINTMENT_MINUTES: i64 = 14 * 24 * 60;

/// Reads an appointment. `start`/`startTime` is RFC 3339 with an offset (an instant), or a wall
/// time without offset that is read in `timezone`; epoch milliseconds are accepted too. The
/// earlier service's workflow names the start `appointmentDate`, the title `serviceType` and the
/// booking id `id`. Every alias given is checked; the first given is used.
pub fn parse_appointment(
    fields: &Fields<'_>,
    defaults: &ValidationDefaults,
) -> Result<Appointment> {
    let mut timezone = None;
    for (key, name) in fields.texts(&["timezone", "timeZone"])? {
        let zone = Tz::from_str(&name).map_err(|_| {
            Error::validation(
                fields.path(key),
                format!("'{name}' is not an IANA time zone such as America/New_York"),
            )
        })?;
        timezone.get_or_insert(zone);
    }
    let timezone = timezone.unwrap_or(defaults.timezone);
    let instants = |keys: &[&'static str]| -> Result<Vec<(&'static str, DateTime<Utc>)>> {
        fields
            .present(keys)
            .into_iter()
            .map(|(key, value)| {
                parse_instant(value, timezone)
                    .map(|instant| (key, instant))
                    .map_err(|m| Error::validation(fields.path(key), m))
            })
            .collect()
    };
    let start = instants(&["start", "startTime", "appointmentDate"])?
        .into_iter()
        .next()
        .map(|(_, start)| start)
        .ok_or_else(|| {
            Error::validation(
                fields.path("start"),
                "the appointment's start time is required",
            )
        })?;
    let given_end = instants(&["end", "endTime"])?.into_iter().next();
    let mut duration = None;
    for (key, value) in fields.present(&["durationMinutes", "duration"]) {
        let minutes = match value {
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            Value::String(_) => None,
            other => whole_number(other),
        }
        .filter(|m| (1..=MAX_APPOINTMENT_MINUTES).contains(m))
        .ok_or_else(|| {
            Error::validation(
                fields.path(key),
                "must be a whole number of minutes between 1 and 20160",
            )
        })?;
        duration.get_or_insert(minutes);
    }
    // The earlier service's docs send the booking date as both start and end: no duration given.
    let (end_field, end) = match given_end.filter(|(_, end)| *end != start) {
        Some(given) => given,
        None => (
            "durationMinutes",
            start + chrono::Duration::minutes(duration.unwrap_or(defaults.appointment_minutes)),
        ),
    };
    let window = AppointmentWindow::new(start, end)
        .map_err(|m| Error::validation(fields.path(end_field), m))?;
    let status = match fields.text(&["status"])? {
        None => AppointmentStatus::Scheduled,
        Some((key, s)) => match s.to_ascii_lowercase().as_str() {
            "scheduled" | "confirmed" | "booked" | "rescheduled" => AppointmentStatus::Scheduled,
            "cancelled" | "canceled" => AppointmentStatus::Cancelled,
            _ => {
                return Err(Error::validation(
                    fields.path(key),
                    "must be 'scheduled' or 'cancelled'",
                ));
            }
        },
    };
    Ok(Appointment {
        external_id: fields.string(&["externalId", "bookingId", "appointmentId", "id"])?,
        title: fields
            .string(&["title", "subject", "serviceType"])?
            .unwrap_or_else(|| "Appointment".into()),
        window,
        timezone,
        notes: fields.string(&["notes", "description"])?,
        location: fields.string(&["location"])?,
        status,
    })
}

/// A JSON number with no fraction (`30` or `30.0`, as JSON Schema's `integer` has it).
pub fn whole_number(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// The instants RFC 3339 can write, years 0001 to 9999, as epoch milliseconds.
const EARLIEST_MILLIS: i64 = -62_135_596_800_000;
const LATEST_MILLIS: i64 = 253_402_300_799_999;

fn parse_instant(value: &Value, zone: Tz) -> std::result::Result<DateTime<Utc>, String> {
    if value.is_number() {
        return whole_number(value)
            .filter(|ms| (EARLIEST_MILLIS..=LATEST_MILLIS).contains(ms))
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| {
                "epoch milliseconds must be a whole number between years 0001 and 9999".to_string()
            });
    }
    let raw = value
        .as_str()
        .ok_or("must be an ISO 8601 date-time string")?;
    let raw = trim_text(raw);
    if let Ok(instant) = DateTime::parse_from_rfc3339(raw) {
        return Ok(instant.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
    .ok_or_else(|| {
        format!("'{raw}' is not an ISO 8601 date-time such as 2025-07-01T10:00:00-07:00")
    })?;
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        // A wall time that happens twice (clocks go back): take the first, as calendars do.
        LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
        LocalResult::None => Err(format!(
            "{raw} does not exist in {zone} (the clocks skip it for daylight saving)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults(zone: &str) -> ValidationDefaults {
        ValidationDefaults {
            timezone: Tz::from_str(zone).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn emails_are_lowercased_and_malformed_ones_refused() {
        assert_eq!(
            Email::parse(" Jane.Doe@Example.COM ").unwrap().as_str(),
            "jane.doe@example.com"
        );
        for bad in [
            "jane",
            "jane@",
            "@example.com",
            "jane@example",
            "ja ne@example.com",
            "jane@@example.com",
            "jane@example.c0m",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn phones_normalise_to_e164_with_the_default_country() {
        assert_eq!(
            E164Phone::parse("(415) 555-2671", "US").unwrap().as_str(),
            "+14155552671"
        );
        assert_eq!(
            E164Phone::parse("+44 20 7946 0958", "US").unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(
            E164Phone::parse("020 7946 0958", "GB").unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(
            E164Phone::parse("+14155552671", "US")
                .unwrap()
                .national_number(),
            "4155552671"
        );
        assert!(E164Phone::parse("12", "US").is_err());
        assert!(E164Phone::parse("call me", "US").is_err());
    }

    #[test]
    fn a_customer_needs_an_email_or_a_phone() {
        let body = json!({"firstName": "Jane"});
        let err = parse_customer(
            &Fields::new("customerData", &body).unwrap(),
            &defaults("UTC"),
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("customerData.email"));
    }

    #[test]
    fn wall_time_without_offset_is_read_in_the_appointment_zone_across_dst() {
        // 10:00 in Los Angeles is 17:00 UTC in summer (PDT) and 18:00 UTC in winter (PST).
        for (day, utc_hour) in [
            ("2025-03-08", 18),
            ("2025-03-10", 17),
            ("2025-11-01", 17),
            ("2025-11-03", 18),
        ] {
            let body =
                json!({"startTime": format!("{day}T10:00:00"), "timezone": "America/Los_Angeles"});
            let appt =
                parse_appointment(&Fields::new("a", &body).unwrap(), &defaults("UTC")).unwrap();
            assert_eq!(
                appt.window.start().format("%H").to_string(),
                format!("{utc_hour}"),
                "{day}"
            );
            assert_eq!(appt.start_local().format("%H:%M").to_string(), "10:00");
            assert_eq!(appt.window.duration_minutes(), 30);
        }
    }

    #[test]
    fn a_wall_time_skipped_by_dst_is_refused_and_a_repeated_one_takes_the_first() {
        let gap = json!({"start": "2025-03-09T02:30:00", "timezone": "America/New_York"});
        let err = parse_appointment(&Fields::new("appointment", &gap).unwrap(), &defaults("UTC"))
            .unwrap_err();
        assert_eq!(err.field(), Some("appointment.start"));
        let fold = json!({"start": "2025-11-02T01:30:00", "timezone": "America/New_York"});
        let appt = parse_appointment(
            &Fields::new("appointment", &fold).unwrap(),
            &defaults("UTC"),
        )
        .unwrap();
        assert_eq!(
            appt.window.start().to_rfc3339(),
            "2025-11-02T05:30:00+00:00"
        );
    }

    #[test]
    fn an_appointment_ending_before_it_starts_names_the_end_field() {
        let body = json!({"startTime": "2025-07-01T10:00:00Z", "endTime": "2025-07-01T09:00:00Z"});
        let err = parse_appointment(
            &Fields::new("appointmentData", &body).unwrap(),
            &defaults("UTC"),
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("appointmentData.endTime"));
        let missing = json!({"title": "x"});
        let err = parse_appointment(
            &Fields::new("appointmentData", &missing).unwrap(),
            &defaults("UTC"),
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("appointmentData.start"));
    }

    #[test]
    fn unknown_time_zones_and_crm_names_are_refused() {
        let body = json!({"start": "2025-07-01T10:00:00Z", "timezone": "Mars/Olympus"});
        let err = parse_appointment(
            &Fields::new("appointment", &body).unwrap(),
            &defaults("UTC"),
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("appointment.timezone"));
        assert_eq!("HubSpot".parse::<CrmType>().unwrap(), CrmType::Hubspot);
        assert_eq!("zoho-crm".parse::<CrmType>().unwrap(), CrmType::Zoho);
        assert_eq!("Sugar".parse::<CrmType>().unwrap(), CrmType::Sugarcrm);
        assert_eq!(
            "Dynamics 365".parse::<CrmType>().unwrap(),
            CrmType::Dynamics
        );
        assert!("insightly".parse::<CrmType>().is_err());
    }

    #[test]
    fn the_earlier_workflows_appointment_reads_as_a_booking_with_its_customer() {
        let body = json!({"id": "apt_1764632000000", "customerName": "John Doe",
            "customerPhone": "+19163337305", "customerEmail": "", "serviceType": "Oil Change",
            "appointmentDate": "2026-12-02T10:00:00.000Z", "status": "confirmed"});
        let fields = Fields::new("appointmentData", &body).unwrap();
        let appt = parse_appointment(&fields, &defaults("UTC")).unwrap();
        assert_eq!(appt.external_id.as_deref(), Some("apt_1764632000000"));
        assert_eq!(appt.title, "Oil Change");
        assert_eq!(
            appt.window.start().to_rfc3339(),
            "2026-12-02T10:00:00+00:00"
        );
        assert_eq!(appt.window.duration_minutes(), 30);
        assert_eq!(appt.status, AppointmentStatus::Scheduled);
        let customer = parse_appointment_customer(&fields, &defaults("UTC"), true)
            .unwrap()
            .unwrap();
        assert_eq!(customer.first_name.as_deref(), Some("John"));
        assert_eq!(customer.last_name.as_deref(), Some("Doe"));
        assert_eq!(customer.phone.unwrap().as_str(), "+19163337305");
        assert_eq!(customer.email, None);
    }

    #[test]
    fn an_appointment_without_customer_fields_names_no_customer() {
        let body = json!({"startTime": "2025-07-01T10:00:00Z", "customerName": "undefined"});
        let fields = Fields::new("appointmentData", &body).unwrap();
        assert_eq!(
            parse_appointment_customer(&fields, &defaults("UTC"), true).unwrap(),
            None
        );
        let nameless = json!({"customerName": "John Doe", "customerEmail": "undefined"});
        let err = parse_appointment_customer(
            &Fields::new("appointmentData", &nameless).unwrap(),
            &defaults("UTC"),
            true,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("appointmentData.customerPhone"));
    }

    #[test]
    fn full_names_split_at_the_first_space() {
        assert_eq!(
            split_name(" John  Doe "),
            (Some("John".into()), Some("Doe".into()))
        );
        assert_eq!(
            split_name("Juan de la Cruz"),
            (Some("Juan".into()), Some("de la Cruz".into()))
        );
        assert_eq!(split_name("Cher"), (Some("Cher".into()), None));
        let body = json!({"name": "Jane Smith", "firstName": "Janet", "phone": "+14155550100"});
        let customer = parse_customer(&Fields::new("c", &body).unwrap(), &defaults("UTC")).unwrap();
        assert_eq!(
            customer.full_name(),
            "Janet",
            "firstName/lastName win over name"
        );
    }

    #[test]
    fn an_end_equal_to_the_start_means_no_duration_was_given() {
        let body = json!({"startTime": "2025-10-31T10:00:00Z", "endTime": "2025-10-31T10:00:00Z"});
        let defaults = ValidationDefaults {
            appointment_minutes: 45,
            ..defaults("UTC")
        };
        let appt =
            parse_appointment(&Fields::new("appointmentData", &body).unwrap(), &defaults).unwrap();
        assert_eq!(appt.window.duration_minutes(), 45);
        let later = json!({"startTime": "2025-10-31T10:00:00Z", "endTime": "2025-10-31T11:00:00Z"});
        let appt =
            parse_appointment(&Fields::new("appointmentData", &later).unwrap(), &defaults).unwrap();
        assert_eq!(appt.window.duration_minutes(), 60);
    }

    #[test]
    fn the_texts_undefined_and_null_count_as_absent() {
        let body = json!({"email": "undefined", "phone": "+14155550100", "city": "null",
            "lastName": " undefined ", "firstName": "Nullah"});
        let customer = parse_customer(&Fields::new("c", &body).unwrap(), &defaults("UTC")).unwrap();
        assert_eq!(customer.email, None);
        assert_eq!(customer.city, None);
        assert_eq!(customer.last_name, None);
        assert_eq!(customer.first_name.as_deref(), Some("Nullah"));
        let only_undefined = json!({"email": "undefined", "phone": "null"});
        let err = parse_customer(
            &Fields::new("customerData", &only_undefined).unwrap(),
            &defaults("UTC"),
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("customerData.email"));
    }
}
