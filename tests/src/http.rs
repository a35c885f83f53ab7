//! A small blocking HTTP/1.1 client for the control plane's API, and a strict check of the
//! OpenMetrics text `/metrics` serves.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::PATIENCE;

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Connection: close`) with `headers` and `body`, reads the whole response.
/// `body` is sent with a Content-Length unless `headers` sets its own framing.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    request_from(None, addr, method, path, headers, body)
}

/// A TCP connection to `addr`, from source address `from` when given (any 127.x.y.z works on
/// loopback, so tests can play several hosts).
pub fn connect(addr: SocketAddr, from: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"));
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket
        .connect(&addr.into())
        .with_context(|| format!("connecting to {addr} from {from}"))?;
    Ok(socket.into())
}

/// [`request`] from source address `from`.
pub fn request_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let mut stream = connect(addr, from)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && (!body.is_empty() || method == "POST") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    let mut raw = Vec::new();
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the response"),
        }
    }
    parse(&raw)
}

/// `n` connections to `addr` (from `from` when given) that send nothing.
pub fn idle_connections(
    addr: SocketAddr,
    from: Option<IpAddr>,
    n: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    (0..n)
        .map(|i| connect(addr, from).with_context(|| format!("idle connection {i}")))
        .collect()
}

/// Reads (and drops) whatever `stream` receives until the peer closes it or resets it, for at
/// most `limit`: how long that took, `None` when the stream is still open.
pub fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut chunk) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
    request(addr, "GET", path, headers, b"")
}

/// `POST path` with a JSON body.
pub fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    json: &serde_json::Value,
) -> anyhow::Result<Response> {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    request(addr, "POST", path, &h, json.to_string().as_bytes())
}

/// Parses a complete HTTP/1.1 response (Content-Length or read-to-end framing).
fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..end]).context("header not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        bail!("bad status line {status_line:?}");
    }
    let status: u16 = parts.next().unwrap_or_default().parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.parse()?;
        if body.len() < len {
            bail!("body cut short: {} of {len} bytes", body.len());
        }
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One sample: its metric name, labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (with `_total`, `_bucket`, … suffixes).
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Checks `text` line by line as OpenMetrics text (every family has `# HELP` and `# TYPE`
/// before its samples, sample names fit their family's type, labels are quoted, values are
/// numbers, `# EOF` ends it) and returns the samples.
pub fn parse_metrics(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if eof {
            bail!("line {n}: text after # EOF");
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').context(format!("line {n}: HELP"))?;
            if help.trim().is_empty() {
                bail!("line {n}: empty help for {name}");
            }
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').context(format!("line {n}: TYPE"))?;
            if ![
                "counter",
                "gauge",
                "histogram",
                "info",
                "summary",
                "unknown",
                "stateset",
            ]
            .contains(&ty)
            {
                bail!("line {n}: unknown type {ty}");
            }
            if !helped.iter().any(|h| h == name) {
                bail!("line {n}: {name} has a TYPE but no HELP");
            }
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with('#') {
            if line.starts_with("# UNIT ") {
                continue;
            }
            bail!("line {n}: unknown comment {line:?}");
        }
        let sample = parse_sample(line).with_context(|| format!("line {n}: {line:?}"))?;
        let family_ok = types.iter().any(|(fam, ty)| {
            let suffixes: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                "summary" => &["", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes.iter().any(|s| sample.name == format!("{fam}{s}"))
        });
        if !family_ok {
            bail!(
                "line {n}: sample {} belongs to no typed family",
                sample.name
            );
        }
        samples.push(sample);
    }
    if !eof {
        bail!("no # EOF");
    }
    Ok(samples)
}

/// `name{k="v",...} value`.
fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').context("unclosed labels")?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ').context("no value")?;
            (name, HashMap::new(), rest)
        }
    };
    if !valid_name(name) {
        bail!("bad metric name {name:?}");
    }
    let value = rest.trim().split(' ').next().unwrap_or_default();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(s: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("bad label name {key:?}");
        }
        if chars.next() != Some('"') {
            bail!("label {key} value not quoted");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('"' | '\\')) => value.push(c),
                    other => bail!("bad escape {other:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => bail!("unterminated value of {key}"),
            }
        }
        out.insert(key, value);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => bail!("unexpected {c:?} after a label"),
        }
    }
    Ok(out)
}

/// The sum of the samples named `name` whose labels include all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrapes `/metrics` at `addr` until `ready` holds for its samples and returns them (shards
/// publish twice a second). Every scrape must be valid OpenMetrics text. After [`PATIENCE`],
/// fails naming `what` and showing the last scrape.
pub fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    crate::eventually(|| {
        let resp = get(addr, "/metrics", &[]).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(
            resp.header("content-type")
                .is_some_and(|c| c.starts_with("application/openmetrics-text")),
            "{:?}",
            resp.headers
        );
        let text = resp.text();
        let samples =
            parse_metrics(&text).unwrap_or_else(|e| panic!("invalid metrics: {e:#}\n{text}"));
        if ready(&samples) {
            Ok(samples)
        } else {
            Err(format!("metrics never showed {what}:\n{text}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_check_refuses_what_prometheus_would() {
        let good =
            "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\",y=\"q\\\"\"} 3\n# EOF\n";
        let s = parse_metrics(good).unwrap();
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[0].labels["y"], "q\"");
        for bad in [
            "a_total 1\n# EOF\n",                            // no type
            "# TYPE a counter\na_total 1\n# EOF\n",          // no help
            "# HELP a x\n# TYPE a counter\na 1\n# EOF\n",    // counter without _total
            "# HELP a x\n# TYPE a gauge\na{x=1} 1\n# EOF\n", // unquoted label
            "# HELP a x\n# TYPE a gauge\na one\n# EOF\n",    // not a number
            "# HELP a x\n# TYPE a gauge\na 1\n",             // no EOF
        ] {
            assert!(parse_metrics(bad).is_err(), "accepted {bad:?}");
        }
    }
}
