//! The wire format: frames and their versioned binary codec.
//!
//! Every frame is a 10-byte header then a body:
//!
//! ```text
//! magic "TWRP" (4) | frame version (1) | type (1) | body length, u32 big-endian (4) | body
//! ```
//!
//! Integers are big-endian. The encoding is canonical (one byte string per frame),
//! so a decoded frame re-encodes to the same bytes. Decoding is separate from
//! reading: [`Frame::decode`] works on whatever bytes have arrived and returns
//! `Ok(None)` until a whole frame is there. This parses peer input, so every
//! length is checked before it is trusted and nothing allocates more than the
//! announced (capped) body.

use crate::error::FrameError;
use crate::{DiskState, Generation, Role, Seq};
use bytes::Bytes;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"TWRP";
/// The frame format version this build reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Header length: magic, version, type, body length.
pub const HEADER_LEN: usize = 10;
/// Largest body accepted (64 MiB): bounds what a peer can make us allocate.
pub const MAX_BODY_LEN: usize = 64 << 20;
/// Largest mutation payload that fits in a frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_BODY_LEN - MUTATION_FIXED;

const TYPE_HELLO: u8 = 1;
const TYPE_MUTATION: u8 = 2;
const TYPE_ACK: u8 = 3;
const TYPE_HEARTBEAT: u8 = 4;
const TYPE_GOODBYE: u8 = 5;
const TYPE_FLUSH: u8 = 6;
const TYPE_RESYNC_REQUEST: u8 = 7;
const TYPE_RESYNC_KEYS: u8 = 8;
const TYPE_RESYNC_DATA: u8 = 9;
const TYPE_RESYNC_DONE: u8 = 10;
const TYPE_REPORT: u8 = 11;
const TYPE_VERIFY_REQUEST: u8 = 12;
const TYPE_VERIFY_RESPONSE: u8 = 13;
const TYPE_REPAIR: u8 = 14;

const KEYS_LAST: u8 = 1;
const KEYS_KNOWN: u8 = 2;

/// Mutation body before the payload: seq (8) and flags (1).
const MUTATION_FIXED: usize = 9;
const FLAG_FLUSH: u8 = 1;

const ROLE_PRIMARY: u8 = 1;
const ROLE_SECONDARY: u8 = 2;

const DISK_UP_TO_DATE: u8 = 1;
const DISK_OUTDATED: u8 = 2;
const DISK_INCONSISTENT: u8 = 3;
const DISK_DISKLESS: u8 = 4;

/// The handshake: what a node says about itself when a connection starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Replication protocol version ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// Node name, as in the config.
    pub node: String,
    /// The node's current data generation.
    pub generation: Generation,
    /// The last seq the node has applied to its store.
    pub last_applied: Seq,
    /// The node's role.
    pub role: Role,
    /// The state of the node's disk.
    pub disk: DiskState,
    /// The generation the node last shared with its peer.
    pub shared: Generation,
    /// Blocks the node changed since the shared generation (its dirty set).
    pub changed_blocks: u64,
    /// When the node last became primary (ms since the Unix epoch), 0 if never.
    pub primary_since_ms: u64,
    /// Every mutation up to this seq is known to be identical on both nodes
    /// (the resync floor: what changed after it is what a resync ships).
    pub floor: Seq,
}

