//! Live readings: pollers over tokio-postgres that publish timestamped snapshots on watch channels.
pub mod inventory_file;
pub mod poller;
pub mod queries;
pub mod slots;
pub mod text;
pub mod types;
