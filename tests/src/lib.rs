//! CRM emulators, the adapter conformance suite and the test harness of crm-sync.

pub mod conformance;
pub mod contract;
pub mod emulator;
pub mod harness;
pub mod store_suite;
