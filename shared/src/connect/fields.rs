//! What the connect page asks for each CRM: every credential and setting field `platforms`
//! declares, each either asked on the page, supplied by the CRM's OAuth authorization, or left to
//! whoever makes the link (addresses crm-sync calls with the credentials, field mappings).

use crate::domain::CrmType;

/// How a person gives a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Typed, never shown again (a token, a key, a password).
    Secret,
    Text,
    /// An IANA zone (suggestions offered).
    TimeZone,
    /// An ISO 3166 alpha-2 code.
    Country,
    Number {
        min: i64,
        max: i64,
    },
    Checkbox,
    /// One of (value, label).
    Select(&'static [(&'static str, &'static str)]),
    /// An https address whose host ends in one of these suffixes; no other host is ever called.
    HttpsUrl(&'static [&'static str]),
    /// An https address on a public host name (a self-hosted CRM): no IP address, no localhost.
    PublicHttpsUrl,
}

/// A field the page asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub label: &'static str,
    pub kind: InputKind,
    pub required: bool,
    /// Shown under "More settings".
    pub advanced: bool,
    pub help: &'static str,
}

/// Where a field's value comes from in a connect flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldSource {
    Asked(Input),
    /// The OAuth authorization supplies it (the app's client, the tokens, the API host).
    Authorization,
    /// Only the link's creator sets it (`settings` of the connect session): an address crm-sync
    /// sends the credentials to, which a link holder must not choose, or a mapping that needs the
    /// CRM's admin.
    LinkCreator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// A credential (kept as a secret value) rather than a setting.
    pub credential: bool,
    pub source: FieldSource,
}

impl Field {
    pub fn asked(&self) -> Option<&Input> {
        match &self.source {
            FieldSource::Asked(input) => Some(input),
            _ => None,
        }
    }
}

/// Whether the CRM connects through its OAuth consent page ("Connect with …") rather than typed
/// credentials.
pub fn connects_by_authorization(crm: CrmType) -> bool {
    matches!(crm, CrmType::Salesforce | CrmType::Zoho)
}

/// How the person connects, in the CRM list.
pub fn connect_method(crm: CrmType) -> &'static str {
    match crm {
        CrmType::Salesforce | CrmType::Zoho => "sign in",
        CrmType::Hubspot => "private app token",
        CrmType::Pipedrive => "API token",
        CrmType::Freshsales => "API key",
        CrmType::Dynamics => "app registration",
        CrmType::Sugarcrm => "user name and password",
    }
}

/// Where a person finds the credentials the page asks for.
pub fn credential_help(crm: CrmType) -> &'static str {
    match crm {
        CrmType::Hubspot => {
            "In HubSpot: Settings, Integrations, Private Apps. Create an app with the contacts and meetings scopes and copy its access token."
        }
        CrmType::Pipedrive => {
            "In Pipedrive: your name (top right), Personal preferences, API. Copy your personal API token."
        }
        CrmType::Freshsales => {
            "In Freshsales: your profile picture, Settings, API Settings. Copy your API key."
        }
        CrmType::Dynamics => {
            "An app registration in Microsoft Entra ID with a client secret, added as an application user of your Dynamics 365 environment."
        }
        CrmType::Sugarcrm => {
            "A SugarCRM user for crm-sync, with access to contacts, leads and meetings."
        }
        CrmType::Salesforce => {
            "You sign in to Salesforce and allow crm-sync access; no password or key is typed here."
        }
        CrmType::Zoho => {
            "You sign in to Zoho and allow crm-sync access; no password or key is typed here."
        }
    }
}

const fn ask(label: &'static str, kind: InputKind, help: &'static str) -> FieldSource {
    FieldSource::Asked(Input {
        label,
        kind,
        required: true,
        advanced: false,
        help,
    })
}

const fn optional(label: &'static str, kind: InputKind, help: &'static str) -> FieldSource {
    FieldSource::Asked(Input {
        label,
        kind,
        required: false,
        advanced: false,
        help,
    })
}

const fn advanced(label: &'static str, kind: InputKind, help: &'static str) -> FieldSource {
    FieldSource::Asked(Input {
        label,
        kind,
        required: false,
        advanced: true,
        help,
    })
}

const fn credential(name: &'static str, source: FieldSource) -> Field {
    Field {
        name,
        credential: true,
        source,
    }
}

const fn setting(name: &'static str, source: FieldSource) -> Field {
    Field {
        name,
        credential: false,
        source,
    }
}

const STAMP_HELP: &str =
    "The field crm-sync marks its records with (see the README); leave empty for the default.";

