//! The one HTTP/1.1 client of the tests and benches: one connection per
//! request over a real socket, the request target written exactly as given
//! (a fragment, a `..`, an absolute URI: whatever the test is about), the
//! response read by its framing (`content-length`, chunked, or to the close).
//!
//! [`send`] sends what a client library would (a `host` header, names in
//! lower case, a repeated name's lines together, `content-length` for a
//! body); [`send_as_given`] sends the header lines exactly as listed.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What came back.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The status line and header lines as received, for messages and for
    /// tests about the raw text.
    pub head: String,
    /// The headers, names in lower case, repeats kept.
    pub headers: HeaderMap,
    /// The body, de-chunked.
    pub body: Bytes,
}

impl Reply {
    /// The first value of `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The body as JSON; panics (failing the test) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request like a client library; panics when there is no answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    try_send(addr, method, target, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {target} to {addr}: {e}"))
}

/// Like [`send`], reporting a failure (no connection, no answer, a target or
/// header a client library would refuse) instead of panicking.
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Reply, String> {
    target
        .parse::<Uri>()
        .map_err(|e| format!("target {target:?}: {e}"))?;
    let mut map = HeaderMap::new();
    map.insert(
        axum::http::header::HOST,
        HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?,
    );
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name:?}: {e}"))?,
            HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?,
        );
    }
    if !body.is_empty() && !map.contains_key(axum::http::header::CONTENT_LENGTH) {
        map.insert(axum::http::header::CONTENT_LENGTH, body.len().into());
    }
    let lines: Vec<(&str, &str)> = map
        .iter()
        .map(|(k, v)| Ok((k.as_str(), v.to_str().map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    send_as_given(addr, method, target, &lines, &body).await
}

/// Writes the request line and exactly the header lines given, then `body`,
/// and reads the answer.
pub async fn send_as_given(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    conn.write_all(&bytes)
        .await
        .map_err(|e| format!("send: {e}"))?;
    tokio::time::timeout(ANSWER_TIMEOUT, read_reply(&mut conn, method == "HEAD"))
        .await
        .map_err(|_| format!("no answer within {ANSWER_TIMEOUT:?}"))?
}

/// Reads one response, skipping interim (1xx) ones.
async fn read_reply(conn: &mut TcpStream, head_request: bool) -> Result<Reply, String> {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if fill(conn, &mut buf).await? == 0 {
                return Err(format!(
                    "connection closed before the header end: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
        };
        let rest = buf.split_off(end);
        let (status, headers) = parse_head(&buf[..end - 4])?;
        let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
        if (100..200).contains(&status) {
            buf = rest;
            continue;
        }
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(conn, &headers, rest).await?
        };
        return Ok(Reply {
            status,
            head,
            headers,
            body: Bytes::from(body),
        });
    }
}

/// Status code and headers of a response head (without its empty line).
fn parse_head(head: &[u8]) -> Result<(u16, HeaderMap), String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = text(lines.next().unwrap_or_default());
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("bad header line {:?}", text(line)))?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        headers.append(
            HeaderName::from_bytes(name.trim_ascii())
                .map_err(|e| format!("{:?}: {e}", text(name)))?,
            HeaderValue::from_bytes(value).map_err(|e| format!("{:?}: {e}", text(value)))?,
        );
    }
    Ok((status, headers))
}

/// The body after the head, `buf` holding what was read past it already.
async fn read_body(
    conn: &mut TcpStream,
    headers: &HeaderMap,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let chunked = headers
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
        });
    if chunked {
        return read_chunked(conn, buf).await;
    }
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    match length {
        Some(n) => {
            while buf.len() < n {
                if fill(conn, &mut buf).await? == 0 {
                    return Err(format!("body ended after {} of {n} bytes", buf.len()));
                }
            }
            buf.truncate(n);
            Ok(buf)
        }
        None => {
            while fill(conn, &mut buf).await? > 0 {}
            Ok(buf)
        }
    }
}

/// A chunked body, de-chunked; trailers are read and dropped.
async fn read_chunked(conn: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if fill(conn, &mut buf).await? == 0 {
                return Err("chunked body ended early".to_owned());
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the empty line.
            while !buf.windows(2).any(|w| w == b"\r\n") {
                if fill(conn, &mut buf).await? == 0 {
                    break;
                }
            }
            return Ok(body);
        }
        while buf.len() < size + 2 {
            if fill(conn, &mut buf).await? == 0 {
                return Err("chunk ended early".to_owned());
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Reads what is there into `buf`; 0 at the end of the stream.
async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 8192];
    let n = conn
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}
