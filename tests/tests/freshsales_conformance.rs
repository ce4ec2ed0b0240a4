//! The Freshsales adapter against the Freshsales emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::freshsales::start);
