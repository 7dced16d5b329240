//! What a failover hook may do to the world.
//!
//! The Lua API (`twinfs.vip`, `twinfs.service`, `twinfs.http`, `twinfs.exec`)
//! calls these methods and nothing else, so one hook script runs against the
//! real machine ([`crate::actuators::System`]) or against a recorder for
//! `twinfs hooks dry-run`. Every method blocks for at most its own timeout.

use std::net::IpAddr;
use std::time::Duration;

/// A virtual IP as the admin writes it: `10.0.0.10/24` on `eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub addr: IpAddr,
    pub prefix: u8,
    /// The interface that carries it (and sends the gratuitous ARP).
    pub dev: String,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.addr, self.prefix, self.dev)
    }
}

/// What claiming a VIP found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VipClaim {
    /// The address was already on the interface (a claim is idempotent).
    pub already_held: bool,
    /// Gratuitous ARP announcements sent.
    pub announcements: u32,
    /// Another host answered the duplicate-address probe: its MAC address
    /// (`aa:bb:cc:dd:ee:ff`). `None` means nobody else claims the address.
    pub conflict: Option<String>,
}

/// What `service.status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Stopped,
}

/// An HTTP health check: GET `url`, expect `expect_status`, and, when set, a
/// body that contains `expect_body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub timeout: Duration,
}

/// The answer an HTTP check got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body_bytes: usize,
    pub elapsed: Duration,
}

/// A command run by `twinfs.exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit code; `None` when a signal ended it (or the timeout did).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Why an action failed. The message says what was attempted and what the
/// system answered (`ip addr add 10.0.0.10/24 dev eth0: RTNETLINK answers:
/// File exists`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ActionError(pub String);

/// The actions a hook can take. Implementations: the real system, and the
/// dry-run recorder.
pub trait Actuators: Send + Sync {
    /// Adds the address (idempotent), probes for a duplicate and announces it
    /// with gratuitous ARP.
    fn vip_claim(&self, vip: &Vip) -> Result<VipClaim, ActionError>;
    /// Removes the address; not holding it is not an error.
    fn vip_release(&self, vip: &Vip) -> Result<(), ActionError>;
    /// Whether the address is configured on the interface now.
    fn vip_held(&self, vip: &Vip) -> Result<bool, ActionError>;
    /// Re-sends the gratuitous ARP for a held VIP (when the peer reappears).
    fn vip_announce(&self, vip: &Vip) -> Result<u32, ActionError>;
    fn service_start(&self, name: &str) -> Result<(), ActionError>;
    fn service_stop(&self, name: &str) -> Result<(), ActionError>;
    fn service_status(&self, name: &str) -> Result<ServiceState, ActionError>;
    /// Errors only when no answer came (refused, timed out); a wrong status
    /// is an answer, and the caller compares it with `expect_status`.
    fn http_check(&self, check: &HttpCheck) -> Result<HttpAnswer, ActionError>;
    fn exec(&self, argv: &[String], timeout: Duration) -> Result<ExecResult, ActionError>;
}
