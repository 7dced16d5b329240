//! A minimal HTTP/1.1 GET for health checks (http:// only).
//!
//! One request, `Connection: close`, bodies by `Content-Length`, chunked
//! encoding or end of stream. Everything (name lookup aside) happens within
//! the check's timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::actions::{ActionError, HttpAnswer, HttpCheck};

/// Body bytes kept to look for `expect_body`; the rest is counted only.
const BODY_KEEP: usize = 1024 * 1024;
/// Largest status line plus headers accepted.
const HEAD_MAX: usize = 64 * 1024;

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
    /// The `Host:` header value (host, and port when not 80).
    host_header: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err("https is not supported by the built-in check: use http:// on the local address, or twinfs.exec with curl".into());
    } else {
        return Err("the URL must start with http://".into());
    };
    let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(cut);
    let path = match tail.split('#').next().unwrap_or("") {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    if authority.contains('@') {
        return Err("user:password@ in the URL is not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match after {
            "" => (h.to_string(), None),
            p => (
                h.to_string(),
                Some(p.strip_prefix(':').ok_or("junk after ]")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("no host in the URL".into());
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
    };
    let host_only = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let host_header = if port == 80 {
        host_only
    } else {
        format!("{host_only}:{port}")
    };
    Ok(Target {
        host,
        port,
        path,
        host_header,
    })
}

/// A reader that fails with `TimedOut` once the deadline has passed.
struct DeadlineReader {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(std::io::ErrorKind::TimedOut.into())
            }
            r => r,
        }
    }
}

pub(crate) fn check(c: &HttpCheck) -> Result<HttpAnswer, ActionError> {
    let started = Instant::now();
    let fail = |what: String| ActionError(format!("GET {}: {what}", c.url));
    let t = parse_url(&c.url).map_err(fail)?;
    let deadline = started + c.timeout;
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {}: {e}", t.host)))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for a in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(format!("connect to {a}: {e}")),
        }
    }
    let Some(stream) = stream else {
        return Err(fail(
            last_err.unwrap_or_else(|| format!("no answer within {:?}", c.timeout)),
        ));
    };
    let timed_out = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            fail(format!("no complete answer within {:?}", c.timeout))
        } else {
            fail(format!("reading the answer: {e}"))
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: twinfs-supervisor\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        t.path, t.host_header
    );
    stream
        .set_write_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .and_then(|()| (&stream).write_all(request.as_bytes()))
        .map_err(|e| fail(format!("sending the request: {e}")))?;
    let mut r = BufReader::new(DeadlineReader { stream, deadline });
    let (status, length, chunked) = read_head(&mut r).map_err(|e| match e {
        HeadError::Io(e) => timed_out(e),
        HeadError::Bad(m) => fail(m),
    })?;
    let mut body = Vec::new();
    let body_bytes = if status == 204 || status == 304 || (100..200).contains(&status) {
        0
    } else if chunked {
        read_chunked(&mut r, &mut body).map_err(|e| match e {
            HeadError::Io(e) => timed_out(e),
            HeadError::Bad(m) => fail(m),
        })?
    } else {
        read_body(&mut r, length, &mut body).map_err(timed_out)?
    };
    let answer = HttpAnswer {
        status,
        body_bytes,
        elapsed: started.elapsed(),
    };
    if let Some(want) = &c.expect_body {
        if !contains(&body, want.as_bytes()) {
            return Err(fail(format!(
                "answered {status} but the body ({body_bytes} bytes, first {} looked at) does not contain {want:?}",
                body.len()
            )));
        }
    }
    tracing::debug!(url = %c.url, status, body_bytes, elapsed = ?answer.elapsed, "http check");
    Ok(answer)
}

