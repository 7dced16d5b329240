//! The one HTTP client of the lab: one HTTP/1.0 request with one deadline, for
//! the end-to-end tests (`tests/harness/web.rs`: `http_get`, the `Poller`)
//! and the scripts (`twinfs lab get` and `twinfs lab poll`, which
//! `scripts/lib/lab.sh` runs in the client namespace).

#![allow(dead_code)] // neither the tests nor `twinfs lab` use every item

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Most bytes [`http_get_here`] reads (a response larger than this is an error).
const MAX_RESPONSE: usize = 64 << 20;

/// One HTTP/1.0 GET of `url` (`http://IP[:PORT]/PATH`, an IP literal: there
/// is no DNS in the lab) from the calling thread's namespace. `timeout`
/// bounds the whole exchange (connect, send, receive). Returns the status
/// code and the body; an error says which step failed and why, e.g. `GET
/// http://10.202.0.10/: connect: Connection refused (os error 111)`.
pub(crate) fn http_get_here(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    request_here("GET", url, b"", timeout).map(|r| (r.status, r.body))
}

/// A whole HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The header lines as (name, value), in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The value of the first header called `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_get_here`] with any method, and a body (sent with a
/// Content-Length when not empty, or when the method is not GET or HEAD);
/// the answer keeps its headers. Errors start with `METHOD URL: step:`.
pub(crate) fn request_here(
    method: &str,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let fail = |step: &str, e: &dyn std::fmt::Display| format!("{method} {url}: {step}: {e}");
    let deadline = Instant::now() + timeout;
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        // A zero timeout means "none" to std: keep it tiny instead.
        d.max(Duration::from_millis(1))
    };
    let (addr, host, path) = parse_url(url).map_err(|e| fail("bad url", &e))?;
    let mut s = TcpStream::connect_timeout(&addr, left()).map_err(|e| fail("connect", &e))?;
    s.set_write_timeout(Some(left()))
        .map_err(|e| fail("socket", &e))?;
    let length = if body.is_empty() && matches!(method, "GET" | "HEAD") {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: twinfs-lab\r\n{length}Connection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(|e| fail("send", &e))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Bounded by the deadline and by MAX_RESPONSE (each round reads >= 1 byte).
    loop {
        if Instant::now() >= deadline {
            return Err(fail(
                "receive",
                &format!(
                    "no complete response within {timeout:?} ({} bytes so far)",
                    raw.len()
                ),
            ));
        }
        s.set_read_timeout(Some(left()))
            .map_err(|e| fail("socket", &e))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE {
                    return Err(fail(
                        "receive",
                        &format!("response over {MAX_RESPONSE} bytes"),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(fail(
                    "receive",
                    &format!("timed out after {timeout:?} ({} bytes so far)", raw.len()),
                ))
            }
            Err(e) => return Err(fail("receive", &e)),
        }
    }
    parse_response(&raw, method == "HEAD").map_err(|e| fail("response", &e))
}

/// `http://IP[:PORT]/PATH` → (socket address, Host header, path).
pub(crate) fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = if let Ok(a) = hostport.parse::<SocketAddr>() {
        a
    } else {
        let host = hostport.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host
            .parse()
            .map_err(|_| format!("{hostport:?} is not an IP address (the lab has no DNS)"))?;
        SocketAddr::new(ip, 80)
    };
    Ok((addr, hostport.to_string(), path.to_string()))
}

/// A whole HTTP/1.x response; the body must match a Content-Length when
/// there is one (unless the request was HEAD, which gets none), chunked
/// encoding is refused (an HTTP/1.0 request never gets it).
fn parse_response(raw: &[u8], head_request: bool) -> Result<Response, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = raw[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        headers.push((k.to_string(), v.to_string()));
        if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unexpected header {l:?} in an HTTP/1.0 exchange"));
        }
        if k.eq_ignore_ascii_case("content-length") && !head_request {
            let n: usize = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
            if n != body.len() {
                return Err(format!(
                    "Content-Length {n} but {} body bytes (cut short?)",
                    body.len()
                ));
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
