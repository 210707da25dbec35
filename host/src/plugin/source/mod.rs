//! Where plugin bytes come from besides files and the binary itself.
//!
//! - `oci`: `oci://` urls, pulled from an OCI registry at load and reload
//!   (never on the data path), every blob checked against its digest.

pub mod oci;