enum HeadError {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for HeadError {
    fn from(e: std::io::Error) -> Self {
        HeadError::Io(e)
    }
}

/// One CRLF (or LF) line, bounded in size.
fn read_line<R: BufRead>(r: &mut R, seen: &mut usize) -> Result<String, HeadError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take((HEAD_MAX - *seen) as u64 + 1)
        .read_until(b'\n', &mut line)?;
    *seen += n;
    if n == 0 {
        return Err(HeadError::Bad(
            "connection closed before the end of the headers".into(),
        ));
    }
    if *seen > HEAD_MAX {
        return Err(HeadError::Bad(format!(
            "headers longer than {HEAD_MAX} bytes"
        )));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Status, `Content-Length` and whether the body is chunked.
fn read_head<R: BufRead>(r: &mut R) -> Result<(u16, Option<u64>, bool), HeadError> {
    let mut seen = 0;
    let status_line = read_line(r, &mut seen)?;
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match status {
        Some(s) if version.starts_with("HTTP/") => s,
        _ => {
            return Err(HeadError::Bad(format!(
                "not an HTTP answer: {status_line:?}"
            )))
        }
    };
    let (mut length, mut chunked) = (None, false);
    // At most HEAD_MAX bytes of headers, so at most HEAD_MAX lines.
    for _ in 0..HEAD_MAX {
        let line = read_line(r, &mut seen)?;
        if line.is_empty() {
            return Ok((status, length, chunked));
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse()
                    .map_err(|_| HeadError::Bad(format!("bad Content-Length {v:?}")))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    Err(HeadError::Bad(format!(
        "headers longer than {HEAD_MAX} bytes"
    )))
}

/// Reads up to `limit` bytes (or to the end), keeping the first
/// [`BODY_KEEP`] in `keep`; returns the bytes read.
fn read_body<R: Read>(r: &mut R, limit: Option<u64>, keep: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0usize;
    let mut buf = [0u8; 16 * 1024];
    // Bounded by the deadline reader: every read fails once time is up.
    loop {
        let want = match limit {
            Some(l) => (l - total as u64).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            return Ok(total);
        }
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            if limit.is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("body ended after {total} of {} bytes", limit.unwrap_or(0)),
                ));
            }
            return Ok(total);
        }
        let room = BODY_KEEP.saturating_sub(keep.len());
        keep.extend_from_slice(&buf[..n.min(room)]);
        total += n;
    }
}

fn read_chunked<R: BufRead>(r: &mut R, keep: &mut Vec<u8>) -> Result<usize, HeadError> {
    let mut total = 0;
    // Each round reads at least one size line; the deadline bounds the time.
    loop {
        let mut seen = 0;
        let line = read_line(r, &mut seen)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| HeadError::Bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            for _ in 0..HEAD_MAX {
                if read_line(r, &mut seen)?.is_empty() {
                    break;
                }
            }
            return Ok(total);
        }
        total += read_body(r, Some(size), keep)?;
        let mut seen = 0;
        if !read_line(r, &mut seen)?.is_empty() {
            return Err(HeadError::Bad("chunk not followed by CRLF".into()));
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://10.0.0.10/").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.path.as_str(),
                t.host_header.as_str()
            ),
            ("10.0.0.10", 80, "/", "10.0.0.10")
        );
        let t = parse_url("http://localhost:8080/health?x=1#frag").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.host_header.as_str()),
            (8080, "/health?x=1", "localhost:8080")
        );
        let t = parse_url("http://[2001:db8::10]:81?q").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str(), t.host_header.as_str()),
            ("2001:db8::10", "/?q", "[2001:db8::10]:81")
        );
        assert!(parse_url("https://x/")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(parse_url("ftp://x/").unwrap_err().contains("http://"));
        assert!(parse_url("http://x:99999/")
            .unwrap_err()
            .contains("bad port"));
        assert!(parse_url("http:///").unwrap_err().contains("no host"));
    }

    #[test]
    fn chunked_body_is_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let (status, len, chunked) = read_head(&mut r).ok().unwrap();
        assert_eq!((status, len, chunked), (200, None, true));
        let mut keep = Vec::new();
        let n = read_chunked(&mut r, &mut keep).ok().unwrap();
        assert_eq!(n, 11);
        assert_eq!(keep, b"hello world");
    }

    #[test]
    fn short_body_is_an_error() {
        let mut keep = Vec::new();
        let e = read_body(&mut &b"abc"[..], Some(10), &mut keep).unwrap_err();
        assert!(e.to_string().contains("after 3 of 10 bytes"), "{e}");
    }

    #[test]
    fn garbage_is_not_http() {
        let mut r = BufReader::new(&b"SSH-2.0-OpenSSH\r\n"[..]);
        match read_head(&mut r) {
            Err(HeadError::Bad(m)) => assert!(m.contains("not an HTTP answer"), "{m}"),
            _ => panic!("garbage accepted"),
        }
    }
}
