//! The gRPC edge: generated types, conversions to and from the domain, the
//! services, the error mapping and the authentication layer.
pub mod auth;
pub mod billing;
pub mod convert;
pub mod credentials;
pub mod keys;
pub mod observe;
pub mod plans;
pub mod status;
pub mod verify;

/// Types and stubs generated from `proto/tollgate/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tollgate.v1");
}

/// The descriptor set of our protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");
