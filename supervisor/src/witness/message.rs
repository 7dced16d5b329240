//! The message bodies carried in signed frames: the beacon's announcement,
//! the witness request and the witness answer. Layouts are in the
//! [parent module](super).

use super::frame::{FrameError, MAX_NAME_LEN};

/// A node's role and disk state, as its beacon announces them: the
/// replication protocol's own types (one of each across the crates).
pub use twinfs_replicator_proto::{DiskState, Role};

/// What a node tells its peer in every heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Its role now.
    pub role: Role,
    /// Its disk now.
    pub disk: DiskState,
    /// Its current data generation.
    pub generation: u64,
    /// Whether it sees the replication link up: a peer that heartbeats here
    /// but says its link is down confirms a cut private link, not a dead node.
    pub link_up: bool,
    /// It has just demoted for a planned switchover and asks this node to
    /// take over now (sent for a few seconds after the demotion).
    pub handover: bool,
    /// It asks this node, the primary, to switch over to it (the second half
    /// of `twinfs drill`, sent for a few seconds).
    pub takeover: bool,
}

const ANNOUNCE_LEN: usize = 11;

impl Announce {
    /// The body bytes.
    pub(crate) fn encode(&self) -> [u8; ANNOUNCE_LEN] {
        let mut out = [0u8; ANNOUNCE_LEN];
        out[0] = match self.role {
            Role::Primary => 1,
            Role::Secondary => 2,
        };
        out[1] = match self.disk {
            DiskState::UpToDate => 1,
            DiskState::Outdated => 2,
            DiskState::Inconsistent => 3,
            DiskState::Diskless => 4,
        };
        out[2] = u8::from(self.link_up)
            | (u8::from(self.handover) << 1)
            | (u8::from(self.takeover) << 2);
        out[3..].copy_from_slice(&self.generation.to_be_bytes());
        out
    }

    /// Parses a heartbeat body from `sender`.
    pub(crate) fn decode(body: &[u8], sender: &str) -> Result<Announce, FrameError> {
        let bad = |reason: String| FrameError::BadBody {
            what: "heartbeat",
            sender: sender.to_owned(),
            reason,
        };
        let mut r = Reader::new(body);
        let role = match r.u8().map_err(bad)? {
            1 => Role::Primary,
            2 => Role::Secondary,
            b => return Err(bad(format!("unknown role {b}"))),
        };
        let disk = match r.u8().map_err(bad)? {
            1 => DiskState::UpToDate,
            2 => DiskState::Outdated,
            3 => DiskState::Inconsistent,
            4 => DiskState::Diskless,
            b => return Err(bad(format!("unknown disk state {b}"))),
        };
        let flags = r.u8().map_err(bad)?;
        if flags & !0b111 != 0 {
            return Err(bad(format!("unknown flags {flags:#04x}")));
        }
        let (link_up, handover, takeover) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
        let generation = r.u64().map_err(bad)?;
        r.finish().map_err(bad)?;
        Ok(Announce {
            role,
            disk,
            generation,
            link_up,
            handover,
            takeover,
        })
    }
}

/// What a node asks the witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Only "are you there, and do you hear my peer?".
    Ping = 1,
    /// Grant me the primary lease (I do not hold it).
    Acquire = 2,
    /// Extend the primary lease I hold (my own view of it has not expired).
    Renew = 3,
    /// I give the lease up (planned demotion); my peer may take it at once.
    Release = 4,
}

/// A request to the witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) req_id: u64,
    pub(crate) op: Op,
}

impl Request {
    pub(crate) fn encode(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[..8].copy_from_slice(&self.req_id.to_be_bytes());
        out[8] = self.op as u8;
        out
    }

    pub(crate) fn decode(body: &[u8], sender: &str) -> Result<Request, FrameError> {
        let bad = |reason: String| FrameError::BadBody {
            what: "witness request",
            sender: sender.to_owned(),
            reason,
        };
        let mut r = Reader::new(body);
        let req_id = r.u64().map_err(bad)?;
        let op = match r.u8().map_err(bad)? {
            1 => Op::Ping,
            2 => Op::Acquire,
            3 => Op::Renew,
            4 => Op::Release,
            b => return Err(bad(format!("unknown operation {b}"))),
        };
        r.finish().map_err(bad)?;
        Ok(Request { req_id, op })
    }

    /// The request id of a body that may be invalid, so that a refusal can
    /// still be matched to its request.
    pub(crate) fn peek_id(body: &[u8]) -> u64 {
        Reader::new(body).u64().unwrap_or(0)
    }
}

/// What the witness did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A ping: no lease was asked for.
    Pinged = 0,
    /// The lease is granted (or renewed).
    Granted = 1,
    /// Another node holds the lease.
    Refused = 2,
    /// The lease is given up.
    Released = 3,
    /// The witness started less than one lease ago and grants only renewals.
    Grace = 4,
    /// The request failed verification; `reason` says why.
    Rejected = 5,
}

