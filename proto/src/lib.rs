//! Generated code for the agent ↔ controller and store ↔ controller protocols. No domain types live here: the
//! controller and the agent convert at their edges and validate every optional field.

#![allow(clippy::all, clippy::pedantic, missing_docs)] // generated code

/// `cofre.agent.v1`: enrollment and the agent session.
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("cofre.agent.v1");
    }
}

/// `cofre.store.v1`: enrollment and the session of a cofre-store.
pub mod store {
    pub mod v1 {
        tonic::include_proto!("cofre.store.v1");
    }
}
