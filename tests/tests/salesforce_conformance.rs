//! The Salesforce adapter against the Salesforce emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::salesforce::start);
