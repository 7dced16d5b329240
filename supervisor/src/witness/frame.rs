//! The signed datagram: encoding ([`Signer::seal`]), parsing
//! ([`Frame::decode`]) and checking ([`Verifier::open`]).
//!
//! Pure: wall-clock time is an argument, nothing here touches a socket. The
//! layout is documented in the [parent module](super).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ring::rand::SecureRandom;

use super::keys::{KeyError, PublicKey, SigningKey, SIGNATURE_LEN};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"TWSD";
/// The only frame version this build reads and writes.
pub const VERSION: u8 = 1;
/// Longest sender name, in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// Longest message body, in bytes.
pub const MAX_BODY_LEN: usize = 1024;
/// Fixed bytes around the name and the body: magic, version, kind, name
/// length, boot id, counter, clock, body length and the signature.
const FIXED_LEN: usize = 4 + 1 + 1 + 1 + 8 + 8 + 8 + 2 + SIGNATURE_LEN;
/// Shortest valid frame (one-byte name, empty body).
pub const MIN_FRAME_LEN: usize = FIXED_LEN + 1;
/// Longest valid frame; fits in one unfragmented UDP datagram on any link.
pub const MAX_FRAME_LEN: usize = FIXED_LEN + MAX_NAME_LEN + MAX_BODY_LEN;
/// How far a sender's clock may be from the receiver's by default.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(30);
/// How many earlier boot ids of one sender are remembered (and refused).
const RETIRED_BOOTS: usize = 16;

/// What a frame carries. Signed with the rest, so that a signed heartbeat
/// can never be replayed as a witness request, nor a request as an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A beacon heartbeat between the two nodes.
    Heartbeat = 1,
    /// A node's request to the witness.
    WitnessRequest = 2,
    /// The witness's answer to a node.
    WitnessAnswer = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Heartbeat),
            2 => Some(Kind::WitnessRequest),
            3 => Some(Kind::WitnessAnswer),
            _ => None,
        }
    }
}