/// The settings every CRM has.
const COMMON: [Field; 5] = [
    setting(
        "defaultTimezone",
        optional(
            "Time zone of your bookings",
            InputKind::TimeZone,
            "Used when a booking names no zone, e.g. America/New_York.",
        ),
    ),
    setting(
        "defaultCountry",
        optional(
            "Country of your phone numbers",
            InputKind::Country,
            "Two letters, e.g. US; numbers written without a country code are read in it.",
        ),
    ),
    setting(
        "defaultAppointmentMinutes",
        advanced(
            "Appointment length (minutes)",
            InputKind::Number { min: 1, max: 1440 },
            "Used when a booking gives no end or duration; 30 if empty.",
        ),
    ),
    setting("fieldMappings", FieldSource::LinkCreator),
    // The account's tier for the shared rate budget: an admin's choice, not the page's.
    setting("rateBudget", FieldSource::LinkCreator),
];

pub const SALESFORCE_LOGIN_HOSTS: &[(&str, &str)] = &[
    (
        "https://login.salesforce.com",
        "Production or Developer Edition",
    ),
    ("https://test.salesforce.com", "Sandbox"),
];

pub const ZOHO_DATA_CENTERS: &[(&str, &str)] = &[
    ("com", "United States (zoho.com)"),
    ("eu", "Europe (zoho.eu)"),
    ("in", "India (zoho.in)"),
    ("com.au", "Australia (zoho.com.au)"),
    ("jp", "Japan (zoho.jp)"),
    ("ca", "Canada (zohocloud.ca)"),
    ("sa", "Saudi Arabia (zoho.sa)"),
    ("uk", "United Kingdom (zoho.uk)"),
    ("com.cn", "China (zoho.com.cn)"),
];

/// Dataverse environments' hosts (commercial, China, US government clouds).
const DYNAMICS_HOSTS: &[&str] = &[
    ".dynamics.com",
    ".dynamics.cn",
    ".microsoftdynamics.us",
    ".appsplatform.us",
];

