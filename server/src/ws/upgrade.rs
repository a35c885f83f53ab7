//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 §4.2), server side, pure: a bounded request
//! head in, the `101 Switching Protocols` answer or a refusal out.

use base64::Engine;

/// The GUID every `Sec-WebSocket-Accept` is derived with.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The subprotocol name of tether's stream.
pub const SUBPROTOCOL: &str = "tether";

/// What the upgrade checks.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The only path served.
    pub path: String,
    /// Origins a browser's request may come from; `*` allows any. A request without an
    /// `Origin` (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
}

/// Why an upgrade was refused: the HTTP status sent and a word for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an HTTP/1.1 GET with the WebSocket headers.
    #[error("400 bad request: {0}")]
    BadRequest(&'static str),
    /// Another path.
    #[error("404 not found")]
    NotFound,
    /// An `Origin` not on the allow-list.
    #[error("403 origin not allowed")]
    Origin,
    /// A WebSocket version other than 13.
    #[error("426 upgrade required (version 13)")]
    Version,
    /// A request head longer than allowed.
    #[error("431 request head too large")]
    TooLarge,
}

impl Refusal {
    /// The HTTP answer that says why, and closes.
    pub fn response(self) -> Vec<u8> {
        let (status, extra) = match self {
            Refusal::BadRequest(_) => ("400 Bad Request", ""),
            Refusal::NotFound => ("404 Not Found", ""),
            Refusal::Origin => ("403 Forbidden", ""),
            Refusal::Version => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            Refusal::TooLarge => ("431 Request Header Fields Too Large", ""),
        };
        format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    }
}

/// Where the end of the request head is in `buf` (just past the blank line), if it is there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks the request head `head` (through its blank line) and returns the `101` answer.
pub fn answer(head: &[u8], rules: &Rules) -> Result<Vec<u8>, Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| Refusal::BadRequest("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if method != Some("GET") || version != Some("HTTP/1.1") || parts.next().is_some() {
        return Err(Refusal::BadRequest("not an HTTP/1.1 GET"));
    }
    let target = target.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let (mut upgrade, mut connection, mut key, mut ws_version, mut origin, mut protocols) =
        (false, false, None, None, None, Vec::new());
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Refusal::BadRequest("malformed header line"));
        };
        let value = value.trim();
        let has_token = |t: &str| value.split(',').any(|v| v.trim().eq_ignore_ascii_case(t));
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= has_token("websocket"),
            "connection" => connection |= has_token("upgrade"),
            "sec-websocket-key" => key = Some(value),
            "sec-websocket-version" => ws_version = Some(value),
            "origin" => origin = Some(value),
            "sec-websocket-protocol" => protocols.extend(value.split(',').map(str::trim)),
            _ => {}
        }
    }
    if path != rules.path {
        return Err(Refusal::NotFound);
    }
    if !upgrade || !connection {
        return Err(Refusal::BadRequest("not a WebSocket upgrade"));
    }
    if ws_version != Some("13") {
        return Err(Refusal::Version);
    }
    let key = key.ok_or(Refusal::BadRequest("no Sec-WebSocket-Key"))?;
    let nonce = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| Refusal::BadRequest("Sec-WebSocket-Key is not base64"))?;
    if nonce.len() != 16 {
        return Err(Refusal::BadRequest("Sec-WebSocket-Key is not 16 bytes"));
    }
    if let Some(origin) = origin {
        let allowed = rules
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
        if !allowed {
            return Err(Refusal::Origin);
        }
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let protocol = if protocols.contains(&SUBPROTOCOL) {
        format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")
    } else {
        String::new()
    };
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
    .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            path: "/tether".into(),
            allowed_origins: vec!["https://app.example".into()],
        }
    }

    fn request(extra: &str) -> String {
        format!(
            "GET /tether HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn the_rfc_example_is_answered_with_its_accept_value() {
        let r = request("Origin: https://app.example\r\nSec-WebSocket-Protocol: chat, tether\r\n");
        let a = String::from_utf8(answer(r.as_bytes(), &rules()).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{a}");
        // RFC 6455 §1.3's example key and accept value.
        assert!(
            a.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{a}"
        );
        assert!(a.contains("Sec-WebSocket-Protocol: tether\r\n"), "{a}");
        assert!(a.ends_with("\r\n\r\n"));
        assert_eq!(head_end(r.as_bytes()), Some(r.len()));
    }

    #[test]
    fn refusals_say_why() {
        let bad = |r: &str| answer(r.as_bytes(), &rules()).unwrap_err();
        assert_eq!(
            bad(&request("Origin: https://evil.example\r\n")),
            Refusal::Origin
        );
        assert_eq!(
            bad(&request("").replace("/tether", "/other")),
            Refusal::NotFound
        );
        assert_eq!(
            bad(&request("").replace("Version: 13", "Version: 8")),
            Refusal::Version
        );
        assert!(matches!(
            bad(&request("").replace("Upgrade: websocket", "Upgrade: h2c")),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            bad(&request("").replace("GET", "POST")),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            bad(&request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            bad("\u{0}\u{1}garbage\r\n\r\n"),
            Refusal::BadRequest(_)
        ));
        assert!(Refusal::Version
            .response()
            .starts_with(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"));
        // No Origin: not a browser, allowed.
        assert!(answer(request("").as_bytes(), &rules()).is_ok());
    }
}
