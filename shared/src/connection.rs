//! Connections: a CRM type, its credentials and its settings, stored as one secret per connection.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{CrmType, ValidationDefaults};
use crate::error::{Error, Result};

/// A credential value. It prints as `[redacted]` so it cannot leak through `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }
    /// The real value, for the one place that sends it to the CRM.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Connection ids name secrets and files, so they are kept to a safe alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionId(String);

impl ConnectionId {
    pub fn parse(raw: &str) -> Result<Self> {
        let id = raw;
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !id.starts_with('.');
        if ok {
            Ok(ConnectionId(id.to_string()))
        } else {
            Err(Error::validation(
                "connectionId",
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-connection behaviour that is not a secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSettings {
    /// Overrides the CRM's public API address (used for emulators, sandboxes and regional hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// IANA zone for appointments that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timezone: Option<String>,
    /// ISO 3166 alpha-2 country for phone numbers written without a country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_country: Option<String>,
    /// Length of appointments that give neither an end nor a duration.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    pub default_appointment_minutes: Option<i64>,
    /// Per entity (`contact`, `lead`, `appointment`): our field name -> the CRM's property name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_mappings: BTreeMap<String, BTreeMap<String, String>>,
    /// Anything CRM-specific (e.g. a lead company placeholder), read by that CRM's adapter.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A whole number as JSON Schema's `integer` has it: `30`, or `30.0`.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64)
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a whole number")))
}

impl ConnectionSettings {
    pub fn validation_defaults(&self) -> Result<ValidationDefaults> {
        let mut defaults = ValidationDefaults::default();
        if let Some(zone) = &self.default_timezone {
            defaults.timezone = Tz::from_str(zone).map_err(|_| {
                Error::validation(
                    "settings.defaultTimezone",
                    format!("'{zone}' is not an IANA time zone"),
                )
            })?;
        }
        if let Some(country) = &self.default_country {
            defaults.country = country.clone();
        }
        if let Some(minutes) = self.default_appointment_minutes {
            defaults.appointment_minutes = minutes.clamp(1, 24 * 60);
        }
        Ok(defaults)
    }

    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }
}

/// A stored connection to one CRM account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(skip)]
    pub id: Option<ConnectionId>,
    pub crm_type: CrmType,
    pub credentials: BTreeMap<String, SecretString>,
    #[serde(default)]
    pub settings: ConnectionSettings,
}

impl Connection {
    /// Reads the secret's JSON; `id` is where it came from.
    pub fn from_secret_json(id: &ConnectionId, json: &str) -> Result<Self> {
        let mut connection: Connection =
            serde_json::from_str(json).map_err(|e| Error::ConnectionInvalid {
                id: id.to_string(),
                // serde's message names the field and position, never the value of a string.
                message: format!("the stored secret is not a valid connection: {}", e),
            })?;
        connection.id = Some(id.clone());
        Ok(connection)
    }

    pub fn to_secret_json(&self) -> String {
        serde_json::to_string(self).expect("a connection always serialises")
    }

    pub fn id_str(&self) -> &str {
        self.id
            .as_ref()
            .map(ConnectionId::as_str)
            .unwrap_or("inline")
    }

    /// A required credential, or an error naming it.
    pub fn credential(&self, name: &str) -> Result<&SecretString> {
        self.credentials
            .get(name)
            .ok_or_else(|| Error::ConnectionInvalid {
                id: self.id_str().to_string(),
                message: format!("credential '{name}' is missing"),
            })
    }

    /// The setting `name`, or the same value where the earlier service kept it: a setting or a
    /// credential under one of `aliases` (Pipedrive's `credentials.companyDomain`, Freshsales'
    /// `domain`).
    pub fn setting_or_alias(&self, name: &str, aliases: &[&str]) -> Option<&str> {
        self.settings.extra_str(name).or_else(|| {
            aliases.iter().find_map(|alias| {
                self.settings
                    .extra_str(alias)
                    .or_else(|| self.credentials.get(*alias).map(SecretString::expose))
            })
        })
    }

    /// The credential `name`, or the first of `aliases` the earlier service used for it.
    pub fn credential_or_alias(&self, name: &str, aliases: &[&str]) -> Result<&SecretString> {
        aliases
            .iter()
            .find_map(|alias| self.credentials.get(*alias))
            .filter(|_| !self.credentials.contains_key(name))
            .map_or_else(|| self.credential(name), Ok)
    }
}
