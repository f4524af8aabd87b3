//! Tests that span modules: builders against the spec, the reconciler against a fake apiserver,
//! and the CRD against its committed copies and its CEL rules.

mod builders;
mod controller;
mod crd;
pub mod fixtures;
mod nats;
