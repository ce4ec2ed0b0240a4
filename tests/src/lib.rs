//! CRM emulators, the adapter conformance suite and the test harness of crm-sync.

// Emulator handlers return the CRM's error response as their `Err`: large, but never hot.
#![allow(clippy::result_large_err)]

pub mod budget_suite;
pub mod conformance;
pub mod contract;
pub mod emulator;
pub mod gateway;
pub mod harness;
pub mod store_suite;
