//! `[replication]`: the peer, trust, the protocol and the link's timers.

use super::*; // a part of `config`: its types, helpers and imports

/// `[replication]`: the peer, trust, and the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replication.listen`: this node's address and UDP port on the replication
    /// link (a specific address, not 0.0.0.0). Required.
    pub listen: std::net::SocketAddr,
    /// `replication.peer`: the peer's address and port on the link. Required.
    pub peer: std::net::SocketAddr,
    /// `replication.cert`: this node's certificate (PEM). Default `/etc/twinfs/node.crt`.
    pub cert: PathBuf,
    /// `replication.key`: this node's private key (PEM). Default `/etc/twinfs/node.key`.
    pub key: PathBuf,
    /// `replication.peer_cert` or `replication.peer_fingerprint`: the one peer
    /// certificate accepted. Exactly one of the two is required.
    pub peer_trust: PeerTrustConfig,
    /// `replication.protocol`: `"A"`, `"B"` or `"C"`. Default `"C"`.
    pub protocol: ProtocolName,
    /// `replication.keepalive`: heartbeat interval, `10ms..=1min`. Default 200ms.
    pub keepalive: Duration,
    /// `replication.deadtime`: silence after which the peer is declared dead,
    /// longer than keepalive, at most 10min. Default 1s.
    pub deadtime: Duration,
    /// `replication.on_peer_loss`: `"continue"` (default) or `"suspend"`.
    pub on_peer_loss: OnPeerLossName,
    /// `replication.split_brain`: `"disconnect"` (default), `"discard-zero-changes"`,
    /// `"discard-younger-primary"` or `"discard-least-changes"`.
    pub split_brain: SplitBrainName,
    /// `replication.resync_rate`: the most a resync sends per second, in bytes
    /// (`"40MiB"`, `"500KiB"`); 0 (`"unlimited"`, the default) means no limit.
    pub resync_rate: u64,
}

/// How the peer's certificate is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrustConfig {
    /// `peer_cert`: a PEM file holding the peer's certificate.
    CertFile(PathBuf),
    /// `peer_fingerprint`: `"sha256:AB:CD:..."`.
    Fingerprint(String),
}

/// `replication.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolName {
    /// Asynchronous.
    A,
    /// Semi-synchronous.
    B,
    /// Synchronous.
    #[default]
    C,
}

/// `replication.on_peer_loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPeerLossName {
    /// Keep serving alone.
    #[default]
    Continue,
    /// Block writes until the peer is back.
    Suspend,
}

/// `replication.split_brain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitBrainName {
    /// Refuse to connect and let the admin decide.
    #[default]
    Disconnect,
    /// The side that changed nothing takes the other's data.
    DiscardZeroChanges,
    /// The side that became primary later is overwritten.
    DiscardYoungerPrimary,
    /// The side with fewer changed blocks is overwritten.
    DiscardLeastChanges,
}

