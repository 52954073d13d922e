//! The ttrpc errors the task service answers with: a gRPC code and a
//! message for the user.
use containerd_shim_protos::ttrpc::{self, Code};

pub fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

pub fn not_found(id: &str) -> ttrpc::Error {
    error(Code::NOT_FOUND, format!("task {id} not found"))
}