/// Why a datagram was refused. Each says which check failed and with what
/// values; the caller adds the source address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Too short or too long to be a frame.
    #[error("datagram of {len} bytes is not a twinfs frame (frames are {MIN_FRAME_LEN} to {MAX_FRAME_LEN} bytes)")]
    BadLength {
        /// Bytes received.
        len: usize,
    },
    /// Does not start with [`MAGIC`].
    #[error("datagram does not start with the twinfs magic \"TWSD\" (starts with {found:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A frame version this build does not know.
    #[error("frame version {found} is not supported (this twinfs speaks version {VERSION}); upgrade both nodes and the witness together")]
    BadVersion {
        /// The version byte.
        found: u8,
    },
    /// A kind byte this build does not know.
    #[error("unknown frame kind {found}")]
    UnknownKind {
        /// The kind byte.
        found: u8,
    },
    /// A frame of the wrong kind arrived (say, a heartbeat at the witness).
    #[error("expected a {expected:?} frame, got a {found:?} frame from {sender:?}")]
    WrongKind {
        /// What the receiver handles.
        expected: Kind,
        /// What came.
        found: Kind,
        /// The claimed sender.
        sender: String,
    },
    /// The declared lengths do not add up to the datagram's length.
    #[error("frame fields do not fit the datagram: {field} length {declared} but the datagram has {len} bytes")]
    BadFieldLength {
        /// Which length field.
        field: &'static str,
        /// The value it declares.
        declared: usize,
        /// The datagram's length.
        len: usize,
    },
    /// The sender name is empty or not UTF-8.
    #[error("sender name is not 1 to {MAX_NAME_LEN} bytes of UTF-8: {name:?}")]
    BadSenderName {
        /// The name bytes, lossily decoded.
        name: String,
    },
    /// No key is pinned for this sender.
    #[error("frame from unknown sender {sender:?} (trusted: {trusted})")]
    UnknownSender {
        /// The claimed sender.
        sender: String,
        /// The names that have pinned keys, comma separated.
        trusted: String,
    },
    /// The signature does not verify with the pinned key.
    #[error("signature of a frame from {sender:?} does not verify with the key pinned for it ({key}): a different key, or the frame was altered")]
    BadSignature {
        /// The claimed sender.
        sender: String,
        /// The pinned key that was tried.
        key: String,
    },
    /// Sender and receiver clocks disagree by more than the window.
    #[error("clock of {sender:?} is {skew_ms} ms {direction} this machine's (allowed: {max_ms} ms); check NTP on both")]
    ClockSkew {
        /// The sender.
        sender: String,
        /// Absolute difference, in milliseconds.
        skew_ms: u64,
        /// "ahead of" or "behind".
        direction: &'static str,
        /// The allowed difference.
        max_ms: u64,
    },
    /// The counter did not increase: a duplicate or a replayed frame.
    #[error("replayed frame from {sender:?}: counter {counter} of boot {boot_id:016x} is not above the last accepted {last}")]
    Replay {
        /// The sender.
        sender: String,
        /// Its boot id.
        boot_id: u64,
        /// The frame's counter.
        counter: u64,
        /// The highest counter accepted for that boot id.
        last: u64,
    },
    /// The frame comes from an earlier run of the sender.
    #[error("replayed frame from {sender:?}: boot {boot_id:016x} is an earlier run of that node")]
    StaleBoot {
        /// The sender.
        sender: String,
        /// The retired boot id.
        boot_id: u64,
    },
    /// The signed body is not a valid message of its kind.
    #[error("bad {what} from {sender:?}: {reason}")]
    BadBody {
        /// The message type.
        what: &'static str,
        /// The sender.
        sender: String,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed (the system random generator).
    #[error("cannot sign a frame: {0}")]
    Sign(String),
    /// An outgoing name or body is too long (a bug or a bad config).
    #[error("cannot send: {what} is {len} bytes, the limit is {max}")]
    TooLong {
        /// "sender name" or "body".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A parsed frame whose signature is not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// What it carries.
    pub kind: Kind,
    /// The node (or witness) that claims to have sent it.
    pub sender: &'a str,
    /// Random id of the sender's process run.
    pub boot_id: u64,
    /// Per-boot counter, strictly increasing.
    pub counter: u64,
    /// The sender's wall clock, ms since 1970-01-01 UTC.
    pub wall_ms: u64,
    /// The message.
    pub body: &'a [u8],
    signed: &'a [u8],
    signature: &'a [u8],
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl<'a> Frame<'a> {
    /// Parses a datagram. Checks the layout only, never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let len = bytes.len();
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Err(FrameError::BadLength { len });
        }
        if bytes[..4] != MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(&bytes[..4]);
            return Err(FrameError::BadMagic { found });
        }
        if bytes[4] != VERSION {
            return Err(FrameError::BadVersion { found: bytes[4] });
        }
        let kind = Kind::from_byte(bytes[5]).ok_or(FrameError::UnknownKind { found: bytes[5] })?;
        let name_len = usize::from(bytes[6]);
        // Lengths are checked against what is left before slicing, so no
        // datagram can index out of bounds.
        if name_len == 0 || name_len > MAX_NAME_LEN || FIXED_LEN + name_len > len {
            return Err(FrameError::BadFieldLength {
                field: "sender name",
                declared: name_len,
                len,
            });
        }
        let name_bytes = &bytes[7..7 + name_len];
        let sender = std::str::from_utf8(name_bytes).map_err(|_| FrameError::BadSenderName {
            name: String::from_utf8_lossy(name_bytes).into_owned(),
        })?;
        let mut at = 7 + name_len;
        let boot_id = be_u64(&bytes[at..]);
        let counter = be_u64(&bytes[at + 8..]);
        let wall_ms = be_u64(&bytes[at + 16..]);
        at += 24;
        let body_len = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        at += 2;
        if body_len > MAX_BODY_LEN || at + body_len + SIGNATURE_LEN != len {
            return Err(FrameError::BadFieldLength {
                field: "body",
                declared: body_len,
                len,
            });
        }
        let body = &bytes[at..at + body_len];
        at += body_len;
        Ok(Frame {
            kind,
            sender,
            boot_id,
            counter,
            wall_ms,
            body,
            signed: &bytes[..at],
            signature: &bytes[at..],
        })
    }
}