/// One message between the two nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Handshake, first frame of a connection.
    Hello(Hello),
    /// A mutation, primary to replica.
    Mutation {
        /// Its sequence number.
        seq: Seq,
        /// A flush barrier: the replica makes everything up to `seq` durable before acking it as flushed.
        flush: bool,
        /// The encoded mutation, opaque to this crate. Shared, not copied:
        /// the primary keeps it for retransmission while the transport sends it.
        payload: Bytes,
    },
    /// Cumulative acknowledgement, replica to primary. Always `flushed <= applied <= received`.
    Ack {
        /// Every seq up to this one has been received.
        received: Seq,
        /// Every seq up to this one has been applied to the store.
        applied: Seq,
        /// Every seq up to this one is durable in the store.
        flushed: Seq,
    },
    /// Liveness, both ways.
    Heartbeat {
        /// Milliseconds since the sender's state machine started (for lag diagnostics only).
        now_ms: u64,
    },
    /// A flush barrier, primary to replica: make every mutation up to `seq`
    /// durable, then acknowledge it as flushed.
    Flush {
        /// The barrier's seq (the primary's last submitted one when the fsync came).
        seq: Seq,
    },
    /// Resync, source to target: send the keys you changed after `floor`.
    ResyncRequest {
        /// The agreed floor (the lower of the two nodes' floors).
        floor: Seq,
    },
    /// Resync, target to source: keys the target changed after the floor
    /// (opaque, encoded by `twinfs-fs`), in chunks.
    ResyncKeys {
        /// The last chunk.
        last: bool,
        /// False if the target cannot tell what it changed (a full resync is needed).
        known: bool,
        /// The encoded keys.
        payload: Vec<u8>,
    },
    /// Resync, source to target: current values of changed records (opaque).
    ResyncData {
        /// The encoded ops.
        payload: Vec<u8>,
    },
    /// Resync, source to target: every value was sent.
    ResyncDone {
        /// The target's store now stands at this seq; replication continues after it.
        position: Seq,
        /// The target is consistent (promotable) once it has applied up to here.
        consistent_at: Seq,
        /// The source's generation, which the target adopts.
        generation: Generation,
    },
    /// Information for the peer's status (e.g. the files a node changed on its
    /// own before a split brain was detected); opaque to the protocol.
    Report {
        /// The encoded report.
        payload: Vec<u8>,
    },
    /// Online verify, primary to secondary: range hashes of the primary's
    /// records (opaque to the protocol).
    VerifyRequest {
        /// The encoded ranges and hashes.
        payload: Vec<u8>,
    },
    /// Online verify, secondary to primary: the ranges that differ, with the
    /// secondary's record digests in them (opaque).
    VerifyResponse {
        /// The encoded answer.
        payload: Vec<u8>,
    },
    /// Online verify, primary to secondary: current values of the records
    /// found different, applied in stream order (opaque ops).
    Repair {
        /// The encoded ops.
        payload: Vec<u8>,
    },
    /// The sender closes the connection on purpose.
    Goodbye {
        /// Why, for the log.
        reason: String,
    },
}

