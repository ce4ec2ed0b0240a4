//! The Zoho CRM adapter against the Zoho emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::zoho::start);