/// Signs outgoing frames for one node (or the witness).
///
/// One per process: the boot id is drawn once, and the counter is shared by
/// every sender of the process (beacon, witness client), so each receiver
/// sees it increase. Share it with `Arc`.
#[derive(Debug)]
pub struct Signer {
    name: String,
    key: SigningKey,
    boot_id: u64,
    counter: AtomicU64,
}

impl Signer {
    /// A signer for `name` with a random boot id.
    pub fn new(name: &str, key: SigningKey) -> Result<Signer, FrameError> {
        let mut id = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| FrameError::Sign("the system random generator failed".to_owned()))?;
        Self::with_boot_id(name, key, u64::from_be_bytes(id))
    }

    /// A signer with a chosen boot id (tests; a real node uses [`Signer::new`]).
    pub fn with_boot_id(name: &str, key: SigningKey, boot_id: u64) -> Result<Signer, FrameError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(FrameError::TooLong {
                what: "sender name (must not be empty)",
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        Ok(Signer {
            name: name.to_owned(),
            key,
            boot_id,
            counter: AtomicU64::new(0),
        })
    }

    /// The name this signer sends as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This process run's boot id.
    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// The public key the others must pin for this node.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Builds and signs a frame carrying `body`, stamped with `now_ms`
    /// (wall clock, ms since 1970) and the next counter value.
    pub fn seal(&self, kind: Kind, body: &[u8], now_ms: u64) -> Result<Vec<u8>, FrameError> {
        if body.len() > MAX_BODY_LEN {
            return Err(FrameError::TooLong {
                what: "body",
                len: body.len(),
                max: MAX_BODY_LEN,
            });
        }
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut out = Vec::with_capacity(FIXED_LEN + self.name.len() + body.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.push(self.name.len() as u8); // checked in with_boot_id
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.boot_id.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        let sig = self
            .key
            .sign(&out)
            .map_err(|e: KeyError| FrameError::Sign(e.to_string()))?;
        out.extend_from_slice(&sig);
        Ok(out)
    }
}

/// A frame that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The authenticated sender.
    pub sender: &'a str,
    /// Its boot id.
    pub boot_id: u64,
    /// Its counter.
    pub counter: u64,
    /// Its wall clock when it sent the frame.
    pub wall_ms: u64,
    /// The message.
    pub body: &'a [u8],
}

#[derive(Debug)]
struct Trusted {
    name: String,
    key: PublicKey,
    /// Boot id and highest counter accepted from it.
    current: Option<(u64, u64)>,
    /// Earlier boot ids: their frames are replays.
    retired: VecDeque<u64>,
}

/// Checks incoming frames against pinned keys, the clock and replays.
///
/// Checks, in order: layout, kind, known sender, clock skew, stale boot,
/// replay, and only then the signature (the one expensive check). Replay state changes only when a frame passes every check, so
/// forged or garbled datagrams cannot disturb it.
///
/// Replay rule: per sender, the counter must increase within a boot id. A
/// new boot id (the sender restarted) is accepted and the previous one is
/// retired: its frames are refused from then on. A frame of a run that this
/// receiver never saw is accepted only within the clock-skew window, which
/// bounds how old a replayed capture can be.
#[derive(Debug)]
pub struct Verifier {
    trusted: Vec<Trusted>,
    max_skew: Duration,
    /// Signatures verified so far (the expensive step), for the tests and
    /// the flood accounting.
    signature_checks: u64,
}

impl Verifier {
    /// A verifier that trusts these senders, each by its pinned key.
    pub fn new(trusted: impl IntoIterator<Item = (String, PublicKey)>) -> Verifier {
        Verifier {
            trusted: trusted
                .into_iter()
                .map(|(name, key)| Trusted {
                    name,
                    key,
                    current: None,
                    retired: VecDeque::new(),
                })
                .collect(),
            max_skew: DEFAULT_MAX_SKEW,
            signature_checks: 0,
        }
    }

