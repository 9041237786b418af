//! The REST API's wire types: what `/api/v1` answers, defined once and used by the controller
//! (which maps its rows into them), the client, the CLI and the portal. Serde only: no
//! database, no HTTP. Older resources still have their types in the controller and the client;
//! they move here as they are touched.

pub mod alerts;
pub mod audit;
pub mod compliance;
pub mod users;