impl ReplicationConfig {
    pub(super) fn from_raw(
        r: RawReplication,
        cx: &Cx<'_>,
    ) -> Result<ReplicationConfig, ConfigError> {
        let addr = |field: &str, raw: Option<Spanned<String>>, what: &str| {
            let raw = raw.ok_or_else(|| {
                cx.invalid_nowhere(field, format!("missing: {what}, e.g. \"10.99.0.1:7789\""))
            })?;
            let a = socket_addr(cx, field, &raw, "10.99.0.1:7789")?;
            Ok((a, raw.span()))
        };
        let (listen, _) = addr(
            "replication.listen",
            r.listen,
            "this node's address and port on the replication link",
        )?;
        let (peer, peer_span) = addr(
            "replication.peer",
            r.peer,
            "the peer's address and port on the replication link",
        )?;
        if peer == listen {
            return Err(cx.invalid(
                "replication.peer",
                peer_span,
                format!("must differ from replication.listen, both are {listen}"),
            ));
        }
        let cert = absolute_path(cx, "replication.cert", r.cert, DEFAULT_CERT)?.path;
        let key = absolute_path(cx, "replication.key", r.key, DEFAULT_KEY)?.path;
        let peer_trust =
            match (r.peer_cert, r.peer_fingerprint) {
                (Some(_), Some(f)) => return Err(cx.invalid(
                    "replication.peer_fingerprint",
                    f.span(),
                    "set either replication.peer_cert or replication.peer_fingerprint, not both"
                        .into(),
                )),
                (None, None) => return Err(cx.invalid_nowhere(
                    "replication.peer_cert",
                    "missing: the peer's certificate file (or set replication.peer_fingerprint); \
                     twinfs trusts exactly one peer certificate"
                        .into(),
                )),
                (Some(c), None) => PeerTrustConfig::CertFile(
                    absolute_path(cx, "replication.peer_cert", Some(c), "")?.path,
                ),
                (None, Some(f)) => {
                    let hex: String = f
                        .get_ref()
                        .trim_start_matches("sha256:")
                        .chars()
                        .filter(|c| *c != ':')
                        .collect();
                    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(cx.invalid(
                            "replication.peer_fingerprint",
                            f.span(),
                            format!(
                                "must be a SHA-256 fingerprint as `twinfs fingerprint` prints it \
                             (\"sha256:AB:CD:...\", 32 bytes), got {:?}",
                                f.get_ref()
                            ),
                        ));
                    }
                    PeerTrustConfig::Fingerprint(f.into_inner())
                }
            };
        let protocol = match r.protocol {
            None => ProtocolName::C,
            Some(p) => match p.get_ref().to_ascii_uppercase().as_str() {
                "A" => ProtocolName::A,
                "B" => ProtocolName::B,
                "C" => ProtocolName::C,
                _ => {
                    return Err(cx.invalid(
                        "replication.protocol",
                        p.span(),
                        format!("must be \"A\", \"B\" or \"C\", got {:?}", p.get_ref()),
                    ))
                }
            },
        };
        let keepalive_span = r.keepalive.as_ref().map(|k| k.span());
        let keepalive = duration_in(
            cx,
            "replication.keepalive",
            r.keepalive,
            DEFAULT_KEEPALIVE,
            KEEPALIVE_RANGE,
        )?;
        let deadtime_span = r.deadtime.as_ref().map(|k| k.span());
        let deadtime = duration_in(
            cx,
            "replication.deadtime",
            r.deadtime,
            DEFAULT_DEADTIME,
            DEADTIME_RANGE,
        )?;
        if deadtime <= keepalive {
            return Err(ConfigError::Invalid {
                at: cx.at(deadtime_span.or(keepalive_span)),
                field: "replication.deadtime".into(),
                message: format!(
                    "must be longer than replication.keepalive ({}), got {}",
                    humantime::format_duration(keepalive),
                    humantime::format_duration(deadtime)
                ),
            });
        }
        let on_peer_loss = match r.on_peer_loss {
            None => OnPeerLossName::Continue,
            Some(v) => match v.get_ref().as_str() {
                "continue" => OnPeerLossName::Continue,
                "suspend" => OnPeerLossName::Suspend,
                _ => {
                    return Err(cx.invalid(
                        "replication.on_peer_loss",
                        v.span(),
                        format!("must be \"continue\" or \"suspend\", got {:?}", v.get_ref()),
                    ))
                }
            },
        };
        let split_brain = match r.split_brain {
            None => SplitBrainName::Disconnect,
            Some(v) => match v.get_ref().as_str() {
                "disconnect" => SplitBrainName::Disconnect,
                "discard-zero-changes" => SplitBrainName::DiscardZeroChanges,
                "discard-younger-primary" => SplitBrainName::DiscardYoungerPrimary,
                "discard-least-changes" => SplitBrainName::DiscardLeastChanges,
                _ => return Err(cx.invalid(
                    "replication.split_brain",
                    v.span(),
                    format!(
                        "must be \"disconnect\", \"discard-zero-changes\", \"discard-younger-primary\" \
                         or \"discard-least-changes\", got {:?}",
                        v.get_ref()
                    ),
                )),
            },
        };
        let resync_rate = match r.resync_rate {
            None => 0,
            Some(v) => parse_rate(v.get_ref()).ok_or_else(|| {
                cx.invalid(
                    "replication.resync_rate",
                    v.span(),
                    format!(
                        "must be a rate in bytes per second such as \"40MiB\", \"500KiB\" or \"unlimited\", got {:?}",
                        v.get_ref()
                    ),
                )
            })?,
        };
        Ok(ReplicationConfig {
            resync_rate,
            listen,
            peer,
            cert,
            key,
            peer_trust,
            protocol,
            keepalive,
            deadtime,
            on_peer_loss,
            split_brain,
        })
    }
}