impl Frame {
    /// The frame type's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Mutation { .. } => "mutation",
            Frame::Ack { .. } => "ack",
            Frame::Heartbeat { .. } => "heartbeat",
            Frame::Flush { .. } => "flush",
            Frame::ResyncRequest { .. } => "resync-request",
            Frame::ResyncKeys { .. } => "resync-keys",
            Frame::ResyncData { .. } => "resync-data",
            Frame::ResyncDone { .. } => "resync-done",
            Frame::Report { .. } => "report",
            Frame::VerifyRequest { .. } => "verify-request",
            Frame::VerifyResponse { .. } => "verify-response",
            Frame::Repair { .. } => "repair",
            Frame::Goodbye { .. } => "goodbye",
        }
    }

    /// Appends the encoded frame to `buf`.
    ///
    /// # Panics
    ///
    /// If the body would exceed [`MAX_BODY_LEN`] (a mutation payload above
    /// [`MAX_PAYLOAD_LEN`]): such a frame could never be decoded, and
    /// [`crate::Primary::submit`] refuses such payloads first.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        if let Some(payload) = self.encode_head(buf) {
            buf.extend_from_slice(&payload);
        }
    }

    /// Appends the encoded frame to `buf`, except the payload of a
    /// [`Frame::Mutation`], which is returned instead: the caller writes it right
    /// after `buf`'s new bytes (a transport hands both to the network without
    /// copying the payload). For every other frame the whole frame is appended
    /// and `None` is returned.
    ///
    /// # Panics
    ///
    /// As [`Frame::encode`].
    pub fn encode_head(&self, buf: &mut Vec<u8>) -> Option<Bytes> {
        let start = buf.len();
        buf.extend_from_slice(&MAGIC);
        buf.push(FRAME_VERSION);
        buf.push(self.type_byte());
        buf.extend_from_slice(&[0; 4]); // body length, patched below
        match self {
            Frame::Hello(h) => {
                buf.extend_from_slice(&h.version.to_be_bytes());
                buf.push(match h.role {
                    Role::Primary => ROLE_PRIMARY,
                    Role::Secondary => ROLE_SECONDARY,
                });
                buf.extend_from_slice(&h.generation.0.to_be_bytes());
                buf.extend_from_slice(&h.last_applied.0.to_be_bytes());
                buf.push(match h.disk {
                    DiskState::UpToDate => DISK_UP_TO_DATE,
                    DiskState::Outdated => DISK_OUTDATED,
                    DiskState::Inconsistent => DISK_INCONSISTENT,
                    DiskState::Diskless => DISK_DISKLESS,
                });
                buf.extend_from_slice(&h.shared.0.to_be_bytes());
                buf.extend_from_slice(&h.changed_blocks.to_be_bytes());
                buf.extend_from_slice(&h.primary_since_ms.to_be_bytes());
                buf.extend_from_slice(&h.floor.0.to_be_bytes());
                // The name is last, so its length is implied by the body length.
                buf.extend_from_slice(h.node.as_bytes());
            }
            Frame::Mutation {
                seq,
                flush,
                payload,
            } => {
                assert!(
                    payload.len() <= MAX_PAYLOAD_LEN,
                    "mutation frame body of {} bytes exceeds {MAX_BODY_LEN}",
                    payload.len() + MUTATION_FIXED
                );
                buf.extend_from_slice(&seq.0.to_be_bytes());
                buf.push(if *flush { FLAG_FLUSH } else { 0 });
                let body = (MUTATION_FIXED + payload.len()) as u32;
                buf[start + 6..start + HEADER_LEN].copy_from_slice(&body.to_be_bytes());
                return Some(payload.clone());
            }
            Frame::Ack {
                received,
                applied,
                flushed,
            } => {
                for s in [received, applied, flushed] {
                    buf.extend_from_slice(&s.0.to_be_bytes());
                }
            }
            Frame::Heartbeat { now_ms } => buf.extend_from_slice(&now_ms.to_be_bytes()),
            Frame::Flush { seq } => buf.extend_from_slice(&seq.0.to_be_bytes()),
            Frame::ResyncRequest { floor } => buf.extend_from_slice(&floor.0.to_be_bytes()),
            Frame::ResyncKeys {
                last,
                known,
                payload,
            } => {
                let mut flags = 0;
                if *last {
                    flags |= KEYS_LAST;
                }
                if *known {
                    flags |= KEYS_KNOWN;
                }
                buf.push(flags);
                buf.extend_from_slice(payload);
            }
            Frame::ResyncData { payload }
            | Frame::Report { payload }
            | Frame::VerifyRequest { payload }
            | Frame::VerifyResponse { payload }
            | Frame::Repair { payload } => buf.extend_from_slice(payload),
            Frame::ResyncDone {
                position,
                consistent_at,
                generation,
            } => {
                buf.extend_from_slice(&position.0.to_be_bytes());
                buf.extend_from_slice(&consistent_at.0.to_be_bytes());
                buf.extend_from_slice(&generation.0.to_be_bytes());
            }
            Frame::Goodbye { reason } => buf.extend_from_slice(reason.as_bytes()),
        }
        let body = buf.len() - start - HEADER_LEN;
        assert!(
            body <= MAX_BODY_LEN,
            "{} frame body of {body} bytes exceeds {MAX_BODY_LEN}",
            self.name()
        );
        // Fits: body <= MAX_BODY_LEN < u32::MAX.
        buf[start + 6..start + HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
        None
    }

    /// Decodes one frame from the start of `buf`.
    ///
    /// Returns `Ok(Some((frame, consumed)))` for a whole frame, `Ok(None)` if
    /// `buf` holds only a prefix of a frame (read more bytes and call again), and
    /// an error for bytes that can never become a valid frame. Header errors are
    /// reported as soon as the offending byte has arrived, before the body.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        Self::decode_inner(buf, None)
    }

    /// [`Frame::decode`] from a shared buffer: a mutation's payload is a slice
    /// of `buf`, not a copy.
    pub fn decode_shared(buf: &Bytes) -> Result<Option<(Frame, usize)>, FrameError> {
        Self::decode_inner(buf, Some(buf))
    }

    /// How long the frame starting at `buf` is (header and body), once its
    /// header has arrived and is valid: `Ok(None)` while the header is incomplete.
    /// Lets a reader reserve room for a large frame in one step.
    pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
        Self::check_header(buf).map(|h| h.map(|(_, _, len)| HEADER_LEN + len))
    }

    /// Checks the header bytes that have arrived: `(type, name, body length)`
    /// once all of it is there.
    fn check_header(buf: &[u8]) -> Result<Option<(u8, &'static str, usize)>, FrameError> {
        let magic_len = buf.len().min(MAGIC.len());
        if buf[..magic_len] != MAGIC[..magic_len] {
            return Err(FrameError::BadMagic {
                found: buf[..magic_len].to_vec(),
                expected: MAGIC,
            });
        }
        if let Some(&version) = buf.get(4) {
            if version != FRAME_VERSION {
                return Err(FrameError::UnsupportedVersion {
                    found: version,
                    supported: FRAME_VERSION,
                });
            }
        }
        let Some(&ty) = buf.get(5) else {
            return Ok(None);
        };
        let name = match ty {
            TYPE_HELLO => "hello",
            TYPE_MUTATION => "mutation",
            TYPE_ACK => "ack",
            TYPE_HEARTBEAT => "heartbeat",
            TYPE_GOODBYE => "goodbye",
            TYPE_FLUSH => "flush",
            TYPE_RESYNC_REQUEST => "resync-request",
            TYPE_RESYNC_KEYS => "resync-keys",
            TYPE_RESYNC_DATA => "resync-data",
            TYPE_RESYNC_DONE => "resync-done",
            TYPE_REPORT => "report",
            TYPE_VERIFY_REQUEST => "verify-request",
            TYPE_VERIFY_RESPONSE => "verify-response",
            TYPE_REPAIR => "repair",
            _ => return Err(FrameError::UnknownType { ty }),
        };
        let Some(len_bytes) = buf.get(6..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        if len > MAX_BODY_LEN {
            return Err(FrameError::Oversized {
                len: len as u64,
                max: MAX_BODY_LEN as u64,
            });
        }
        Ok(Some((ty, name, len)))
    }

    fn decode_inner(
        buf: &[u8],
        shared: Option<&Bytes>,
    ) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some((ty, name, len)) = Self::check_header(buf)? else {
            return Ok(None);
        };
        let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let mut r = Reader {
            body,
            pos: 0,
            frame: name,
        };
        let frame = match ty {
            TYPE_HELLO => {
                let version = r.u16()?;
                let role = match r.u8()? {
                    ROLE_PRIMARY => Role::Primary,
                    ROLE_SECONDARY => Role::Secondary,
                    v => return Err(r.invalid("role", v.into())),
                };
                let generation = Generation(r.u64()?);
                let last_applied = Seq(r.u64()?);
                let disk = match r.u8()? {
                    DISK_UP_TO_DATE => DiskState::UpToDate,
                    DISK_OUTDATED => DiskState::Outdated,
                    DISK_INCONSISTENT => DiskState::Inconsistent,
                    DISK_DISKLESS => DiskState::Diskless,
                    v => return Err(r.invalid("disk", v.into())),
                };
                let shared = Generation(r.u64()?);
                let changed_blocks = r.u64()?;
                let primary_since_ms = r.u64()?;
                let floor = Seq(r.u64()?);
                let node = r.rest_utf8("node")?;
                Frame::Hello(Hello {
                    version,
                    node,
                    generation,
                    last_applied,
                    role,
                    disk,
                    shared,
                    changed_blocks,
                    primary_since_ms,
                    floor,
                })
            }
            TYPE_MUTATION => {
                let seq = Seq(r.u64()?);
                let flags = r.u8()?;
                // Unknown flag bits are refused rather than ignored: a future
                // sender relying on them must not be silently misunderstood.
                if flags & !FLAG_FLUSH != 0 {
                    return Err(r.invalid("flags", flags.into()));
                }
                let start = HEADER_LEN + r.pos;
                let rest = r.rest();
                Frame::Mutation {
                    seq,
                    flush: flags & FLAG_FLUSH != 0,
                    payload: match shared {
                        Some(b) => b.slice(start..start + rest.len()),
                        None => Bytes::copy_from_slice(rest),
                    },
                }
            }
            TYPE_ACK => Frame::Ack {
                received: Seq(r.u64()?),
                applied: Seq(r.u64()?),
                flushed: Seq(r.u64()?),
            },
            TYPE_HEARTBEAT => Frame::Heartbeat { now_ms: r.u64()? },
            TYPE_FLUSH => Frame::Flush { seq: Seq(r.u64()?) },
            TYPE_RESYNC_REQUEST => Frame::ResyncRequest {
                floor: Seq(r.u64()?),
            },
            TYPE_RESYNC_KEYS => {
                let flags = r.u8()?;
                if flags & !(KEYS_LAST | KEYS_KNOWN) != 0 {
                    return Err(r.invalid("flags", flags.into()));
                }
                Frame::ResyncKeys {
                    last: flags & KEYS_LAST != 0,
                    known: flags & KEYS_KNOWN != 0,
                    payload: r.rest().to_vec(),
                }
            }
            TYPE_RESYNC_DATA => Frame::ResyncData {
                payload: r.rest().to_vec(),
            },
            TYPE_REPORT => Frame::Report {
                payload: r.rest().to_vec(),
            },
            TYPE_VERIFY_REQUEST => Frame::VerifyRequest {
                payload: r.rest().to_vec(),
            },
            TYPE_VERIFY_RESPONSE => Frame::VerifyResponse {
                payload: r.rest().to_vec(),
            },
            TYPE_REPAIR => Frame::Repair {
                payload: r.rest().to_vec(),
            },
            TYPE_RESYNC_DONE => Frame::ResyncDone {
                position: Seq(r.u64()?),
                consistent_at: Seq(r.u64()?),
                generation: Generation(r.u64()?),
            },
            TYPE_GOODBYE => Frame::Goodbye {
                reason: r.rest_utf8("reason")?,
            },
            _ => unreachable!("type checked above"),
        };
        r.finish()?;
        Ok(Some((frame, HEADER_LEN + len)))
    }

    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => TYPE_HELLO,
            Frame::Mutation { .. } => TYPE_MUTATION,
            Frame::Ack { .. } => TYPE_ACK,
            Frame::Heartbeat { .. } => TYPE_HEARTBEAT,
            Frame::Flush { .. } => TYPE_FLUSH,
            Frame::ResyncRequest { .. } => TYPE_RESYNC_REQUEST,
            Frame::ResyncKeys { .. } => TYPE_RESYNC_KEYS,
            Frame::ResyncData { .. } => TYPE_RESYNC_DATA,
            Frame::ResyncDone { .. } => TYPE_RESYNC_DONE,
            Frame::Report { .. } => TYPE_REPORT,
            Frame::VerifyRequest { .. } => TYPE_VERIFY_REQUEST,
            Frame::VerifyResponse { .. } => TYPE_VERIFY_RESPONSE,
            Frame::Repair { .. } => TYPE_REPAIR,
            Frame::Goodbye { .. } => TYPE_GOODBYE,
        }
    }
}