/// Every credential and setting field of `crm`, in the order the page shows them.
pub fn fields(crm: CrmType) -> Vec<Field> {
    let own: Vec<Field> = match crm {
        CrmType::Hubspot => vec![
            credential(
                "accessToken",
                ask("Private app access token", InputKind::Secret, ""),
            ),
            setting("baseUrl", FieldSource::LinkCreator),
            setting(
                "stampProperty",
                advanced("Stamp property", InputKind::Text, STAMP_HELP),
            ),
        ],
        CrmType::Salesforce => vec![
            credential("clientId", FieldSource::Authorization),
            credential("clientSecret", FieldSource::Authorization),
            credential("refreshToken", FieldSource::Authorization),
            setting(
                "loginUrl",
                ask(
                    "Salesforce environment",
                    InputKind::Select(SALESFORCE_LOGIN_HOSTS),
                    "Where you sign in to Salesforce.",
                ),
            ),
            setting("instanceUrl", FieldSource::Authorization),
            setting(
                "contactExternalIdField",
                advanced(
                    "Contact external ID field",
                    InputKind::Text,
                    "An External ID field on Contact to match contacts by, e.g. Booking_Id__c.",
                ),
            ),
            setting(
                "defaultLeadCompany",
                advanced(
                    "Company for leads without one",
                    InputKind::Text,
                    "Salesforce requires a company on every lead.",
                ),
            ),
            setting(
                "stampField",
                advanced("Stamp field", InputKind::Text, STAMP_HELP),
            ),
        ],
        CrmType::Pipedrive => vec![
            credential("apiToken", ask("Personal API token", InputKind::Secret, "")),
            setting(
                "companyDomain",
                ask(
                    "Company domain",
                    InputKind::Text,
                    "The acme of acme.pipedrive.com.",
                ),
            ),
            setting("baseUrl", FieldSource::LinkCreator),
        ],
        CrmType::Zoho => vec![
            credential("clientId", FieldSource::Authorization),
            credential("clientSecret", FieldSource::Authorization),
            credential("refreshToken", FieldSource::Authorization),
            setting(
                "dataCenter",
                ask(
                    "Zoho data centre",
                    InputKind::Select(ZOHO_DATA_CENTERS),
                    "The domain you sign in to Zoho at.",
                ),
            ),
            setting("accountsUrl", FieldSource::LinkCreator),
            setting("apiDomain", FieldSource::Authorization),
            setting("baseUrl", FieldSource::LinkCreator),
            setting(
                "defaultLeadCompany",
                advanced(
                    "Company for leads without one",
                    InputKind::Text,
                    "Zoho's standard lead layout requires a company.",
                ),
            ),
            setting(
                "sendInvitations",
                advanced(
                    "Email meeting invitations to customers",
                    InputKind::Checkbox,
                    "Zoho then also sends cancellation emails.",
                ),
            ),
            setting(
                "stampField",
                advanced("Stamp field", InputKind::Text, STAMP_HELP),
            ),
        ],
        CrmType::Freshsales => vec![
            credential("apiKey", ask("API key", InputKind::Secret, "")),
            setting(
                "bundleAlias",
                ask(
                    "Bundle alias",
                    InputKind::Text,
                    "The acme of acme.myfreshworks.com.",
                ),
            ),
            setting("baseUrl", FieldSource::LinkCreator),
            setting(
                "leadLifecycleStage",
                advanced(
                    "Lifecycle stage for leads",
                    InputKind::Text,
                    "The id of the stage leads are created at; the stage of type Lead if empty.",
                ),
            ),
            setting(
                "cancelledOutcomeId",
                advanced(
                    "Outcome of cancelled appointments",
                    InputKind::Text,
                    "An appointment outcome id to set on cancel.",
                ),
            ),
            setting(
                "stampField",
                advanced("Stamp field", InputKind::Text, STAMP_HELP),
            ),
        ],
        CrmType::Dynamics => vec![
            credential(
                "clientId",
                ask("Application (client) ID", InputKind::Text, ""),
            ),
            credential("clientSecret", ask("Client secret", InputKind::Secret, "")),
            setting(
                "environmentUrl",
                ask(
                    "Environment URL",
                    InputKind::HttpsUrl(DYNAMICS_HOSTS),
                    "As Settings, Session details shows it, e.g. https://acme.crm.dynamics.com.",
                ),
            ),
            setting(
                "tenantId",
                ask(
                    "Tenant (directory) ID",
                    InputKind::Text,
                    "The directory's id or domain, e.g. acme.onmicrosoft.com.",
                ),
            ),
            setting("authorityUrl", FieldSource::LinkCreator),
            setting(
                "stampField",
                advanced("Stamp column", InputKind::Text, STAMP_HELP),
            ),
        ],
        CrmType::Sugarcrm => vec![
            credential("username", ask("User name", InputKind::Text, "")),
            credential("password", ask("Password", InputKind::Secret, "")),
            credential(
                "clientId",
                advanced(
                    "OAuth client id",
                    InputKind::Text,
                    "Only for an OAuth key other than Sugar's built-in sugar.",
                ),
            ),
            credential(
                "clientSecret",
                advanced("OAuth client secret", InputKind::Secret, ""),
            ),
            setting(
                "instanceUrl",
                ask(
                    "SugarCRM address",
                    InputKind::PublicHttpsUrl,
                    "e.g. https://acme.sugarondemand.com.",
                ),
            ),
            setting(
                "platform",
                advanced(
                    "API platform",
                    InputKind::Text,
                    "The platform your admin registered for crm-sync; crm_sync if empty.",
                ),
            ),
            setting(
                "stampField",
                advanced("Stamp field", InputKind::Text, STAMP_HELP),
            ),
        ],
    };
    own.into_iter().chain(COMMON).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_page_knows_exactly_the_fields_platforms_declares() {
        let platforms = crate::sync::platforms();
        for crm in CrmType::ALL {
            let platform = platforms["platforms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["crmType"] == crm.as_str())
                .unwrap();
            let names = |key: &str| -> BTreeSet<String> {
                platform[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect()
            };
            let ours = |credential: bool| -> BTreeSet<String> {
                fields(crm)
                    .iter()
                    .filter(|f| f.credential == credential)
                    .map(|f| f.name.to_string())
                    .collect()
            };
            assert_eq!(ours(true), names("credentialFields"), "{crm} credentials");
            assert_eq!(ours(false), names("settingFields"), "{crm} settings");
        }
    }

    #[test]
    fn oauth_crms_ask_no_credential_and_addresses_are_never_free_text_from_the_page() {
        for crm in CrmType::ALL {
            for field in fields(crm) {
                if connects_by_authorization(crm) && field.credential {
                    assert_eq!(
                        field.source,
                        FieldSource::Authorization,
                        "{crm} {}",
                        field.name
                    );
                }
                if [
                    "baseUrl",
                    "accountsUrl",
                    "authorityUrl",
                    "apiDomain",
                    "instanceUrl",
                ]
                .contains(&field.name)
                    && let Some(input) = field.asked()
                {
                    assert_eq!(
                        input.kind,
                        InputKind::PublicHttpsUrl,
                        "{crm} {}",
                        field.name
                    );
                }
            }
        }
    }
}

/// The CRM's name as people know it (the `name` of `platforms`).
pub fn crm_name(crm: CrmType) -> &'static str {
    match crm {
        CrmType::Hubspot => "HubSpot",
        CrmType::Salesforce => "Salesforce",
        CrmType::Pipedrive => "Pipedrive",
        CrmType::Zoho => "Zoho CRM",
        CrmType::Freshsales => "Freshsales",
        CrmType::Dynamics => "Microsoft Dynamics 365",
        CrmType::Sugarcrm => "SugarCRM",
    }
}

#[cfg(test)]
mod name_tests {
    #[test]
    fn names_are_the_platforms_names() {
        for platform in crate::sync::platforms()["platforms"].as_array().unwrap() {
            let crm = platform["crmType"].as_str().unwrap().parse().unwrap();
            assert_eq!(super::crm_name(crm), platform["name"]);
        }
    }
}
