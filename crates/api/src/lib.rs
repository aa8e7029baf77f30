//! The custom resources of consorzio (API group `consorzio.io`, version `v1alpha1`).
//!
//! - [`Municipality`]: one comune, which becomes one isolated namespace.
//! - [`SharedService`]: one hosted application, offered to a set of comuni.
//!
//! This crate holds types, schemas and validation rules only: no client code. Every rule that can
//! be checked when an object is applied is part of the CRD (OpenAPI schema and CEL), so the API
//! server refuses bad input with a message that names the field.

mod app;
mod common;
mod database;
mod municipality;
mod municipality_status;
mod shared_service;
mod tenant;

pub use app::*;
pub use common::{Condition, conditions_schema};
pub use database::*;
pub use municipality::*;
pub use municipality_status::*;
pub use shared_service::*;
pub use tenant::*;

/// The API group of every consorzio resource.
pub const GROUP: &str = "consorzio.io";

/// Both CRDs, in the order they are printed by `consorzio crds`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Municipality::crd(), SharedService::crd()]
}