/// Bounds-checked reads from one frame body.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let bytes = self
            .body
            .get(self.pos..self.pos + N)
            .ok_or(FrameError::Truncated {
                frame: self.frame,
                len: self.body.len(),
            })?;
        self.pos += N;
        Ok(bytes.try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.body[self.pos..];
        self.pos = self.body.len();
        rest
    }

    fn rest_utf8(&mut self, field: &'static str) -> Result<String, FrameError> {
        let frame = self.frame;
        String::from_utf8(self.rest().to_vec())
            .map_err(|_| FrameError::InvalidUtf8 { frame, field })
    }

    fn invalid(&self, field: &'static str, value: u64) -> FrameError {
        FrameError::InvalidValue {
            frame: self.frame,
            field,
            value,
        }
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self.body.len() - self.pos {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes {
                frame: self.frame,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::util::Rng;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: crate::PROTOCOL_VERSION,
                node: "node-a".into(),
                generation: Generation(0xdead_beef_0000_0001),
                last_applied: Seq(42),
                role: Role::Primary,
                disk: DiskState::UpToDate,
                shared: Generation(7),
                changed_blocks: 12,
                primary_since_ms: 1_763_790_000_000,
                floor: Seq(40),
            }),
            Frame::Hello(Hello {
                version: 7,
                node: String::new(),
                generation: Generation(0),
                last_applied: Seq(0),
                role: Role::Secondary,
                disk: DiskState::Inconsistent,
                shared: Generation(u64::MAX),
                changed_blocks: u64::MAX,
                primary_since_ms: 0,
                floor: Seq(0),
            }),
            Frame::Mutation {
                seq: Seq(1),
                flush: false,
                payload: Bytes::from_static(b"hello world"),
            },
            Frame::Mutation {
                seq: Seq(u64::MAX),
                flush: true,
                payload: Bytes::new(),
            },
            Frame::Ack {
                received: Seq(9),
                applied: Seq(8),
                flushed: Seq(3),
            },
            Frame::Heartbeat { now_ms: 123_456 },
            Frame::Goodbye {
                reason: "shutting down: ünïcodé".into(),
            },
            Frame::Flush { seq: Seq(17) },
            Frame::ResyncRequest { floor: Seq(3) },
            Frame::ResyncKeys {
                last: true,
                known: false,
                payload: vec![1, 2, 3],
            },
            Frame::ResyncData {
                payload: vec![9; 100],
            },
            Frame::ResyncDone {
                position: Seq(10),
                consistent_at: Seq(12),
                generation: Generation(0xfeed),
            },
            Frame::Report {
                payload: b"{}".to_vec(),
            },
            Frame::VerifyRequest { payload: vec![1] },
            Frame::VerifyResponse {
                payload: vec![2, 3],
            },
            Frame::Repair {
                payload: Vec::new(),
            },
        ]
    }

    fn encoded(f: &Frame) -> Vec<u8> {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        buf
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let buf = encoded(&f);
            assert_eq!(
                Frame::decode(&buf),
                Ok(Some((f.clone(), buf.len()))),
                "{f:?}"
            );
        }
    }

    #[test]
    fn split_encoding_and_shared_decoding_match_the_plain_codec() {
        for f in samples() {
            let whole = encoded(&f);
            let mut head = Vec::new();
            let payload = f.encode_head(&mut head);
            assert_eq!(
                payload.is_some(),
                matches!(f, Frame::Mutation { .. }),
                "{f:?}"
            );
            if let Some(p) = payload {
                head.extend_from_slice(&p);
            }
            assert_eq!(head, whole, "{f:?}");
            assert_eq!(Frame::peek_len(&whole[..HEADER_LEN]), Ok(Some(whole.len())));
            assert_eq!(Frame::peek_len(&whole[..HEADER_LEN - 1]), Ok(None));
            let shared = Bytes::from(whole.clone());
            let (got, n) = Frame::decode_shared(&shared).unwrap().unwrap();
            assert_eq!((&got, n), (&f, whole.len()));
            // A mutation's payload is a view of the received buffer, not a copy.
            if let Frame::Mutation { payload, .. } = got {
                if !payload.is_empty() {
                    let inside = shared.as_ptr() as usize..shared.as_ptr() as usize + shared.len();
                    assert!(inside.contains(&(payload.as_ptr() as usize)));
                }
            }
        }
        assert!(
            Frame::peek_len(b"TWRP\x09").is_err(),
            "a bad version is seen in the header"
        );
    }

    #[test]
    fn frames_back_to_back_decode_one_at_a_time() {
        let mut buf = Vec::new();
        for f in samples() {
            f.encode(&mut buf);
        }
        let mut rest = &buf[..];
        for f in samples() {
            let (got, n) = Frame::decode(rest).unwrap().unwrap();
            assert_eq!(got, f);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for f in samples() {
            let buf = encoded(&f);
            for n in 0..buf.len() {
                assert_eq!(Frame::decode(&buf[..n]), Ok(None), "{f:?} cut at {n}");
            }
        }
    }

    #[test]
    fn bad_magic() {
        let mut buf = encoded(&Frame::Heartbeat { now_ms: 1 });
        buf[1] = b'X';
        assert!(matches!(
            Frame::decode(&buf),
            Err(FrameError::BadMagic { .. })
        ));
        // Rejected as soon as the wrong byte is there, without waiting for more.
        assert!(matches!(
            Frame::decode(&buf[..2]),
            Err(FrameError::BadMagic { .. })
        ));
        assert!(Frame::decode(b"GET / HTTP/1.1")
            .unwrap_err()
            .to_string()
            .starts_with("bad frame magic"));
    }

    #[test]
    fn unsupported_version() {
        let mut buf = encoded(&Frame::Heartbeat { now_ms: 1 });
        buf[4] = 2;
        assert_eq!(
            Frame::decode(&buf[..5]),
            Err(FrameError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        assert_eq!(
            Frame::decode(&buf).unwrap_err().to_string(),
            "unsupported frame version 2, this build speaks 1"
        );
    }

    #[test]
    fn unknown_type() {
        for ty in [0, 15, 255] {
            let mut buf = encoded(&Frame::Heartbeat { now_ms: 1 });
            buf[5] = ty;
            assert_eq!(Frame::decode(&buf), Err(FrameError::UnknownType { ty }));
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = encoded(&Frame::Heartbeat { now_ms: 1 });
        buf[6..10].copy_from_slice(&(MAX_BODY_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            Frame::decode(&buf[..HEADER_LEN]),
            Err(FrameError::Oversized {
                len: MAX_BODY_LEN as u64 + 1,
                max: MAX_BODY_LEN as u64
            })
        );
        buf[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Frame::decode(&buf),
            Err(FrameError::Oversized { .. })
        ));
    }

    /// Rewrites the body length field to `len` and truncates/extends the body to match.
    fn with_body_len(mut buf: Vec<u8>, len: usize) -> Vec<u8> {
        buf.resize(HEADER_LEN + len, 0xaa);
        buf[6..10].copy_from_slice(&(len as u32).to_be_bytes());
        buf
    }

    #[test]
    fn short_bodies_are_truncated() {
        let cases = [
            (Frame::Heartbeat { now_ms: 1 }, 7, "heartbeat"),
            (samples()[4].clone(), 23, "ack"),
            (samples()[2].clone(), 8, "mutation"),
            (samples()[0].clone(), 18, "hello"),
            (samples()[0].clone(), 51, "hello"),
            (Frame::Flush { seq: Seq(1) }, 7, "flush"),
        ];
        for (f, len, name) in cases {
            let buf = with_body_len(encoded(&f), len);
            assert_eq!(
                Frame::decode(&buf),
                Err(FrameError::Truncated { frame: name, len }),
                "{name}"
            );
        }
    }

    #[test]
    fn long_fixed_bodies_have_trailing_bytes() {
        let buf = with_body_len(encoded(&Frame::Heartbeat { now_ms: 1 }), 10);
        assert_eq!(
            Frame::decode(&buf),
            Err(FrameError::TrailingBytes {
                frame: "heartbeat",
                extra: 2
            })
        );
        let buf = with_body_len(encoded(&samples()[4]), 25);
        assert_eq!(
            Frame::decode(&buf).unwrap_err().to_string(),
            "ack frame body has 1 trailing bytes"
        );
    }

    #[test]
    fn invalid_fields() {
        let mut buf = encoded(&samples()[2]);
        buf[HEADER_LEN + 8] = 0x80; // unknown flag bit
        assert_eq!(
            Frame::decode(&buf),
            Err(FrameError::InvalidValue {
                frame: "mutation",
                field: "flags",
                value: 0x80
            })
        );
        let mut buf = encoded(&samples()[0]);
        buf[HEADER_LEN + 2] = 3; // role
        assert!(matches!(
            Frame::decode(&buf),
            Err(FrameError::InvalidValue { field: "role", .. })
        ));
        let mut buf = encoded(&samples()[0]);
        let last = buf.len() - 1;
        buf[last] = 0xff; // node name no longer UTF-8
        assert_eq!(
            Frame::decode(&buf),
            Err(FrameError::InvalidUtf8 {
                frame: "hello",
                field: "node"
            })
        );
        let mut buf = encoded(&samples()[6]);
        buf.truncate(buf.len() - 1); // cuts a multi-byte character
        let len = buf.len() - HEADER_LEN;
        let buf = with_body_len(buf, len);
        assert!(matches!(
            Frame::decode(&buf),
            Err(FrameError::InvalidUtf8 {
                field: "reason",
                ..
            })
        ));
    }

    /// Bounded fuzzing: random bytes, valid frames with random corruption and
    /// valid headers with random bodies never panic, and whatever decodes
    /// re-encodes to exactly the bytes it came from (the codec is canonical).
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(0x7769_6e66);
        let samples = samples();
        let mut decoded = 0;
        for i in 0..20_000 {
            let buf = match i % 3 {
                0 => {
                    let n = rng.below(64) as usize;
                    (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()
                }
                1 => {
                    let mut buf = encoded(&samples[rng.below(samples.len() as u64) as usize]);
                    for _ in 0..=rng.below(3) {
                        let at = rng.below(buf.len() as u64) as usize;
                        buf[at] = rng.next_u64() as u8;
                    }
                    if rng.below(2) == 0 {
                        buf.truncate(rng.below(buf.len() as u64 + 1) as usize);
                    }
                    buf
                }
                _ => {
                    let ty = 1 + rng.below(5) as u8;
                    // Mostly the sizes each type's parser needs, so bodies get parsed.
                    let n = match (ty, rng.below(4)) {
                        (_, 0) => rng.below(40),
                        (TYPE_HELLO, _) => 19 + rng.below(8),
                        (TYPE_MUTATION, _) => 9 + rng.below(8),
                        (TYPE_ACK, _) => 24,
                        (TYPE_HEARTBEAT, _) => 8,
                        _ => rng.below(8),
                    } as usize;
                    let mut buf = MAGIC.to_vec();
                    buf.push(FRAME_VERSION);
                    buf.push(ty);
                    buf.extend_from_slice(&(n as u32).to_be_bytes());
                    buf.extend((0..n).map(|_| rng.next_u64() as u8));
                    buf
                }
            };
            if let Ok(Some((frame, n))) = Frame::decode(&buf) {
                decoded += 1;
                assert!(n <= buf.len());
                assert_eq!(encoded(&frame), buf[..n], "not canonical: {frame:?}");
            }
        }
        // The generator must reach the body parsers, not just the header checks.
        assert!(decoded > 2_000, "only {decoded} inputs decoded");
    }
}
