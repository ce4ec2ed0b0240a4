//! The Pipedrive adapter against the Pipedrive emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::pipedrive::start);
