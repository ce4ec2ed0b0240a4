//! CRM emulators, the adapter conformance suite and the test harness of crm-sync.

pub mod conformance;
pub mod emulator;
pub mod harness;