    /// How many signatures this verifier has checked: frames refused by the
    /// cheap checks (kind, sender, clock, boot, counter) never get that far.
    /// Counts the checks of [`Verifier::check`] and [`Verifier::open`]; a
    /// caller of [`Frame::authenticate`] counts its own.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    /// Sets the allowed clock difference (default [`DEFAULT_MAX_SKEW`]).
    pub fn with_max_skew(mut self, max_skew: Duration) -> Verifier {
        self.max_skew = max_skew;
        self
    }

    /// Parses and checks `bytes`, expecting a frame of `kind`; `now_ms` is
    /// this machine's wall clock (ms since 1970).
    pub fn open<'a>(
        &mut self,
        bytes: &'a [u8],
        kind: Kind,
        now_ms: u64,
    ) -> Result<Opened<'a>, FrameError> {
        let frame = Frame::decode(bytes)?;
        self.check(&frame, kind, now_ms)?;
        Ok(Opened {
            sender: frame.sender,
            boot_id: frame.boot_id,
            counter: frame.counter,
            wall_ms: frame.wall_ms,
            body: frame.body,
        })
    }

    /// Checks an already decoded frame (see [`Verifier::open`]): the cheap
    /// checks, the signature, then records its counter.
    pub fn check(&mut self, frame: &Frame<'_>, kind: Kind, now_ms: u64) -> Result<(), FrameError> {
        let key = self.precheck(frame, kind, now_ms)?;
        // The expensive check last: a flood of stale, replayed or badly timed
        // frames costs a comparison each, not an ECDSA verification.
        self.signature_checks += 1;
        let authentic = frame.authenticate(key)?;
        self.commit(authentic, kind, now_ms)
    }

    /// The cheap checks only, in O(1) and without changing any state: kind,
    /// known sender, clock skew, stale boot, replay against the last counter
    /// accepted. Returns the key pinned for the sender, for
    /// [`Frame::authenticate`]; then [`Verifier::commit`] records the frame.
    ///
    /// Splitting the checks this way lets a receive loop refuse most hostile
    /// datagrams itself and hand only the survivors to a thread that verifies
    /// signatures (see the `intake` of the beacon and the witness).
    pub fn precheck(
        &self,
        frame: &Frame<'_>,
        kind: Kind,
        now_ms: u64,
    ) -> Result<PublicKey, FrameError> {
        let at = self.cheap_checks(frame, kind, now_ms)?;
        Ok(self.trusted[at].key)
    }

    /// The checks of [`Verifier::precheck`]; the index of the sender.
    fn cheap_checks(
        &self,
        frame: &Frame<'_>,
        kind: Kind,
        now_ms: u64,
    ) -> Result<usize, FrameError> {
        if frame.kind != kind {
            return Err(FrameError::WrongKind {
                expected: kind,
                found: frame.kind,
                sender: frame.sender.to_owned(),
            });
        }
        let at = self
            .trusted
            .iter()
            .position(|t| t.name == frame.sender)
            .ok_or_else(|| self.unknown(frame.sender))?;
        let peer = &self.trusted[at];
        let max_ms = u64::try_from(self.max_skew.as_millis()).unwrap_or(u64::MAX);
        let (skew_ms, direction) = if frame.wall_ms >= now_ms {
            (frame.wall_ms - now_ms, "ahead of")
        } else {
            (now_ms - frame.wall_ms, "behind")
        };
        if skew_ms > max_ms {
            return Err(FrameError::ClockSkew {
                sender: frame.sender.to_owned(),
                skew_ms,
                direction,
                max_ms,
            });
        }
        if peer.retired.contains(&frame.boot_id) {
            return Err(FrameError::StaleBoot {
                sender: frame.sender.to_owned(),
                boot_id: frame.boot_id,
            });
        }
        if let Some((boot, last)) = peer.current {
            if boot == frame.boot_id && frame.counter <= last {
                return Err(FrameError::Replay {
                    sender: frame.sender.to_owned(),
                    boot_id: frame.boot_id,
                    counter: frame.counter,
                    last,
                });
            }
        }
        Ok(at)
    }

    /// Records a frame whose signature verified: its counter becomes the last
    /// accepted one (a new boot id retires the previous one).
    ///
    /// Only authentic frames move the replay state, so forged frames naming a
    /// trusted sender with a fresh counter cannot make that sender's real
    /// frames look like replays. The cheap checks run again, because the
    /// state may have moved since [`Verifier::precheck`] (another frame of
    /// the same sender committed in between); and the key the frame was
    /// authenticated with must be the one pinned for its sender.
    pub fn commit(
        &mut self,
        frame: Authentic<'_, '_>,
        kind: Kind,
        now_ms: u64,
    ) -> Result<(), FrameError> {
        let Authentic { frame, key } = frame;
        let at = self.cheap_checks(frame, kind, now_ms)?;
        let peer = &mut self.trusted[at];
        if peer.key != key {
            return Err(FrameError::BadSignature {
                sender: frame.sender.to_owned(),
                key: peer.key.to_string(),
            });
        }
        match peer.current {
            Some((boot, _)) if boot == frame.boot_id => {}
            Some((boot, _)) => {
                if peer.retired.len() == RETIRED_BOOTS {
                    peer.retired.pop_front();
                }
                peer.retired.push_back(boot);
            }
            None => {}
        }
        peer.current = Some((frame.boot_id, frame.counter));
        Ok(())
    }

    /// The last counter accepted from `sender` and its boot id, if any.
    pub fn last_accepted(&self, sender: &str) -> Option<(u64, u64)> {
        self.trusted.iter().find(|t| t.name == sender)?.current
    }

    fn unknown(&self, sender: &str) -> FrameError {
        FrameError::UnknownSender {
            sender: sender.to_owned(),
            trusted: self
                .trusted
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// A frame whose signature verified with a key (made by
/// [`Frame::authenticate`]); [`Verifier::commit`] checks that the key is
/// the one pinned for the sender.
#[derive(Debug, Clone, Copy)]
pub struct Authentic<'f, 'a> {
    frame: &'f Frame<'a>,
    key: PublicKey,
}

impl<'a> Frame<'a> {
    /// Verifies the signature with `key` (an ECDSA verification: the one
    /// expensive step; pure, so it needs no lock on the [`Verifier`]).
    pub fn authenticate(&self, key: PublicKey) -> Result<Authentic<'_, 'a>, FrameError> {
        if key.verifies(self.signed, self.signature) {
            Ok(Authentic { frame: self, key })
        } else {
            Err(FrameError::BadSignature {
                sender: self.sender.to_owned(),
                key: key.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn pair(name: &str, boot: u64) -> (Signer, Verifier) {
        let signer = Signer::with_boot_id(name, SigningKey::generate().unwrap(), boot).unwrap();
        let verifier = Verifier::new([(name.to_owned(), signer.public_key())]);
        (signer, verifier)
    }

    #[test]
    fn round_trip() {
        let (signer, mut verifier) = pair("alpha", 7);
        let bytes = signer.seal(Kind::Heartbeat, b"body", NOW).unwrap();
        assert_eq!(bytes.len(), FIXED_LEN + 5 + 4);
        let opened = verifier.open(&bytes, Kind::Heartbeat, NOW + 5).unwrap();
        assert_eq!(
            opened,
            Opened {
                sender: "alpha",
                boot_id: 7,
                counter: 1,
                wall_ms: NOW,
                body: b"body",
            }
        );
        let empty = signer.seal(Kind::Heartbeat, b"", NOW).unwrap();
        assert_eq!(empty.len(), FIXED_LEN + 5);
        assert_eq!(
            verifier.open(&empty, Kind::Heartbeat, NOW).unwrap().counter,
            2
        );
    }

    #[test]
    fn layout_rejections() {
        let (signer, mut verifier) = pair("alpha", 7);
        let good = signer.seal(Kind::Heartbeat, b"xy", NOW).unwrap();
        let mut open = |b: &[u8]| verifier.open(b, Kind::Heartbeat, NOW).unwrap_err();

        assert_eq!(open(&good[..10]), FrameError::BadLength { len: 10 });
        assert_eq!(open(&vec![0u8; 5000]), FrameError::BadLength { len: 5000 });
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(open(&b), FrameError::BadMagic { found: *b"XWSD" });
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(open(&b), FrameError::BadVersion { found: 2 });
        assert!(open(&b).to_string().contains("upgrade both nodes"));
        let mut b = good.clone();
        b[5] = 9;
        assert_eq!(open(&b), FrameError::UnknownKind { found: 9 });
        let mut b = good.clone();
        b[6] = 200;
        assert!(matches!(
            open(&b),
            FrameError::BadFieldLength {
                field: "sender name",
                declared: 200,
                ..
            }
        ));
        let mut b = good.clone();
        b[6] = 0;
        assert!(matches!(
            open(&b),
            FrameError::BadFieldLength {
                field: "sender name",
                declared: 0,
                ..
            }
        ));
        let mut b = good.clone();
        b[7] = 0xff;
        assert!(matches!(open(&b), FrameError::BadSenderName { .. }));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            open(&b),
            FrameError::BadFieldLength {
                field: "body",
                declared: 2,
                ..
            }
        ));
        let body_len_at = 7 + 5 + 24;
        let mut b = good.clone();
        b[body_len_at + 1] = 3;
        assert!(matches!(
            open(&b),
            FrameError::BadFieldLength {
                field: "body",
                declared: 3,
                ..
            }
        ));
    }

    #[test]
    fn trust_rejections() {
        let (signer, mut verifier) = pair("alpha", 7);
        let good = signer.seal(Kind::Heartbeat, b"xy", NOW).unwrap();

        let err = verifier.open(&good, Kind::WitnessRequest, NOW).unwrap_err();
        assert!(matches!(
            err,
            FrameError::WrongKind {
                expected: Kind::WitnessRequest,
                found: Kind::Heartbeat,
                ..
            }
        ));

        let stranger = Signer::with_boot_id("mallory", SigningKey::generate().unwrap(), 1).unwrap();
        let err = verifier
            .open(
                &stranger.seal(Kind::Heartbeat, b"", NOW).unwrap(),
                Kind::Heartbeat,
                NOW,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame from unknown sender \"mallory\" (trusted: alpha)"
        );

        // Right name, wrong key.
        let impostor = Signer::with_boot_id("alpha", SigningKey::generate().unwrap(), 1).unwrap();
        let err = verifier
            .open(
                &impostor.seal(Kind::Heartbeat, b"", NOW).unwrap(),
                Kind::Heartbeat,
                NOW,
            )
            .unwrap_err();
        assert!(
            matches!(err, FrameError::BadSignature { ref sender, .. } if sender == "alpha"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&signer.public_key().to_string()),
            "{err}"
        );

        // A flipped bit anywhere in the signed part or the signature.
        for i in [7, 20, 30, 40, good.len() - 1] {
            let mut b = good.clone();
            b[i] ^= 1;
            let err = verifier.open(&b, Kind::Heartbeat, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    FrameError::BadSignature { .. }
                        | FrameError::BadSenderName { .. }
                        | FrameError::UnknownSender { .. }
                        | FrameError::ClockSkew { .. }
                        | FrameError::Replay { .. }
                        | FrameError::StaleBoot { .. }
                ),
                "byte {i}: {err}"
            );
        }

        // Clock skew both ways, just outside the window.
        let err = verifier
            .open(&good, Kind::Heartbeat, NOW - 30_001)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "clock of \"alpha\" is 30001 ms ahead of this machine's (allowed: 30000 ms); check NTP on both"
        );
        let err = verifier
            .open(&good, Kind::Heartbeat, NOW + 30_001)
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::ClockSkew {
                direction: "behind",
                ..
            }
        ));
        // None of the refusals above consumed the counter.
        assert!(verifier.open(&good, Kind::Heartbeat, NOW + 30_000).is_ok());
    }

    /// A flood of forged frames naming the trusted sender costs no signature
    /// check when its clock or counter gives it away.
    #[test]
    fn stale_replayed_or_skewed_frames_are_refused_before_the_signature_check() {
        let (signer, mut verifier) = pair("alpha", 1);
        let impostor = Signer::with_boot_id("alpha", SigningKey::generate().unwrap(), 1).unwrap();
        let first = signer.seal(Kind::Heartbeat, b"", NOW).unwrap();
        assert!(verifier.open(&first, Kind::Heartbeat, NOW).is_ok());
        assert_eq!(verifier.signature_checks(), 1);
        // Replayed, and forged with an old clock: refused for free.
        for _ in 0..100 {
            assert!(matches!(
                verifier.open(&first, Kind::Heartbeat, NOW).unwrap_err(),
                FrameError::Replay { .. }
            ));
            let skewed = impostor.seal(Kind::Heartbeat, b"", NOW - 60_000).unwrap();
            assert!(matches!(
                verifier.open(&skewed, Kind::Heartbeat, NOW).unwrap_err(),
                FrameError::ClockSkew { .. }
            ));
        }
        assert_eq!(verifier.signature_checks(), 1);
        // A forged frame that passes the cheap checks costs one check, and
        // does not move the counter: the real sender's next frame passes.
        let forged = impostor.seal(Kind::Heartbeat, b"", NOW).unwrap();
        assert!(matches!(
            verifier.open(&forged, Kind::Heartbeat, NOW).unwrap_err(),
            FrameError::BadSignature { .. }
        ));
        assert_eq!(verifier.signature_checks(), 2);
        let next = signer.seal(Kind::Heartbeat, b"", NOW).unwrap();
        assert!(verifier.open(&next, Kind::Heartbeat, NOW).is_ok());
    }

    /// The split path of a receive thread and a verifier thread: forged
    /// frames with the sender's boot id and a counter far ahead pass the
    /// cheap checks, fail the signature, and leave the counter alone.
    #[test]
    fn only_authentic_frames_move_the_replay_counter() {
        let (signer, mut verifier) = pair("alpha", 1);
        let first = signer.seal(Kind::Heartbeat, b"", NOW).unwrap();
        verifier.open(&first, Kind::Heartbeat, NOW).unwrap();
        assert_eq!(verifier.last_accepted("alpha"), Some((1, 1)));
        // Counter field: after magic, version, kind, name length, name, boot id.
        let counter_at = 7 + 5 + 8;
        for counter in [1_000, 1_000_000, u64::MAX] {
            let mut forged = signer.seal(Kind::Heartbeat, b"", NOW).unwrap();
            forged[counter_at..counter_at + 8].copy_from_slice(&counter.to_be_bytes());
            let frame = Frame::decode(&forged).unwrap();
            let key = verifier.precheck(&frame, Kind::Heartbeat, NOW).unwrap();
            assert!(matches!(
                frame.authenticate(key).unwrap_err(),
                FrameError::BadSignature { .. }
            ));
        }
        assert_eq!(verifier.last_accepted("alpha"), Some((1, 1)));

        // A frame authenticated with a key other than the pinned one is not
        // recorded either (an impostor's own key, say).
        let impostor = Signer::with_boot_id("alpha", SigningKey::generate().unwrap(), 9).unwrap();
        let own = impostor.seal(Kind::Heartbeat, b"", NOW).unwrap();
        let frame = Frame::decode(&own).unwrap();
        let authentic = frame.authenticate(impostor.public_key()).unwrap();
        assert!(matches!(
            verifier
                .commit(authentic, Kind::Heartbeat, NOW)
                .unwrap_err(),
            FrameError::BadSignature { .. }
        ));
        assert_eq!(verifier.last_accepted("alpha"), Some((1, 1)));

        // Two real frames prechecked before either is committed (both in the
        // queue): they commit in order, and a late older one is a replay.
        let (a, b) = (
            signer.seal(Kind::Heartbeat, b"", NOW).unwrap(),
            signer.seal(Kind::Heartbeat, b"", NOW).unwrap(),
        );
        let (fa, fb) = (Frame::decode(&a).unwrap(), Frame::decode(&b).unwrap());
        let ka = verifier.precheck(&fa, Kind::Heartbeat, NOW).unwrap();
        let kb = verifier.precheck(&fb, Kind::Heartbeat, NOW).unwrap();
        let (aa, ab) = (fa.authenticate(ka).unwrap(), fb.authenticate(kb).unwrap());
        verifier.commit(ab, Kind::Heartbeat, NOW).unwrap();
        assert!(matches!(
            verifier.commit(aa, Kind::Heartbeat, NOW).unwrap_err(),
            FrameError::Replay { .. }
        ));
        assert_eq!(verifier.last_accepted("alpha"), Some((1, 6)));
    }

    /// Size, magic, version and the sender's name are refused before any
    /// signature check, whatever else the datagram holds.
    #[test]
    fn layout_and_unknown_senders_cost_no_signature_check() {
        let (signer, mut verifier) = pair("alpha", 1);
        let stranger = Signer::with_boot_id("mallory", SigningKey::generate().unwrap(), 1).unwrap();
        let good = signer.seal(Kind::Heartbeat, b"", NOW).unwrap();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        let unknown = stranger.seal(Kind::Heartbeat, b"", NOW).unwrap();
        for bytes in [&good[..3], &bad_magic, &bad_version, &unknown] {
            assert!(verifier.open(bytes, Kind::Heartbeat, NOW).is_err());
        }
        assert_eq!(verifier.signature_checks(), 0);
    }

    /// Two signing keys with the same key pair: one node, two runs.
    fn same_key_twice() -> (SigningKey, SigningKey) {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        (
            SigningKey::from_pkcs8_der(doc.as_ref()).unwrap(),
            SigningKey::from_pkcs8_der(doc.as_ref()).unwrap(),
        )
    }

    #[test]
    fn replays_and_restarts() {
        let (key1, key2) = same_key_twice();
        let run1 = Signer::with_boot_id("alpha", key1, 1).unwrap();
        let mut verifier = Verifier::new([("alpha".to_owned(), run1.public_key())]);
        let f1 = run1.seal(Kind::Heartbeat, b"", NOW).unwrap();
        let f2 = run1.seal(Kind::Heartbeat, b"", NOW).unwrap();
        assert!(verifier.open(&f2, Kind::Heartbeat, NOW).is_ok());
        // An older counter (reordered or replayed), and the same frame again.
        for old in [&f1, &f2] {
            let err = verifier.open(old, Kind::Heartbeat, NOW).unwrap_err();
            assert!(matches!(err, FrameError::Replay { last: 2, .. }), "{err}");
        }
        assert!(verifier
            .open(&f2, Kind::Heartbeat, NOW)
            .unwrap_err()
            .to_string()
            .starts_with("replayed frame from \"alpha\": counter 2 of boot 0000000000000001"));
        // The node restarts: new boot id, counter from 1 again.
        let run2 = Signer::with_boot_id("alpha", key2, 2).unwrap();
        let b = run2.seal(Kind::Heartbeat, b"", NOW).unwrap();
        assert_eq!(verifier.open(&b, Kind::Heartbeat, NOW).unwrap().counter, 1);
        // Frames of the first run are refused from now on, even unseen ones.
        let late = run1.seal(Kind::Heartbeat, b"", NOW).unwrap();
        let err = verifier.open(&late, Kind::Heartbeat, NOW).unwrap_err();
        assert_eq!(
            err,
            FrameError::StaleBoot {
                sender: "alpha".to_owned(),
                boot_id: 1
            }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let (signer, mut verifier) = pair("alpha", 7);
        let good = signer
            .seal(Kind::WitnessRequest, b"0123456789", NOW)
            .unwrap();
        // xorshift64*: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut accepted = 0;
        for i in 0..20_000u32 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = (next() % (MAX_FRAME_LEN as u64 + 64)) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if i % 4 == 0 && len >= 7 {
                    // Past the magic check, to exercise the field parsing.
                    v[..5].copy_from_slice(b"TWSD\x01");
                    v[5] = (next() % 4) as u8;
                    v[6] = (next() % 80) as u8;
                }
                v
            } else {
                let mut v = good.clone();
                for _ in 0..=(next() % 4) {
                    if v.is_empty() {
                        v.push(next() as u8);
                    }
                    let at = (next() as usize) % v.len();
                    match next() % 3 {
                        0 => v[at] = next() as u8,
                        1 => v.truncate(at),
                        _ => v.insert(at, next() as u8),
                    }
                }
                v
            };
            if verifier.open(&bytes, Kind::WitnessRequest, NOW).is_ok() {
                accepted += 1;
            }
        }
        // Only the untouched original could pass, and only once.
        assert!(accepted <= 1, "{accepted} garbage frames accepted");
    }
}
