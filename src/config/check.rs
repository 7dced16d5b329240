//! Stage 2 helpers: reading durations, rates, paths and addresses, with errors that say where.

use super::*; // a part of `config`: its types, helpers and imports

/// What an error needs to say where it is.
pub(super) struct Cx<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

impl Cx<'_> {
    pub(super) fn at(&self, span: Option<Range<usize>>) -> Location {
        Location {
            path: self.path.to_owned(),
            line: span.map(|s| line_of(self.text, s.start)),
        }
    }

    pub(super) fn invalid(&self, field: &str, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: self.at(Some(span)),
            field: field.to_owned(),
            message,
        }
    }

    pub(super) fn invalid_nowhere(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: self.at(None),
            field: field.to_owned(),
            message,
        }
    }

    /// Turns a serde error from a syntactically valid file into an unknown-field or
    /// wrong-type error that names the full dotted key.
    pub(super) fn schema_error(&self, e: &toml::de::Error) -> ConfigError {
        let at = self.at(e.span());
        let message = one_line(e.message());
        if let Some(rest) = message.strip_prefix("unknown field `") {
            // serde: "unknown field `k`, expected one of `a`, `b`" (or "expected `a`",
            // or "there are no fields").
            if let Some((key, tail)) = rest.split_once('`') {
                let field = e
                    .span()
                    .and_then(|s| dotted_path_at(self.text, s, Probe::Key))
                    .and_then(|p| p.strip_suffix(PROBE).map(|parent| format!("{parent}{key}")))
                    .unwrap_or_else(|| key.to_owned());
                let expected = tail
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect();
                return ConfigError::UnknownField {
                    at,
                    field,
                    expected,
                };
            }
        }
        let field = e
            .span()
            .and_then(|s| dotted_path_at(self.text, s, Probe::Value));
        ConfigError::WrongType { at, field, message }
    }
}

/// `"40MiB"`, `"500KiB"`, `"1GiB"`, `"123"` (bytes), `"unlimited"`/`"0"` (0).
pub(super) fn parse_rate(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Some(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(super) fn read_hostname() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_owned())
}

/// A path option that must be absolute, with its span when the file set it.
pub(super) struct PathOpt {
    pub(super) field: &'static str,
    pub(super) path: PathBuf,
    pub(super) span: Option<Range<usize>>,
}

pub(super) fn absolute_path(
    cx: &Cx<'_>,
    field: &'static str,
    raw: Option<Spanned<String>>,
    default: &str,
) -> Result<PathOpt, ConfigError> {
    let Some(raw) = raw else {
        return Ok(PathOpt {
            field,
            path: PathBuf::from(default),
            span: None,
        });
    };
    let path = PathBuf::from(raw.get_ref());
    if !path.is_absolute() {
        return Err(cx.invalid(
            field,
            raw.span(),
            format!("must be an absolute path, got {:?}", raw.get_ref()),
        ));
    }
    Ok(PathOpt {
        field,
        path,
        span: Some(raw.span()),
    })
}

/// The store must not live inside its own mount (its files would be hidden by the
/// mount, and writing them would go through FUSE back into the daemon), and
/// mounting over the store hides it the same way. The error is about the option
/// the file set (the mountpoint when it set both or neither), at its line.
pub(super) fn check_disjoint(
    cx: &Cx<'_>,
    data_dir: &PathOpt,
    mountpoint: &PathOpt,
) -> Result<(), ConfigError> {
    let (this, other) = if mountpoint.span.is_none() && data_dir.span.is_some() {
        (data_dir, mountpoint)
    } else {
        (mountpoint, data_dir)
    };
    let (t, o) = (this.path.display(), other.path.display());
    let message = if this.path == other.path {
        format!("must differ from {}, both are {t:?}", other.field)
    } else if this.path.starts_with(&other.path) {
        format!("must not be inside {} ({o:?}), got {t:?}", other.field)
    } else if other.path.starts_with(&this.path) {
        format!("must not contain {} ({o:?}), got {t:?}", other.field)
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        at: cx.at(this.span.clone()),
        field: this.field.to_owned(),
        message,
    })
}

/// A specific `IP:PORT` (not 0.0.0.0, not port 0); `example` goes in the error.
pub(super) fn socket_addr(
    cx: &Cx<'_>,
    field: &str,
    raw: &Spanned<String>,
    example: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    let a: std::net::SocketAddr = raw.get_ref().parse().map_err(|_| {
        cx.invalid(
            field,
            raw.span(),
            format!(
                "must be IP:PORT, e.g. \"{example}\", got {:?}",
                raw.get_ref()
            ),
        )
    })?;
    if a.ip().is_unspecified() || a.port() == 0 {
        return Err(cx.invalid(
            field,
            raw.span(),
            format!(
                "must be a specific address and port, got {:?}",
                raw.get_ref()
            ),
        ));
    }
    Ok(a)
}

pub(super) fn duration_in(
    cx: &Cx<'_>,
    field: &str,
    raw: Option<Spanned<RawDuration>>,
    default: Duration,
    range: RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let text = &raw.get_ref().0;
    let d = humantime::parse_duration(text)
        .map_err(|e| cx.invalid(field, raw.span(), format!("invalid duration {text:?}: {e}")))?;
    if !range.contains(&d) {
        return Err(cx.invalid(
            field,
            raw.span(),
            format!(
                "must be between {} and {}, got {text:?}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end()),
            ),
        ));
    }
    Ok(d)
}
