//! Reads what a request names beside its entity (the connection, the CRM it claims, inline
//! credentials) and the entities only some operations take (an appointment and who it is with, a
//! contact lookup). Every field given is checked, aliases too: the first given is used.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::connection::{Connection, ConnectionId, ConnectionSettings, SecretString};
use crate::crm::ContactLookup;
use crate::domain::{self, CrmType, E164Phone, Email, Fields, ValidationDefaults};
use crate::error::{Error, Result};
use crate::sync::AppointmentPayload;

/// `connectionId` exactly as sent: a string the stores can name (an id is never a number, and
/// `null` is no id).
pub fn connection_id(fields: &Fields<'_>) -> Result<Option<ConnectionId>> {
    match fields.raw("connectionId") {
        None => Ok(None),
        Some(Value::String(id)) => ConnectionId::parse(id).map(Some),
        Some(_) => Err(Error::validation(
            "connectionId",
            "must be a string: the id of a stored CRM connection",
        )),
    }
}

/// The CRM the caller says the connection is, when it says.
pub fn claimed_crm_type(fields: &Fields<'_>) -> Result<Option<CrmType>> {
    fields
        .string(&["crmType"])?
        .map(|claimed| {
            claimed
                .parse()
                .map_err(|m: String| Error::validation("crmType", m))
        })
        .transpose()
}

/// The connection is the CRM the caller says it is, when the caller says.
pub fn check_claim(
    claimed: Option<CrmType>,
    id: &ConnectionId,
    connection: &Connection,
) -> Result<()> {
    match claimed {
        Some(claimed) if claimed != connection.crm_type => Err(Error::validation(
            "crmType",
            format!(
                "connection '{id}' is a {} connection, not {claimed}",
                connection.crm_type
            ),
        )),
        _ => Ok(()),
    }
}

/// A `sync-appointment` request: the appointment and who it is with (the customer beside it, in
/// it, the earlier workflow's flat fields in it, or a CRM contact id). Every form given is checked;
/// the first of them is used.
pub fn read_appointment_request(
    fields: &Fields<'_>,
    defaults: &ValidationDefaults,
) -> Result<AppointmentPayload> {
    let mut requests = fields
        .children(&["appointment", "appointmentData"])?
        .iter()
        .enumerate()
        // Only the first form given is the appointment, which must say who it is with.
        .map(|(i, appointment)| read_appointment(fields, appointment, defaults, i == 0))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    requests
        .next()
        .ok_or_else(|| Error::validation("appointment", "is required (or appointmentData)"))
}

fn read_appointment(
    fields: &Fields<'_>,
    appointment_fields: &Fields<'_>,
    defaults: &ValidationDefaults,
    used: bool,
) -> Result<AppointmentPayload> {
    let appointment = domain::parse_appointment(appointment_fields, defaults)?;
    let mut customer_ids = appointment_fields.texts(&["customerId"])?;
    customer_ids.extend(fields.texts(&["customerId"])?);
    let customer_id = customer_ids.into_iter().next().map(|(_, id)| id);
    let mut customers = Vec::new();
    for customer_fields in fields
        .children(&["customer", "customerData"])?
        .iter()
        .chain(&appointment_fields.children(&["customer", "customerData"])?)
    {
        customers.push(domain::parse_customer(customer_fields, defaults)?);
    }
    // The flat fields must make a customer only when nothing else names one.
    let flat_needed = used && customers.is_empty() && customer_id.is_none();
    let flat = domain::parse_appointment_customer(appointment_fields, defaults, flat_needed)?;
    let customer = customers.into_iter().next().or(flat);
    if used && customer.is_none() && customer_id.is_none() {
        return Err(Error::validation(
            "customer",
            "an appointment needs the customer (customer, or appointment.customer) or the CRM contact id (appointment.customerId)",
        ));
    }
    Ok(AppointmentPayload {
        appointment,
        customer,
        customer_id,
    })
}

/// What `get-customer` looks for: the CRM id, else the email, else the phone. Each one given is
/// checked.
pub fn read_lookup(fields: &Fields<'_>, defaults: &ValidationDefaults) -> Result<ContactLookup> {
    let id = fields.string(&["customerId", "crmId", "id"])?;
    let mut email = None;
    for (key, raw) in fields.texts(&["email"])? {
        email = Some(Email::parse(&raw).map_err(|m| Error::validation(key, m))?);
    }
    let mut phone = None;
    for (key, raw) in fields.strings(&["phone"])? {
        phone =
            Some(E164Phone::parse(&raw, &defaults.country).map_err(|m| Error::validation(key, m))?);
    }
    match (id, email, phone) {
        (Some(id), _, _) => Ok(ContactLookup::Id(id)),
        (None, Some(email), _) => Ok(ContactLookup::Email(email)),
        (None, None, Some(phone)) => Ok(ContactLookup::Phone(phone)),
        (None, None, None) => Err(Error::validation(
            "customerId",
            "give customerId, email or phone",
        )),
    }
}

/// Credentials (and settings) to check before storing them, when the request carries them;
/// checked whenever given.
pub fn inline_connection(
    fields: &Fields<'_>,
) -> Result<Option<(BTreeMap<String, SecretString>, ConnectionSettings)>> {
    let settings = match fields.value("settings") {
        Some(value @ Value::Object(_)) => {
            Some(serde_json::from_value(value.clone()).map_err(|e| {
                Error::validation("settings", format!("is not valid connection settings: {e}"))
            })?)
        }
        Some(_) => return Err(Error::validation("settings", "must be an object")),
        None => None,
    };
    let credentials = match fields.value("credentials") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => Ok((k.clone(), SecretString::new(s))),
                None => Err(Error::validation(
                    format!("credentials.{k}"),
                    "must be a string",
                )),
            })
            .collect::<Result<BTreeMap<_, _>>>()?,
        Some(_) => {
            return Err(Error::validation(
                "credentials",
                "must be an object of the CRM's credential fields",
            ));
        }
        None if settings.is_some() => {
            return Err(Error::validation(
                "settings",
                "go with credentials: a stored connection's settings are its own",
            ));
        }
        None => return Ok(None),
    };
    Ok(Some((credentials, settings.unwrap_or_default())))
}
