//! The HubSpot adapter against the HubSpot emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::hubspot::start);