/// The witness's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) req_id: u64,
    pub(crate) outcome: Outcome,
    /// The lease duration the witness applies, in ms.
    pub(crate) lease_ms: u32,
    /// Since when the witness has not heard the other node; `None`: never.
    pub(crate) peer_heard_ms: Option<u32>,
    /// The node the answer is for.
    pub(crate) to: String,
    /// Who holds the lease after this request, and for how many more ms.
    pub(crate) holder: Option<(String, u32)>,
    /// Why a request was rejected; empty otherwise.
    pub(crate) reason: String,
}

impl Answer {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.reason.len());
        out.extend_from_slice(&self.req_id.to_be_bytes());
        out.push(self.outcome as u8);
        out.extend_from_slice(&self.lease_ms.to_be_bytes());
        out.extend_from_slice(&self.peer_heard_ms.unwrap_or(u32::MAX).to_be_bytes());
        let (holder, remaining) = match &self.holder {
            Some((name, ms)) => (name.as_str(), *ms),
            None => ("", 0),
        };
        out.extend_from_slice(&remaining.to_be_bytes());
        put_str8(&mut out, &self.to);
        put_str8(&mut out, holder);
        // Keep the whole answer under the frame's body limit.
        let reason = twinfs_replicator_proto::limit::clip(&self.reason, 800);
        out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        out.extend_from_slice(reason.as_bytes());
        out
    }

    pub(crate) fn decode(body: &[u8], sender: &str) -> Result<Answer, FrameError> {
        let bad = |reason: String| FrameError::BadBody {
            what: "witness answer",
            sender: sender.to_owned(),
            reason,
        };
        let mut r = Reader::new(body);
        let req_id = r.u64().map_err(bad)?;
        let outcome = match r.u8().map_err(bad)? {
            0 => Outcome::Pinged,
            1 => Outcome::Granted,
            2 => Outcome::Refused,
            3 => Outcome::Released,
            4 => Outcome::Grace,
            5 => Outcome::Rejected,
            b => return Err(bad(format!("unknown outcome {b}"))),
        };
        let lease_ms = r.u32().map_err(bad)?;
        let peer_heard_ms = Some(r.u32().map_err(bad)?).filter(|&ms| ms != u32::MAX);
        let remaining = r.u32().map_err(bad)?;
        let n = usize::from(r.u8().map_err(bad)?);
        let to = r.str(n).map_err(bad)?;
        let n = usize::from(r.u8().map_err(bad)?);
        let holder = r.str(n).map_err(bad)?;
        let n = usize::from(r.u16().map_err(bad)?);
        let reason = r.str(n).map_err(bad)?;
        r.finish().map_err(bad)?;
        Ok(Answer {
            req_id,
            outcome,
            lease_ms,
            peer_heard_ms,
            to,
            holder: (!holder.is_empty()).then_some((holder, remaining)),
            reason,
        })
    }
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    let s = twinfs_replicator_proto::limit::clip(s, MAX_NAME_LEN);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Reads big-endian fields from a body; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { rest: b }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!(
                "truncated: needs {n} more bytes, {} left",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self, n: usize) -> Result<String, String> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "a text field is not UTF-8".to_owned())
    }

    fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected trailing bytes", self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let a = Announce {
            role: Role::Primary,
            disk: DiskState::Inconsistent,
            generation: 0x0102_0304_0506_0708,
            link_up: true,
            handover: true,
            takeover: false,
        };
        assert_eq!(Announce::decode(&a.encode(), "alpha"), Ok(a));
        let q = Request {
            req_id: 42,
            op: Op::Release,
        };
        assert_eq!(Request::decode(&q.encode(), "alpha"), Ok(q));
        let ans = Answer {
            req_id: 42,
            outcome: Outcome::Refused,
            lease_ms: 3000,
            peer_heard_ms: Some(120),
            to: "beta".to_owned(),
            holder: Some(("alpha".to_owned(), 2500)),
            reason: String::new(),
        };
        assert_eq!(Answer::decode(&ans.encode(), "witness"), Ok(ans));
        let never = Answer {
            req_id: 1,
            outcome: Outcome::Rejected,
            lease_ms: 3000,
            peer_heard_ms: None,
            to: "beta".to_owned(),
            holder: None,
            reason: "é".repeat(1000),
        };
        let back = Answer::decode(&never.encode(), "witness").unwrap();
        assert_eq!(back.peer_heard_ms, None);
        assert_eq!(back.reason, "é".repeat(400));
    }

    #[test]
    fn bad_bodies_are_named() {
        let err = Announce::decode(&[9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], "alpha").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad heartbeat from \"alpha\": unknown role 9"
        );
        let err = Request::decode(&[0; 8], "alpha").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad witness request from \"alpha\": truncated: needs 1 more bytes, 0 left"
        );
        let err = Request::decode(&[0; 10], "alpha").unwrap_err();
        assert!(err.to_string().contains("unknown operation 0"), "{err}");
        for n in 0..40 {
            // Every prefix of a valid answer is refused without panicking.
            let ans = Answer {
                req_id: 1,
                outcome: Outcome::Granted,
                lease_ms: 1,
                peer_heard_ms: None,
                to: "b".to_owned(),
                holder: Some(("a".to_owned(), 1)),
                reason: "x".to_owned(),
            }
            .encode();
            if n < ans.len() {
                assert!(Answer::decode(&ans[..n], "w").is_err());
            }
        }
    }
}
